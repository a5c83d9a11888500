#!/usr/bin/env bash
# Configures and builds lightrl into build/ (Release, Ninja, ccache when present).
# Extra arguments go to CMake, e.g. -DCMAKE_PREFIX_PATH=/path/to/libtorch.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
jobs="${LIGHTRL_JOBS:-$(nproc)}"
# ccache hits across clones at different paths.
export CCACHE_BASEDIR="${CCACHE_BASEDIR:-$root}"
cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=Release "$@" >/dev/null
cmake --build build -j "$jobs"
