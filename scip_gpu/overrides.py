"""Command-line overrides (``key=value``, ``+dataset=NAME``) checked against the schema before
Hydra composes them, so that the common mistakes get one line that says what to write instead.

Hydra's own messages for these mistakes are several lines long and, for a misspelt key, suggest
``+key=value``, which adds the misspelt key rather than fixing it. ``prepare`` checks every
override against the dataclasses of ``scip_gpu/config.py`` and the options in ``conf/``:

- an override that does not parse (typically a regex with ``(``, ``[`` or ``\\``): quote it;
- a key the schema does not have: the closest key, written in the form that works;
- a configuration group chosen with the wrong form (``dataset=demo`` for ``+dataset=demo``,
  ``+masks=li`` for ``masks=li``) or an option that does not exist;
- a value for a free-form mapping (``features.per_mask={otsu: [shape]}``,
  ``segmentation.compartments={DAPI: nucleus}``): Hydra cannot merge new keys into such a
  mapping in its struct mode, so the override is passed on as ``++key=value``, which can;
- ``dataset.*`` keys without a ``+dataset=...`` (nor ``dataset.format``): the demo (the default
  dataset) is chosen explicitly, so that they apply to it.

The same function prepares the overrides given to ``scip_gpu.profile``.
"""

from __future__ import annotations

import dataclasses
import difflib
import typing
from functools import lru_cache

from ._resources import conf_dir
from .config import Config
from .errors import ConfigError

#: configuration groups (folders of conf/) and whether conf/config.yaml's defaults choose them
#: (then they are overridden as ``group=option``; the others are added as ``+group=option``)
GROUPS_IN_DEFAULTS = ("masks", "features", "export", "cluster", "projection", "illumination", "segmentation")
ADDED_GROUPS = ("dataset",)

#: characters of a value that Hydra's override grammar reads as syntax unless quoted
_SPECIAL = set("()[]{},\\'\"*?|^$= :")


def group_options(group: str) -> list[str]:
    return sorted(p.stem for p in (conf_dir() / group).glob("*.yaml"))


@lru_cache(maxsize=None)
def _hints(cls) -> dict:
    return typing.get_type_hints(cls)


def _strip_optional(tp):
    if typing.get_origin(tp) is typing.Union:
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return tp


def all_keys(cls=Config, prefix: str = "") -> list[str]:
    """Every dotted key of the schema (list elements as ``.0``)."""
    out = []
    for f in dataclasses.fields(cls):
        tp = _strip_optional(_hints(cls)[f.name])
        out.append(prefix + f.name)
        if dataclasses.is_dataclass(tp):
            out += all_keys(tp, f"{prefix}{f.name}.")
        elif typing.get_origin(tp) in (list, typing.List):
            (elem,) = typing.get_args(tp) or (None,)
            if dataclasses.is_dataclass(elem):
                out += all_keys(elem, f"{prefix}{f.name}.0.")
    return out


def resolve(key: str):
    """What a dotted key is in the schema: ``("value" | "mapping" | "inside_mapping" | "node", None)``,
    or ``("unknown", (the known prefix, the bad part, the fields there))``."""
    tp = Config
    parts = key.split(".")
    for i, part in enumerate(parts):
        tp = _strip_optional(tp)
        origin = typing.get_origin(tp)
        if origin in (dict, typing.Dict):
            return ("mapping" if i == len(parts) else "inside_mapping"), None
        if origin in (list, typing.List):
            if not part.isdigit():
                return "unknown", (".".join(parts[:i]), part, ["0", "1", "..."])
            (tp,) = typing.get_args(tp) or (typing.Any,)
            continue
        if dataclasses.is_dataclass(tp):
            names = [f.name for f in dataclasses.fields(tp)]
            if part not in names:
                return "unknown", (".".join(parts[:i]), part, names)
            tp = _hints(tp)[part]
            continue
        return "value", None  # a key below a plain value (Hydra says so)
    tp = _strip_optional(tp)
    if typing.get_origin(tp) in (dict, typing.Dict):
        return "mapping", None
    if dataclasses.is_dataclass(tp) or typing.get_origin(tp) in (list, typing.List):
        return "node", None
    return "value", None


