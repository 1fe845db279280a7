"""The built wheel carries conf/ and kernels/, and the package finds them there."""

from __future__ import annotations

import subprocess
import sys
import zipfile

import pytest

from scip_gpu._resources import conf_dir, kernels_dir

from .conftest import ROOT


def test_resources_resolve_in_checkout():
    assert (conf_dir() / "config.yaml").is_file()
    assert kernels_dir().is_dir()


@pytest.mark.slow
def test_wheel_contains_conf_and_kernels(tmp_path):
    res = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp_path), str(ROOT)],
                         capture_output=True, text=True, timeout=300)
    if res.returncode != 0:
        pytest.skip(f"cannot build a wheel here: {res.stderr[-300:]}")
    wheel = next(tmp_path.glob("scip_gpu-*.whl"))
    names = set(zipfile.ZipFile(wheel).namelist())
    assert "scip_gpu/conf/config.yaml" in names
    assert "scip_gpu/conf/dataset/demo.yaml" in names
    assert any(n.startswith("scip_gpu/kernels/") for n in names)
    assert not any(n.startswith("tests/") for n in names)
