"""The QC report of a run: ``report.html`` in the run folder, one self-contained file.

Sections (each an ``<section id=...>``; the test checks them):

- ``summary``: dataset, device, object, error and column counts (from ``provenance.json``);
- ``groups``: objects, ok objects and errors per group (the first metadata column with 2 to 30
  values, e.g. the phenotype ``meta_label`` of the demo or a plate map's compound);
- ``montage``: example objects of every group, one panel per channel, each mask method's
  outline drawn over it (as figure 4 of the SCIP paper); the masks are recomputed for these few
  objects with the run's configuration. For fields of view instead: the label outlines
  (nucleus, cell) over a few fields, also written as ``qc_fields.png``;
- ``distributions``: key features (combined area and eccentricity, mean intensity per channel)
  per group;
- ``nan``: the share of NaN per column family and mask, how much of it the ``meta_*_empty_*``
  flags explain, and why such columns are NaN;
- ``errors``: the error table (``errors.csv``), counts per stage and the first rows.

Images are PNGs embedded as base64 (matplotlib, drawn on ``Figure`` objects without pyplot's
global state). ``write_report`` never raises: a failure is logged and the run goes on.
"""

from __future__ import annotations

import base64
import dataclasses
import functools
import html
import io
import logging
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

log = logging.getLogger("scip_gpu")

REPORT_FILE = "report.html"
FIELDS_PNG = "qc_fields.png"
SECTIONS = ("summary", "groups", "montage", "distributions", "nan", "errors")
#: metadata columns that identify an object or a file, never a group
_ID_COLUMNS = {"meta_index", "meta_field_index", "meta_path", "meta_id", "meta_zarr_idx", "meta_object_number",
               "meta_field", "meta_status", "meta_touches_border"}
MASK_COLOURS = ("#ff3b30", "#00c7ff", "#ffd60a", "#34c759", "#bf5af2", "#ff9f0a")
EXAMPLES_PER_GROUP = 3
MAX_EXAMPLES = 12
MAX_FIELDS = 3


# ---------------------------------------------------------------------------------------------
# Data


def choose_group(meta: pd.DataFrame, *, fields: bool = False) -> str | None:
    """The metadata column that groups the objects: the first with 2 to 30 distinct values
    (not an identifier; for fields the per-field label is an identifier too)."""
    skip = set(_ID_COLUMNS) | ({"meta_label"} if fields else set())
    for col in meta.columns:
        if not col.startswith("meta_") or col in skip or col.startswith("meta_bbox_"):
            continue
        n = meta[col].nunique(dropna=True)
        if 2 <= n <= 30:
            return col
    return None


def _read(parts: Sequence[Path], columns: Sequence[str]) -> pd.DataFrame:
    from .export import read_obs

    return read_obs([p for p in parts if Path(p).is_file()], list(columns))


def _nan_spec(columns) -> tuple:
    """What ``nan_counts`` needs of a plan's columns: the feature columns' indices; the flags'
    indices and, per flag, the positions (among the feature columns) of the columns it explains;
    the group keys "mask|family" with the positions of their columns."""
    flag_of = {(c.mask, c.channel if c.view == "mask" else "combined"): i
               for i, c in enumerate(columns) if c.family == "empty"}
    flag_idx = list(flag_of.values())
    explains: dict[int, list[int]] = {i: [] for i in flag_idx}
    feat_idx, groups = [], {}
    for i, c in enumerate(columns):
        if c.kind != "feat":
            continue
        combined = c.view is not None and c.view.startswith("combined") or c.channel is None
        flag = flag_of.get((c.mask, "combined" if combined else c.channel))
        groups.setdefault(f"{c.mask or ''}|{c.family}", []).append(len(feat_idx))
        if flag is not None:
            explains[flag].append(len(feat_idx))
        feat_idx.append(i)
    return (np.array(feat_idx, dtype=np.intp), np.array(flag_idx, dtype=np.intp),
            [np.array(explains[i], dtype=np.intp) for i in flag_idx], groups)


