"""Where the time of a plane goes inside the mask and intensity kernels (GPU needed).

Compiles the kernel module with ``-DSG_PROFILE`` and whatever ``SCIP_GPU_DEFINES`` already names (NVRTC; phase marks in kernels/masks.cu and
kernels/intensity.cu: thread 0 of every block adds each phase's clock64() cycles, each phase
ended by a barrier) and profiles one batch of IFC-like cells. Prints, per kernel and phase,
the mean cycles per plane (the latency of one block), and the plane count.

    python benchmarks/profile_kernels.py [--objects 4096] [--channels 12]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import numpy as np

# SG_PROFILE beside any variant already chosen (gpu_session.sh profile_legacy)
os.environ["SCIP_GPU_DEFINES"] = " ".join(["SG_PROFILE", *os.environ.get("SCIP_GPU_DEFINES", "").split()])
HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

PHASES = {
    0: ("mask_li", ["filters", "sort", "threshold", "refilter", "fg+fill/clean", "border+write"]),
    1: ("mask_otsu", ["digitise", "median 1", "gaussian+sobel", "scale", "median 2", "otsu", "fg+fill/clean",
                      "border+write"]),
    2: ("intensity_views", ["keys+views", "sort", "compaction", "statistics", "write"]),
    # shared device functions, per call (all kernels together): where the labelling phases go
    3: ("sg_label (per call)", ["runs", "unions", "flatten"]),
    4: ("sg_fill_and_clean (per call)", ["label holes", "count holes", "apply holes", "label objects",
                                         "count objects", "apply objects"]),
    5: ("sg_border_rule (per call)", ["label", "count edges", "keep+count"]),
    6: ("shape_props", ["load", "label", "number+patterns", "holes", "bbox+candidates", "records",
                        "moments|hulls|crofton|perimeter", "convex+feret chains|central rows",
                        "central moments|feret pairs", "properties+sums", "write"]),
}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--objects", type=int, default=4096)
    p.add_argument("--channels", type=int, default=12)
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args(argv)
    import cupy

    from bench_gpu import make_cells, make_plan
    from scip_gpu import gpu_kernels
    from scip_gpu.batch import assemble
    from scip_gpu.profile import profile_batch

    unique = make_cells(256, args.channels)
    cells = [unique[i % len(unique)] for i in range(args.objects)]
    plan = make_plan(args.channels, args.objects, "cuda")
    profile_batch(assemble(cells[:256], np.arange(256), (64, 64), cupy), plan)  # compile, warm up
    mod = gpu_kernels.module()
    ptr = mod.get_global("sg_prof")
    prof = cupy.ndarray((8 * 16,), dtype=cupy.uint64, memptr=ptr)
    prof[...] = 0
    cupy.cuda.Device().synchronize()
    profile_batch(assemble(cells, np.arange(len(cells)), (64, 64), cupy), plan)
    cupy.cuda.Device().synchronize()
    counts = prof.get().reshape(8, 16)
    clock_khz = cupy.cuda.Device().attributes["ClockRate"]
    result = {"clock_khz": clock_khz, "objects": args.objects, "kernels": {}}
    for k, (name, phases) in PHASES.items():
        planes = int(counts[k, 15])
        if not planes:
            continue
        per = {ph: float(counts[k, i]) / planes for i, ph in enumerate(phases)}
        total = sum(per.values())
        result["kernels"][name] = {"planes": planes, "cycles_per_plane": per, "total": total}
        print(f"{name}: {planes} {'calls' if k >= 3 else 'planes'}, {total:,.0f} cycles per plane ({total / clock_khz * 1e3:.1f} us at "
              f"{clock_khz / 1e3:.0f} MHz)")
        for ph, c in per.items():
            print(f"  {ph:14s} {c:12,.0f}  {100 * c / total:5.1f} %")
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "kernel-phases.json").write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
