"""Model configs are dataclasses saved with the weights; reading one back is strict."""
from __future__ import annotations


def from_dict_strict(cls, values: dict, kind: str):
    """A config dataclass from its dict: unknown keys and another kind are errors, not silently dropped."""
    unknown = set(values) - set(cls.__dataclass_fields__)
    if unknown:
        raise ValueError(f"unknown {kind} config keys: {sorted(unknown)}")
    if values.get("kind", kind) != kind:
        raise ValueError(f"a {values['kind']!r} config where a {kind!r} config belongs")
    return cls(**values)