def column_runs(idx: np.ndarray) -> list[tuple[int, int]]:
    """The column indices ``idx`` as runs [a, b) of consecutive columns, in order."""
    idx = np.asarray(idx)
    if len(idx) == 0:
        return []
    cuts = np.flatnonzero(np.diff(idx) != 1) + 1
    return [(int(r[0]), int(r[-1]) + 1) for r in np.split(idx, cuts)]


@functools.lru_cache(maxsize=8)
def _nan_plan(key: tuple) -> tuple:
    """``_nan_spec`` of the columns ``key`` describes, in the table's column indices: the feature
    columns; the flags; per flag the table columns it explains (their runs of consecutive
    columns) and their positions among the feature columns; per group its runs. Cached: every
    partition of a run has the same columns."""
    columns = [_ColumnKey(*k) for k in key]
    feat_idx, flag_idx, explains, groups = _nan_spec(columns)
    explain = [(column_runs(feat_idx[pos]), pos) for pos in explains]
    group_runs = [column_runs(feat_idx[np.asarray(pos, dtype=np.intp)]) for pos in groups.values()]
    return feat_idx, flag_idx, explain, list(groups), group_runs


@dataclasses.dataclass(frozen=True)
class _ColumnKey:
    """What ``_nan_spec`` reads of a column."""

    kind: str
    family: str
    mask: str | None
    channel: object
    view: str | None


def _any_in_runs(miss: np.ndarray, runs: list[tuple[int, int]]) -> np.ndarray:
    """Per row: a True in any of the column runs of ``miss``."""
    out = np.zeros(len(miss), dtype=bool)
    for a, b in runs:
        out |= np.logical_or.reduce(miss[:, a:b], axis=1)
    return out


def nan_counts(values: np.ndarray, columns, ok: np.ndarray) -> dict:
    """The NaN statistics of one partition that the report's NaN table sums: over its ok rows
    (``ok``), per feature column (in plan order) the NaN values and those that the column's
    ``meta_{mask}_empty_*`` flag explains, and per (mask, family) the rows with a NaN.

    ``values``: the partition's (n, len(columns)) table in plan order (flags as 0/1, NaN where
    unknown). Computed by the workers from the table they hold (kept in the partition's
    checkpoint), so that the report never reads the feature columns back. One pass over the
    table for its NaN, one for the counts per column, one per (mask, family) over its columns;
    the flags' explanations over the flagged rows only."""
    key = tuple((c.kind, c.family, c.mask, c.channel, c.view) for c in columns)
    feat_idx, flag_idx, explain, groups, group_runs = _nan_plan(key)
    values = np.asarray(values)
    ok = np.asarray(ok, dtype=bool)
    miss = np.isnan(values)  # (n, F): every column, indexed as the table
    flags = values[:, flag_idx] > 0  # (NaN: not set)
    if not ok.all():  # (error rows are not counted)
        miss[~ok] = False
        flags[~ok] = False
    explained = np.zeros(len(feat_idx), dtype=np.int64)
    for k, (runs, pos) in enumerate(explain):
        rows = np.flatnonzero(flags[:, k])
        if len(pos) and len(rows):  # (the flagged rows, usually few, of the columns the flag explains)
            explained[pos] = np.concatenate([miss[rows, a:b].sum(axis=0, dtype=np.int64) for a, b in runs])
    any_nan = [int(np.count_nonzero(_any_in_runs(miss, runs))) for runs in group_runs]
    per_column = miss.sum(axis=0, dtype=np.int64)
    return {"n_ok": int(ok.sum()), "nan": per_column[feat_idx].tolist(), "explained": explained.tolist(),
            "rows": dict(zip(groups, any_nan))}


