"""The feature registry: one table from which columns, AnnData ``var``, tests and benchmarks are
generated.

A *family* (regions, bbox, shape, intensity, texture, raw) knows the columns it produces for a
mask and a list of channels, and computes them for a whole batch at once. Columns keep SCIP's
names (``feat_{mask}_{key}``, ``meta_{mask}_{key}``) and carry a structured description
(family, feature, mask, view, channel, parameters) so nobody needs to parse names back.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from typing import Callable, Sequence

import pandas as pd


@dataclass(frozen=True)
class Column:
    """One output column and what it measures."""

    name: str
    kind: str  # "meta" (AnnData obs) or "feat" (AnnData X)
    family: str
    feature: str
    mask: str | None = None
    view: str | None = None
    channel: str | None = None
    params: str = ""
    dtype: str = "float64"
    #: CellProfiler's name of the measurement (``cellprofiler`` preset), e.g.
    #: ``Texture_Contrast_DNA_3_00_256``; empty for SCIP's families
    measurement: str = ""


def column_name(kind: str, mask: str | None, key: str) -> str:
    """SCIP's naming: ``{kind}_{mask}_{key}``, or ``{kind}_{key}`` without a mask."""
    return f"{kind}_{mask}_{key}" if mask else f"{kind}_{key}"


@dataclass(frozen=True)
class Family:
    """A feature family.

    Attributes
    ----------
    name : str
    columns : callable (mask_name, channel_names) -> list[Column]
    compute : callable (batch, mask_result, context) -> (N, K) array
        ``K == len(columns(...))``; ``mask_result`` is None for unmasked families.
    masked : bool
        Whether the family is computed per mask method (all but ``raw``).
    description : str
    """

    name: str
    columns: Callable[[str | None, Sequence[str]], list[Column]]
    compute: Callable
    masked: bool = True
    description: str = ""
    #: whether ``columns`` takes the ``features.cellprofiler`` options (keyword ``options``)
    options: bool = False
    #: computed per field of view from the field's label images by the fields pipeline, not per
    #: batch (``columns`` takes the keyword ``compartments``; none without a segmentation)
    per_field: bool = False


FAMILIES: dict[str, Family] = {}

#: SCIP's column order of the families within one mask.
FAMILY_ORDER = ("regions", "bbox", "shape", "intensity", "texture",
                # CellProfiler's families (the ``cellprofiler`` preset), CellProfiler's order
                "cp_sizeshape", "cp_zernike", "cp_intensity", "cp_texture", "cp_granularity", "cp_radial",
                "cp_radial_zernike", "cp_colocalization", "cp_neighbors")


def register(family: Family) -> Family:
    FAMILIES[family.name] = family
    return family


#: families written for every mask that has masked features, right after its bbox columns
FLAG_FAMILIES = ("empty",)


def nan_reason(c: Column) -> str:
    """Why column ``c`` can be NaN (besides rows with ``meta_status == "error"``, which are NaN
    in every feature column): the README's Outputs section explains the same per family."""
    m = c.mask or ""
    flag = f"meta_{m}_empty_{c.channel}" if m else f"meta_empty_{c.channel}"
    comb = f"meta_{m}_empty_combined" if m else "meta_empty_combined"
    combined = c.view is not None and c.view.startswith("combined")
    if c.family == "empty":
        return "null only in error rows"
    if c.family == "regions":
        return "only in error rows"
    if c.family == "bbox":
        return "no channel mask holds a pixel (every meta_*_empty_* flag of the mask true)"
    if c.family == "raw":
        return ("skewness, kurtosis: the channel is constant" if c.feature in ("skewness", "kurtosis")
                else "only in error rows")
    if c.family == "cp_neighbors":
        return FAMILY_NAN_REASONS["cp_neighbors"]
    reason = f"the combined mask is empty ({comb})" if combined else f"the channel's mask is empty ({flag})"
    if c.family == "intensity":
        if c.view is not None and "bgcorr" in c.view and combined:
            reason += "; or the combined mask covers the whole image (no background to subtract)"
        if c.feature in ("skewness", "kurtosis"):
            reason += "; or the values in the view are constant"
    if c.family == "texture" and c.feature.startswith("sobel"):
        reason += "; or no pixel of the view has all 8 neighbours inside it (mask thinner than 3 pixels)"
    extra = _cp_nan_reason(c)
    if extra:
        reason += "; or " + extra
    return reason


