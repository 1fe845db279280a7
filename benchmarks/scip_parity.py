"""Value-for-value parity of scip_gpu's ``scip`` preset with SCIP 0.1.12, on the same images.

For each dataset both tools run as subprocesses on the same ragged zarr store:

- SCIP (its own venv, see scip_env.sh): a generated config with the li (smooth 1.0 per channel)
  and otsu masks, main channel 0, all channels combined, no filters, feature_extraction
  [shape, intensity, texture, bbox, regions] for both masks, parquet export;
  ``scip -j W -t 1 --headless -s P``;
- scip_gpu: ``python -m scip_gpu +dataset=scip_zarr ... masks=scip features=scip cluster=sync``.

Rows are aligned on ``meta_zarr_idx`` (and ``meta_object_number`` is checked). For every family
(regions, bbox, shape, intensity, texture, raw) the report gives the shared columns, the worst
relative difference over all shared columns and objects, ``rel = |a-b| / max(|a|,|b|)`` (0 when
``|a-b| <= atol``, default 1e-6), the column and object where it occurs, and the NaN-vs-value
mismatches, split into "SCIP 0 where scip_gpu gives NaN" (SCIP's documented empty-mask default)
and any other. Columns present in only one tool are listed, never dropped silently.

Datasets: ``ifc10`` (the 10 real 7-channel cells at /work/shared/data/scip-ifc-10cells.zarr, when
present) and ``demo60`` (60 demo cells, 3 channels, ragged sizes, written here); or any store with
``--zarr PATH --name NAME``.

    /tmp/venv/bin/python benchmarks/scip_parity.py                  # both default datasets
    /tmp/venv/bin/python benchmarks/scip_parity.py --dataset demo60 --demo-n 200
    SCIP_VENV=/tmp/scipenv /tmp/venv/bin/python benchmarks/scip_parity.py

Writes benchmarks/results/parity-<dataset>.json and .md and prints the table.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (FAMILIES, RESULTS, BenchError, classify, find_scip_python, fresh_workdir,  # noqa: E402
                     machine_description, machine_markdown, read_scip_gpu_output, read_scip_output,
                     run_scip, run_scip_gpu, scip_config_yaml, scip_gpu_overrides, tail)

REAL_10 = Path("/work/shared/data/scip-ifc-10cells.zarr")
MASKS = ["li", "otsu"]


# ---------------------------------------------------------------------------------------------
# Comparison


def _mask_of(col: str) -> str:
    for m in [*MASKS, "raw"]:
        if col.startswith((f"feat_{m}_", f"meta_{m}_")):
            return m
    return "-"


def compare(scip: pd.DataFrame, ours: pd.DataFrame, channels: list[str], *, atol: float = 1e-6,
            top: int = 10) -> dict:
    """Align rows and compare every shared column; see the module docstring."""
    for name, df in (("SCIP", scip), ("scip_gpu", ours)):
        if "meta_zarr_idx" not in df.columns:
            raise BenchError(f"{name} output has no meta_zarr_idx column to align rows on")
        if df["meta_zarr_idx"].duplicated().any():
            raise BenchError(f"{name} output has duplicated meta_zarr_idx values")
    s = scip.set_index(scip["meta_zarr_idx"].astype(int)).sort_index()
    o = ours.set_index(ours["meta_zarr_idx"].astype(int)).sort_index()
    rows = s.index.intersection(o.index)
    rows_info = {
        "scip": int(len(s)), "scip_gpu": int(len(o)), "aligned": int(len(rows)),
        "only_scip": [int(i) for i in s.index.difference(o.index)],
        "only_scip_gpu": [int(i) for i in o.index.difference(s.index)],
    }
    s, o = s.loc[rows], o.loc[rows]
    if "meta_object_number" in s and "meta_object_number" in o:
        bad = (s["meta_object_number"].astype(int) != o["meta_object_number"].astype(int))
        rows_info["object_number_mismatches"] = [int(i) for i in rows[bad.to_numpy()]]
    meta_checks = {}
    for c in ("meta_group",):
        if c in s and c in o:
            meta_checks[c] = bool((s[c].astype(str) == o[c].astype(str)).all())

    fam_s = {c: classify(c, MASKS, channels) for c in s.columns}
    fam_o = {c: classify(c, MASKS, channels) for c in o.columns}
    shared = [c for c in s.columns if c in o.columns and fam_s[c] not in ("meta_id",)]
    only_s = [c for c in s.columns if c not in o.columns]
    only_o = [c for c in o.columns if c not in s.columns]

    per_column = {}
    if shared:
        A = s[shared].apply(pd.to_numeric, errors="coerce").to_numpy(dtype=float)
        B = o[shared].apply(pd.to_numeric, errors="coerce").to_numpy(dtype=float)
        na, nb = np.isnan(A), np.isnan(B)
        s0_onan = (A == 0) & nb
        other_nan = (na ^ nb) & ~s0_onan
        both = ~na & ~nb
        with np.errstate(invalid="ignore", divide="ignore"):
            diff = np.abs(A - B)
            denom = np.maximum(np.abs(A), np.abs(B))
            rel = np.where(diff <= atol, 0.0, diff / denom)
        same_inf = both & np.isinf(A) & (A == B)
        rel[same_inf] = 0.0
        inf_mismatch = both & ~np.isfinite(rel)
        rel[~both | inf_mismatch] = np.nan
        absd = np.where(both & np.isfinite(diff), diff, np.nan)
        exact = (A == B) | (na & nb)
        # SCIP regions of the column's own (mask, channel): was SCIP's channel mask empty?
        empty = np.zeros_like(A, dtype=bool)
        for j, c in enumerate(shared):
            rc = _regions_column(c, channels)
            if rc is not None and rc in s.columns:
                empty[:, j] = pd.to_numeric(s[rc], errors="coerce").to_numpy(dtype=float) == 0
        obj = rows.to_numpy()
        for j, c in enumerate(shared):
            col = rel[:, j]
            has = ~np.isnan(col)
            k = int(np.nanargmax(col)) if has.any() else None
            per_column[c] = {
                "family": fam_s[c], "mask": _mask_of(c),
                "max_rel": float(col[k]) if k is not None else None,
                "max_abs_diff": float(np.nanmax(absd[:, j])) if has.any() else None,
                "exact": int(exact[:, j].sum()),
                "scip0_ours_nan_empty_mask": int((s0_onan[:, j] & empty[:, j]).sum()),
                "worst_object": int(obj[k]) if k is not None else None,
                "scip": float(A[k, j]) if k is not None else None,
                "scip_gpu": float(B[k, j]) if k is not None else None,
                "compared": int(has.sum()),
                "both_nan": int((na[:, j] & nb[:, j]).sum()),
                "scip0_ours_nan": int(s0_onan[:, j].sum()),
                "scip_nan_ours_value": int((na[:, j] & ~nb[:, j]).sum()),
                "other_nan_mismatch": int(other_nan[:, j].sum()),
                "inf_mismatch": int(inf_mismatch[:, j].sum()),
            }

    def summarise(cols: list[str], n_scip: int, n_ours: int, n_only_s: int, n_only_o: int) -> dict:
        r = {"scip_columns": n_scip, "scip_gpu_columns": n_ours, "shared": len(cols),
             "only_scip": n_only_s, "only_scip_gpu": n_only_o}
        pcs = [per_column[c] for c in cols]
        vals = [(p["max_rel"], c) for c, p in zip(cols, pcs) if p["max_rel"] is not None]
        r["values_compared"] = sum(p["compared"] for p in pcs)
        r["values_exactly_equal"] = sum(p["exact"] for p in pcs)
        absd = [p["max_abs_diff"] for p in pcs if p["max_abs_diff"] is not None]
        r["max_abs_diff"] = max(absd) if absd else None
        if vals and max(vals)[0] == 0:
            r.update(worst_rel=0.0, worst_column=None)
        elif vals:
            worst, wc = max(vals)
            p = per_column[wc]
            r.update(worst_rel=worst, worst_column=wc, worst_object=p["worst_object"],
                     worst_scip=p["scip"], worst_scip_gpu=p["scip_gpu"])
        else:
            r.update(worst_rel=None, worst_column=None)
        for t in (1e-6, 1e-4, 1e-2):
            r[f"columns_rel_gt_{t:g}"] = sum(1 for v, _ in vals if v > t)
        r["scip0_ours_nan"] = sum(p["scip0_ours_nan"] for p in pcs)
        r["scip0_ours_nan_with_empty_channel_mask"] = sum(p["scip0_ours_nan_empty_mask"] for p in pcs)
        r["other_nan_mismatch"] = sum(p["other_nan_mismatch"] + p["inf_mismatch"] for p in pcs)
        r["other_nan_detail"] = {
            "scip_nan_ours_value": sum(p["scip_nan_ours_value"] for p in pcs),
            "ours_nan_scip_nonzero": sum(p["other_nan_mismatch"] - p["scip_nan_ours_value"] for p in pcs),
            "inf_mismatch": sum(p["inf_mismatch"] for p in pcs),
        }
        if n_scip and not cols:
            r["status"] = "missing in scip_gpu" if not n_ours else "no shared columns"
        elif n_ours and not n_scip:
            r["status"] = "missing in SCIP"
        elif not cols:
            r["status"] = "absent in both"
        elif r["other_nan_mismatch"] == 0 and (r["worst_rel"] or 0) == 0:
            r["status"] = "match"
        elif r["other_nan_mismatch"] == 0 and (r["worst_rel"] or 0) <= 1e-4:
            r["status"] = "close (<=1e-4)"
        else:
            r["status"] = "DIFFERS"
        if r["status"].startswith("missing") and n_only_s + n_only_o:
            r["status"] += ("" if not r["only_scip"] or not n_ours else " (partly)")
        return r

    families = {}
    by_mask = {}
    for fam in [*FAMILIES, "other"]:
        cols = [c for c in shared if fam_s[c] == fam]
        n_s = sum(1 for c in s.columns if fam_s[c] == fam)
        n_o = sum(1 for c in o.columns if fam_o[c] == fam)
        n_os = sum(1 for c in only_s if fam_s[c] == fam)
        n_oo = sum(1 for c in only_o if fam_o[c] == fam)
        if fam == "other" and not (n_s or n_o):
            continue
        families[fam] = summarise(cols, n_s, n_o, n_os, n_oo)
        for m in [*MASKS, "raw"]:
            mc = [c for c in cols if per_column[c]["mask"] == m]
            ms = sum(1 for c in s.columns if fam_s[c] == fam and _mask_of(c) == m)
            mo = sum(1 for c in o.columns if fam_o[c] == fam and _mask_of(c) == m)
            if ms or mo:
                by_mask[f"{fam}/{m}"] = summarise(
                    mc, ms, mo, sum(1 for c in only_s if fam_s[c] == fam and _mask_of(c) == m),
                    sum(1 for c in only_o if fam_o[c] == fam and _mask_of(c) == m))

    worst_columns = {}
    for fam in families:
        cols = sorted((c for c in shared if fam_s[c] == fam and per_column[c]["max_rel"]),
                      key=lambda c: -per_column[c]["max_rel"])
        worst_columns[fam] = [{"column": c, **per_column[c]} for c in cols[:top]]
    return {
        "atol": atol,
        "rows": rows_info,
        "meta_checks": meta_checks,
        "families": families,
        "by_mask": by_mask,
        "only_in_scip": {"count": len(only_s), "by_family": _group(only_s, fam_s)},
        "only_in_scip_gpu": {"count": len(only_o), "by_family": _group(only_o, fam_o)},
        "worst_columns": worst_columns,
        "per_column": per_column,
    }


def _regions_column(col: str, channels: list[str]) -> str | None:
    """``meta_{mask}_regions_{ch}`` for a per-channel (not combined) masked feature column."""
    m = _mask_of(col)
    if m in ("-", "raw") or not col.startswith("feat_"):
        return None
    rest = col[len(f"feat_{m}_"):]
    if rest.startswith("combined_"):
        return None
    ch = next((c for c in sorted(channels, key=len, reverse=True) if rest.endswith("_" + c)), None)
    return None if ch is None else f"meta_{m}_regions_{ch}"


def _group(cols: list[str], fam: dict) -> dict:
    out: dict[str, list[str]] = {}
    for c in cols:
        out.setdefault(fam[c], []).append(c)
    return out


# ---------------------------------------------------------------------------------------------
# Report


def _fmt(x, digits=3) -> str:
    if x is None:
        return "-"
    if isinstance(x, float):
        if x == 0:
            return "0"
        return f"{x:.{digits}g}" if abs(x) >= 1e-3 and abs(x) < 1e6 else f"{x:.{digits}e}"
    return str(x)


def table(rows: dict, first: str = "family") -> str:
    head = (f"| {first} | status | SCIP cols | scip_gpu cols | shared | only SCIP | only scip_gpu | "
            "worst rel | worst column [object] | SCIP | scip_gpu | max abs diff | cols >1e-6 | cols >1e-2 | "
            "SCIP 0 / ours NaN (empty channel mask) | other NaN mismatches |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for k, r in rows.items():
        wc = f"`{r['worst_column']}` [{r.get('worst_object')}]" if r.get("worst_column") else "-"
        lines.append(
            f"| {k} | {r['status']} | {r['scip_columns']} | {r['scip_gpu_columns']} | {r['shared']} | "
            f"{r['only_scip']} | {r['only_scip_gpu']} | {_fmt(r.get('worst_rel'))} | {wc} | "
            f"{_fmt(r.get('worst_scip'), 6)} | {_fmt(r.get('worst_scip_gpu'), 6)} | {_fmt(r.get('max_abs_diff'))} | "
            f"{r['columns_rel_gt_1e-06']} | {r['columns_rel_gt_0.01']} | {r['scip0_ours_nan']} "
            f"({r['scip0_ours_nan_with_empty_channel_mask']}) | "
            f"{r['other_nan_mismatch']} |")
    return "\n".join(lines)


def plain_table(rows: dict) -> str:
    out = [f"{'family':<10} {'status':<20} {'shared':>6} {'onlySCIP':>8} {'onlyOurs':>8} {'worst rel':>10} {'max abs':>9}  "
           f"{'0/NaN':>6} {'otherNaN':>8}  worst column [object]"]
    for k, r in rows.items():
        wc = f"{r['worst_column']} [{r.get('worst_object')}]" if r.get("worst_column") else "-"
        out.append(f"{k:<10} {r['status']:<20} {r['shared']:>6} {r['only_scip']:>8} {r['only_scip_gpu']:>8} "
                   f"{_fmt(r.get('worst_rel')):>10} {_fmt(r.get('max_abs_diff'), 2):>9}  {r['scip0_ours_nan']:>6} "
                   f"{r['other_nan_mismatch']:>8}  {wc}")
    return "\n".join(out)


def markdown(report: dict) -> str:
    c = report["comparison"]
    ds = report["dataset"]
    md = [f"# SCIP 0.1.12 vs scip_gpu parity: {ds['name']}", "",
          f"Generated {report['generated']} by `benchmarks/scip_parity.py`.", "",
          f"Dataset: {ds['description']} ({ds['objects']} objects, channels {ds['channel_names']}).",
          f"Masks li (smooth {report['settings']['smooth']} per channel) and otsu, main channel 0, all "
          "channels combined, no filters, all feature families for both masks, plus the raw set.", "",
          "## Machine", "", machine_markdown(report["machine"]), "",
          "## Runs", ""]
    for tool in ("scip", "scip_gpu"):
        r = report["runs"][tool]
        md.append(f"- {tool}: exit {r['rc']}, {r['wall_s']:.1f} s wall, own runtime "
                  f"{_fmt(r.get('own_runtime_s'))} s, peak RSS (process tree) {r['peak_rss_bytes'] / 2**20:.0f} MiB; "
                  f"`{' '.join(Path(x).name if i == 0 else x for i, x in enumerate(r['cmd'])).replace(report['work'], '<work>')}`")
    md.append(f"\n(`<work>`: the temporary folder {report['work']}, removed after the run unless --keep.)")
    rows = c["rows"]
    md += ["", f"Rows: SCIP {rows['scip']}, scip_gpu {rows['scip_gpu']}, aligned on meta_zarr_idx "
               f"{rows['aligned']}; only in SCIP {rows['only_scip']}, only in scip_gpu {rows['only_scip_gpu']}; "
               f"object_number mismatches {rows.get('object_number_mismatches')}; meta checks {c['meta_checks']}.",
           "", "## Per family", "",
           f"`rel = |a-b| / max(|a|,|b|)`, 0 when `|a-b| <= {c['atol']:g}`; worst over all shared columns "
           "and objects; \"max abs diff\" is the largest |a-b| before the tolerance. \"SCIP 0 / ours NaN\": "
           "SCIP's documented empty-mask default (0) where scip_gpu gives NaN; in brackets, how many of "
           "those have SCIP's regions = 0 for the column's own mask and channel. \"other NaN mismatches\": "
           "any other NaN-vs-value (or inf) disagreement.", "",
           table(c["families"]), "", "## Per family and mask", "", table(c["by_mask"], "family/mask"), ""]
    md += ["## Columns in only one tool", ""]
    for side, key in (("SCIP", "only_in_scip"), ("scip_gpu", "only_in_scip_gpu")):
        info = c[key]
        md.append(f"Only in {side}: {info['count']} column(s).")
        for fam, cols in info["by_family"].items():
            shown = ", ".join(f"`{x}`" for x in cols[:12])
            more = f" ... (+{len(cols) - 12} more, see the JSON)" if len(cols) > 12 else ""
            md.append(f"- {fam} ({len(cols)}): {shown}{more}")
        md.append("")
    md += ["## Worst columns per family", ""]
    if not any(c["worst_columns"].values()):
        md += [f"No shared column differs by more than the tolerance ({c['atol']:g} absolute).", ""]
    for fam, cols in c["worst_columns"].items():
        if not cols:
            continue
        md += [f"### {fam}", "", "| column | max rel | object | SCIP | scip_gpu | SCIP 0 / ours NaN | other NaN |",
               "|---|---|---|---|---|---|---|"]
        for w in cols:
            md.append(f"| `{w['column']}` | {_fmt(w['max_rel'])} | {w['worst_object']} | {_fmt(w['scip'], 6)} | "
                      f"{_fmt(w['scip_gpu'], 6)} | {w['scip0_ours_nan']} | "
                      f"{w['other_nan_mismatch'] + w['inf_mismatch']} |")
        md.append("")
    nan_cols = [(k, v) for k, v in c["per_column"].items() if v["other_nan_mismatch"] or v["inf_mismatch"]]
    if nan_cols:
        md += ["## Columns with other NaN mismatches", "",
               "| column | SCIP NaN, ours value | ours NaN, SCIP non-zero | inf |", "|---|---|---|---|"]
        for k, v in sorted(nan_cols, key=lambda kv: -(kv[1]["other_nan_mismatch"] + kv[1]["inf_mismatch"]))[:40]:
            md.append(f"| `{k}` | {v['scip_nan_ours_value']} | "
                      f"{v['other_nan_mismatch'] - v['scip_nan_ours_value']} | {v['inf_mismatch']} |")
        if len(nan_cols) > 40:
            md.append(f"\n... {len(nan_cols) - 40} more columns, see the JSON.")
        md.append("")
    return "\n".join(md)


def report_json(report: dict) -> str:
    """The report as JSON: indented, except ``per_column`` (moved to the top level), which has one
    compact line per shared column and omits its zero NaN counters."""
    comp = dict(report["comparison"])
    per_column = comp.pop("per_column")
    body = json.dumps({**report, "comparison": comp}, indent=1, default=str)
    keep = ("family", "mask", "max_rel", "max_abs_diff", "worst_object", "scip", "scip_gpu", "compared", "exact")
    lines = []
    for col, v in per_column.items():
        slim = {k: x for k, x in v.items() if k in keep or x}
        lines.append(f"  {json.dumps(col)}: {json.dumps(slim, separators=(',', ':'), default=str)}")
    return body[: body.rstrip().rfind("}")].rstrip() + ',\n "per_column": {\n' + ",\n".join(lines) + "\n }\n}\n"


# ---------------------------------------------------------------------------------------------
# Driver


def channel_count(zarr_path: Path) -> int:
    attrs = json.loads((zarr_path / ".zattrs").read_text())
    return min(int(s[0]) for s in attrs["shape"])


def run_dataset(name: str, zarr_path: Path | None, args, scip_python: Path, machine: dict) -> dict:
    work = fresh_workdir(f"parity-{name}")
    try:
        if zarr_path is None:  # the generated demo-like dataset
            from datasets import write_scip_zarr

            zarr_path = write_scip_zarr(work / f"{name}.zarr", args.demo_n, args.demo_channels, None, args.seed,
                                        chunk_size=16)
            description = (f"{args.demo_n} synthetic demo cells (scip_gpu.demo.make_cell, seed {args.seed}, "
                           f"{args.demo_channels} channels, ragged 48..72 px), written by benchmarks/datasets.py")
        else:
            description = f"ragged zarr store {zarr_path}"
        zarr_path = Path(zarr_path).resolve()
        n_ch = channel_count(zarr_path)
        names = args.channel_names if args.zarr else None
        channels = names.split(",") if names else [f"ch{i}" for i in range(n_ch)]
        if len(channels) != n_ch:
            raise BenchError(f"{len(channels)} channel names for {n_ch} channels")
        n_obj = len(json.loads((zarr_path / ".zattrs").read_text())["shape"])
        partitions = args.partitions or max(1, min(4, n_obj // 5))

        print(f"[{name}] SCIP on {zarr_path} ({n_obj} objects, {n_ch} channels) ...", flush=True)
        scip_run = run_scip(scip_python, zarr_path, scip_config_yaml(channels, smooth=args.smooth), work / "scip",
                            n_workers=args.workers, partitions=partitions, timeout=args.timeout)
        if scip_run["rc"] != 0:
            raise BenchError(f"SCIP failed (exit {scip_run['rc']}); last lines of its log:\n{tail(scip_run['log'])}")
        print(f"[{name}] scip_gpu ...", flush=True)
        ov = scip_gpu_overrides(zarr_path, channels, work / "scip_gpu" / "out", smooth=args.smooth,
                                cluster="sync", device=args.device)
        ours_run = run_scip_gpu(ov, work / "scip_gpu", timeout=args.timeout)
        if ours_run["rc"] not in (0,):
            raise BenchError(f"scip_gpu failed (exit {ours_run['rc']}); last lines of its log:\n"
                             f"{tail(ours_run['log'])}")
        scip_df = read_scip_output(Path(scip_run["output"]))
        ours_df = read_scip_gpu_output(Path(ours_run["output"]))
        comp = compare(scip_df, ours_df, channels, atol=args.atol, top=args.top)
        report = {
            "generated": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
            "work": str(work),
            "dataset": {"name": name, "path": str(zarr_path), "description": description, "objects": n_obj,
                        "channel_names": channels},
            "scip_config": scip_config_yaml(channels, smooth=args.smooth),
            "settings": {"smooth": args.smooth, "masks": MASKS, "workers": args.workers, "partitions": partitions,
                         "atol": args.atol, "scip_gpu_cluster": "sync", "device": args.device},
            "machine": machine,
            "runs": {"scip": scip_run, "scip_gpu": ours_run},
            "comparison": comp,
        }
        RESULTS.mkdir(parents=True, exist_ok=True)
        (RESULTS / f"parity-{name}.json").write_text(report_json(report))
        (RESULTS / f"parity-{name}.md").write_text(markdown(report))
        print(f"\n[{name}] {n_obj} objects; rows aligned {comp['rows']['aligned']}; "
              f"columns only in SCIP {comp['only_in_scip']['count']}, only in scip_gpu "
              f"{comp['only_in_scip_gpu']['count']}")
        print(plain_table(comp["families"]))
        for side in ("only_in_scip", "only_in_scip_gpu"):
            byf = comp[side]["by_family"]
            if byf:
                print(f"  {side}: " + ", ".join(f"{f}: {len(v)}" for f, v in byf.items()))
        print(f"  -> {RESULTS / f'parity-{name}.md'}\n")
        return report
    finally:
        if args.keep:
            print(f"[{name}] kept work folder {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dataset", action="append", choices=["ifc10", "demo60"],
                    help="built-in dataset(s) (default: ifc10 when present, and demo60)")
    ap.add_argument("--zarr", help="compare on this ragged zarr store instead (with --name)")
    ap.add_argument("--name", help="dataset name for --zarr (report file names)")
    ap.add_argument("--channel-names", help="with --zarr: comma-separated channel names (default ch0,ch1,...)")
    ap.add_argument("--demo-n", type=int, default=60, help="objects in the demo dataset (default 60)")
    ap.add_argument("--demo-channels", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--smooth", type=float, default=1.0, help="li mask sigma for every channel (default 1.0)")
    ap.add_argument("--workers", type=int, default=2, help="SCIP -j (default 2)")
    ap.add_argument("--partitions", type=int, help="SCIP -s (default min(4, N/5))")
    ap.add_argument("--device", default="cpu", choices=["cpu", "auto", "cuda"], help="scip_gpu device")
    ap.add_argument("--atol", type=float, default=1e-6)
    ap.add_argument("--top", type=int, default=10, help="worst columns listed per family")
    ap.add_argument("--timeout", type=float, default=3600)
    ap.add_argument("--scip-python", help="python of a SCIP 0.1.12 venv")
    ap.add_argument("--setup-scip", action="store_true", help="create the SCIP venv if none is found")
    ap.add_argument("--keep", action="store_true", help="keep the work folder under benchmarks/.work")
    args = ap.parse_args(argv)
    try:
        scip_python = find_scip_python(args.scip_python, setup=args.setup_scip)
        machine = machine_description(scip_python)
        jobs = []
        if args.zarr:
            jobs.append((args.name or Path(args.zarr).stem, Path(args.zarr)))
        else:
            wanted = args.dataset or (["ifc10"] if REAL_10.exists() else []) + ["demo60"]
            for d in wanted:
                if d == "ifc10":
                    if not REAL_10.exists():
                        raise BenchError(f"{REAL_10} is not present")
                    jobs.append(("ifc10", REAL_10))
                else:
                    jobs.append((f"demo{args.demo_n}", None))
        for name, path in jobs:
            run_dataset(name, path, args, scip_python, machine)
    except BenchError as exc:
        print(f"scip_parity.py: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
