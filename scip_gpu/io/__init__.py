"""Object sources for every supported input format."""

from __future__ import annotations

from .base import Source
from .ome_zarr import OmeZarrFieldSource, OmeZarrObjectSource
from .tiff import ChannelTiffSource, FileSource
from .zarr_dense import DenseZarrSource
from .zarr_ragged import RaggedZarrSource


def make_source(dataset_cfg) -> Source:
    """The source for ``dataset.format``."""
    from ..demo import DemoSource
    from ..fields import FieldSource

    fmt = getattr(dataset_cfg.format, "value", dataset_cfg.format)
    if fmt == "arrays":
        from ..errors import ConfigError

        raise ConfigError("dataset.format=arrays holds images in memory: give them to scip_gpu.profile(images); "
                          "on the command line choose a dataset with +dataset=NAME")
    classes = {
        "demo": DemoSource,
        "zarr_ragged": RaggedZarrSource,
        "zarr": DenseZarrSource,
        "tiff": ChannelTiffSource,
        "multipage_tiff": FileSource,
        "ome_tiff": FileSource,
        "fields_tiff": FieldSource,
        "ome_zarr": OmeZarrFieldSource,
        "ome_zarr_objects": OmeZarrObjectSource,
    }
    return classes[fmt](dataset_cfg)


__all__ = ["Source", "make_source"]
