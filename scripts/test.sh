#!/usr/bin/env bash
# Sets up (idempotent), builds, and runs every test this machine can run: all CTest
# tests except those labelled gpu (run those on a GPU machine with `ctest -L gpu`).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
bash scripts/setup.sh
bash scripts/build.sh
cd build
ctest -LE gpu --output-on-failure -j "${LIGHTRL_JOBS:-$(nproc)}" --timeout 1800
