"""The host's steps per object of a GPU run, each timed alone against the form it replaced.

A partition of a GPU run is mostly host work (``bench_host_path.py`` times it end to end). This
times its steps one by one on one partition's worth of data, in this process, no GPU needed:

- ``validate``: the objects of one read block (N x 12 x 64 x 64 uint16 views of one array)
  checked object by object (``pipeline.check_image``: a few NumPy reductions each) and by
  ``pipeline.check_images`` (one ``ops.image_stats`` pass over the block);
- ``stats``: ``ops.image_stats`` on the block, NumPy's reductions (the reference) and the
  compiled one-pass kernel (``cpu``);
- ``columns``: the (N, F) float64 feature table column by column for Parquet, NumPy's transposed
  copy and ``export.columns_first``'s tiled copy;
- ``arrow``: the F columns as Arrow arrays, one ``pa.array`` per column and zero-copy slices of
  one buffer;
- ``first_touch``: filling a table-sized array freshly allocated and one already written once
  (what ``scratch.POOL`` saves on a GPU).

Each: the best of ``--repeat`` runs, in microseconds per object.

    python benchmarks/bench_host_steps.py -n 4096 --features 5154

Writes ``benchmarks/results/host-steps-<host>.json``.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))
from _common import RESULTS, write_result  # noqa: E402


def best(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def measure(n: int, features: int, channels: int, repeat: int) -> list[dict]:
    import numpy as np
    import pyarrow as pa

    from scip_gpu import cpu_kernels, export, ops
    from scip_gpu.pipeline import check_image, check_images

    rng = np.random.default_rng(0)
    block = rng.integers(0, 4000, (n, channels, 64, 64)).astype(np.uint16)
    images = [block[i] for i in range(n)]
    table = rng.standard_normal((n, features))
    points = []

    def add(step: str, form: str, seconds: float) -> None:
        points.append({"step": step, "form": form, "us_per_object": round(seconds / n * 1e6, 2)})
        print(f"{step:12s} {form:34s} {seconds / n * 1e6:8.2f} us/object", flush=True)

    check_images(images[:8], channels, 10, str)  # (numba's kernel loaded)
    add("validate", "check_image, object by object", best(lambda: [check_image(im, channels, 10, "x")
                                                                   for im in images], repeat))
    add("validate", "check_images (one pass per block)", best(lambda: check_images(images, channels, 10, str),
                                                              repeat))
    add("stats", "ops.image_stats reference (NumPy)", best(lambda: ops.image_stats.reference(block), repeat))
    add("stats", "ops.image_stats cpu (numba)", best(lambda: cpu_kernels.image_stats(block), repeat))
    add("columns", "np.ascontiguousarray(table.T)", best(lambda: np.ascontiguousarray(table.T), repeat))
    add("columns", "export.columns_first (tiles)", best(lambda: export.columns_first(table), repeat))
    by_column = export.columns_first(table)
    fields = [pa.field(f"c{j}", pa.float64()) for j in range(features)]
    pa.array(by_column[0])  # (pyarrow's first conversion, about 0.6 s once per process)
    add("arrow", "pa.array per column", best(lambda: [pa.array(c) for c in by_column], repeat))
    add("arrow", "export._arrow_columns (slices)", best(lambda: export._arrow_columns(by_column, fields), repeat))
    add("first_touch", "fresh array", best(lambda: np.empty((n, features)).fill(1.0), repeat))
    again = np.empty((n, features))
    again.fill(0.0)
    add("first_touch", "array written before (pooled)", best(lambda: again.fill(1.0), repeat))
    return points


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("-n", type=int, default=4096, help="objects (a partition)")
    ap.add_argument("--features", type=int, default=5154, help="columns of the feature table")
    ap.add_argument("--channels", type=int, default=12)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--out", type=Path, default=RESULTS)
    ap.add_argument("--tag", default="")
    args = ap.parse_args(argv)
    points = measure(args.n, args.features, args.channels, args.repeat)
    write_result(args.out, "host-steps", args.tag, [f"n={args.n}", f"features={args.features}",
                                                    f"channels={args.channels}"], points)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