def part_nan_counts(part: Path, columns) -> dict:
    """``nan_counts`` of a written part (one read of its plan columns): for the parts whose
    partition's statistics are not known (written by a version without them, recovered)."""
    import pyarrow.parquet as pq

    table = pq.ParquetFile(part).read(columns=["meta_status"] + [c.name for c in columns])
    ok = table.column(0).to_numpy(zero_copy_only=False) == "ok"
    values = np.empty((table.num_rows, len(columns)))
    for j, col in enumerate(table.columns[1:]):
        values[:, j] = col.to_numpy(zero_copy_only=False).astype(np.float64)  # (bool flags: 0/1; null: NaN)
    return nan_counts(values, columns, ok)


def nan_table(parts: Sequence[Path], columns, stats: Sequence[dict | None] | None = None) -> pd.DataFrame:
    """Per (mask, family): columns, complete columns, share of NaN values and of rows with a
    NaN over the ok rows, the share of those NaN that the ``empty`` flags explain, and why.

    ``stats``: per part its ``nan_counts`` (from the partitions' results), or None where not
    known: that part is read (``part_nan_counts``)."""
    from .features.registry import family_nan_reason

    feat_idx, _, _, groups = _nan_spec(columns)
    n_feat = len(feat_idx)
    nan = np.zeros(n_feat, dtype=np.int64)
    explained = np.zeros(n_feat, dtype=np.int64)
    rows = dict.fromkeys(groups, 0)
    n_ok = 0
    stats = list(stats) if stats is not None else [None] * len(parts)
    for part, st in zip(parts, stats):
        if st is None or len(st.get("nan", ())) != n_feat or set(st.get("rows", {})) != set(groups):
            st = part_nan_counts(part, columns)
        n_ok += st["n_ok"]
        nan += np.asarray(st["nan"], dtype=np.int64)
        explained += np.asarray(st["explained"], dtype=np.int64)
        for g in groups:
            rows[g] += st["rows"][g]
    out = []
    for key in sorted(groups, key=lambda k: tuple(k.split("|", 1))):
        mask, fam = key.split("|", 1)
        pos = groups[key]
        n_nan, n_expl = int(nan[pos].sum()), int(explained[pos].sum())
        values = len(pos) * max(n_ok, 1)
        out.append({"mask": mask or "-", "family": fam, "columns": len(pos),
                    "complete columns": int((nan[pos] == 0).sum()),
                    "NaN values": f"{100 * n_nan / values:.1f} %",
                    "rows with NaN": f"{100 * rows[key] / n_ok:.1f} %" if n_ok else "-",
                    "NaN explained by empty flags": f"{100 * n_expl / n_nan:.0f} %" if n_nan else "-",
                    "why NaN (besides error rows)": family_nan_reason(fam, mask or None)})
    return pd.DataFrame(out)


# ---------------------------------------------------------------------------------------------
# Pictures


def _png(fig) -> bytes:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=fig.dpi)
    return buf.getvalue()


def _display(plane: np.ndarray) -> np.ndarray:
    """A plane scaled to [0, 1] between its 1st and 99th percentile."""
    p = np.asarray(plane, dtype=np.float64)
    lo, hi = np.percentile(p, [1, 99]) if p.size else (0.0, 1.0)
    return np.clip((p - lo) / (hi - lo), 0, 1) if hi > lo else np.zeros_like(p)


def example_masks(source, rows: pd.DataFrame, plan) -> list[tuple[int, np.ndarray, dict]]:
    """(row position, (C, h, w) image, {mask name: (C, h, w) bool}) of the example objects that
    load, with the masks of every configured method (recomputed on the CPU, one object at a time)."""
    from .batch import assemble
    from .config import mask_names
    from .masks import compute_masks, filter_channels

    cfg = plan.cfg
    out = []
    for pos, img in enumerate(source.load(rows)):
        if isinstance(img, Exception):
            continue
        img = np.asarray(img)
        h, w = img.shape[1:]
        batch = assemble([img], np.array([pos]), (h + plan.margin, w + plan.margin), np)
        passed = filter_channels(batch, cfg.masks.filters)
        masks = {}
        for m, name in zip(cfg.masks.methods, mask_names(cfg)):
            mr = compute_masks(batch, m, cfg.masks, passed)
            masks[name] = np.asarray(mr.mask[0, :, :h, :w])
        out.append((pos, img, masks))
    return out


