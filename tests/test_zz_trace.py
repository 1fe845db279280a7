import collections, sys, json
import pandas as pd
from . import fake_cupy
from .test_gpu_path import _reference_kernels, cupy  # noqa
from .test_config import _compose


class Where(collections.Counter):
    by = collections.Counter()
    def __setitem__(self, key, value):
        f = sys._getframe(1)
        names = []
        while f is not None and len(names) < 3:
            fn = f.f_code.co_filename.replace("\\", "/")
            if "/scip_gpu/" in fn and "/tests/" not in fn:
                names.append(f"{fn.rsplit('/',1)[1]}:{f.f_code.co_name}:{f.f_lineno}")
            f = f.f_back
        Where.by[(" < ".join(names), key)] += 1
        super().__setitem__(key, value)


import pytest
@pytest.mark.parametrize("nc", [5, 12])
def test_trace(cupy, monkeypatch, tmp_path, nc):
    from scip_gpu.cli import to_config
    from scip_gpu.pipeline import run
    from .fields_data import write_fields
    _reference_kernels(monkeypatch, cupy)
    Where.by = collections.Counter()
    monkeypatch.setattr(fake_cupy, "LAUNCHES", Where())
    root = tmp_path / "plate1"
    write_fields(root, n_fields=2, shape=(160, 224), n_cells=nc)
    cfg, yaml = to_config(_compose(["+dataset=fields_tiff", f"dataset.path={root}", "segmentation=watershed",
                                    "illumination=jones_2006", "illumination.key=well",
                                    "illumination.median_filter_size=5",
                                    "cluster=sync",
                                    "device=cuda", f"output={tmp_path / 'cuda'}", "progress=false"]))
    assert run(cfg, yaml).n_ok >= 1
    by = Where.by; print("ROWS", pd.read_parquet(tmp_path / "cuda" / "features.parquet").shape)
    kinds = {k for (_, k) in by}
    print("TOTAL", sum(by.values()), "KINDS", len(kinds))
    site = collections.Counter(); sitek = collections.defaultdict(set)
    for (w, k), v in by.items():
        s = w.split(" < ")[0].rsplit(":", 1)[0]
        site[s] += v; sitek[s].add(k)
    for s, v in site.most_common():
        print(f"{v:6d} {len(sitek[s]):4d}  {s}")
    json.dump([[w, list(k), v] for (w, k), v in by.items()], open("/tmp/trace.json", "w"))
