"""The ``cellprofiler`` preset against cp_measure (CellProfiler's measurements as a library) on
the same objects: value parity per measurement and objects per second.

Objects: the bundled demo cells (li masks), the shared real IFC cells
(``../shared/data/scip-ifc-10cells.zarr``, li masks) and the nuclei of the shared DSB2018 field
(``../shared/data/nuclei-dsb2018``, ground-truth labels, one crop per nucleus), when present.
For every object, every plane the preset measures (combined and channel masks for AreaShape and
its Zernike features; each channel in its own mask for Intensity, Texture, RadialDistribution, its
Zernike moments, and Granularity) is given
to cp_measure as a one-label image of the object's extent, the pixels as CellProfiler loads them
(``uint16 / 65535``). Granularity values of objects whose background grid has an axis of 2 samples
(20-35 pixel extents at CellProfiler's defaults) are listed apart: there cp_measure's background
opening reads memory outside its array (SciPy's ``reflect`` mode; README, cellprofiler preset).

Writes ``benchmarks/results/parity-cp_measure-<machine>.md``: per measurement the largest
relative difference ``|a - b| / max(|a|, |b|)`` over all planes (differences below 1e-9 in
absolute value count as 0; a NaN on one side only counts as a mismatch), and the timing of
both on the same planes, one process, one core each.

Needs the ``parity`` extra (``pip install 'scip_gpu[parity]'``: cp-measure, which pulls
centrosome and mahotas). Usage::

    python benchmarks/parity_cp_measure.py [--demo 170] [--texture-objects 40] [--shared ../shared/data]

Neighbours (``cp_neighbors``) need a field's label image: they are compared on the DSB2018
field's ground-truth labels (``neighbors_parity``), in their own timing table.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
import warnings
from pathlib import Path

for _v in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS"):
    os.environ.setdefault(_v, "1")

import numpy as np  # noqa: E402

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
sys.path.insert(0, str(REPO))
SHARED = REPO.parent / "shared" / "data"  # set by --shared

from scip_gpu.batch import assemble  # noqa: E402
from scip_gpu.config import MaskMethod, MaskMethodConfig, MasksConfig  # noqa: E402
from scip_gpu.features.cp_intensity import INTENSITY, LOCATION  # noqa: E402
from scip_gpu.features.cp_colocalization import COSTES  # noqa: E402
from scip_gpu.features.cp_colocalization import FEATURES as COLOC  # noqa: E402
from scip_gpu.features.cp_colocalization import channel_pairs, compute_colocalization  # noqa: E402
from scip_gpu.features.cp_granularity import DEFAULTS as GRAN  # noqa: E402
from scip_gpu.features.cp_granularity import compute_granularity, grid_geometry  # noqa: E402
from scip_gpu.features.cp_intensity import compute_intensity  # noqa: E402
from scip_gpu.features.cp_radial import BINS, MEASURES, compute_radial  # noqa: E402
from scip_gpu.features.cp_sizeshape import FEATURES, compute_sizeshape  # noqa: E402
from scip_gpu.features.cp_texture import HARALICK, compute_texture  # noqa: E402
from scip_gpu.features.cp_zernike import ZERNIKE_INDEXES, compute_zernike, radial_zernike_block  # noqa: E402
from scip_gpu.masks import MaskResult, compute_masks  # noqa: E402
from scip_gpu.profile import FeatureContext  # noqa: E402


# ---------------------------------------------------------------------------------------------
# Objects


def _batch(images, margin=2):
    h = max(im.shape[1] for im in images) + margin
    w = max(im.shape[2] for im in images) + margin
    return assemble(images, np.arange(len(images)), (h, w))


def demo_objects(n: int):
    from scip_gpu.demo import make_cell

    return [make_cell(i)[0] for i in range(n)]


def ifc_objects():
    """The shared real IFC cells, read by the project's own loader of SCIP's ragged zarr."""
    path = SHARED / "scip-ifc-10cells.zarr"
    if not path.exists():
        return []
    from omegaconf import OmegaConf

    from scip_gpu.io import make_source

    cfg = OmegaConf.create({"name": "ifc", "format": "zarr_ragged", "path": str(path), "channels": None,
                            "channel_names": None, "regex": None})
    src = make_source(cfg)
    rows = src.objects()
    return [np.asarray(im, dtype=np.uint16) for im in src.load(rows)]


def dsb_objects(margin: int = 4):
    """(images, masks): one crop per ground-truth nucleus of the DSB2018 field."""
    folder = SHARED / "nuclei-dsb2018"
    if not folder.exists():
        return [], []
    import tifffile
    from scipy import ndimage as ndi

    img = tifffile.imread(folder / "img2d.tif").astype(np.uint16)
    lab = tifffile.imread(folder / "mask2d.tif")
    images, masks = [], []
    for k, sl in enumerate(ndi.find_objects(lab), start=1):
        if sl is None:
            continue
        r0, r1 = max(sl[0].start - margin, 0), min(sl[0].stop + margin, lab.shape[0])
        c0, c1 = max(sl[1].start - margin, 0), min(sl[1].stop + margin, lab.shape[1])
        images.append(img[None, r0:r1, c0:c1])
        masks.append(lab[r0:r1, c0:c1] == k)
    return images, masks


def li_masks(batch):
    cfg = MasksConfig(methods=[MaskMethodConfig(MaskMethod.li, "li", {"smooth": 1.0})])
    return compute_masks(batch, cfg.methods[0], cfg)


def given_masks(batch, masks):
    n, c, h, w = batch.pixels.shape
    mk = np.zeros((n, 1, h, w), bool)
    for i, m in enumerate(masks):
        mk[i, 0, : m.shape[0], : m.shape[1]] = m
    zeros = np.zeros((n, 1))
    return MaskResult("truth", mk, mk[:, 0], np.ones((n, 1), np.int64), np.zeros((n, 4)), zeros, zeros,
                      np.ones(n, bool))


# ---------------------------------------------------------------------------------------------
# Both tools


def _timed(t: dict, name: str, fn, *args):
    """``fn(*args)``, its wall time added to ``t[name]``."""
    t0 = time.perf_counter()
    out = fn(*args)
    t[name] = t.get(name, 0.0) + time.perf_counter() - t0
    return out


def ours(batch, mr, ctx, texture_rows):
    """Our families (timed) and the planes they measure."""
    t = {}
    sub = batch.take(texture_rows)
    sub_mr = MaskResult(mr.name, mr.mask[texture_rows], mr.combined[texture_rows], mr.regions[texture_rows],
                        mr.bbox[texture_rows], mr.background[texture_rows],
                        mr.combined_background[texture_rows], mr.usable[texture_rows])
    ss = _timed(t, "AreaShape", compute_sizeshape, batch, mr, ctx)
    it = _timed(t, "Intensity", compute_intensity, batch, mr, ctx)
    tx = _timed(t, "Texture", compute_texture, sub, sub_mr, ctx)
    co = _timed(t, "Correlation", compute_colocalization, batch, mr, ctx)
    ra = _timed(t, "RadialDistribution", compute_radial, batch, mr, ctx)
    gr = _timed(t, "Granularity", compute_granularity, batch, mr, ctx)
    ze = _timed(t, "AreaShape_Zernike", compute_zernike, batch, mr, ctx)
    rz = _timed(t, "RadialDistribution_Zernike", radial_zernike_block, batch, mr, ctx)
    return ss, it, tx, co, ra, gr, ze, rz, t


def cp_measure_values(batch, mr, texture_rows):
    """cp_measure on every plane the preset measures: dicts (object, plane) -> {name: value}."""
    from cp_measure.bulk import get_core_measurements

    core = get_core_measurements()
    n, c = batch.pixels.shape[:2]
    shape, inten, tex = {}, {}, {}
    t = {f: 0.0 for f in FAMILIES_TIMED}
    coloc, radial, gran, zern, rzern = {}, {}, {}, {}, {}
    from cp_measure.core import measurecolocalization as mc

    coloc_fns = (mc.get_correlation_pearson, mc.get_correlation_manders_fold, mc.get_correlation_rwc,
                 mc.get_correlation_overlap)
    # Costes' grid: the pixel type's maximum (CellProfiler's default "Faster" search)
    costes_scale = int(np.iinfo(batch.pixels.dtype).max) if batch.pixels.dtype.kind in "iu" else 65535
    tex_set = set(int(r) for r in texture_rows)
    for i in range(n):
        if not mr.usable[i]:
            continue
        h, w = (int(v) for v in batch.extents[i])
        planes = [mr.combined[i, :h, :w]] + [mr.mask[i, k, :h, :w] for k in range(c)]
        for p, m in enumerate(planes):
            if not m.any():
                continue
            lab = m.astype(np.int32)
            t0 = time.perf_counter()
            r = {**core["sizeshape"](lab, None), **core["feret"](lab, None)}
            t["AreaShape"] += time.perf_counter() - t0
            shape[i, p] = {k: float(v[0]) for k, v in r.items()}
            t0 = time.perf_counter()
            with np.errstate(invalid="ignore", divide="ignore"):  # one-pixel objects: 0 / 0
                r = core["zernike"](lab, None)
            t["AreaShape_Zernike"] += time.perf_counter() - t0
            zern[i, p] = {k: float(v[0]) for k, v in r.items()}
        for k in range(c):
            m = mr.mask[i, k, :h, :w]
            if not m.any():
                continue
            lab = m.astype(np.int32)
            x = batch.pixels[i, k, :h, :w].astype(np.float64) / 65535.0
            t0 = time.perf_counter()
            r = core["intensity"](lab, x, legacy=True)
            t["Intensity"] += time.perf_counter() - t0
            inten[i, k] = {kk: float(v[0]) for kk, v in r.items()}
            t0 = time.perf_counter()
            with np.errstate(invalid="ignore", divide="ignore"):
                r = core["radial_distribution"](lab, x)
            t["RadialDistribution"] += time.perf_counter() - t0
            radial[i, k] = {kk: float(v[0]) for kk, v in r.items()}
            t0 = time.perf_counter()
            with np.errstate(invalid="ignore", divide="ignore"):
                r = core["radial_zernikes"](lab, x)
            t["RadialDistribution_Zernike"] += time.perf_counter() - t0
            rzern[i, k] = {kk: float(v[0]) for kk, v in r.items()}
            t0 = time.perf_counter()
            r = core["granularity"](lab, x)
            t["Granularity"] += time.perf_counter() - t0
            gran[i, k] = {kk: float(v[0]) for kk, v in r.items()}
            if scipy_reads_outside((h, w)):  # untimed: the same with a border mode that stays inside
                with _nearest_morphology():
                    r = core["granularity"](lab, x)
                gran[i, k, "nearest"] = {kk: float(v[0]) for kk, v in r.items()}
            if k == 0:  # every pair of channels, in the combined mask
                cm_ = mr.combined[i, :h, :w]
                if cm_.any():
                    for q, (a, b) in enumerate(channel_pairs(c)):
                        xa = batch.pixels[i, a, :h, :w].astype(np.float64) / 65535.0
                        xb = batch.pixels[i, b, :h, :w].astype(np.float64) / 65535.0
                        t0 = time.perf_counter()
                        r = {}
                        for fn in coloc_fns:
                            r.update(fn(xa, xb, cm_.astype(np.int32)))
                        with warnings.catch_warnings():  # it warns where Costes is undefined (NaN)
                            warnings.simplefilter("ignore", RuntimeWarning)
                            r.update(mc.get_correlation_costes(xa, xb, cm_.astype(np.int32),
                                                               scale_max=costes_scale))
                        t["Correlation"] += time.perf_counter() - t0
                        coloc[i, q] = {kk: float(v[0]) for kk, v in r.items()}
            if i in tex_set:
                t0 = time.perf_counter()
                r = core["texture"](lab, x, scale=3, gray_levels=256)
                t["Texture"] += time.perf_counter() - t0
                tex[i, k] = {kk: float(v[0]) for kk, v in r.items()}
    return shape, inten, tex, coloc, radial, gran, zern, rzern, t


class _nearest_morphology:
    """scikit-image's grey erosion and dilation with SciPy's ``nearest`` border mode (equal to
    ``reflect`` for a disk wherever ``reflect`` stays inside the array) while in the block."""

    def __enter__(self):
        import skimage.morphology as skm

        self.saved = skm.erosion, skm.dilation
        skm.erosion = lambda image, footprint=None, _f=self.saved[0]: _f(image, footprint, mode="nearest")
        skm.dilation = lambda image, footprint=None, _f=self.saved[1]: _f(image, footprint, mode="nearest")

    def __exit__(self, *exc):
        import skimage.morphology as skm

        skm.erosion, skm.dilation = self.saved


def neighbors_parity(worst):
    """MeasureObjectNeighbors on the DSB2018 field's ground-truth label image (relabelled
    1..N, as cp_measure needs): every method against cp_measure, timed. cp_measure reports the
    object itself as the first closest (its sort includes the object), so its second closest is
    our first; its "Expand until adjacent" keeps the unexpanded labels as neighbours and takes
    the centres of the expanded ones (CellProfiler takes neighbours on the expanded labels and
    centres of the objects), so Expand is compared with cp_measure's Adjacent on the expanded
    labels (count, percent touching) and on the labels as segmented (distances, angle, numbers).
    Returns {method: (objects, our seconds, cp_measure's seconds)}."""
    folder = SHARED / "nuclei-dsb2018"
    if not folder.exists():
        return {}
    import tifffile
    from cp_measure.multimask import measureobjectneighbors as mn
    from skimage.segmentation import relabel_sequential

    from scip_gpu.features.cp_neighbors import FEATURES as NB, expand_labels, field_neighbors, scale_name

    lab = relabel_sequential(tifffile.imread(folder / "mask2d.tif").astype(np.int32))[0]

    def cp(labels, method, d=5):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            r = mn.measureobjectneighbors(labels, labels, method, d)
        return {k.split("_")[1]: np.asarray(v, float) for k, v in r.items()}

    field_neighbors(lab, "within", 5)  # warm
    times = {}
    for method, cpm, d in (("within", mn.D_WITHIN, 5), ("adjacent", mn.D_ADJACENT, 1), ("expand", mn.D_EXPAND, 1)):
        t0 = time.perf_counter()
        ids, v = field_neighbors(lab, method, d)
        t_ours = time.perf_counter() - t0
        t0 = time.perf_counter()
        own = cp(lab, cpm, d)
        t_cp = time.perf_counter() - t0
        times[method] = (len(ids), t_ours, t_cp)
        if method == "expand":
            grown, plain = cp(expand_labels(lab), mn.D_ADJACENT), cp(lab, mn.D_ADJACENT)
            ref = {**plain, "NumberOfNeighbors": grown["NumberOfNeighbors"],
                   "PercentTouching": grown["PercentTouching"]}
        else:
            ref = own
        scale = scale_name(method, d)
        for j, f in enumerate(NB):
            if f == "SecondClosestObjectNumber":
                continue  # cp_measure's third closest is not reported
            key = "SecondClosestObjectNumber" if f == "FirstClosestObjectNumber" else f
            for i in range(len(ids)):
                worst.add(f"Neighbors_{f}_{scale}", float(ref[key][i]), float(v[i, j]), f"dsb2018 field object {i + 1}")
    return times


# ---------------------------------------------------------------------------------------------
# Comparison


def _rel(a: float, b: float) -> float:
    """|a - b| / max(|a|, |b|); 0 for equal values (NaN included), inf for NaN on one side."""
    if (np.isnan(a) and np.isnan(b)) or a == b:
        return 0.0
    if np.isnan(a) or np.isnan(b) or np.isinf(a) or np.isinf(b):
        return np.inf
    return abs(a - b) / max(abs(a), abs(b))


class Worst:
    """Per measurement: the largest relative difference (and where), the largest absolute
    difference, and how many values were compared."""

    def __init__(self):
        self.d: dict[str, list] = {}

    def add(self, name, a, b, where, floor: float = 0.0):
        """``floor``: values both at most this large count as equal (the rounding noise of a sum
        that vanishes); their difference still counts for the largest absolute difference."""
        r = _rel(a, b)
        if max(abs(a), abs(b)) <= floor and not (np.isnan(a) or np.isnan(b)):  # (max(0, nan) is 0)
            r = 0.0
        ab = abs(a - b) if np.isfinite(a) and np.isfinite(b) else (0.0 if r == 0 else np.inf)
        e = self.d.setdefault(name, [0.0, "", a, b, 0, 0.0])
        e[4] += 1
        e[5] = max(e[5], ab)
        if r > e[0]:
            e[:4] = [r, where, a, b]


#: timed families (rows of the speed table); the Zernike ones are cp_zernike and cp_radial_zernike
FAMILIES_TIMED = ("AreaShape", "AreaShape_Zernike", "Intensity", "Texture", "Granularity", "Correlation",
                  "RadialDistribution", "RadialDistribution_Zernike")
#: a Zernike intensity moment below this share of ZernikeMagnitude_0_0 vanishes: its phase is not compared
VANISHING = 1e-9

_COLOC_NAMES = {"Correlation": "Pearson", "Slope": "Slope", "Overlap": "Overlap"}


def _phase_near(a: float, b: float) -> float:
    """``b`` moved by whole turns next to ``a`` (phases are angles: -pi and pi are one)."""
    if not (np.isfinite(a) and np.isfinite(b)):
        return b
    return a + float(np.angle(np.exp(1j * (b - a))))


def scipy_reads_outside(extent, element_size: int = GRAN[2]) -> bool:
    """Whether CellProfiler's background opening of an image of this extent (defaults) has an
    axis of 2 samples that its disk reaches 4 times over: SciPy's ``reflect`` mode then reads
    the value stored before the array (README, cellprofiler preset), so cp_measure's value is
    not defined by the image."""
    g = grid_geometry(np.asarray([extent]), GRAN[0], GRAN[1])
    return any(2 <= int(g[k][0]) and 4 * int(g[k][0]) <= element_size for k in ("bh", "bw"))


def compare(dataset, batch, mr, ss, it, tx, co, ra, gr, ze, rz, texture_rows, ref, worst):
    shape, inten, tex, coloc, radial, gran, zern, rzern = ref
    nz = len(ZERNIKE_INDEXES)
    for (i, p), vals in zern.items():
        floor = VANISHING * abs(vals["Zernike_0_0"])
        for j, (n, m) in enumerate(ZERNIKE_INDEXES):
            worst.add(f"AreaShape_Zernike_{n}_{m}", vals[f"Zernike_{n}_{m}"], float(ze[i, p * nz + j]),
                      f"{dataset} #{i} plane {p}", floor)
    for (i, k), vals in rzern.items():
        mag0 = vals["RadialDistribution_ZernikeMagnitude_0_0"]
        for j, (n, m) in enumerate(ZERNIKE_INDEXES):
            a = vals[f"RadialDistribution_ZernikeMagnitude_{n}_{m}"]
            worst.add(f"RadialDistribution_ZernikeMagnitude_{n}_{m}", a,
                      float(rz[i, k * 2 * nz + j]), f"{dataset} #{i} channel {k}", VANISHING * abs(mag0))
            if not a > VANISHING * mag0:
                continue  # the phase of a moment that vanishes (by symmetry) is rounding noise
            ph = vals[f"RadialDistribution_ZernikePhase_{n}_{m}"]
            worst.add(f"RadialDistribution_ZernikePhase_{n}_{m}", ph,
                      _phase_near(ph, float(rz[i, k * 2 * nz + nz + j])), f"{dataset} #{i} channel {k}")
    ng = GRAN[3]
    for key, vals in gran.items():
        i, k = key[:2]
        if len(key) == 3:
            name = "Granularity_1..16 (2-sample background grid; cp_measure with mode nearest)"
        elif scipy_reads_outside(tuple(int(v) for v in batch.extents[i])):
            name = "Granularity_1..16 (2-sample background grid)"
        else:
            name = None
        for s in range(1, ng + 1):
            worst.add(name or f"Granularity_{s}", vals[f"Granularity_{s}"], float(gr[i, k * ng + s - 1]),
                      f"{dataset} #{i} channel {k} step {s}")
    nr = len(MEASURES) * BINS
    for (i, k), vals in radial.items():
        for j, meas in enumerate(MEASURES):
            for b in range(BINS):
                worst.add(f"RadialDistribution_{meas}_{b + 1}of{BINS}",
                          vals[f"RadialDistribution_{meas}_{b + 1}of{BINS}"],
                          float(ra[i, k * nr + j * BINS + b]), f"{dataset} #{i} channel {k}")
    nf = len(FEATURES)
    for (i, p), vals in shape.items():
        for j, name in enumerate(FEATURES):
            if name in vals:
                worst.add(f"AreaShape_{name}", vals[name], float(ss[i, p * nf + j]), f"{dataset} #{i} plane {p}")
    names = [f"Intensity_{f}" for f in INTENSITY] + [f"Location_{f}" for f in LOCATION]
    per = len(names)
    for (i, k), vals in inten.items():
        for j, name in enumerate(names):
            worst.add(name, vals[name], float(it[i, k * per + j]), f"{dataset} #{i} channel {k}")
    nco = len(COLOC) + len(COSTES)
    for (i, q), vals in coloc.items():
        for j, (feat, way) in enumerate(COLOC + COSTES):
            key = (f"Correlation_{_COLOC_NAMES[feat]}" if feat in _COLOC_NAMES
                   else f"Correlation_{feat}_{1 if way == 'AB' else 2}")
            worst.add(f"Correlation_{feat}" + ("" if feat in _COLOC_NAMES else f"_{way}"), vals[key],
                      float(co[i, q * nco + j]), f"{dataset} #{i} pair {q}")
    row = {int(r): q for q, r in enumerate(texture_rows)}
    for (i, k), vals in tex.items():
        for d in range(4):
            for j, name in enumerate(HARALICK):
                worst.add(f"Texture_{name}", vals[f"{name}_3_{d:02d}_256"],
                          float(tx[row[i], k * 52 + d * 13 + j]), f"{dataset} #{i} channel {k} dir {d}")


def main(argv=None):
    global SHARED
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--demo", type=int, default=170, help="demo cells (default 170)")
    ap.add_argument("--texture-objects", type=int, default=40,
                    help="objects per dataset also measured for texture (cp_measure's texture at 256 "
                         "levels is slow; default 40)")
    ap.add_argument("--shared", default=str(SHARED),
                    help="folder of the shared real data (default: ../shared/data beside the checkout)")
    ap.add_argument("--repeat", type=int, default=3,
                    help="timed runs of both tools on each set of objects; each family's time is its "
                         "fastest run (default 3)")
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    SHARED = Path(args.shared)
    try:
        import cp_measure  # noqa: F401
    except ImportError:
        sys.exit("cp_measure is not installed: pip install 'scip_gpu[parity]'")

    ctx = FeatureContext(edge_width=6)
    worst = Worst()
    timing = {"ours": {}, "cp": {}}
    counts = {}
    sets = []
    demo = demo_objects(args.demo)
    if demo:
        sets.append(("demo", demo, None))
    ifc = ifc_objects()
    if ifc:
        sets.append(("ifc", ifc, None))
    dsb_img, dsb_mask = dsb_objects()
    if dsb_img:
        sets.append(("dsb2018", dsb_img, dsb_mask))
    # warm up numba (compilation is not what is measured)
    b = _batch(demo[:4])
    m = li_masks(b)
    ours(b, m, ctx, np.arange(2))
    for name, images, masks in sets:
        batch = _batch(images)
        mr = li_masks(batch) if masks is None else given_masks(batch, masks)
        n = batch.n
        texture_rows = np.arange(min(n, args.texture_objects))
        ours(batch, mr, ctx, texture_rows)  # warm: compiled kernels for these shapes and dtypes
        ss, it, tx, co, ra, gr, ze, rz, t_ours = ours(batch, mr, ctx, texture_rows)
        *ref, t_cp = cp_measure_values(batch, mr, texture_rows)
        for _ in range(args.repeat - 1):  # the fastest run of each (a shared machine's noise)
            *_, t = ours(batch, mr, ctx, texture_rows)
            t_ours = {f: min(v, t[f]) for f, v in t_ours.items()}
            *_, t = cp_measure_values(batch, mr, texture_rows)
            t_cp = {f: min(v, t[f]) for f, v in t_cp.items()}
        compare(name, batch, mr, ss, it, tx, co, ra, gr, ze, rz, texture_rows, ref, worst)
        counts[name] = (n, int(np.asarray(mr.usable).sum()), len(texture_rows), batch.n_channels)
        for fam in t_ours:
            scale = n / len(texture_rows) if fam == "Texture" else 1.0
            timing["ours"][fam] = timing["ours"].get(fam, 0.0) + t_ours[fam] * scale
            timing["cp"][fam] = timing["cp"].get(fam, 0.0) + t_cp[fam] * scale
        print(f"{name}: {n} objects", flush=True)
    neighbors = neighbors_parity(worst)
    write_report(args, worst, timing, counts, neighbors)


def _machine() -> str:
    return platform.node().split(".")[0] or "machine"


def write_report(args, worst, timing, counts, neighbors=None):
    out = Path(args.out) if args.out else BENCH / "results" / f"parity-cp_measure-{_machine()}.md"
    import cp_measure

    try:
        from importlib.metadata import version

        cpv = version("cp-measure")
    except Exception:
        cpv = getattr(cp_measure, "__version__", "?")
    n_obj = sum(v[0] for v in counts.values())
    lines = [
        "# `cellprofiler` preset against cp_measure",
        "",
        f"Generated by `python benchmarks/parity_cp_measure.py --demo {args.demo} --texture-objects "
        f"{args.texture_objects} --repeat {args.repeat}` (numba kernels on); cp-measure {cpv}; {platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} logical CPUs (shared: timings are only comparable within this file).",
        "",
        "Objects: " + ", ".join(f"{k} {v[0]} ({v[1]} with a usable mask, {v[3]} channel(s), "
                                f"{v[2]} also for texture)" for k, v in counts.items())
        + f"; {n_obj} in all.",
        "",
        "## Speed (one process, one thread each, same planes)",
        "",
        "Texture time is scaled from the texture subset to all objects. Each family's time is the "
        f"fastest of {args.repeat} runs of each tool on each set of objects, the two tools' runs "
        "alternating (scip_gpu's after a first, untimed run that compiles the numba kernels).",
        "",
        "| family | scip_gpu (s) | cp_measure (s) | scip_gpu objects/s | cp_measure objects/s | ratio |",
        "|---|---|---|---|---|---|",
    ]
    to = tc = 0.0
    for fam in FAMILIES_TIMED:
        a, b = timing["ours"].get(fam, 0.0), timing["cp"].get(fam, 0.0)
        to, tc = to + a, tc + b
        if a > 0 and b > 0:
            lines.append(f"| {fam} | {a:.2f} | {b:.2f} | {n_obj / a:.0f} | {n_obj / b:.1f} | {b / a:.0f}x |")
    lines.append(f"| **all families** | {to:.2f} | {tc:.2f} | {n_obj / to:.0f} | {n_obj / tc:.1f} | {tc / to:.0f}x |")
    if neighbors:
        lines += ["", "Neighbors (MeasureObjectNeighbors) on the whole DSB2018 field's label image (ground "
                  "truth), per method; both on the CPU, one thread:", "",
                  "| method | objects | scip_gpu (s) | cp_measure (s) | ratio |", "|---|---|---|---|---|"]
        for method, (n, a, b) in neighbors.items():
            lines.append(f"| {method} | {n} | {a:.3f} | {b:.3f} | {b / a:.0f}x |")
    lines += ["", "## Values: largest relative difference per measurement", "",
              "Relative difference `|a - b| / max(|a|, |b|)` (NaN on both sides: equal; NaN or inf on one "
              "side only: inf); the values shown are those of the largest one. Differences above 1e-4 "
              "are explained in README.md (Feature families, cellprofiler preset). "
              "`Granularity_k (2-sample background grid)`: objects on which cp_measure's background "
              "opening reads memory outside its array (SciPy's `reflect` mode), listed apart. Zernike phases are "
              "compared as angles (a difference of a whole turn is none), and only where the moment's "
              f"magnitude exceeds {VANISHING:g} of ZernikeMagnitude_0_0 (the phase of a moment that "
              "vanishes by symmetry is that of rounding noise); Zernike magnitudes both at most "
              f"{VANISHING:g} of the object's Zernike_0_0 (ZernikeMagnitude_0_0) count as equal (moments "
              "that vanish by symmetry: both sides are rounding noise, about 1e-17; the largest absolute "
              "difference is still shown).", "",
              "| measurement | compared | max rel. diff | max abs. diff | where | cp_measure | scip_gpu |",
              "|---|---|---|---|---|---|---|"]
    for name in sorted(worst.d):
        r, where, a, b, cnt, ab = worst.d[name]
        lines.append(f"| {name} | {cnt} | {r:.2e} | {ab:.2e} | {where if r > 0 else ''} | {a:.10g} | {b:.10g} |")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(lines) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
