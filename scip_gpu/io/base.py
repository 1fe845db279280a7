"""Object sources: where objects come from.

A source lists its objects once, on the driver, as a table (``objects``): one row per object,
its exported metadata in ``meta_*`` columns and what a worker needs to load it in private
``_*`` columns. Workers then ``load`` partitions of that table. Loading never raises for one bad
object: the object's slot holds an ``ObjectError`` naming the input and the cause, whatever the
exception was. Every input the dataset path and pattern match gets a row (a broken link, an
unreadable store among several: a row whose ``_error`` column holds the cause).

Without ``dataset.channels`` the channel set is the one most objects have; objects with another
one are reported as errors (not the other way round).
"""

from __future__ import annotations

import glob as globlib
import logging
import os
import re
from collections import Counter
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import numpy as np
import pandas as pd

from ..errors import ConfigError, InputError, ObjectError, describe_exception, raise_if_transient, resolve_name

log = logging.getLogger("scip_gpu")


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

    def channel_count(self, objects: pd.DataFrame) -> int | None:
        """The number of channels most objects have (indexed by ``dataset.channels``), or None
        where channels are keys (per-channel TIFF, fields) or the count is unknown."""
        return getattr(self, "_n_channels", None)

    def load(self, rows: pd.DataFrame) -> list:
        """Images (C, H, W) for the rows, or an ``ObjectError`` in place of a bad object."""
        raise NotImplementedError  # pragma: no cover

    def describe(self, row) -> str:
        """Short name of an object for messages (its file, its index in a store...)."""
        path = row.get("meta_path")
        return str(path) if path is not None else str(getattr(row, "name", "object"))


def expand_paths(path: str | None, what: str) -> list[Path]:
    """The dataset path as a list of paths: a path that exists is taken literally (even with
    ``*``, ``?`` or ``[`` in its name), any other is a glob pattern."""
    if not path:
        raise InputError(f"dataset.path is not set: give the {what} to profile (dataset.path=...)")
    p = Path(path)
    if os.path.lexists(path):
        if not p.exists():
            raise InputError(f"dataset.path: {path!r} is a broken symbolic link (its target "
                             f"{_link_target(p)!r} does not exist)")
        return [p]
    if globlib.has_magic(path):
        found = sorted(Path(q) for q in globlib.glob(path, recursive=True))
        if not found:
            raise InputError(f"dataset.path: {path!r} does not exist, and as a pattern it matches no {what}")
        return found
    raise InputError(f"dataset.path: {path!r} does not exist")


def _link_target(p: Path) -> str:
    try:
        return os.readlink(p)
    except OSError:
        return "?"


def missing_file_message(path) -> str:
    """Why ``path`` cannot be opened although it was listed: a broken link, or removed since."""
    p = Path(path)
    if p.is_symlink():
        return f"{path}: broken symbolic link (its target {_link_target(p)!r} does not exist)"
    return f"{path}: file not found (was it removed during the run?)"


def load_each(load_one, rows) -> list:
    """``load_one(row)`` for every row, an ``ObjectError`` in the place of a row that failed
    (sources of fields of view, which ``process_fields`` loads one at a time)."""
    out = []
    for _, row in rows.iterrows():
        try:
            out.append(load_one(row))
        except ObjectError as exc:
            out.append(exc)
    return out


def object_error(exc: BaseException, name: str | Callable[[], str]) -> ObjectError:
    """Any exception raised while loading one object, as that object's ``ObjectError``: an
    ``ObjectError`` as it is, any other with the object's name and the exception's type and message.
    ``name``: the object's name, or a function giving it (called only here). A transient I/O
    failure (a stale NFS handle, a timeout...: ``errors.transient_io``) is not the object's: it is
    raised as ``StorageUnavailable`` and fails the partition."""
    raise_if_transient(exc, name)
    if isinstance(exc, ObjectError):
        return exc
    name = resolve_name(name, "object")
    return ObjectError(f"{name}: cannot be loaded ({describe_exception(exc)})", "load")


def row_error(row) -> ObjectError | None:
    """The error recorded for a row when the objects were listed (``_error`` column), if any."""
    err = row.get("_error") if hasattr(row, "get") else None
    return ObjectError(err, "load") if isinstance(err, str) else None


