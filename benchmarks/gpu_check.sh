#!/usr/bin/env bash
# One call that validates the GPU paths on a machine with a CUDA device, in under 8 minutes:
#   1. installs the project with the nvdiffrast extra (pip install -e ".[dev,nvdiffrast]"; offline machines:
#      GPU_CHECK_WHEELS=<folder of wheels> installs from there with --no-index);
#   2. builds nvdiffrast's CUDA plugin once (it is JIT-compiled on first use) and reports the build;
#   3. runs every GPU test (pytest -m "gpu or nvdiffrast") with SYNTH_TORCH_REQUIRE_NVDIFFRAST=1, so that a missing
#      GPU or a broken nvdiffrast build is a failure, not a skip;
#   4. runs the GPU throughput benchmark: synth-torch bench --device cuda at 256x256 (tabletop and defects),
#      with raw nvdiffrast rasterize + interpolate on the same scenes and our overhead over it;
#   5. writes one report, gpu_check_report.md, with the logs beside it.
# Without a CUDA device it still runs: it says so, skips the install, the build and the benchmark, and runs the
# GPU test selection, which then skips every test with its reason.
#
#   bash benchmarks/gpu_check.sh [OUT_DIR]        # default OUT_DIR: $OUT if set (the device tool), else gpu_check
#
# Variables: PYTHON (default python3), GPU_CHECK_INSTALL=auto|yes|no (auto: install only with a GPU),
# GPU_CHECK_WHEELS (offline install), GPU_CHECK_BATCHES (timed batches per benchmark case, default 3).
set -uo pipefail
cd "$(dirname "$0")/.."
START=$(date +%s)
PY=${PYTHON:-python3}
DEST=${1:-${OUT:-gpu_check}}
mkdir -p "$DEST"
REPORT="$DEST/gpu_check_report.md"
STATUS=0
export PYTHONUNBUFFERED=1 PROJECT_ROOT="$PWD"

say() { echo "$*" | tee -a "$REPORT"; }
elapsed() { echo "$(( $(date +%s) - START )) s"; }
# run a phase with a time limit; its output goes to a log file and its tail into the report
phase() {  # phase NAME LIMIT_S LOG COMMAND...
  local name=$1 limit=$2 log=$3; shift 3
  local t0=$(date +%s) rc
  timeout "$limit" "$@" >"$log" 2>&1
  rc=$?
  local note=""
  [ "$rc" = 124 ] && note=" (stopped at its ${limit} s limit)"
  say "### $name: exit $rc$note, $(( $(date +%s) - t0 )) s"
  say ""
  say '```'
  tail -n 25 "$log" | tee -a "$REPORT"
  say '```'
  say ""
  return "$rc"
}

: >"$REPORT"
say "# synth-torch GPU check"
say ""
say "- date: $(date -u +%Y-%m-%dT%H:%M:%SZ); commit: $(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
say "- python: $($PY -c 'import sys; print(sys.version.split()[0])' 2>&1)"
say "- torch: $($PY -c 'import torch; print(torch.__version__, "CUDA", torch.version.cuda)' 2>&1 | tail -n 1)"
GPU=$($PY -c 'import torch; print(torch.cuda.get_device_name() if torch.cuda.is_available() else "")' 2>/dev/null)
if [ -n "$GPU" ]; then
  say "- GPU: $GPU"
  command -v nvidia-smi >/dev/null && say "- driver: $(nvidia-smi --query-gpu=driver_version --format=csv,noheader | head -n 1)"
else
  say "- GPU: none. No CUDA device is visible to torch: the install, the nvdiffrast build and the GPU benchmark"
  say "  are skipped, and the GPU tests below skip with their reasons. Run this on a machine with a GPU."
fi
say ""

INSTALL=${GPU_CHECK_INSTALL:-auto}
if [ "$INSTALL" = yes ] || { [ "$INSTALL" = auto ] && [ -n "$GPU" ]; }; then
  if [ -n "${GPU_CHECK_WHEELS:-}" ]; then
    phase "install (offline, wheels from $GPU_CHECK_WHEELS)" 240 "$DEST/install.log" \
      "$PY" -m pip install --no-index --find-links "$GPU_CHECK_WHEELS" -e ".[dev,nvdiffrast]" || STATUS=1
  else
    phase 'install: pip install -e ".[dev,nvdiffrast]"' 240 "$DEST/install.log" \
      "$PY" -m pip install -e ".[dev,nvdiffrast]" || STATUS=1
  fi
else
  say "### install: skipped (GPU_CHECK_INSTALL=$INSTALL, ${GPU:-no GPU})"
  say ""
fi

if [ -n "$GPU" ]; then
  export SYNTH_TORCH_REQUIRE_NVDIFFRAST=1  # the extra was requested: a broken nvdiffrast fails the tests
  phase "nvdiffrast: import and build the CUDA plugin" 240 "$DEST/nvdiffrast_build.log" "$PY" -c '
import time
start = time.perf_counter()
import torch
import synth_torch.render as dr
ctx = dr.RasterizeContext(device="cuda", backend="nvdiffrast")  # JIT-builds the plugin on first use
pos = torch.tensor([[[-1.0, -1, 0, 1], [1, -1, 0, 1], [-1, 1, 0, 1]]], device="cuda")
tri = torch.tensor([[0, 1, 2]], dtype=torch.int32, device="cuda")
rast, _ = dr.rasterize(ctx, pos, tri, (8, 8))
covered = int((rast[..., 3] > 0).sum())
print(f"nvdiffrast works: {covered} of 64 pixels covered, {time.perf_counter() - start:.1f} s including the build")
' || STATUS=1
fi

phase 'GPU tests: pytest -m "gpu or nvdiffrast"' 300 "$DEST/pytest.log" \
  "$PY" -m pytest -q -m "gpu or nvdiffrast" -p no:cacheprovider --continue-on-collection-errors -rfE \
  --junitxml="$DEST/pytest.xml" tests || STATUS=1

if [ -n "$GPU" ]; then
  phase "GPU benchmark: synth-torch bench --device cuda (256x256)" 240 "$DEST/bench.log" \
    "$PY" -m synth_torch.cli bench --device cuda --cases tabletop-256 defects-256 \
    --batches "${GPU_CHECK_BATCHES:-3}" --workers 2 --json "$DEST/bench.json" || STATUS=1
  # the report table itself, not only the log's tail
  sed -n '/^Machine:/,$p' "$DEST/bench.log" >>"$REPORT"
  say ""
else
  say "### GPU benchmark: skipped (no GPU)"
  say ""
fi

if [ -z "$GPU" ]; then
  RESULT="NOT CHECKED ON A GPU (no CUDA device here; exit $STATUS)"
else
  RESULT=$([ "$STATUS" = 0 ] && echo PASS || echo FAIL)
fi
say "**Result: $RESULT**, $(elapsed) in all. Logs: $DEST/"
exit "$STATUS"
