"""Feature families. Importing this package registers every family in ``FAMILIES``."""

from . import (  # noqa: F401  (registration)
    cp_colocalization, cp_granularity, cp_intensity, cp_neighbors, cp_radial, cp_sizeshape, cp_texture, cp_zernike,
    intensity, meta, shape, texture,
)
from .registry import FAMILIES, FAMILY_ORDER, Column, Family, column_name, var_table

__all__ = ["FAMILIES", "FAMILY_ORDER", "Column", "Family", "column_name", "var_table"]
