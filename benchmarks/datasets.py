"""Benchmark datasets in SCIP's ragged zarr layout, readable by SCIP 0.1.12 and by scip_gpu.

The layout (what SCIP's ``zarr`` loader and scip_gpu's ``dataset.format=zarr_ragged`` read): a
zarr v2 array at the folder root, ``dtype |O``, shape ``[N]``, one flattened ``(C, H, W)`` uint16
cell per element, encoded with the ``vlen-array <u2`` filter and blosc/lz4; ``.zattrs`` holds
``shape`` (one ``[C, H, W]`` per element) and ``object_number`` (one id per element). It is written
here with numcodecs directly, because zarr-python 3 cannot write object arrays.

Images come from ``scip_gpu.demo.make_cell`` (deterministic per index and seed):

- ragged (``size=None``): the demo's own sizes (``min_size``..``max_size``, 48..72 by default);
- fixed (``size=(64, 64)``): "IFC-like 64x64 uint16 cells", made at 60..68 px and centre-cropped
  or reflect-padded (at most 2 px a side) to exactly 64x64.

Command line::

    python benchmarks/datasets.py OUT.zarr -n 1000 -c 3 --size 64 64 --verify
    python benchmarks/datasets.py OUT.zarr -n 60 --ragged --verify
    python benchmarks/datasets.py --verify-only /work/shared/data/scip-ifc-10cells.zarr

``--verify`` re-reads every element with scip_gpu's loader (in this interpreter) and with
zarr 2.13 in SCIP's venv (subprocess; see scip_env.sh / SCIP_VENV) and checks it pixel for pixel.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import BenchError, find_scip_python  # noqa: E402

COMPRESSOR = {"id": "blosc", "cname": "lz4", "clevel": 5, "shuffle": 1, "blocksize": 0}
FILTERS = [{"id": "vlen-array", "dtype": "<u2"}]


# ---------------------------------------------------------------------------------------------
# Images


def fit_to(img: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Centre-crop and/or reflect-pad a (C, H, W) image to (C, *size)."""
    out = img
    for axis, target in ((1, size[0]), (2, size[1])):
        n = out.shape[axis]
        if n > target:
            start = (n - target) // 2
            out = np.take(out, np.arange(start, start + target), axis=axis)
        elif n < target:
            before = (target - n) // 2
            pad = [(0, 0)] * 3
            pad[axis] = (before, target - n - before)
            out = np.pad(out, pad, mode="reflect")
    return np.ascontiguousarray(out)


def ifc_like_cells(n: int, n_channels: int = 3, *, size: tuple[int, int] = (64, 64), seed: int = 0,
                   min_size: int | None = None, max_size: int | None = None,
                   start: int = 0) -> Iterator[np.ndarray]:
    """IFC-like uint16 cells of exactly ``size``: make_cell at ``min_size..max_size`` (default
    size-4..size+4 of the smaller side), centre-cropped or reflect-padded to ``size``; cells
    ``start .. start + n - 1`` (each is deterministic per index and seed)."""
    from scip_gpu.demo import make_cell

    s = min(size)
    lo = s - 4 if min_size is None else min_size
    hi = s + 4 if max_size is None else max_size
    for i in range(start, start + n):
        img, _ = make_cell(i, seed=seed, n_channels=n_channels, min_size=lo, max_size=hi)
        yield fit_to(img, size)


def ragged_cells(n: int, n_channels: int = 3, *, seed: int = 0, min_size: int = 48,
                 max_size: int = 72) -> Iterator[np.ndarray]:
    """The demo's cells at their own sizes (as ``dataset.format=demo`` generates them)."""
    from scip_gpu.demo import make_cell

    for i in range(n):
        yield make_cell(i, seed=seed, n_channels=n_channels, min_size=min_size, max_size=max_size)[0]


# ---------------------------------------------------------------------------------------------
# Writing


def write_ragged_zarr(path: str | Path, images: Iterable[np.ndarray], *,
                      object_numbers: Sequence[int] | None = None, chunk_size: int = 256,
                      overwrite: bool = False) -> Path:
    """Write (C, H, W) uint16 images as SCIP's ragged zarr v2 array at ``path``
    (scip_gpu.io.zarr_ragged.write_ragged_zarr, optionally replacing an existing store)."""
    from scip_gpu.io.zarr_ragged import write_ragged_zarr as _write

    path = Path(path)
    if path.exists():
        if not overwrite:
            raise FileExistsError(f"{path} exists; pass overwrite=True to replace it")
        shutil.rmtree(path)
    return _write(path, images, object_numbers, chunk_size=chunk_size)


def write_scip_zarr(path: str | Path, n: int, n_channels: int = 3, size: tuple[int, int] | None = (64, 64),
                    seed: int = 0, *, min_size: int | None = None, max_size: int | None = None,
                    chunk_size: int = 256, overwrite: bool = False, object_number_offset: int = 1000) -> Path:
    """Write ``n`` synthetic cells in SCIP's ragged zarr layout.

    ``size=(H, W)``: IFC-like cells of exactly that size (``ifc_like_cells``); ``size=None``: the
    demo's ragged sizes (``min_size``..``max_size``, default 48..72). Object numbers are
    ``object_number_offset + index`` (so they differ from the element index, as in real data).
    """
    if size is None:
        imgs = ragged_cells(n, n_channels, seed=seed, min_size=min_size or 48, max_size=max_size or 72)
    else:
        imgs = ifc_like_cells(n, n_channels, size=tuple(size), seed=seed, min_size=min_size, max_size=max_size)
    return write_ragged_zarr(path, imgs, object_numbers=[object_number_offset + i for i in range(n)],
                             chunk_size=chunk_size, overwrite=overwrite)