def _rgb(colour: str) -> np.ndarray:
    return np.array([int(colour[i:i + 2], 16) / 255 for i in (1, 3, 5)])


def montage_png(examples, labels: Sequence[str], channel_names: Sequence[str], zoom: int = 2) -> bytes:
    """One row per example object, one tile per channel, each mask's outline in its colour:
    the tiles are composed into one RGB image (one ``imshow``, fast for many objects)."""
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D
    from skimage.segmentation import find_boundaries

    n, c = len(examples), len(channel_names)
    th = max(img.shape[1] for _, img, _ in examples) * zoom
    tw = max(img.shape[2] for _, img, _ in examples) * zoom
    gap = 4
    mosaic = np.ones((n * (th + gap), c * (tw + gap), 3))
    names = list(examples[0][2]) if examples else []
    for i, (_, img, masks) in enumerate(examples):
        for j in range(c):
            tile = np.repeat(np.repeat(_display(img[j]), zoom, 0), zoom, 1)
            rgb = np.stack([tile] * 3, axis=-1)
            for k, name in enumerate(names):
                m = np.repeat(np.repeat(masks[name][j], zoom, 0), zoom, 1)
                rgb[find_boundaries(m, mode="inner")] = _rgb(MASK_COLOURS[k % len(MASK_COLOURS)])
            h, w = rgb.shape[:2]
            y, x = i * (th + gap) + (th - h) // 2, j * (tw + gap) + (tw - w) // 2
            mosaic[y:y + h, x:x + w] = rgb
    width = max(3.0, mosaic.shape[1] / 80 + 1.6)
    fig = Figure(figsize=(width, mosaic.shape[0] / 80 + 0.9), dpi=80)
    ax = fig.add_axes((1.4 / width, 0.5 / (mosaic.shape[0] / 80 + 0.9), 1 - 1.5 / width,
                       mosaic.shape[0] / 80 / (mosaic.shape[0] / 80 + 0.9)))
    ax.imshow(mosaic, interpolation="nearest")
    ax.set_xticks([j * (tw + gap) + tw / 2 for j in range(c)], list(channel_names), fontsize=9)
    ax.xaxis.tick_top()
    ax.set_yticks([i * (th + gap) + th / 2 for i in range(n)], [str(v) for v in labels], fontsize=7)
    ax.tick_params(length=0)
    for side in ax.spines.values():
        side.set_visible(False)
    if names:
        fig.legend([Line2D([], [], color=MASK_COLOURS[k % len(MASK_COLOURS)]) for k in range(len(names))], names,
                   loc="lower center", ncol=len(names), fontsize=8, frameon=False)
    return _png(fig)


def read_field_labels(labels_dir: Path, stem: str):
    """A field's label images written by the run ((K, H, W), compartment names), from its
    OME-Zarr labels group (the default) or its OME-TIFF (``segmentation.labels_format=ome_tiff``);
    None when neither exists."""
    import re

    zpath = labels_dir / f"{stem}.ome.zarr"
    if zpath.is_dir():
        import zarr

        root = zarr.open_group(str(zpath), mode="r")
        names = list(root.attrs.get("labels", []))
        if not names:
            return None
        return np.stack([np.asarray(root[k]["0"]) for k in names]), names
    path = labels_dir / f"{stem}.ome.tif"
    if not path.is_file():
        return None
    import tifffile

    with tifffile.TiffFile(path) as tf:
        labels = tf.asarray()
        xml = tf.ome_metadata or ""
    labels = labels.reshape(-1, *labels.shape[-2:])
    names = re.findall(r'<Channel [^>]*Name="([^"]+)"', xml) or [f"labels {k}" for k in range(len(labels))]
    return labels, names


