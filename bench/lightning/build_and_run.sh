#!/usr/bin/env bash
# Builds the lightning-attention kernels, their reference, tests and benchmark with nvcc
# and g++ alone (the project's CMake needs LibTorch and abseil, which the GPU machine
# lacks), then runs the tests, compute-sanitizer on a few cases, the benchmark and the
# flash-linear-attention peer. Logs go to $OUT (default build/lightning_out).
#   bench/lightning/build_and_run.sh [--build-only] [--quick]
# GoogleTest comes from the system when it has one, else from .device/googletest (a copy
# of /usr/src/googletest, carried to the GPU machine); fla from .peer/fla.
set -uo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
OUT="${OUT:-$ROOT/build/lightning_out}"
B="${LIGHTNING_BUILD_DIR:-/tmp/lightning_build}"
BUILD_ONLY=0
QUICK=""
for a in "$@"; do
  case "$a" in
    --build-only) BUILD_ONLY=1 ;;
    --quick) QUICK="--quick" ;;
  esac
done
mkdir -p "$OUT" "$B"
NVCC="nvcc -std=c++17 -O3 -gencode=arch=compute_90a,code=sm_90a -I$ROOT -Xcompiler=-Wall,-Wextra"
CXX="g++ -std=c++17 -O2 -Wall -Wextra -I$ROOT"

GTEST_INC=""
GTEST_LIBS=""
for d in /usr/lib/x86_64-linux-gnu /usr/lib64 /usr/lib /usr/local/lib; do
  if [ -f /usr/include/gtest/gtest.h ] && [ -f "$d/libgtest.a" ] && [ -f "$d/libgtest_main.a" ]; then
    GTEST_LIBS="$d/libgtest_main.a $d/libgtest.a -lpthread"
    break
  fi
done
{
  echo "== $(date -u +%FT%TZ) build"
  nvcc --version | tail -2
  pids=()
  if [ -z "$GTEST_LIBS" ]; then
    G="$ROOT/.device/googletest/googletest"
    [ -d "$G" ] || { echo "no GoogleTest: neither the system's nor $G"; exit 1; }
    echo "GoogleTest from $G"
    GTEST_INC="-I$G/include"
    $CXX -w -I"$G/include" -I"$G" -c "$G/src/gtest-all.cc" -o "$B/gtest-all.o" & pids+=($!)
    $CXX -w -I"$G/include" -I"$G" -c "$G/src/gtest_main.cc" -o "$B/gtest_main.o" & pids+=($!)
    GTEST_LIBS="$B/gtest_main.o $B/gtest-all.o -lpthread"
  else
    echo "GoogleTest from the system: $GTEST_LIBS"
  fi
  $NVCC -Xptxas -v -c "$ROOT/kernels/lightning/lightning_prefill.cu" -o "$B/prefill.o" \
    2> "$B/ptxas_prefill.txt" & pids+=($!)
  $NVCC -Xptxas -v -c "$ROOT/kernels/lightning/lightning_prefill_sm90.cu" -o "$B/prefill_sm90.o" \
    2> "$B/ptxas_prefill_sm90.txt" & pids+=($!)
  $NVCC -Xptxas -v -c "$ROOT/kernels/lightning/lightning_decode.cu" -o "$B/decode.o" \
    2> "$B/ptxas_decode.txt" & pids+=($!)
  $NVCC -c "$ROOT/kernels/lightning/lightning_train.cu" -o "$B/train.o" & pids+=($!)
  $CXX -c "$ROOT/kernels/lightning/lightning_reference.cc" -o "$B/reference.o" & pids+=($!)
  $CXX $GTEST_INC -c "$ROOT/tests/kernels/lightning_reference_test.cc" \
    -o "$B/reference_test.o" & pids+=($!)
  $NVCC $GTEST_INC -c "$ROOT/tests/kernels/lightning_kernels_test.cu" \
    -o "$B/kernels_test.o" & pids+=($!)
  $NVCC -c "$ROOT/bench/lightning/lightning_bench.cu" -o "$B/bench.o" & pids+=($!)
  fail=0
  for p in "${pids[@]}"; do wait "$p" || fail=1; done
  cat "$B/ptxas_prefill.txt" "$B/ptxas_prefill_sm90.txt" "$B/ptxas_decode.txt"
  [ "$fail" = 0 ] || { echo "BUILD FAILED"; exit 1; }
  KOBJ="$B/prefill.o $B/prefill_sm90.o $B/decode.o $B/train.o"
  g++ -o "$B/lightning_reference_test" "$B/reference_test.o" "$B/reference.o" $GTEST_LIBS || exit 1
  nvcc -gencode=arch=compute_90a,code=sm_90a -o "$B/lightning_kernels_test" "$B/kernels_test.o" \
    $KOBJ "$B/reference.o" $GTEST_LIBS || exit 1
  nvcc -gencode=arch=compute_90a,code=sm_90a -o "$B/lightning_bench" "$B/bench.o" $KOBJ \
    "$B/reference.o" || exit 1
  echo "build ok"
} > "$OUT/build.log" 2>&1
build_rc=$?
grep -E "registers|spill|error|warning|ok|FAILED" "$OUT/build.log" | grep -v "^ptxas info    : Compiling" | head -40
[ "$build_rc" = 0 ] || { tail -40 "$OUT/build.log"; exit 1; }
[ "$BUILD_ONLY" = 1 ] && exit 0