def _cp_nan_reason(c: Column) -> str:
    """The cases beyond an empty mask where a CellProfiler column is NaN (each family module's
    docstring has the details)."""
    f = c.feature or ""
    if c.family == "cp_sizeshape":
        if f.startswith("NormalizedMoment_") and sum(int(v) for v in f.split("_")[1:3]) < 2:
            return "always: normalised moments of order below 2 are undefined (as in CellProfiler)"
        if f == "FormFactor":
            return "the perimeter is 0 (an object of one or two pixels)"
        return ""
    if c.family in ("cp_zernike", "cp_radial_zernike"):
        return "the object is one pixel (its enclosing circle has radius 0)"
    if c.family == "cp_texture":
        return ("no pair of object pixels at this scale and direction with both gray levels above 0 (an "
                "object thinner than the scale, or a dim channel: CellProfiler's image over the type's "
                "maximum quantises to 0 at 256 levels)")
    if c.family == "cp_granularity":
        return "the object's image has fewer than 2 rows or columns once resampled (subsample_size)"
    if c.family == "cp_colocalization":
        if f.startswith("Correlation") or f.startswith("Slope"):
            return "a channel is constant in the object (Slope: channel A)"
        if f.startswith("Costes"):
            return ("Costes' thresholds are undefined (fewer than 3 non-zero pixels, a constant channel, no "
                    "threshold with a non-negative background correlation, or values outside [0, 1])")
        return ""
    return ""


#: why columns of a family can be NaN in ok rows ({flag}: the mask's flag columns)
FAMILY_NAN_REASONS = {
    "regions": "never in ok rows",
    "bbox": "no channel mask holds a pixel",
    "empty": "never in ok rows (flags; null in error rows)",
    "shape": "the channel's mask ({flag}_{{channel}}) or the combined mask ({flag}_combined) is empty",
    "intensity": ("the channel's mask ({flag}_{{channel}}) or the combined mask ({flag}_combined) is empty; "
                  "combined background-corrected views: the combined mask covers the whole image; "
                  "skewness, kurtosis: constant values in the view"),
    "texture": ("the channel's mask ({flag}_{{channel}}) or the combined mask ({flag}_combined) is empty; "
                "Sobel statistics: no pixel of the view with all 8 neighbours inside it (mask thinner than "
                "3 pixels)"),
    "raw": "skewness, kurtosis: a constant channel",
    "cp_sizeshape": ("the channel's mask ({flag}_{{channel}}) or the combined mask ({flag}_combined) is empty; "
                     "NormalizedMoment of order below 2: always; FormFactor: perimeter 0"),
    "cp_zernike": "an empty mask, or a one-pixel object (enclosing circle of radius 0)",
    "cp_intensity": "the channel's mask ({flag}_{{channel}}) or the combined mask ({flag}_combined) is empty",
    "cp_texture": ("an empty mask, or no pair of object pixels at the scale and direction with both gray "
                   "levels above 0 (thin objects; dim channels quantise to 0 at 256 levels)"),
    "cp_granularity": "an empty mask, or fewer than 2 rows or columns once resampled",
    "cp_radial": "an empty mask",
    "cp_radial_zernike": "an empty mask, or a one-pixel object",
    "cp_colocalization": ("an empty combined mask; Correlation/Slope: a constant channel; Costes: undefined "
                          "thresholds (few or constant pixels, values outside [0, 1])"),
    "cp_neighbors": ("the object has no pixel in the compartment's label image (a cell without nucleus), or "
                     "its field's neighbours could not be measured (errors.csv); closest objects, distances: "
                     "fewer than 2 objects in the field (second closest and angle: fewer than 3)"),
}


def family_nan_reason(family: str, mask: str | None) -> str:
    """Why a family's columns of mask ``mask`` can be NaN in ok rows (error rows are NaN in
    every feature column)."""
    flag = f"meta_{mask}_empty" if mask else "meta_empty"
    return FAMILY_NAN_REASONS.get(family, "").format(flag=flag)


def var_table(columns: Sequence[Column]) -> pd.DataFrame:
    """AnnData ``var``-style description of columns, indexed by column name: the columns of
    ``features.columns.csv`` but ``dtype`` (every ``X`` value is a float)."""
    # (no column may be called "dtype": AnnData's writer would mistake it for the frame's dtype)
    df = pd.DataFrame([asdict(c) for c in columns]).set_index("name").drop(columns=["dtype"])
    df.index.name = None
    df["nan_reason"] = [nan_reason(c) for c in columns]
    return df.fillna("")


def columns_json(columns: Sequence[Column]) -> str:
    return json.dumps([asdict(c) for c in columns])
