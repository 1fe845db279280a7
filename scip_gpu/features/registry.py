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


FAMILIES: dict[str, Family] = {}

#: SCIP's column order of the families within one mask.
FAMILY_ORDER = ("regions", "bbox", "shape", "intensity", "texture",
                # CellProfiler's families (the ``cellprofiler`` preset), CellProfiler's order
                "cp_sizeshape", "cp_intensity", "cp_texture", "cp_radial", "cp_colocalization")


def register(family: Family) -> Family:
    FAMILIES[family.name] = family
    return family


def var_table(columns: Sequence[Column]) -> pd.DataFrame:
    """AnnData ``var``-style description of columns, indexed by column name."""
    # (no column may be called "dtype": AnnData's writer would mistake it for the frame's dtype)
    df = pd.DataFrame([asdict(c) for c in columns]).set_index("name").drop(columns=["dtype"])
    df.index.name = None
    return df.fillna("")


def columns_json(columns: Sequence[Column]) -> str:
    return json.dumps([asdict(c) for c in columns])
