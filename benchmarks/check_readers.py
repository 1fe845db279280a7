"""Read a run's ``features.parquet`` folder with every common reader and compare.

    python benchmarks/check_readers.py [RUN_FOLDER]

Readers: pandas, pyarrow, polars and DuckDB (``pip install 'scip_gpu[readers]'``; a reader that
is not installed is reported as such, exit status 2). Each must read the folder as one dataset
(polars refuses a folder holding any file that is not a part) with the same rows and values.
Also prints the sizes: the folder, the AnnData file, the footer of each part. Without
RUN_FOLDER a demo run (300 cells) is made in ``benchmarks/.work/``.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd

HERE = Path(__file__).resolve().parent


def readers(folder: Path) -> dict:
    import pyarrow.parquet as pq

    out = {"pandas": lambda: pd.read_parquet(folder), "pyarrow": lambda: pq.read_table(folder).to_pandas()}
    try:
        import polars as pl

        out["polars"] = lambda: pl.read_parquet(folder).to_pandas()
    except ImportError:
        out["polars"] = None
    try:
        import duckdb

        out["duckdb"] = lambda: duckdb.sql(f"SELECT * FROM '{folder}'").df()
    except ImportError:
        out["duckdb"] = None
    return out


def row_key(df: pd.DataFrame) -> list[str]:
    """The columns naming a row: ``meta_index`` (the input's row), or for objects segmented from
    fields of view (which have no ``meta_index``) the field and the object's label in it."""
    return ["meta_index"] if "meta_index" in df else ["meta_field_index", "meta_label"]


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv:
        run = Path(argv[0])
    else:
        run = HERE / ".work" / "readers-demo"
        if run.exists():
            shutil.rmtree(run)
        subprocess.run([sys.executable, "-m", "scip_gpu", "+dataset=demo", "cluster=sync", f"output={run}"],
                       check=True, cwd=HERE.parent)
    folder = run / "features.parquet"
    import pyarrow.parquet as pq

    parts = sorted(folder.iterdir())
    foreign = [p.name for p in parts if not p.name.startswith("part-") or p.suffix != ".parquet"]
    size = sum(p.stat().st_size for p in parts)
    footers = [pq.ParquetFile(p).metadata.serialized_size for p in parts if p.suffix == ".parquet"]
    h5ad = run / "features.h5ad"
    print(f"{folder}: {len(parts)} files, {size / 2**20:.2f} MiB; footer per part {np.mean(footers) / 1024:.0f} KiB "
          "(mean)" + (f"; {h5ad.name}: {h5ad.stat().st_size / 2**20:.2f} MiB" if h5ad.exists() else ""))
    status = 0
    if foreign:
        print("PROBLEM: files that are not parts:", foreign)
        status = 1
    ref = None
    for name, read in readers(folder).items():
        if read is None:
            print(f"{name}: not installed (pip install 'scip_gpu[readers]')")
            status = max(status, 2)
            continue
        try:
            df = read()
            df = df.sort_values(row_key(df)).reset_index(drop=True)
        except Exception as exc:  # noqa: BLE001 - report every reader
            print(f"{name}: FAILS: {type(exc).__name__}: {exc}")
            status = 1
            continue
        feat = [c for c in df.columns if c.startswith("feat_")]
        if ref is None:
            ref = df
            same = True
        else:
            same = list(df.columns) == list(ref.columns) and np.array_equal(
                df[feat].to_numpy(float), ref[feat].to_numpy(float), equal_nan=True)
        print(f"{name}: {df.shape[0]} rows x {df.shape[1]} columns, {'same values' if same else 'DIFFERENT'}")
        status = status if same else 1
    return status


if __name__ == "__main__":
    sys.exit(main())
