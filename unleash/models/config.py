"""Model configs are dataclasses saved with the weights; reading one back is strict: unknown keys,
values of another type, non-finite or negative numbers and grids too large for any scan are
errors, said before a network is built (a config comes from a file a user may have edited)."""
from __future__ import annotations

import math
from dataclasses import fields

# 512^3 voxels: a work or volume grid beyond it is a typo, not a scan (a 1 mm lung box is ~25 M)
MAX_GRID_VOXELS = 2 ** 27
MAX_CODES = 2 ** 15 - 1  # token grids are stored as int16


def _fits(value, declared: str) -> bool:
    """Whether `value` is of the declared type (the annotation's text); numbers must be finite
    and not negative: no setting of a model, a training loop or a task here is a negative quantity."""
    if declared.endswith(" | None"):
        return value is None or _fits(value, declared[: -len(" | None")])
    if declared.startswith("list[") and declared.endswith("]"):
        return isinstance(value, list) and all(_fits(item, declared[5:-1]) for item in value)
    if declared in ("int", "float"):
        allowed = int if declared == "int" else (int, float)
        return isinstance(value, allowed) and not isinstance(value, bool) and math.isfinite(value) and value >= 0
    if declared in ("bool", "str"):
        return isinstance(value, bool if declared == "bool" else str)
    return True  # a nested config, checked by its own class


_SAID = {"int": "an integer >= 0", "float": "a finite number >= 0", "bool": "true or false", "str": "text",
         "list[int]": "a list of integers >= 0", "list[float]": "a list of finite numbers >= 0"}


def _said(declared: str) -> str:
    if declared.endswith(" | None"):
        return _said(declared[: -len(" | None")]) + " or null"
    return _SAID.get(declared, declared)


def check_values(cls, values: dict, section: str) -> None:
    """Each given value has its field's type; the first that does not is named."""
    for f in fields(cls):
        declared = f.type if isinstance(f.type, str) else getattr(f.type, "__name__", str(f.type))
        if f.name in values and not _fits(values[f.name], declared):
            raise ValueError(f"{section}.{f.name} must be {_said(declared)}; got {values[f.name]!r}")


def require(condition: bool, message: str) -> None:
    if not condition:
        raise ValueError(message)


def check_grid(shape: list[int], name: str, smallest: int = 1) -> None:
    """A grid shape: three sizes of at least `smallest`, and not more voxels than any scan has."""
    require(len(shape) == 3 and min(shape) >= smallest,
            f"{name} must be three sizes of at least {smallest} (got {shape})")
    require(math.prod(shape) <= MAX_GRID_VOXELS,
            f"{name} {shape} has {math.prod(shape):,} voxels, more than the {MAX_GRID_VOXELS:,} of any scan")


def from_dict_strict(cls, values: dict, kind: str):
    """A config dataclass from its dict: unknown keys, another kind and values of the wrong type
    or range are errors, not silently dropped or left to fail inside the network."""
    if not isinstance(values, dict):
        raise ValueError(f"a {kind} config is a JSON object, not {type(values).__name__}")
    unknown = set(values) - set(cls.__dataclass_fields__)
    if unknown:
        raise ValueError(f"unknown {kind} config keys: {sorted(unknown)}")
    if values.get("kind", kind) != kind:
        raise ValueError(f"a {values['kind']!r} config where a {kind!r} config belongs")
    check_values(cls, values, kind)
    return cls(**values)
