"""The fields' watershed flood (``ops.watershed``) alone: scikit-image's flood, the numba flood
and, on a GPU, the CUDA kernel (kernels/watershed.cu), on the flood inputs of real nuclei fields.

The fields are the DSB2018 nuclei image shipped in ``tests/data/dsb2018`` (512x512) and a
1024x1280 field tiled from it, mirrored so that the tiles meet without seams. The flood's inputs
are those ``segmentation.watershed_nuclei`` gives it (the negated smoothed distance map, the
peak markers, the foreground), taken on the CPU once. Each implementation is timed on the same
inputs (median of ``--repeats`` runs after one untimed run; the GPU's with the device
synchronised, inputs already on it), its labels compared with the numba flood's (identical
required), and the GPU's relaxation launches counted. The floor (benchmarks/README.md): one pass
over 17 bytes per pixel per launch.

    python benchmarks/bench_watershed.py                      # CPU only without a GPU
    python benchmarks/bench_watershed.py --out "$OUT"         # gpu_session.sh step watershed

Writes ``watershed-<host>.json``.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))
from _common import RESULTS, write_result  # noqa: E402


def fields() -> dict[str, np.ndarray]:
    import tifffile

    img = tifffile.imread(HERE.parent / "tests" / "data" / "dsb2018" / "img2d.tif").astype(np.float32)
    mirrored = np.block([[img, img[:, ::-1], img], [img[::-1], img[::-1, ::-1], img[::-1]]])
    return {"dsb2018-512x512": img, "dsb2018-tiled-1024x1280": mirrored[:1024, :1280]}


def flood_inputs(img):
    """(surface, markers, mask) that ``watershed_nuclei`` floods for this field."""
    from scip_gpu import ops, segmentation

    seen = {}
    real = ops.watershed

    def grab(surface, markers, mask=None):
        seen["args"] = (surface, markers, mask)
        return real(surface, markers, mask)

    ops.watershed = grab
    try:
        segmentation.watershed_nuclei(img)
    finally:
        ops.watershed = real
    return seen["args"]


def timed(fn, repeats: int, sync=lambda: None) -> tuple[float, object]:
    out = fn()
    sync()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        out = fn()
        sync()
        times.append(time.perf_counter() - t)
    return float(np.median(times)), out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--fields", nargs="+", default=list(fields()), choices=list(fields()))
    ap.add_argument("--out", type=Path, default=RESULTS)
    ap.add_argument("--tag", default="")
    args = ap.parse_args(argv)

    from skimage.segmentation import watershed as sk_watershed

    from scip_gpu import cpu_kernels, gpu_kernels
    from scip_gpu.backend import gpu_available

    gpu, why = gpu_available()
    points = []
    for name, img in fields().items():
        if name not in args.fields:
            continue
        surface, markers, mask = flood_inputs(img)
        point = {"field": name, "pixels": int(surface.size), "mask_pixels": int(mask.sum()),
                 "markers": int((markers > 0).sum()),
                 "distinct_altitudes_in_mask": int(np.unique(surface[mask]).size)}
        s, want_sk = timed(lambda: sk_watershed(surface, markers, mask=mask), args.repeats)
        point["skimage_s"] = round(s, 5)
        if cpu_kernels.available():
            s, want = timed(lambda: cpu_kernels.watershed(surface, markers, mask), args.repeats)
            point["numba_s"] = round(s, 5)
            point["numba_pixels_differing_from_skimage"] = int((want != want_sk).sum())
        else:
            want = None
        if gpu:
            import cupy

            d_args = [cupy.asarray(a) for a in (surface, markers, mask)]
            launches = [0]
            mod = gpu_kernels.module()
            relax = mod.get_function("ws_relax")

            class Counting:
                def get_function(self, kname):
                    if kname != "ws_relax":
                        return mod.get_function(kname)

                    def run(*a, **k):
                        launches[0] += 1
                        return relax(*a, **k)
                    return run

            gpu_kernels._module_override = Counting()
            try:
                sync = cupy.cuda.Device().synchronize
                s, got = timed(lambda: gpu_kernels.watershed(*d_args), args.repeats, sync)
            finally:
                gpu_kernels._module_override = None
            point["cuda_s"] = round(s, 6)
            point["cuda_relax_launches"] = launches[0] // (args.repeats + 1)
            point["floor_bytes_per_launch"] = 17 * int(surface.size)
            if want is not None:
                point["cuda_pixels_differing_from_numba"] = int((got.get() != want).sum())
        else:
            point["cuda"] = f"not run: {why}"
        print(point, flush=True)
        points.append(point)
    write_result(args.out, "watershed", args.tag, [], points)
    bad = [p["field"] for p in points if p.get("cuda_pixels_differing_from_numba", 0)]
    if bad:
        print(f"GPU labels differ from the CPU's on {bad}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