def value_type(key: str):
    """The schema's type of a plain value's dotted key (list elements as ``.0``), or None where
    the key is not a plain value of a dataclass (mappings, unknown keys)."""
    tp = Config
    for part in key.split("."):
        tp = _strip_optional(tp)
        if typing.get_origin(tp) in (list, typing.List) and part.isdigit():
            (tp,) = typing.get_args(tp) or (typing.Any,)
        elif dataclasses.is_dataclass(tp) and part in {f.name for f in dataclasses.fields(tp)}:
            tp = _hints(tp)[part]
        else:
            return None
    inner = _strip_optional(tp)
    if dataclasses.is_dataclass(inner) or typing.get_origin(inner) in (dict, typing.Dict):
        return None
    return tp


def check_value(key: str, value, value_text: str) -> None:
    """ConfigError (one line naming the key, the value and what the key takes) when ``value``
    cannot be a value of ``key`` (``batch_size=abc``, ``device=gpu``, ``strict=maybe``): Hydra
    would otherwise stop with its own several lines and exit status 1."""
    import enum

    from omegaconf import MISSING, OmegaConf
    from omegaconf.errors import ValidationError

    tp = value_type(key)
    if tp is None or isinstance(value, str) and "${" in value:  # (an interpolation: resolved later)
        return
    holder = dataclasses.make_dataclass("_Value", [("v", tp, dataclasses.field(default=MISSING))])
    try:
        OmegaConf.merge(OmegaConf.structured(holder), {"v": value})  # as Hydra merges the override
    except ValidationError as exc:
        inner = _strip_optional(tp)
        if isinstance(inner, type) and issubclass(inner, enum.Enum):
            names = [m.name for m in inner]
            close = difflib.get_close_matches(str(value), names, n=1)
            hint = f"; did you mean {key}={close[0]}?" if close else ""
            raise ConfigError(f"{key}={value_text}: not a valid value (choose from {', '.join(names)}){hint}") from None
        what = {int: "a whole number", float: "a number", bool: "true or false", str: "a string"}.get(inner)
        if typing.get_origin(inner) in (list, typing.List) and not isinstance(value, list):
            what = "a list"  # (a list with a wrong element: the cause names it)
        cause = str(exc).splitlines()[0]
        raise ConfigError(f"{key}={value_text}: " + (f"expected {what} ({cause})" if what else cause)) from None


def _suggest(key: str, value_text: str, prefix: str, bad: str, names: list[str]) -> str:
    """One line: the unknown key, and the closest key written as an override."""
    parts = key.split(".")
    rest = parts[len(prefix.split(".")) + 1 if prefix else 1:]
    join = lambda *p: ".".join(x for x in p if x)  # noqa: E731
    candidates = [join(prefix, m, *rest) for m in difflib.get_close_matches(bad, names, n=2, cutoff=0.6)]
    elsewhere = {k.rsplit(".", 1)[-1]: [] for k in all_keys()}
    for k in all_keys():
        elsewhere[k.rsplit(".", 1)[-1]].append(k)
    for name in [bad] + difflib.get_close_matches(bad, list(elsewhere), n=2, cutoff=0.75):
        candidates += [join(k, *rest) for k in elsewhere.get(name, [])]  # the same name elsewhere
    candidates = list(dict.fromkeys(c for c in candidates if c != key and resolve(c)[0] != "unknown"))
    if not candidates:  # an option of a method or filter given without its mapping (kwargs, settings)
        candidates = [c for c in (join(prefix, m, bad, *rest) for m in names) if resolve(c)[0] == "inside_mapping"]
    where = f" in {prefix}" if prefix else " at the top level"
    msg = f"unknown configuration key {key!r} ({bad!r} is not a key{where}"
    if candidates:
        best = candidates[0]
        return (msg + f"); did you mean {best}? Write {best}={value_text} (without '+': a '+' adds a key the "
                "schema does not have, which is refused)")
    return msg + f"; the keys there are: {', '.join(names)}); `python -m scip_gpu --cfg job` prints every key"


