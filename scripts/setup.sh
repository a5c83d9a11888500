#!/usr/bin/env bash
# Installs everything lightrl needs on a fresh Debian 12 machine; safe to run again.
#   - build tools and C++ libraries from Debian's packages (gRPC, protobuf, abseil,
#     GoogleTest, yaml-cpp, ccache; gloo's headers, which LibTorch's Gloo process-group
#     header needs and the torch wheel does not ship)
#   - a project-local Python environment in .venv with torch (its LibTorch is what the
#     C++ build links), transformers and tokenizers (the parity tests' oracle)
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

TORCH_VERSION="${LIGHTRL_TORCH_VERSION:-2.11.0}"
TRANSFORMERS_VERSION="${LIGHTRL_TRANSFORMERS_VERSION:-5.17.0}"

apt_packages=(
  build-essential cmake ninja-build ccache pkg-config
  libgrpc++-dev protobuf-compiler-grpc libprotobuf-dev protobuf-compiler
  libabsl-dev libgtest-dev libgmock-dev libyaml-cpp-dev libgloo-dev
)
missing=()
for p in "${apt_packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "setup: installing Debian packages: ${missing[*]}"
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
fi

if [ ! -x .venv/bin/python ]; then
  echo "setup: creating .venv"
  python3 -m venv .venv
fi
stamp=".venv/.lightrl-deps-torch${TORCH_VERSION}-tf${TRANSFORMERS_VERSION}-v2"
if [ ! -f "$stamp" ]; then
  echo "setup: installing Python packages into .venv (torch ${TORCH_VERSION}, first time takes minutes)"
  .venv/bin/python -m pip install -q --upgrade pip
  .venv/bin/python -m pip install -q \
    "torch==${TORCH_VERSION}" "transformers==${TRANSFORMERS_VERSION}" \
    tokenizers safetensors numpy tensorboard matplotlib pyyaml grpcio grpcio-tools
  touch "$stamp"
fi
echo "setup: done"
