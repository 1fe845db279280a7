#!/usr/bin/env bash
# GPU checks on a lent GPU machine (Python 3.12, CUDA 13, CuPy, torch preinstalled; no registry).
#
# Here (with network), once:   bash benchmarks/gpu_session.sh wheels
#   downloads the wheels the GPU machine lacks into .whl/ (git-ignored; ../shared/tools/gpu-wheelhouse.sh).
# On the GPU machine:          bash benchmarks/gpu_session.sh run [N]
#   installs them into /tmp/site, runs `pytest -m gpu` (GPU vs CPU equality, kernels vs references),
#   then the GPU benchmark (benchmarks/bench_gpu.py, N objects, default 100000); results and logs
#   go to $OUT when set (the device tool's output folder) and to benchmarks/results/.
set -euo pipefail
cd "$(dirname "$0")/.."
case "${1:-}" in
  wheels)
    grep -q '^/.whl/' .git/info/exclude 2>/dev/null || echo "/.whl/" >> .git/info/exclude
    bash ../shared/tools/gpu-wheelhouse.sh .whl
    ;;
  run)
    N=${2:-100000}
    OUTDIR=${OUT:-benchmarks/results}
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
    export PYTHONPATH=/tmp/site:$PWD
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUTDIR/gpu-nvidia-smi.txt"
    set +e
    python3 -m pytest -m gpu -q -p no:cacheprovider 2>&1 | tee "$OUTDIR/pytest-gpu.log"
    python3 -m pytest tests/test_kernels.py tests/features tests/test_stats.py -q -p no:cacheprovider 2>&1 | tail -3
    set -e
    PYTHONUNBUFFERED=1 python3 benchmarks/bench_gpu.py -n "$N" --out "$OUTDIR" 2>&1 | tee "$OUTDIR/bench-gpu.log"
    ;;
  *)
    sed -n '2,10p' "$0"; exit 2 ;;
esac