def fields_png(source, table: pd.DataFrame, cfg, labels_dir: Path, channel_names) -> bytes | None:
    """Label outlines (nucleus, cell) over the first fields whose label images exist."""
    from matplotlib.figure import Figure
    from skimage.segmentation import find_boundaries

    from .fields import project, safe_name

    shown = []
    for _, row in table.iterrows():
        found = read_field_labels(labels_dir, safe_name(row["meta_field"]))
        if found is None:
            continue
        labels, names = found
        try:
            img = source.load_field(row)
        except Exception:  # noqa: BLE001 - an unreadable field is shown by the others
            continue
        proj = cfg.projection.method.value if cfg.projection.method is not None else None
        img = np.asarray(project(img, proj))
        shown.append((row["meta_field"], img, labels.reshape(-1, *labels.shape[-2:]), names))
        if len(shown) >= MAX_FIELDS:
            break
    if not shown:
        return None
    nuc = cfg.segmentation.nucleus_channel if cfg.segmentation.nucleus_channel is not None else 0
    fig = Figure(figsize=(4.2 * len(shown), 4.6), dpi=80)
    axes = fig.subplots(1, len(shown), squeeze=False)[0]
    for ax, (name, img, labels, names) in zip(axes, shown):
        base = _display(img[min(nuc, img.shape[0] - 1)])
        rgb = np.stack([base] * 3, axis=-1)
        for k, lab in enumerate(labels[:len(MASK_COLOURS)]):
            rgb[find_boundaries(lab, mode="inner")] = _rgb(MASK_COLOURS[k])
        ax.imshow(rgb, interpolation="nearest")
        n_obj = int(labels[min(1, len(labels) - 1)].max()) if labels.size else 0
        ax.set_title(f"{name} ({n_obj} labels)", fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_xlabel(", ".join(f"{n}: {c}" for n, c in zip(names, ("red", "cyan", "yellow"))), fontsize=8)
        ax.set_ylabel(channel_names[min(nuc, len(channel_names) - 1)], fontsize=8)
    fig.tight_layout()
    return _png(fig)


def key_features(columns) -> list:
    """The features drawn per group: combined area and eccentricity of the first mask with a
    shape family, and the mean intensity in the mask of every channel for the first mask with
    an intensity family (at most 8 panels)."""
    out = []
    shape = [c for c in columns if c.family == "shape" and c.view == "combined"]
    if shape:
        first = shape[0].mask
        out += [c for c in shape if c.mask == first and c.feature in ("area", "eccentricity")]
    inten = [c for c in columns if c.family == "intensity" and c.view == "mask" and c.feature == "mean"]
    if inten:
        first = inten[0].mask
        out += [c for c in inten if c.mask == first]
    else:
        out += [c for c in columns if c.family == "raw" and c.feature == "mean"]
    return out[:8]


def distributions_png(frame: pd.DataFrame, cols, group: str | None) -> bytes | None:
    from matplotlib.figure import Figure

    if not cols or frame.empty:
        return None
    groups = sorted(frame[group].dropna().astype(str).unique()) if group else ["all"]
    if group is None:
        members = [slice(None)]
    else:  # (the rows of each group found once, not once per panel)
        labels = frame[group].astype(str).to_numpy()
        members = [np.flatnonzero(labels == g) for g in groups]
    k = len(cols)
    ncol = min(4, k)
    nrow = -(-k // ncol)
    fig = Figure(figsize=(3.2 * ncol, 2.6 * nrow), dpi=80)
    axes = fig.subplots(nrow, ncol, squeeze=False).ravel()
    for ax, c in zip(axes, cols):
        data = []
        values = frame[c.name].to_numpy(dtype=float)
        for rows in members:
            v = values[rows]
            data.append(v[np.isfinite(v)])
        present = [i for i, d in enumerate(data) if len(d)]
        if present:
            ax.boxplot([data[i] for i in present], positions=[i + 1 for i in present], widths=0.6,
                       showfliers=True, flierprops={"markersize": 2})
        ax.set_xticks(range(1, len(groups) + 1))
        ax.set_xticklabels(groups, rotation=30, ha="right", fontsize=7)
        ax.set_title(c.name, fontsize=8)
        ax.tick_params(axis="y", labelsize=7)
    for ax in axes[k:]:
        ax.set_visible(False)
    fig.subplots_adjust(left=0.06, right=0.98, top=1 - 0.35 / (2.6 * nrow), bottom=0.75 / (2.6 * nrow),
                        wspace=0.3, hspace=0.75)
    return _png(fig)


# ---------------------------------------------------------------------------------------------
# HTML

_CSS = """body{font-family:system-ui,sans-serif;margin:2em;max-width:1200px;color:#222}
h1{font-size:1.6em}h2{font-size:1.25em;border-bottom:1px solid #ccc;padding-bottom:.2em;margin-top:1.6em}
table{border-collapse:collapse;font-size:.85em;margin:.5em 0}td,th{border:1px solid #ccc;padding:.25em .5em;
text-align:left;vertical-align:top}th{background:#f3f3f3}img{max-width:100%;border:1px solid #ddd}
.note{color:#555;font-size:.9em}"""


def _img(png: bytes | None, alt: str) -> str:
    if png is None:
        return f'<p class="note">(no picture: {html.escape(alt)})</p>'
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{base64.b64encode(png).decode()}">'


def _table(df: pd.DataFrame) -> str:
    return df.to_html(index=False, escape=True, border=0, na_rep="")


def build_html(title: str, sections: dict[str, tuple[str, str]]) -> str:
    body = "\n".join(f'<section id="{sid}"><h2>{html.escape(head)}</h2>\n{content}</section>'
                     for sid, (head, content) in sections.items())
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
            f"<style>{_CSS}</style></head><body><h1>{html.escape(title)}</h1>\n{body}\n</body></html>\n")


def write_report(out: Path, *, source, plan, table: pd.DataFrame, parts: Sequence[Path], provenance: dict,
                 fields: bool = False, nan_stats: dict | None = None, frame: pd.DataFrame | None = None,
                 montage: MontageAhead | None = None) -> Path | None:
    """Write ``report.html`` (and ``qc_fields.png`` for fields) into the run folder ``out``.

    ``nan_stats`` (part path -> ``nan_counts``) and ``frame`` (the ``report_columns`` of every
    part, in order) where the run has them already; otherwise the parts are read. ``montage``:
    the examples' montage drawn while the partitions ran (``MontageAhead``).

    Never raises: any failure is logged as a warning and None is returned.
    """
    try:
        return _write_report(Path(out), source=source, plan=plan, table=table, parts=parts, provenance=provenance,
                             fields=fields, nan_stats=nan_stats or {}, frame=frame, montage=montage)
    except Exception as exc:  # noqa: BLE001 - the report must never fail a run
        from .errors import describe_exception

        log.warning("the QC report could not be written (%s); the run's outputs are complete",
                    describe_exception(exc))
        return None


def report_columns(names: Sequence[str], columns) -> tuple[list[str], list]:
    """(the leading meta columns, the key feature columns) of parts with columns ``names``, the
    columns the report reads of every part."""
    planned = {c.name for c in columns}
    return [n for n in names if n.startswith("meta_") and n not in planned], key_features(columns)


def montage_choice(frame: pd.DataFrame, group: str | None, ok: np.ndarray) -> tuple[tuple, tuple]:
    """(meta_index, label) of the example objects: the first ``EXAMPLES_PER_GROUP`` ok objects
    of every group (groups in sorted order), at most ``MAX_EXAMPLES``, in row order."""
    g = frame[group].astype(str) if group else pd.Series("all", index=frame.index)
    pick = []
    for name in sorted(g[ok].unique()):
        pick += list(frame.index[ok & (g == name).to_numpy()][:EXAMPLES_PER_GROUP])
    pick = sorted(pick[:MAX_EXAMPLES])
    index = frame.loc[pick, "meta_index"].to_numpy()
    return tuple(int(i) for i in index), tuple(f"{g.loc[p]} #{i}" for p, i in zip(pick, index))


def montage_of(source, table: pd.DataFrame, plan, index: Sequence[int], labels: Sequence[str]) -> bytes | None:
    """The montage PNG of the objects ``index`` (meta_index) with their masks (recomputed), or
    None when none loads."""
    if not len(index):
        return None
    rows = table.set_index("meta_index").loc[list(index)].reset_index()
    examples = example_masks(source, rows, plan)
    return montage_png(examples, [labels[pos] for pos, _, _ in examples], plan.channel_names) if examples else None


class MontageAhead:
    """The montage drawn in a background thread of the driver while the partitions run.

    The examples are chosen as if every object were ok (the metadata is known before the run);
    the drawing starts once every partition holding one of them is done with all of them ok
    (``partition_done``): the driver only ever loads objects that a worker has loaded and
    profiled, as the report after the run does (an object that kills its process is never an
    example). The report uses the drawing only when its own choice is the same, else draws its
    own (an example failed, or its partitions had not all finished)."""

    def __init__(self, source, table: pd.DataFrame, plan, partition_size: int):
        import threading

        meta = table[[c for c in table.columns if c.startswith("meta_") and c != "meta_status"]]
        meta = meta.reset_index(drop=True)
        group = choose_group(meta) if len(meta) else None
        self._choice = (montage_choice(meta, group, np.ones(len(meta), bool))
                        if plan.cfg.masks.methods and len(meta) else ((), ()))
        # (meta_index is the row's position: partition = position // partition_size)
        self._waiting = {int(i) // max(1, partition_size) for i in self._choice[0]}
        self._png: bytes | None = None
        self._failed = not self._choice[0]
        self._lock = threading.Lock()

        def draw():
            try:
                self._png = montage_of(source, table, plan, *self._choice)
            except BaseException:  # noqa: BLE001 - the report draws it again (and reports)
                self._failed = True

        self._thread = threading.Thread(target=draw, name="scip_gpu-montage", daemon=True)

    def partition_done(self, part: int, failed: set) -> None:
        """Partition ``part`` is done, the objects ``failed`` (meta_index) with errors."""
        with self._lock:
            if self._failed or part not in self._waiting:
                return
            if failed & set(self._choice[0]):
                self._failed = True  # an example failed: the report chooses (and draws) its own
                return
            self._waiting.discard(part)
            if not self._waiting:
                self._thread.start()

    def choice(self) -> tuple | None:
        """The examples drawn, or None when there is no drawing to use."""
        with self._lock:
            started = self._thread.is_alive() or self._thread.ident is not None
        if not started:
            return None
        self._thread.join()
        return None if self._failed else self._choice

    def png(self) -> bytes | None:
        return self._png if self.choice() is not None else None


def _write_report(out: Path, *, source, plan, table, parts, provenance, fields, nan_stats, frame,
                  montage=None) -> Path:
    from .export import write_text

    parts = [Path(p) for p in parts if Path(p).is_file()]
    columns = plan.columns
    import pyarrow.parquet as pq

    lead, keys = report_columns(pq.read_schema(parts[0]).names if parts else [], columns)
    if frame is None or list(frame.columns) != lead + [c.name for c in keys]:
        frame = _read(parts, lead + [c.name for c in keys])
    group = choose_group(frame[[c for c in lead if c != "meta_status"]], fields=fields) if len(frame) else None
    ok = (frame["meta_status"] == "ok").to_numpy() if len(frame) else np.zeros(0, bool)
    errors = pd.read_csv(out / "errors.csv") if (out / "errors.csv").is_file() else pd.DataFrame()
    sections: dict[str, tuple[str, str]] = {}

    # summary
    p = provenance
    summary = pd.DataFrame([
        ("dataset", f"{p.get('dataset', {}).get('name')} ({p.get('dataset', {}).get('format')}) "
                    f"{p.get('dataset', {}).get('path') or ''}"),
        ("objects", p.get("objects")), ("objects ok", p.get("objects_ok")),
        ("objects with errors", p.get("objects_with_errors")),
        *([("fields", p.get("fields")), ("fields with errors", p.get("fields_with_errors"))] if fields else []),
        ("columns", p.get("columns")), ("channels", ", ".join(map(str, p.get("channel_names", [])))),
        ("masks", ", ".join(plan.families) or "none"), ("device", p.get("device")), ("cluster", p.get("cluster")),
        ("started", p.get("started")), ("scip_gpu", p.get("scip_gpu")),
    ], columns=["", "value"])
    sections["summary"] = ("Summary", _table(summary))

    # groups
    if len(frame):
        g = frame[group].astype(str) if group else pd.Series("all", index=frame.index)
        counts = pd.DataFrame({"group": g, "ok": ok}).groupby("group")["ok"].agg(objects="size", ok="sum")
        counts["errors"] = counts["objects"] - counts["ok"]
        counts = counts.reset_index()
        note = (f"Grouped by <code>{html.escape(group)}</code>." if group else
                "No metadata column with 2 to 30 values: all objects form one group.")
        sections["groups"] = ("Objects and errors per group", f'<p class="note">{note}</p>' + _table(counts))
    else:
        sections["groups"] = ("Objects and errors per group", "<p>No objects.</p>")

    # montage of example objects (object datasets), label outlines over fields
    if fields:
        png = fields_png(source, table, plan.cfg, out / "labels", plan.channel_names)
        if png is not None:
            (out / FIELDS_PNG).write_bytes(png)
        sections["montage"] = ("Segmentation: label outlines over fields",
                               f'<p class="note">Written also as <code>{FIELDS_PNG}</code>.</p>'
                               + _img(png, "no label images (segmentation.export_labels=false or no field loaded)"))
    else:
        chosen = montage_choice(frame, group, ok) if plan.cfg.masks.methods and len(frame) else ((), ())
        if montage is not None and montage.choice() == chosen:
            png = montage.png()  # drawn while the partitions ran
        else:
            png = montage_of(source, table, plan, *chosen)
        sections["montage"] = ("Example objects and their masks",
                               '<p class="note">Each row one object (group, meta_index), each panel one channel; '
                               "outlines: every mask method's mask of that channel.</p>"
                               + _img(png, "no mask method configured or no object could be loaded"))

    # distributions
    png = distributions_png(frame[ok] if len(frame) else frame, keys, group)
    sections["distributions"] = ("Key features per group", _img(png, "no shape or intensity features"))

    # NaN per family
    nan = nan_table(parts, columns, [nan_stats.get(str(p)) for p in parts]) if len(frame) else pd.DataFrame()
    n_err = int((~ok).sum())
    sections["nan"] = ("Missing values (NaN) per column family",
                       f'<p class="note">Over the {int(ok.sum())} ok rows. The {n_err} error row(s) are NaN in every '
                       "feature column (cause in errors.csv). <code>meta_{mask}_empty_{channel}</code> is true "
                       "where a channel's mask holds no pixel, which makes that channel's features of the mask "
                       "NaN; <code>export.analysis_ready=true</code> writes a variant without NaN.</p>"
                       + (_table(nan) if len(nan) else "<p>No feature columns.</p>"))

    # errors
    if len(errors):
        per_stage = errors.groupby("stage").size().rename("errors").reset_index()
        shown = errors.head(200)
        more = f'<p class="note">First 200 of {len(errors)}; all in errors.csv.</p>' if len(errors) > 200 else ""
        sections["errors"] = (f"Errors ({len(errors)})", _table(per_stage) + _table(shown) + more)
    else:
        sections["errors"] = ("Errors (0)", "<p>No object failed.</p>")

    title = f"scip_gpu QC report: {out.name}"
    path = out / REPORT_FILE
    write_text(path, build_html(title, sections))
    return path
