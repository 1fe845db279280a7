#!/usr/bin/env bash
# GPU checks on a lent GPU machine (Python 3.12, CUDA 13, CuPy, numba, torch preinstalled; no
# registry): one prepared run, each step under its own timeout, logs and results in one folder.
#
# Here (with network), once:   bash benchmarks/gpu_session.sh wheels
#   downloads the wheels the GPU machine lacks into .whl/ (git-ignored; ../shared/tools/gpu-wheelhouse.sh).
# On the GPU machine:          bash benchmarks/gpu_session.sh run [N] [STEP ...]
#   first:  one batch in a fresh process with an empty kernel cache (prebuilt sm_90 binary), and
#           what CuPy compiled for it with NVRTC ("compiled": binaries, kernels by name, from
#           the sources CUPY_CACHE_SAVE_CUDA_SOURCE=1 keeps): a fresh machine's fixed cost;
#   first_pch: the same with CUPY_NVRTC_USE_PCH=1 (NVRTC's precompiled headers, CUDA >= 12.8;
#           CuPy's own CI sets it): whether it shortens that compilation (A/B with first);
#   bench:  bench_gpu.py: equality with the CPU path, objects/s (N objects, default 65536), time
#           per stage against the floor, peak memory, the CPU path on the same host;
#   legacy: the same benchmark (smaller equality and CPU samples) with previous forms compiled
#           in (SCIP_GPU_DEFINES="$LEGACY", NVRTC; LEGACY defaults to run 6's median, sort and
#           labelling, "SG_LEGACY_MEDIAN SG_LEGACY_SORT SG_LEGACY_LABEL"; name one to time it
#           alone), results in legacy/: the A/B of the default kernels against the ones they replaced;
#   pytest: pytest -m gpu (every CUDA kernel and stage against the CPU path on the device, the
#           fields' crops gathered on the device, kvikio reads into device memory), in 4 xdist
#           processes where the wheels brought pytest-xdist (run `wheels` again for it), else in
#           one; the 15 slowest tests listed;
#   fields: the fields-of-view command line with device=cuda vs device=cpu (both runs at once);
#   fields_cp: the same with the cellprofiler preset (issue 15's families per compartment;
#           gpu-fields-equality-cellprofiler.json);
#   fields_speed: the fields-of-view command line timed on 16 full-size (1024x1280) fields of
#           ~100 cells (bbbc021 settings), device=cuda (cluster=sync) against device=cpu
#           (cluster=local, one worker per core), each after an untimed one-field run, with the
#           time per stage (gpu-fields-speed.json; timeout 200 s); not in the default steps;
#   watershed: bench_watershed.py: the fields' flood alone on two real nuclei fields (512x512,
#           1024x1280), the CUDA kernel against the numba flood and scikit-image's, labels
#           compared, relaxation launches counted (watershed-<host>.json; timeout 60 s); not in
#           the default steps;
#   nvrtc:  one batch in a fresh process compiling the module with NVRTC (other GPUs' case);
#   profile: cycles per plane of each phase of the mask and intensity kernels (-DSG_PROFILE);
#   scaling: bench_scaling.py, the command line (device=cuda cluster=local_cuda, 12-channel 64x64
#           cells from an uncompressed dense zarr): objects/s and peak host/GPU memory against
#           the number of objects (10^3..5x10^4), then against partitions in flight per GPU
#           (1, 2); not in the default steps (up to 6.5 minutes: run it alone).
#   cmdprofile: the command line of dense11 (50,000 objects) under py-spy (50 Hz, every process
#           of the run, CPU time): py-spy-cmdline.md (where each process's threads spend it, by
#           benchmarks/pyspy_summary.py) and the raw stacks (.txt.gz); timeout 150 s; not in the
#           default steps; needs the wheels step's py-spy.
#   scaling6: the same against 10^3..10^6 objects of ONE channel (64x64 uint16, `scip` preset): a
#           million 12-channel cells would be 98 GB of store, more than the machine's disk; one
#           channel is 8.2 GB (results scaling-objects-cuda-1ch.*; timeout 300 s, 140 s per
#           run); not in the default steps.
#   cellprofiler: bench_gpu.py --preset cellprofiler (li masks): equality of every cellprofiler
#           column with the CPU path (12-channel and ragged 3-channel cells), objects/s against the
#           CPU path of the same host (results gpu-cellprofiler-<device>-<N>.json/.md);
#   kvikio: the command line on 50,000 such cells read with kvikio straight into GPU memory
#           (io.kvikio=true) and through the host (io.kvikio=false), results in kvikio-true/ and
#           kvikio-false/ (the issue's "measure both"; io.kvikio=true stops at start-up unless kvikio reads).
#   profile_legacy: the same with the legacy kernels (results in legacy/): with profile, the
#           cycles of each phase before and after.
#   hostpath: bench_host_path.py on this host's cores, no GPU used: the pipeline's host side
#           (reading, staging, Parquet, AnnData, report) at the device's measured pace (41.7 us
#           per object), 16,384 objects with 2, 4, 8 and 12 partitions in flight: whether the host
#           keeps up with the GPU (host-path-<host>.json; timeout 180 s); not in the default steps.
#   hoststeps: bench_host_steps.py on this host's cores: each host step of a partition alone
#           (validation, the column-by-column copy, Arrow columns, first writes) against the form
#           it replaced (host-steps-<host>.json; timeout 60 s); not in the default steps.
#   startup: bench_startup.py on this host's cores (device=cpu, 8 objects, 3 runs each of
#           cluster=local and sync), then device=cuda cluster=local_cuda (3 runs): a run's fixed
#           seconds by phase, the CPU's and the GPU's (startup-<host>.json, startup-<host>-cuda.json;
#           timeouts 150 + 120 s); not in the default steps (dense11's points carry the GPU run's
#           timeline).
#   Issue 11's targets (bench_scaling.py: each point one `python -m scip_gpu` timed start to exit;
#   stores written once under benchmarks/.work/scaling-stores, never in $OUT):
#   dense11: the command line, device=cuda cluster=local_cuda, on the uncompressed dense zarr of
#           12-channel 64x64 cells, N = $DENSE_N (default "10000 100000": the issue's 100,000, and
#           a rate even if that one times out); ~10.8 GB of stores to write on a first run
#           (results scaling-objects-cuda-issue11-dense.*; timeout 140 s, 85 s per run);
#   cpu_peer: the same store layout with device=cpu cluster=local cluster.n_workers=$(nproc) (one
#           worker process per core, as cluster=local's default n_workers=os.cpu_count() on this
#           host), N = $CPU_N (default 8192), after an untimed 32-object cluster=sync warm-up
#           (numba's cache) (scaling-objects-cpu-issue11-cpu-peer.*; timeout 110 s, 90 s per run);
#   ragged11: the command line on SCIP's ragged zarr (blosc lz4, 12-channel 64x64 cells, N =
#           $RAGGED_N, default 50000), and beside it the objects/s the host's cores decode that
#           store at (one process per core, scip_gpu's reader; "decode" in the JSON)
#           (scaling-objects-cuda-issue11-ragged.*; timeout 120 s, 90 s per run);
#   batch:  bench_gpu.py's batch-path objects/s, light checks (-n 16384, 512 distinct cells, 8 + 4
#           equality cells, 64 CPU cells; results in batch/; timeout 75 s);
#   summary: benchmarks/issue11_summary.py "$OUTDIR": issue 11's targets, met or not, as a table
#           (issue11-summary.md/.json; timeout 20 s, run whatever the budget says).
#   issue11 = dense11 cpu_peer ragged11 batch summary (in order of value): 140 + 110 + 120 + 75 s of
#           timeouts, ~7.4 minutes at worst (~5 expected: store writing and start-up not yet timed
#           on a GPU host; each store's writing seconds go into the JSON, "stores_written_s");
#           with the wheels' install it fits the default BUDGET. A second session reuses the stores
#           only on the same warm machine (benchmarks/.work is not in $OUT).
#   issue10 = first first_pch bench legacy (40 + 40 + 180 + 130 s): the batch path's objects/s,
#           memory, first batch (and its compilations, with and without NVRTC's precompiled
#           headers) and equality, and the A/B of the rewritten kernels.
#   issue15 = pytest cellprofiler fields_cp (180 + 200 + 200 s; the fields steps took 93 s on a
#           warm machine and over 100 s on a fresh one): every CUDA kernel (the
#           CellProfiler ones included) against the CPU path on the device, the cellprofiler
#           preset's equality and objects/s, and its families on segmented fields of view.
#   Default: first bench legacy pytest, in this order (timeouts 40 + 180 + 130 + 180 s; pytest has
#           had 120 s: session 13 added tests of partitions in flight, a full-field watershed and
#           the float kernels).
#   A session's 15 device-minutes (start-up ~0.5-2 min, 10 min per call at most). Measured on
#   an H100 (run 8): wheels ~5 s, first 10 s, bench 58 s, pytest 95 s, cellprofiler 18 s,
#   profile 37 s, legacy 43 s, fields_cp 93 s (warm machine): 357 s on the machine. In order of
#   value now: BUDGET=430 run 65536 pytest fields first first_pch (timeout_s 460: issue 10's
#   fields-of-view check after pytest's compilations, the first batch's kernels with and without
#   NVRTC's precompiled headers), then run 65536 dense11 cpu_peer batch summary with the device
#   time left (issue 11's dense target); ragged11 and bench in a later session.
#   Also: cellprofiler fields fields_speed nvrtc profile profile_legacy scaling kvikio hostpath hoststeps startup,
#   issue11 and its steps
#   (name them: bash gpu_session.sh run 65536 issue11, or run 65536 profile ...).
#   WHEELS=0 skips the wheels' install (a dry run on a machine whose python3 has the packages);
#   GPU_ARGS (default "--device cuda --cluster local_cuda") is what dense11 and ragged11 run on.
#   BUDGET (seconds, default 470) bounds the whole run (wheel install included): a step whose
#   timeout (+10 s to kill) does not fit in what is left is skipped, with a line in the log.
#   At the end the log lists every kernel CuPy compiled in the session's steps ("CuPy kernel
#   cache:", CUPY_CACHE_SAVE_CUDA_SOURCE=1 for every step): what a fresh machine compiles.
#   Results (gpu-<device>-<N>.json/.md, gpu-fields-equality.json) and the log (session.log) go to
#   $OUT when set (the device tool's output folder), else benchmarks/results/session/.
#   Total under 8 minutes.
set -uo pipefail
cd "$(dirname "$0")/.."
case "${1:-}" in
  wheels)
    grep -q '^/.whl/' .git/info/exclude 2>/dev/null || echo "/.whl/" >> .git/info/exclude
    bash ../shared/tools/gpu-wheelhouse.sh .whl
    # pytest-xdist for the pytest step's workers (the GPU host has pytest, not xdist); py-spy for cmdprofile
    python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
      -d .whl pytest-xdist==3.8.0 execnet==2.1.2
    python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
      --platform manylinux_2_5_x86_64 --platform manylinux1_x86_64 -d .whl py-spy==0.4.3
    ;;
  run)
    N=${2:-65536}
    STEPS=${*:3}
    STEPS=${STEPS:-first bench legacy pytest}
    STEPS=${STEPS//issue11/dense11 cpu_peer ragged11 batch summary}
    STEPS=${STEPS//issue10/first first_pch bench legacy}
    STEPS=${STEPS//issue15/pytest cellprofiler fields_cp}
    BUDGET=${BUDGET:-470}
    DENSE_N=${DENSE_N:-10000 100000}
    CPU_N=${CPU_N:-8192}
    RAGGED_N=${RAGGED_N:-50000}
    GPU_ARGS=${GPU_ARGS:---device cuda --cluster local_cuda}  # dense11, ragged11 (a CPU dry run: --device cpu --cluster sync)
    LEGACY=${LEGACY:-SG_LEGACY_MEDIAN SG_LEGACY_SORT SG_LEGACY_LABEL}
    OUTDIR=${OUT:-benchmarks/results/session}
    mkdir -p "$OUTDIR"
    exec > >(tee -a "$OUTDIR/session.log") 2>&1
    export PYTHONUNBUFFERED=1
    step() {  # step SECONDS COMMAND...: run with a timeout (output in the session log), or skip it
      local limit=$1; shift
      local t0=$SECONDS left=$((BUDGET - SECONDS))
      if (( limit + 10 > left )); then
        echo "== $(date -u +%T) skipped (timeout ${limit} s + 10 s does not fit in the ${left} s left of BUDGET=${BUDGET}): $*"
        return 0
      fi
      echo "== $(date -u +%T) $* (timeout ${limit} s)"
      timeout --kill-after=10 "$limit" "$@"
      echo "== exit $? after $((SECONDS - t0)) s"
    }
    if [ "${WHEELS:-1}" != 0 ]; then  # WHEELS=0: a dry run where python3 has every package already
      python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
        || { echo "wheel install failed"; exit 1; }
    fi
    export PYTHONPATH=/tmp/site:$PWD
    export CUPY_CACHE_SAVE_CUDA_SOURCE=1  # (the sources beside the binaries: the kernels listed at the end)
    nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,clocks.mem --format=csv
    for s in $STEPS; do
      case $s in
        first) step 40 env CUPY_CACHE_DIR="$(mktemp -d)" CUPY_CACHE_SAVE_CUDA_SOURCE=1 python3 benchmarks/bench_gpu.py \
                 --first-batch ;;
        first_pch) step 40 env CUPY_CACHE_DIR="$(mktemp -d)" CUPY_CACHE_SAVE_CUDA_SOURCE=1 CUPY_NVRTC_USE_PCH=1 \
                     python3 benchmarks/bench_gpu.py --first-batch ;;
        bench) step 180 python3 benchmarks/bench_gpu.py -n "$N" --out "$OUTDIR" ;;
        legacy) step 130 env SCIP_GPU_DEFINES="$LEGACY" python3 benchmarks/bench_gpu.py -n "$N" \
                  --equality-objects 64 --ragged 60 --cpu-objects 256 --out "$OUTDIR/legacy" ;;
        pytest) if python3 -c "import xdist, pytest, sys; sys.exit(int(pytest.__version__.split('.')[0]) < 7)" \
                   2>/dev/null; then XDIST="-n 4 --dist loadfile"; else XDIST="-p no:xdist"; fi
                # (-n 4: files in 4 processes on the one GPU; each compiles the numba kernels it needs)
                step 180 python3 -m pytest -m gpu -q -p no:cacheprovider -o addopts="-ra" $XDIST --durations=15 \
                  tests/kernels tests/test_dispatch.py tests/test_gpu_path.py tests/io/test_device_read.py ;;
        cellprofiler) step 200 python3 benchmarks/bench_gpu.py --preset cellprofiler -n 4096 --unique 512 \
                        --batch-size 1024 --equality-objects 32 --ragged 40 --cpu-objects 128 --out "$OUTDIR" ;;
        fields) step 200 python3 benchmarks/bench_gpu.py --fields-only --out "$OUTDIR" ;;
        fields_cp) step 200 python3 benchmarks/bench_gpu.py --preset cellprofiler --fields-only --out "$OUTDIR" ;;
        fields_speed) step 200 python3 benchmarks/bench_gpu.py --fields-speed 16 --out "$OUTDIR" ;;
        watershed) step 60 python3 benchmarks/bench_watershed.py --out "$OUTDIR" ;;
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
        scaling6) step 300 python3 benchmarks/bench_scaling.py objects -n 1000 10000 100000 1000000 --device cuda \
                    --cluster local_cuda --dataset zarr --channels 1 --timeout 140 --tag 1ch --out "$OUTDIR" ;;
        kvikio) for mode in true false; do
                  step 110 python3 benchmarks/bench_scaling.py objects -n 50000 --device cuda --cluster local_cuda \
                    --dataset zarr --channels 12 --timeout 100 --out "$OUTDIR/kvikio-$mode" io.kvikio=$mode
                done ;;
        dense11) step 140 python3 benchmarks/bench_scaling.py objects -n $DENSE_N $GPU_ARGS \
                   --dataset zarr --channels 12 --timeout 85 --tag issue11-dense --out "$OUTDIR" ;;
        cpu_peer) step 110 python3 benchmarks/bench_scaling.py objects -n $CPU_N --device cpu --cluster local \
                    --dataset zarr --channels 12 --warmup 32 --timeout 90 --tag issue11-cpu-peer --out "$OUTDIR" \
                    cluster.n_workers="$(nproc)" ;;
        ragged11) step 120 python3 benchmarks/bench_scaling.py objects -n $RAGGED_N $GPU_ARGS \
                    --dataset ragged --channels 12 --timeout 90 --tag issue11-ragged --out "$OUTDIR" ;;
        batch) step 75 python3 benchmarks/bench_gpu.py -n 16384 --unique 512 --equality-objects 8 --ragged 4 \
                 --cpu-objects 64 --stage-batches 1 --out "$OUTDIR/batch" ;;
        summary) BUDGET=$((SECONDS + 30)) step 20 python3 benchmarks/issue11_summary.py "$OUTDIR" ;;
        cmdprofile) if [ -x /tmp/site/bin/py-spy ]; then
                      step 150 /tmp/site/bin/py-spy record -r 50 --subprocesses --nonblocking -f raw \
                        -o "$OUTDIR/py-spy-cmdline.txt" -- python3 benchmarks/bench_scaling.py objects -n "${PROFILE_N:-50000}" \
                        $GPU_ARGS --dataset zarr --channels 12 --timeout 100 --tag profile --out "$OUTDIR/profile"
                      python3 benchmarks/pyspy_summary.py "$OUTDIR/py-spy-cmdline.txt" > "$OUTDIR/py-spy-cmdline.md"
                      gzip -f "$OUTDIR/py-spy-cmdline.txt"
                    else echo "cmdprofile: no py-spy in /tmp/site/bin (bash benchmarks/gpu_session.sh wheels)"; fi ;;
        hostpath) step 180 python3 benchmarks/bench_host_path.py -n 16384 --in-flight 2 4 8 12 --out "$OUTDIR" ;;
        hoststeps) step 60 python3 benchmarks/bench_host_steps.py --out "$OUTDIR" ;;
        startup) step 150 python3 benchmarks/bench_startup.py --runs 3 --cluster local sync --out "$OUTDIR"
                 step 120 python3 benchmarks/bench_startup.py --runs 3 --cluster local_cuda --device cuda --tag cuda \
                   --out "$OUTDIR" ;;
        *) echo "unknown step $s" ;;
      esac
    done
    # every kernel CuPy compiled in this session's steps (its default cache; first/first_pch use their own)
    python3 -c "import json, os, sys; sys.path.insert(0, 'benchmarks'); from bench_gpu import compiled_kernels; \
print('CuPy kernel cache:', json.dumps(compiled_kernels(os.environ.get('CUPY_CACHE_DIR') or \
os.path.expanduser('~/.cupy/kernel_cache'))))" || true
    ls -la "$OUTDIR"
    ;;
  *)
    sed -n '2,/^set -uo/{/^set -uo/!p}' "$0"; exit 2 ;;
esac
