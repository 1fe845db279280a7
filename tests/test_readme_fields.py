"""Every fields-of-view command of README.md, as written, on tiny synthetic data.

The commands are read out of the README's ``bash`` blocks (those running ``python -m scip_gpu``
on ``+dataset=fields_tiff`` or ``+dataset=bbbc021``); only their ``/data/`` paths are moved to
synthetic data in the test's folder, and ``cluster=sync`` and ``output=`` are appended. They are
composed by Hydra's own override parser, as on the command line, and run in this process (so
the Cellpose ones run on tests/fake_cellpose.py: no cellpose, torch or weights here).
"""

from __future__ import annotations

import re
import shlex
import shutil

import numpy as np
import pandas as pd
import pytest
import tifffile
import zarr

from scip_gpu.cli import task

from . import fake_cellpose
from .conftest import ROOT
from .fields_data import write_bbbc021_replica, write_fields
from .test_config import _compose

FIELD_DATASETS = ("+dataset=fields_tiff", "+dataset=bbbc021")
N_CELLS = 2  # per synthetic field


def readme_commands() -> list[list[str]]:
    """The README's fields commands as argv lists (``VAR=value`` prefixes kept)."""
    text = (ROOT / "README.md").read_text()
    out = []
    for block in re.findall(r"```bash\n(.*?)```", text, re.S):
        for line in block.replace("\\\n", " ").splitlines():
            argv = shlex.split(line, comments=True)
            if "scip_gpu" in argv and any(a in FIELD_DATASETS for a in argv):
                out.append(argv)
    return out


COMMANDS = readme_commands()


def test_readme_has_the_fields_commands():
    """The commands this module runs are there (a README edit cannot empty the test silently)."""
    text = " ".join(" ".join(c) for c in COMMANDS)
    assert len(COMMANDS) >= 6, COMMANDS
    for needle in ("+dataset=bbbc021", "segmentation.compartments={Tubulin: cytoplasm}", "illumination=jones_2006",
                   "projection=max", "masks=scip", "segmentation=cellpose", "CELLPOSE_LOCAL_MODELS_PATH=",
                   "segmentation.cellpose.model=/data/"):
        assert needle in text, needle


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """/data of the README: BBBC021 (2 plates x 2 wells x 1 site) with its two CSVs, plate1 (2-D
    fields), stacks (2 z planes per field) and cellpose-models/cpsam."""
    root = tmp_path_factory.mktemp("data")
    write_bbbc021_replica(root / "BBBC021", shape=(72, 96), n_cells=N_CELLS, wells=("B02", "C03"), sites=(1,))
    for name in ("BBBC021_v1_image.csv", "BBBC021_v1_moa.csv"):
        shutil.move(root / "BBBC021" / name, root / name)
    fields = write_fields(root / "plate1", n_cells=N_CELLS)
    (root / "stacks").mkdir()
    for site, img in enumerate(fields, 1):
        for z, plane in enumerate((img, img // 2), 1):  # max projection: the first plane
            for ch, p in zip((1, 2, 4), plane):
                tifffile.imwrite(root / "stacks" / f"B02_s{site}_z{z}_w{ch}.tif", p)
    (root / "cellpose-models").mkdir()
    (root / "cellpose-models" / "cpsam").write_bytes(b"weights")
    return root, fields


def _argv(command: list[str], root, monkeypatch) -> list[str]:
    """The scip_gpu arguments of a README command, its /data/ moved to ``root``; its leading
    ``VAR=value`` assignments set in the environment."""
    command = [a.replace("/data/", f"{root}/") for a in command]
    start = command.index("scip_gpu") + 1
    for assignment in command[:command.index("python")]:
        name, value = assignment.split("=", 1)
        monkeypatch.setenv(name, value)
    return command[start:]


def _id(i: int, command: list[str]) -> str:
    return f"{i}-" + "-".join(a.split("=")[-1] for a in command if a.startswith(("+dataset=", "segmentation=", "masks=")))


@pytest.mark.parametrize("command", COMMANDS, ids=[_id(i, c) for i, c in enumerate(COMMANDS)])
def test_readme_fields_command(command, data, tmp_path, monkeypatch, capsys):
    root, fields = data
    monkeypatch.delenv("CELLPOSE_LOCAL_MODELS_PATH", raising=False)
    args = _argv(command, root, monkeypatch)
    cellpose = fake_cellpose.install(monkeypatch) if "segmentation=cellpose" in args else None
    out = tmp_path / "out"
    code = task(_compose([*args, "cluster=sync", f"output={out}"]))
    assert code == 0, capsys.readouterr().err
    df = pd.read_parquet(out / "features.parquet")
    assert (df["meta_status"] == "ok").all()
    counts = df.groupby("meta_field").size()
    n_fields = 4 if "+dataset=bbbc021" in args else 2
    assert len(counts) == n_fields and (abs(counts - N_CELLS) <= 1).all(), counts
    li = [c for c in df.columns if c.startswith("feat_li_")]
    assert bool(li) == ("masks=scip" in args)  # fields: compartments only, unless masks are asked for
    if "masks=scip" in args:
        assert "feat_otsu_mean_1" in df and df["feat_mean_1"].notna().all()  # (channels named by their keys)
    if any(a.startswith("segmentation.compartments=") for a in args):  # Tubulin in the cytoplasm
        assert (df["feat_area_Tubulin"] < df["feat_area_Actin"]).all()
    if "illumination=jones_2006" in args:
        assert [p.name for p in (out / "illumination").glob("*.tif")] == ["B02.tif"]
    if "+dataset=bbbc021" in args:
        assert sorted(p.stem for p in (out / "illumination").glob("*.tif")) == ["Week1_22123", "Week2_24121"]
        assert df["meta_moa"].notna().all()
    if cellpose is not None:  # the weights the README names were loaded; the model's labels are the objects
        assert [m["pretrained_model"] for m in cellpose.models] == [str(root / "cellpose-models" / "cpsam")]
        assert [e["shape"] for e in cellpose.evals] == [(2, 1, 72, 96)]  # both fields in one call, DAPI
        for site, img in enumerate(fields, 1):
            nucleus = np.asarray(zarr.open_group(str(out / "labels" / f"B02_{site}.ome.zarr"), mode="r")["nucleus"]["0"])
            want = fake_cellpose.reference_labels(img[:1].astype(np.float32))
            want[np.bincount(want.ravel())[want] < 30] = 0  # segmentation.min_size of conf/segmentation/cellpose.yaml
            np.testing.assert_array_equal(nucleus, want)
