"""Intensity and raw families against SCIP's per-object definition (NumPy/SciPy statistics)."""

from __future__ import annotations

import numpy as np
import pytest
from skimage.morphology import disk

from scip_gpu.config import MaskMethod, MaskMethodConfig, MasksConfig
from scip_gpu.demo import make_cell
from scip_gpu.features.intensity import (VIEWS, compute_intensity, compute_raw, intensity_columns,
                                         raw_columns)
from scip_gpu.masks import compute_masks
from scip_gpu.profile import FeatureContext
from scip_gpu.stats import STATISTICS, reference_statistics

from ..conftest import sk_binary_erosion, stack


def ref_intensity(px, masks, comb, bg, cbg):
    """SCIP's intensity_features for one object, with NaN for empty views (our deviation)."""
    out = []
    for c in range(len(px)):
        m = masks[c]
        edge = np.bitwise_xor(sk_binary_erosion(m, disk(6)), m)
        cedge = np.bitwise_xor(sk_binary_erosion(comb, disk(6)), comb)
        x = px[c].astype(float)
        for sel, shift in ((m, 0), (m, bg[c]), (edge, 0), (edge, bg[c]),
                           (comb, 0), (comb, cbg[c]), (cedge, 0), (cedge, cbg[c])):
            out.append(reference_statistics(x[sel] - shift))
    return np.concatenate(out)


@pytest.fixture
def profiled(kernel_path):
    cells = [make_cell(i, min_size=30, max_size=60)[0] for i in range(10)]
    cells[2][1] = 150  # flat DNA channel: its li mask is empty -> NaN views
    b = stack(cells, margin=10)
    cfg = MasksConfig(methods=[MaskMethodConfig(MaskMethod.li, "li", {"smooth": 1.0})])
    mr = compute_masks(b, cfg.methods[0], cfg)
    return cells, b, mr, compute_intensity(b, mr, FeatureContext(6))


def test_values_match_reference(profiled):
    cells, b, mr, got = profiled
    assert got.shape == (len(cells), 3 * len(VIEWS) * len(STATISTICS))
    checked = 0
    for i, im in enumerate(cells):
        if not mr.usable[i]:
            assert np.isnan(got[i]).all()
            continue
        h, w = im.shape[1:]
        want = ref_intensity(im, mr.mask[i, :, :h, :w], mr.combined[i, :h, :w],
                             mr.background[i], mr.combined_background[i])
        np.testing.assert_array_equal(np.isnan(got[i]), np.isnan(want))
        ok = ~np.isnan(want)
        np.testing.assert_allclose(got[i][ok], want[ok], rtol=1e-6, atol=1e-6 * im.max())
        checked += 1
    assert checked >= 8


def test_empty_channel_mask_gives_nan(profiled):
    cells, b, mr, got = profiled
    assert not mr.mask[2, 1].any() and mr.usable[2]
    per_channel = len(VIEWS) * len(STATISTICS)
    dna = got[2, per_channel:2 * per_channel].reshape(len(VIEWS), len(STATISTICS))
    assert np.isnan(dna[:4]).all()  # channel-mask views
    assert not np.isnan(dna[4, :9]).any()  # combined view still measured (flat: skew, kurtosis NaN)
    assert dna[4, 0] == 150.0 and dna[4, 4] == 0.0


def test_raw_matches_reference(profiled):
    cells, _, mr, _ = profiled
    b = stack(cells, margin=10)  # a fresh batch: nothing cached from the other path
    got = compute_raw(b, None, None)
    for i, im in enumerate(cells):
        want = np.concatenate([reference_statistics(im[c].ravel()) for c in range(3)])
        np.testing.assert_allclose(got[i], want, rtol=1e-6, atol=1e-9 * im.max())


def test_column_names_follow_scip():
    cols = intensity_columns("li", ["BF", "DNA"])
    assert len(cols) == 2 * 88
    names = [c.name for c in cols]
    assert names[:3] == ["feat_li_mean_BF", "feat_li_median_BF", "feat_li_max_BF"]
    assert names[11] == "feat_li_bgcorr_mean_BF"
    assert names[22] == "feat_li_edge_mean_BF"
    assert names[44] == "feat_li_combined_mean_BF"
    assert names[87] == "feat_li_combined_bgcorr_edge_kurtosis_BF"
    assert names[88] == "feat_li_mean_DNA"
    assert cols[12].view == "bgcorr" and cols[12].feature == "median" and cols[12].channel == "BF"
    raw = [c.name for c in raw_columns(None, ["BF"])]
    assert raw == [f"feat_raw_{s}_BF" for s in STATISTICS]