summary=()
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.mem --format=csv

"$B/lightning_reference_test" > "$OUT/reference_test.log" 2>&1
summary+=("reference test rc=$? $(grep -E '^\[  (PASSED|FAILED)' "$OUT/reference_test.log" | tr '\n' ' ')")

"$B/lightning_kernels_test" > "$OUT/kernels_test.log" 2>&1
krc=$?
summary+=("kernels test rc=$krc $(grep -E '^\[  (PASSED|FAILED)' "$OUT/kernels_test.log" | tr '\n' ' ')")
grep -E "FAILED|Failure|rel|error" "$OUT/kernels_test.log" | head -40

# Races and out-of-bounds accesses on a few small cases.
FILTER='Shapes/PrefillTest.MatchesRecurrence/d128_h3_b64_dv64_*:Shapes/PrefillTest.MatchesRecurrence/d64_h3_b32_dv32_*:HeadDims/DecodeTest.*'
{
  for tool in memcheck racecheck; do
    echo "== compute-sanitizer --tool $tool"
    timeout 240 compute-sanitizer --tool "$tool" "$B/lightning_kernels_test" \
      --gtest_filter="$FILTER" 2>&1 | grep -vE "^\[ +(RUN|OK) " | tail -15
  done
} > "$OUT/sanitizer.log" 2>&1
summary+=("sanitizer: $(grep -E 'ERROR SUMMARY|hazard' "$OUT/sanitizer.log" | tr '\n' ' ')")

"$B/lightning_bench" $QUICK > "$OUT/bench.txt" 2>&1
summary+=("bench rc=$?")
cat "$OUT/bench.txt"

# Hardware counters of one run of each kernel (ncu reads them on Firecracker machines).
if command -v ncu > /dev/null && [ -z "$QUICK" ]; then
  timeout 300 ncu --clock-control none --section SpeedOfLight --section WarpStateStats \
    --section SchedulerStats --section Occupancy --section ComputeWorkloadAnalysis \
    --section MemoryWorkloadAnalysis --section InstructionStats -k regex:Lightning \
    "$B/lightning_bench" --profile > "$OUT/ncu.txt" 2>&1
  summary+=("ncu rc=$?")
fi

if [ -d "$ROOT/.peer/fla" ]; then
  PYTHONUNBUFFERED=1 python3 "$ROOT/bench/lightning/run_peer.py" --fla "$ROOT/.peer" $QUICK \
    > "$OUT/peer.txt" 2>&1
  summary+=("peer rc=$?")
  tail -20 "$OUT/peer.txt"
fi
echo
printf '%s\n' "${summary[@]}"
