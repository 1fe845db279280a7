#!/usr/bin/env bash
# GPU checks on a lent GPU machine (Python 3.12, CUDA 13, CuPy, numba, torch preinstalled; no
# registry): one prepared run, each step under its own timeout, logs and results in one folder.
#
# Here (with network), once:   bash benchmarks/gpu_session.sh wheels
#   downloads the wheels the GPU machine lacks into .whl/ (git-ignored; ../shared/tools/gpu-wheelhouse.sh).
# On the GPU machine:          bash benchmarks/gpu_session.sh run [N] [STEP ...]
#   first:  one batch in a fresh process with an empty kernel cache (prebuilt sm_90 binary);
#   bench:  bench_gpu.py: equality with the CPU path, objects/s (N objects, default 65536), time
#           per stage against the floor, peak memory, the CPU path on the same host;
#   legacy: the same benchmark (smaller equality and CPU samples) with the previous median,
#           sort and labelling compiled in (SCIP_GPU_DEFINES="$LEGACY", NVRTC; LEGACY defaults to
#           "SG_LEGACY_MEDIAN SG_LEGACY_SORT SG_LEGACY_LABEL", set it to time one change alone),
#           results in legacy/: the A/B of the default kernels against the ones they replaced;
#   pytest: pytest -m gpu (every CUDA kernel and stage against the CPU path on the device, the
#           fields' crops gathered on the device, kvikio reads into device memory);
#   fields: the fields-of-view command line with device=cuda vs device=cpu;
#   nvrtc:  one batch in a fresh process compiling the module with NVRTC (other GPUs' case);
#   profile: cycles per plane of each phase of the mask and intensity kernels (-DSG_PROFILE);
#   scaling: bench_scaling.py, the command line (device=cuda cluster=local_cuda, 12-channel 64x64
#           cells from an uncompressed dense zarr): objects/s and peak host/GPU memory against
#           the number of objects (10^3..5x10^4), then against partitions in flight per GPU
#           (1, 2); not in the default steps (up to 6.5 minutes: run it alone).
#   cellprofiler: bench_gpu.py --preset cellprofiler (li masks): equality of every cellprofiler
#           column with the CPU path (12-channel and ragged 3-channel cells), objects/s against the
#           CPU path of the same host (results gpu-cellprofiler-<device>-<N>.json/.md);
#   kvikio: the command line on 50,000 such cells read with kvikio straight into GPU memory
#           (io.kvikio=true) and through the host (io.kvikio=false), results in kvikio-true/ and
#           kvikio-false/ (the issue's "measure both"; io.kvikio=true stops at start-up unless kvikio reads).
#   profile_legacy: the same with the legacy kernels (results in legacy/): with profile, the
#           cycles of each phase before and after.
#   Default: first bench legacy pytest, in this order (timeouts 40 + 180 + 130 + 120 s).
#   Also: cellprofiler fields nvrtc profile profile_legacy scaling kvikio (name them: bash gpu_session.sh run 65536 profile ...).
#   Results (gpu-<device>-<N>.json/.md, gpu-fields-equality.json) and the log (session.log) go to
#   $OUT when set (the device tool's output folder), else benchmarks/results/session/.
#   Total under 8 minutes.
set -uo pipefail
cd "$(dirname "$0")/.."
case "${1:-}" in
  wheels)
    grep -q '^/.whl/' .git/info/exclude 2>/dev/null || echo "/.whl/" >> .git/info/exclude
    bash ../shared/tools/gpu-wheelhouse.sh .whl
    ;;
  run)
    N=${2:-65536}
    STEPS=${*:3}
    STEPS=${STEPS:-first bench legacy pytest}
    LEGACY=${LEGACY:-SG_LEGACY_MEDIAN SG_LEGACY_SORT SG_LEGACY_LABEL}
    OUTDIR=${OUT:-benchmarks/results/session}
    mkdir -p "$OUTDIR"
    exec > >(tee -a "$OUTDIR/session.log") 2>&1
    export PYTHONUNBUFFERED=1
    step() {  # step SECONDS COMMAND...: run with a timeout (output in the session log)
      local limit=$1; shift
      local t0=$SECONDS
      echo "== $(date -u +%T) $* (timeout ${limit} s)"
      timeout --kill-after=10 "$limit" "$@"
      echo "== exit $? after $((SECONDS - t0)) s"
    }
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
      || { echo "wheel install failed"; exit 1; }
    export PYTHONPATH=/tmp/site:$PWD
    nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,clocks.mem --format=csv
    for s in $STEPS; do
      case $s in
        first) step 40 env CUPY_CACHE_DIR="$(mktemp -d)" python3 benchmarks/bench_gpu.py --first-batch ;;
        bench) step 180 python3 benchmarks/bench_gpu.py -n "$N" --out "$OUTDIR" ;;
        legacy) step 130 env SCIP_GPU_DEFINES="$LEGACY" python3 benchmarks/bench_gpu.py -n "$N" \
                  --equality-objects 64 --ragged 60 --cpu-objects 256 --out "$OUTDIR/legacy" ;;
        pytest) step 120 python3 -m pytest -m gpu -q -p no:cacheprovider -o addopts="-ra" tests/kernels \
                  tests/test_dispatch.py tests/test_gpu_path.py tests/io/test_device_read.py ;;
        cellprofiler) step 200 python3 benchmarks/bench_gpu.py --preset cellprofiler -n 4096 --unique 512 \
                        --batch-size 1024 --equality-objects 32 --ragged 40 --cpu-objects 128 --out "$OUTDIR" ;;
        fields) step 100 python3 benchmarks/bench_gpu.py --fields-only --out "$OUTDIR" ;;
        nvrtc) step 60 env CUPY_CACHE_DIR="$(mktemp -d)" SCIP_GPU_PREBUILT=0 python3 benchmarks/bench_gpu.py \
                 --first-batch ;;
        profile) step 90 python3 benchmarks/profile_kernels.py --out "$OUTDIR" ;;
        profile_legacy) step 90 env SCIP_GPU_DEFINES="$LEGACY" python3 benchmarks/profile_kernels.py \
                          --out "$OUTDIR/legacy" ;;
        scaling) step 240 python3 benchmarks/bench_scaling.py objects -n 1000 10000 50000 --device cuda \
                   --cluster local_cuda --dataset zarr --channels 12 --timeout 100 --out "$OUTDIR"
                 step 150 python3 benchmarks/bench_scaling.py workers -w 1 2 -n 50000 --device cuda \
                   --cluster local_cuda --dataset zarr --channels 12 --knob threads_per_worker --timeout 70 \
                   --out "$OUTDIR" ;;
        kvikio) for mode in true false; do
                  step 110 python3 benchmarks/bench_scaling.py objects -n 50000 --device cuda --cluster local_cuda \
                    --dataset zarr --channels 12 --timeout 100 --out "$OUTDIR/kvikio-$mode" io.kvikio=$mode
                done ;;
        *) echo "unknown step $s" ;;
      esac
    done
    ls -la "$OUTDIR"
    ;;
  *)
    sed -n '2,25p' "$0"; exit 2 ;;
esac