def integer_channels(channels, fmt: str) -> list[int] | None:
    """``dataset.channels`` as channel indices (formats whose channels are positions)."""
    if channels is None:
        return None
    out = []
    for c in channels:
        try:
            if isinstance(c, bool) or float(c) != int(c):
                raise ValueError
            out.append(int(c))
        except (TypeError, ValueError):
            raise ConfigError(f"dataset.channels={list(channels)}: format {fmt} takes channel indices "
                              f"(integers, 0 = first channel); {c!r} is not one") from None
    return out


def most_common(values: Iterable, *, what: str, describe: Callable[[Any], str] = str,
                size: Callable[[Any], Any] = lambda v: v, log_it: bool = True):
    """The value most objects have (ties: the larger by ``size``), logged with how many have it.

    Objects with another value are then reported one by one as errors by the loaders."""
    counts = Counter(values)
    if not counts:
        return None
    best, n_best = max(counts.items(), key=lambda kv: (kv[1], size(kv[0])))
    total = sum(counts.values())
    if log_it and len(counts) > 1:
        others = ", ".join(f"{describe(v)}: {n}" for v, n in counts.most_common() if v != best)
        tie = [v for v, n in counts.items() if n == n_best and v != best]
        log.warning("dataset.channels is not set: using %s, what %d of %d %ss have%s; the others (%s) are "
                    "reported as errors. Set dataset.channels to choose", describe(best), n_best, total, what,
                    f" (as many have {', '.join(describe(v) for v in tie)})" if tie else "", others)
    return best


def store_rows(paths: list[Path], list_one: Callable[[Path], list[dict]], what: str,
               regex: str | None = None) -> list[dict]:
    """The rows of several stores (``list_one(path)``). A store that cannot be listed is an
    ``InputError`` when it is the only one; among several it becomes one row holding the cause
    (reported in the run's error report, with the named groups of ``regex`` on its path when it
    matches) and the others are profiled."""
    rows: list[dict] = []
    failed: list[str] = []
    for path in paths:
        try:
            rows += list_one(path)
        except Exception as exc:  # noqa: BLE001 - any failure is this store's, named with its cause
            raise_if_transient(exc, str(path))  # (the storage's, not the store's: the run stops)
            msg = str(exc) if isinstance(exc, InputError) else f"{path}: cannot be read ({describe_exception(exc)})"
            if len(paths) == 1:
                raise InputError(msg) from exc
            failed.append(msg)
            groups = regex_groups(regex, str(path), where="dataset.regex") or {}
            rows.append({"meta_path": str(path), **{f"meta_{k}": v for k, v in groups.items()},
                         "_error": f"{msg}; none of its objects is profiled"})
    if failed and len(failed) == len(paths):
        raise InputError(f"none of the {len(paths)} {what}s can be read: " + "; ".join(failed[:5])
                         + (f"; ... ({len(failed) - 5} more)" if len(failed) > 5 else ""))
    for msg in failed:
        log.warning("%s; the other %ss are profiled and it is listed in errors.csv", msg, what)
    return rows


def check_some_usable(table: pd.DataFrame, where: str) -> None:
    """An ``InputError`` when every row listed holds an error: nothing of the dataset can be read."""
    if len(table) and "_error" in table and table["_error"].notna().all():
        causes = list(dict.fromkeys(table["_error"]))
        raise InputError(f"{where}: no object can be read: " + "; ".join(causes[:3])
                         + (f"; ... ({len(causes) - 3} more)" if len(causes) > 3 else ""))


def nullable_ints(table: pd.DataFrame, columns: Sequence[str]) -> pd.DataFrame:
    """Integer columns that lack a value in error rows: nullable integers (int64 when complete)."""
    for c in columns:
        if c in table:
            table[c] = table[c].astype("Int64" if table[c].isna().any() else np.int64)
    return table


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


def select_channels(img: np.ndarray, channels: Sequence[int] | None, name: str,
                    expected: int | None = None) -> np.ndarray:
    """Pick channel indices of a (C, H, W) image, with a clear error when one is missing.

    Without ``channels``, ``expected`` (the channel count most objects have) is checked instead."""
    c = img.shape[0]
    if channels is None:
        if expected is not None and c != expected:
            raise ObjectError(f"{name}: has {c} channel(s) where most objects have {expected}; set "
                              "dataset.channels to choose the channels to profile", "load")
        return img
    bad = [i for i in channels if not -c <= int(i) < c]
    if bad:
        raise ObjectError(
            f"{name}: channel index {bad[0]} is out of range, the image has {c} channel(s)"
            f" (valid: 0..{c - 1})", "load")
    return img[[int(i) for i in channels]]