# ---------------------------------------------------------------------------------------------
# Verification


def _digest(img: np.ndarray) -> str:
    img = np.ascontiguousarray(img, dtype="<u2")
    return hashlib.sha256(str(img.shape).encode() + img.tobytes()).hexdigest()[:16]


_SCIP_READ = r"""
import hashlib, json, sys
import numpy as np, zarr
z = zarr.open(sys.argv[1], mode="r")
shapes = z.attrs["shape"]; numbers = z.attrs["object_number"]
out = []
for i in range(z.shape[0]):
    img = z[i].reshape(shapes[i])            # what scip.loading.zarr.load_image_partition does
    img = np.ascontiguousarray(img, dtype="<u2")
    out.append([hashlib.sha256(str(img.shape).encode() + img.tobytes()).hexdigest()[:16], int(numbers[i])])
print(json.dumps({"zarr": zarr.__version__, "dtype": str(z.dtype), "items": out}))
"""


def read_with_scip_gpu(path: str | Path) -> tuple[list[np.ndarray], list[int]]:
    """Every element as scip_gpu's ``zarr_ragged`` loader reads it."""
    from scip_gpu.config import DatasetConfig, DatasetFormat
    from scip_gpu.io.zarr_ragged import RaggedZarrSource

    src = RaggedZarrSource(DatasetConfig(format=DatasetFormat.zarr_ragged, path=str(path)))
    rows = src.objects()
    imgs = src.load(rows)
    for i, im in enumerate(imgs):
        if isinstance(im, Exception):
            raise BenchError(f"scip_gpu cannot read element {i} of {path}: {im}")
    return imgs, [int(x) for x in rows["meta_object_number"]]


def verify(path: str | Path, expected: Sequence[np.ndarray] | None = None, *, scip_python: str | None = None,
           skip_scip: bool = False) -> dict:
    """Read ``path`` with scip_gpu and with SCIP's zarr 2.13; check they agree (and match
    ``expected`` when given). Raises BenchError on any difference."""
    path = Path(path).resolve()
    ours, numbers = read_with_scip_gpu(path)
    dig = [_digest(x) for x in ours]
    report = {"path": str(path), "n": len(ours), "scip_gpu": "ok",
              "dtypes": sorted({str(x.dtype) for x in ours}),
              "distinct_shapes": len({x.shape for x in ours}),
              "example_shapes": ["x".join(map(str, s)) for s in sorted({x.shape for x in ours})[:5]]}
    if expected is not None:
        exp = [_digest(x) for x in expected]
        if exp != dig:
            bad = [i for i, (a, b) in enumerate(zip(exp, dig)) if a != b] or ["count"]
            raise BenchError(f"{path}: scip_gpu reads back different pixels (elements {bad[:10]})")
        report["matches_written"] = True
    if not skip_scip:
        py = find_scip_python(scip_python)
        r = subprocess.run([str(py), "-c", _SCIP_READ, str(path)], capture_output=True, text=True)
        if r.returncode != 0:
            raise BenchError(f"SCIP's zarr cannot read {path}:\n{r.stderr[-2000:]}")
        res = json.loads(r.stdout)
        theirs = [d for d, _ in res["items"]]
        their_numbers = [k for _, k in res["items"]]
        if theirs != dig or their_numbers != numbers:
            bad = [i for i, (a, b) in enumerate(zip(theirs, dig)) if a != b]
            raise BenchError(f"{path}: SCIP (zarr {res['zarr']}) and scip_gpu read different data "
                             f"(elements {bad[:10]}, object numbers equal: {their_numbers == numbers})")
        report["scip"] = f"ok (zarr {res['zarr']}, dtype {res['dtype']})"
    return report


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("path", help="zarr folder to write (or to verify with --verify-only)")
    ap.add_argument("-n", type=int, default=1000, help="number of cells (default 1000)")
    ap.add_argument("-c", "--channels", type=int, default=3, help="channels per cell (default 3)")
    ap.add_argument("--size", type=int, nargs=2, default=[64, 64], metavar=("H", "W"),
                    help="fixed cell size (default 64 64)")
    ap.add_argument("--ragged", action="store_true", help="the demo's ragged sizes instead of --size")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--chunk-size", type=int, default=256)
    ap.add_argument("--overwrite", action="store_true")
    ap.add_argument("--verify", action="store_true", help="read back with scip_gpu and SCIP")
    ap.add_argument("--verify-only", action="store_true", help="only verify an existing store")
    ap.add_argument("--no-scip", action="store_true", help="verify with scip_gpu only (no SCIP venv needed)")
    ap.add_argument("--scip-python", help="python of a SCIP 0.1.12 venv (default: $SCIP_VENV or "
                                          "benchmarks/.work/scip-venv)")
    args = ap.parse_args(argv)
    try:
        if args.verify_only:
            print(json.dumps(verify(args.path, scip_python=args.scip_python, skip_scip=args.no_scip), indent=2,
                             default=str))
            return 0
        size = None if args.ragged else tuple(args.size)
        p = write_scip_zarr(args.path, args.n, args.channels, size, args.seed, chunk_size=args.chunk_size,
                            overwrite=args.overwrite)
        print(f"wrote {args.n} cells ({args.channels} channels, "
              f"{'ragged' if size is None else 'x'.join(map(str, size))}) to {p}")
        if args.verify:
            if size is None:
                exp = list(ragged_cells(args.n, args.channels, seed=args.seed))
            else:
                exp = list(ifc_like_cells(args.n, args.channels, size=size, seed=args.seed))
            print(json.dumps(verify(p, exp, scip_python=args.scip_python, skip_scip=args.no_scip), indent=2,
                             default=str))
    except (BenchError, FileExistsError, ValueError) as exc:
        print(f"datasets.py: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
