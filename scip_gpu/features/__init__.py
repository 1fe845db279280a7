"""Feature families. Importing this package registers every family in ``FAMILIES``."""

from . import cp_colocalization, cp_granularity, cp_intensity, cp_neighbors, cp_radial, cp_sizeshape, cp_texture, cp_zernike, intensity, meta, shape, texture  # noqa: F401  (registration)
from .registry import FAMILIES, FAMILY_ORDER, Column, Family, column_name, var_table

__all__ = ["FAMILIES", "FAMILY_ORDER", "Column", "Family", "column_name", "var_table"]
