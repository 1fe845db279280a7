"""Object sources: where objects come from.

A source lists its objects once, on the driver, as a table (``objects``): one row per object,
its exported metadata in ``meta_*`` columns and what a worker needs to load it in private
``_*`` columns. Workers then ``load`` partitions of that table. Loading never raises for one bad
object: the object's slot holds an ``ObjectError`` naming the input and the cause.
"""

from __future__ import annotations

import glob as globlib
import re
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from ..errors import InputError, ObjectError


class Source:
    """Base class of the object sources."""

    #: human-readable kind, for messages
    kind = "source"

    def __init__(self, cfg):
        self.cfg = cfg

    def objects(self) -> pd.DataFrame:  # pragma: no cover - interface
        raise NotImplementedError

    def channel_names(self, objects: pd.DataFrame) -> list[str]:
        """Channel names: the configured ones, else ``ch{i}`` or the channel keys."""
        if self.cfg.channel_names is not None:
            return list(self.cfg.channel_names)
        return [f"ch{c}" for c in self.selected_channels(objects)]

    def selected_channels(self, objects: pd.DataFrame) -> list:
        raise NotImplementedError  # pragma: no cover

    def load(self, rows: pd.DataFrame) -> list:
        """Images (C, H, W) for the rows, or an ``ObjectError`` in place of a bad object."""
        raise NotImplementedError  # pragma: no cover

    def describe(self, row) -> str:
        """Short name of an object for messages (its file, its index in a store...)."""
        return str(row.get("meta_path", row.name))


def expand_paths(path: str | None, what: str) -> list[Path]:
    """The dataset path (glob patterns allowed) as a list of existing paths."""
    if not path:
        raise InputError(f"dataset.path is not set: give the {what} to profile (dataset.path=...)")
    if any(ch in path for ch in "*?["):
        found = sorted(Path(p) for p in globlib.glob(path, recursive=True))
        if not found:
            raise InputError(f"dataset.path: no {what} matches the pattern {path!r}")
        return found
    p = Path(path)
    if not p.exists():
        raise InputError(f"dataset.path: {path!r} does not exist")
    return [p]


def regex_groups(regex: str | None, text: str, *, where: str) -> dict[str, str] | None:
    """Named groups of ``regex`` searched in ``text`` (None when it does not match)."""
    if not regex:
        return {}
    m = _compile(regex, where).search(text)
    return None if m is None else {k: v for k, v in m.groupdict().items()}


def _compile(regex: str, where: str):
    try:
        return re.compile(regex)
    except re.error as exc:
        raise InputError(f"{where}: invalid regular expression {regex!r}: {exc}") from exc


def named_groups(regex: str | None, where: str) -> list[str]:
    return list(_compile(regex, where).groupindex) if regex else []


def select_channels(img: np.ndarray, channels: Sequence[int] | None, name: str) -> np.ndarray:
    """Pick channel indices of a (C, H, W) image, with a clear error when one is missing."""
    if channels is None:
        return img
    c = img.shape[0]
    bad = [i for i in channels if not -c <= int(i) < c]
    if bad:
        raise ObjectError(
            f"{name}: channel index {bad[0]} is out of range, the image has {c} channel(s)"
            f" (valid: 0..{c - 1})", "load")
    return img[[int(i) for i in channels]]
