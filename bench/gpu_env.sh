# Sourced first by the GPU machine's bench scripts (after ROOT and OUT): the build folder B
# (E2E_BUILD_DIR), the work folder W (E2E_WORK_DIR, else WORK_DEFAULT), the summary file S
# (OUT/SUMMARY, emptied unless KEEP_SUMMARY=1) with note() and elapsed(), and PY. Notes a
# first line naming the date and the GPUs (GPU_NOTE, when set, goes after the date).
B="${E2E_BUILD_DIR:-/tmp/lightrl_cuda_build}"
W="${E2E_WORK_DIR:-${WORK_DEFAULT:-/tmp/lightrl_e2e}}"
T0=$(date +%s)
mkdir -p "$OUT" "$W"
S="$OUT/${SUMMARY:-summary.txt}"
if [ "${KEEP_SUMMARY:-0}" = 1 ]; then touch "$S"; else : > "$S"; fi
note() { echo "$*" | tee -a "$S"; }
elapsed() { echo $(( $(date +%s) - T0 )); }
PY=$(command -v python3)
note "== $(date -u +%FT%TZ)${GPU_NOTE:+ $GPU_NOTE:} $(nvidia-smi -L | wc -l) x $(nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | head -1)"