def _parse(text: str):
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import OverrideParseException

    try:
        (ov,) = OverridesParser.create().parse_overrides([text])
    except OverrideParseException as exc:
        key, _, value = text.partition("=")
        if value and set(value) & _SPECIAL and not (value[:1] in "'\"" and value[-1:] == value[:1]):
            raise ConfigError(
                f"cannot read the override '{text}': its value has characters that Hydra reads as syntax "
                f"({''.join(sorted(set(value) & _SPECIAL))!r}); quote the value inside the shell's quotes, e.g. "
                f"\"{key}='{value}'\" (a regex always needs this)") from None
        first = str(exc).splitlines()[1] if len(str(exc).splitlines()) > 1 else str(exc)
        raise ConfigError(f"cannot read the override '{text}': {first.strip()} (overrides are key=value, "
                          "+dataset=NAME or group=option)") from None
    return ov


def prepare(overrides: list[str]) -> list[str]:
    """Check command-line overrides; return them as Hydra should get them.

    Raises ``ConfigError`` (one line) for an override that does not parse, an unknown key, an
    unknown group option or a group chosen with the wrong form.
    """
    out: list[str] = []
    parsed = [(text, _parse(text)) for text in overrides]
    chosen_dataset = any(ov.key_or_group == "dataset" and ov.package is None and not ov.is_delete()
                         and isinstance(ov.value(), str) for _, ov in parsed)
    needs_demo = False
    seen_groups: set = set()
    for text, ov in parsed:
        key = ov.key_or_group
        if key.startswith("hydra.") or key == "hydra" or ov.package is not None:
            out.append(text)
            continue
        if ov.is_sweep_override():  # (Hydra's own message is several lines and a trace hint)
            raise ConfigError(f"{text}: a comma-separated value is a sweep, which scip_gpu does not run; "
                              f"for a list write {key}=[{text.split('=', 1)[1]}], for text with a comma "
                              f"quote it: {key}='{text.split('=', 1)[1]}'")
        if key in GROUPS_IN_DEFAULTS + ADDED_GROUPS and not key.count("."):
            if ov.is_delete():
                raise ConfigError(f"{text}: a configuration group cannot be removed; choose one of its options "
                                  f"({', '.join(group_options(key))})")
            if key in ADDED_GROUPS and key in seen_groups:  # (Hydra refuses it; a default's group: the last wins)
                raise ConfigError(f"{text}: {key} is chosen more than once; give it once")
            seen_groups.add(key)
        value_text = text.split("=", 1)[1] if "=" in text else ""
        if key in GROUPS_IN_DEFAULTS + ADDED_GROUPS and isinstance(ov.value(), str) and not ov.is_delete():
            options = group_options(key)
            if ov.value() not in options:
                close = difflib.get_close_matches(ov.value(), options, n=1)
                hint = f"; did you mean {close[0]}?" if close else ""
                raise ConfigError(f"{key}={ov.value()}: no such {key} configuration (choose from "
                                  f"{', '.join(options)}; they are in conf/{key}/){hint}")
            if key in ADDED_GROUPS and not ov.is_add() and not ov.is_force_add():
                raise ConfigError(f"{text}: a dataset is chosen with a '+': write +{key}={ov.value()}")
            if key in GROUPS_IN_DEFAULTS and (ov.is_add() or ov.is_force_add()):
                raise ConfigError(f"{text}: {key} already has a default ({key}=...); write {key}={ov.value()} "
                                  "without '+'")
            out.append(text)
            continue
        kind, info = resolve(key)
        if kind == "unknown" and not ov.is_delete():
            prefix, bad, names = info
            raise ConfigError(_suggest(key, value_text, prefix, bad, names))
        if kind in ("value", "node") and not ov.is_delete() and not ov.is_sweep_override():
            check_value(key, ov.value(), value_text)
        if key.startswith("dataset.") and not chosen_dataset:
            needs_demo = True
        if kind in ("mapping", "inside_mapping") and not (ov.is_add() or ov.is_force_add() or ov.is_delete()):
            text = "++" + text  # Hydra cannot merge new keys into a mapping without it (struct mode)
        out.append(text)
    if needs_demo and not any(ov.key_or_group == "dataset.format" for _, ov in parsed):
        out.insert(0, "+dataset=demo")  # (a dataset described key by key, with its format, is not the demo)
    return out
