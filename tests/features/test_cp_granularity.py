"""CellProfiler's MeasureGranularity (``cp_granularity``): hand-computable spectra, the
reconstruction step against scikit-image, and values against cp_measure where it is installed
(``pip install 'scip_gpu[parity]'``)."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.ndimage as ndi
from skimage.morphology import disk, reconstruction

from scip_gpu.features.cp_granularity import _inside, granularity_planes, reconstruct


def test_flat_image_is_all_background(kernel_path):
    """A flat image is its own background: nothing is left after subtracting it, so the whole
    mean (of the raw image) goes in step 1."""
    x = np.full((2, 40, 44), 0.3)
    view = np.zeros_like(x, dtype=bool)
    view[0, 5:30, 8:40] = True
    view[1] = True
    f = granularity_planes(x, view, np.array([[40, 44], [40, 44]]))
    assert f.shape == (2, 16)
    np.testing.assert_allclose(f[:, 0], 100.0, rtol=1e-12)
    np.testing.assert_allclose(f[:, 1:], 0.0, atol=1e-12)


def test_squares_by_hand(kernel_path):
    """Without resampling, on a flat background of 0.1 that the opening with disk(10) finds
    exactly: a (2k+1)-square survives k cross erosions (then the reconstruction restores it
    whole) and vanishes at step k + 1; step 1 also takes the background's share of the raw mean."""
    x = np.full((1, 40, 40), 0.1)
    x[0, 5:8, 5:8] += 0.5  # 3 x 3: gone at step 2
    x[0, 20:25, 20:25] += 0.2  # 5 x 5: gone at step 3
    x[0, 30:37, 6:13] += 0.4  # 7 x 7: gone at step 4
    view = np.ones_like(x, dtype=bool)
    f = granularity_planes(x, view, np.array([[40, 40]]), 1.0, 1.0, 10, 6)[0]
    total = x[0].sum()
    want = np.zeros(6)
    want[0] = 100 * 0.1 * 1600 / total
    want[1] = 100 * 9 * 0.5 / total
    want[2] = 100 * 25 * 0.2 / total
    want[3] = 100 * 49 * 0.4 / total
    np.testing.assert_allclose(f, want, rtol=1e-10, atol=1e-10)
    # the object's mean is taken over the object only; steps measure the whole image's
    # reconstruction there: an object on the 5 x 5 square alone
    obj = np.zeros_like(view)
    obj[0, 20:25, 20:25] = True
    g = granularity_planes(x, obj, np.array([[40, 40]]), 1.0, 1.0, 10, 6)[0]
    np.testing.assert_allclose(g, [100 * 0.1 / 0.3, 0, 100 * 0.2 / 0.3, 0, 0, 0], rtol=1e-10, atol=1e-10)


def test_empty_and_too_small_planes_are_nan(kernel_path):
    x = np.random.default_rng(0).random((3, 20, 20))
    view = np.ones_like(x, dtype=bool)
    view[0] = False
    f = granularity_planes(x, view, np.array([[20, 20], [7, 20], [20, 20]]))
    assert np.isnan(f[0]).all() and np.isnan(f[1]).all()  # empty; 7 rows resample to 1
    assert np.isfinite(f[2]).all()


def test_reconstruction_against_skimage():
    rng = np.random.default_rng(3)
    mask = ndi.gaussian_filter(rng.random((4, 13, 17)), (0, 1, 1))
    seed = np.minimum(mask, ndi.grey_erosion(mask, footprint=np.ones((1, 5, 5))))
    sizes = np.array([[13, 17], [9, 11], [2, 17], [13, 1]])
    inside = _inside(np, sizes[:, 0], sizes[:, 1], (13, 17))
    got = reconstruct(seed, mask, inside)
    for k, (h, w) in enumerate(sizes):
        want = reconstruction(seed[k, :h, :w], mask[k, :h, :w], method="dilation", footprint=disk(1))
        np.testing.assert_array_equal(got[k, :h, :w], want)


