"""Column naming of the CellProfiler families (the ``cellprofiler`` preset).

Columns are ``feat_{mask}_{module}_{feature}_{channel}[_{params}]``, ``module`` being
CellProfiler's measurement category (``AreaShape``, ``Intensity``, ``Location``, ``Texture``),
and carry CellProfiler's own name of the measurement (``Column.measurement``), e.g.
``Intensity_MeanIntensity_DNA`` or ``Texture_Contrast_DNA_3_00_256``, in AnnData ``var`` and the
Parquet schema metadata: a CellProfiler user maps columns without parsing names.
"""

from __future__ import annotations

import numpy as np
from array_api_compat import array_namespace

from .registry import Column, column_name


def cp_column(family: str, mask: str | None, module: str, feature: str, channel: str | None,
              view: str, *, suffix: str = "", params: str = "") -> Column:
    """One column of a CellProfiler family.

    Parameters
    ----------
    family : str
        The family switch (``cp_sizeshape``, ...).
    module : str
        CellProfiler's category (``AreaShape``, ``Intensity``, ``Location``, ``Texture``).
    feature : str
        CellProfiler's feature name (``Area``, ``MeanIntensity``, ``CenterMassIntensity_X``).
    channel : str or None
        The measured channel (``None`` for the combined mask's shape, named ``combined``).
    suffix : str
        CellProfiler's parameter suffix of the name (``3_00_256`` for texture).
    params : str
        The same parameters, spelt out (``scale=3,direction=0,levels=256``).
    """
    ch = channel if channel is not None else "combined"
    key = f"{module}_{feature}_{ch}" + (f"_{suffix}" if suffix else "")
    if module == "AreaShape":
        measurement = f"AreaShape_{feature}"
    elif module == "Neighbors":  # CellProfiler names the objects apart from the measurement
        measurement = f"Neighbors_{feature}" + (f"_{suffix}" if suffix else "")
    else:
        measurement = f"{module}_{feature}_{ch}" + (f"_{suffix}" if suffix else "")
    return Column(column_name("feat", mask, key), "feat", family, feature, mask, view, channel,
                  params, measurement=measurement)


def cp_image(pixels):
    """CellProfiler's float image of a pixel stack: integer pixels divided by their type's
    maximum (``uint16`` by 65535, as CellProfiler's image loading), float pixels as they are.

    >>> cp_image(np.array([0, 65535], dtype=np.uint16)).tolist()
    [0.0, 1.0]
    """
    xp = array_namespace(pixels)
    out = pixels.astype(xp.float64)
    if np.dtype(pixels.dtype).kind in "iu":
        out /= float(np.iinfo(np.dtype(pixels.dtype)).max)  # in place: no second temporary
    return out