def _planes():
    """Objects on images whose background grid (CellProfiler's defaults) has no axis of 2 samples
    (extents outside 20-35 pixels: see ``test_scipy_reads_outside_two_sample_grids``)."""
    rng = np.random.default_rng(4)
    m, h, w = 5, 52, 48
    x = ndi.gaussian_filter(rng.random((m, h, w)), (0, 1.5, 1.5)) + 0.2 * rng.random((m, h, w))
    ext = np.array([[52, 48], [40, 37], [17, 44], [48, 12], [38, 42]])
    yy, xx = np.mgrid[:h, :w]
    view = np.zeros((m, h, w), bool)
    for k, (eh, ew) in enumerate(ext):
        view[k] = ((yy - eh / 2) / (eh / 2.6)) ** 2 + ((xx - ew / 2) / (ew / 2.6)) ** 2 <= 1
    view[4] = view[4] & (x[4] > np.median(x[4]))  # in pieces
    return x, view, ext


@pytest.mark.parametrize("params", [(0.25, 0.25, 10, 16), (0.5, 0.4, 3, 6)])
def test_against_cp_measure(params, kernel_path):
    mg = pytest.importorskip("cp_measure.core.measuregranularity")
    x, view, ext = _planes()
    f = granularity_planes(x, view, ext, *params)
    for k, (h, w) in enumerate(ext):
        ref = mg.get_granularity(view[k, :h, :w].astype(np.int32), x[k, :h, :w], *params)
        want = [ref[f"Granularity_{i}"][0] for i in range(1, params[3] + 1)]
        np.testing.assert_allclose(f[k], want, rtol=1e-9, atol=1e-10, err_msg=str(k))


def test_scipy_reads_outside_two_sample_grids(monkeypatch):
    """Why cp_measure (and CellProfiler) cannot be matched on images whose background grid has an
    axis of exactly 2 samples while the disk's radius is at least 8 (20-35 pixel extents at the
    defaults): SciPy's ``reflect`` mode maps offsets of -4n, -8n, ... (n = 2) to index -1, so the
    erosion reads the value stored just before the array (here a known one). With the border
    mode that cannot do that (``nearest``, the same as ``reflect`` for a disk wherever
    ``reflect`` is right), cp_measure gives scip_gpu's values."""
    buf = np.full((3, 5), -7.0)
    buf[1:] = np.arange(10.0).reshape(2, 5) + 1  # a C-contiguous (2, 5) view, row -1 = -7
    assert ndi.grey_erosion(buf[1:], footprint=disk(10), mode="reflect").min() == -7.0
    mg = pytest.importorskip("cp_measure.core.measuregranularity")
    import skimage.morphology as skm

    for name in ("erosion", "dilation"):
        fn = getattr(skm, name)
        monkeypatch.setattr(skm, name, lambda image, footprint=None, _fn=fn: _fn(image, footprint, mode="nearest"))
    rng = np.random.default_rng(8)
    x = ndi.gaussian_filter(rng.random((1, 28, 40)), (0, 2, 2))
    view = np.ones_like(x, dtype=bool)
    f = granularity_planes(x, view, np.array([[28, 40]]))[0]
    ref = mg.get_granularity(view[0].astype(np.int32), x[0])
    np.testing.assert_allclose(f, [ref[f"Granularity_{i}"][0] for i in range(1, 17)], rtol=1e-9, atol=1e-10)


def test_preset_columns_and_options():
    from hydra import compose, initialize_config_dir

    from scip_gpu._resources import conf_dir
    from scip_gpu.cli import to_config
    from scip_gpu.config import register_configs, validate
    from scip_gpu.errors import ConfigError
    from scip_gpu.features import var_table
    from scip_gpu.profile import build_plan

    register_configs()
    with initialize_config_dir(config_dir=str(conf_dir()), version_base="1.3"):
        raw = compose("config", overrides=["+dataset=demo", "features=cellprofiler",
                                            "features.cellprofiler.granularity_spectrum_length=4"])
    cfg, _ = to_config(raw)
    var = var_table(build_plan(cfg, ["BF", "DNA"]).columns)
    gran = var[(var.family == "cp_granularity") & (var["mask"] == "li")]
    assert list(gran.measurement) == [f"Granularity_{k}_{ch}" for ch in ("BF", "DNA") for k in range(1, 5)]
    row = var.loc["feat_li_Granularity_3_DNA"]
    assert (row.feature, row.channel) == ("3", "DNA")
    assert row.params == "step=3,subsample_size=0.25,image_sample_size=0.25,element_size=10"
    cfg.features.cellprofiler.granularity_subsample_size = 1.5
    with pytest.raises(ConfigError, match="granularity_subsample_size"):
        validate(cfg)
