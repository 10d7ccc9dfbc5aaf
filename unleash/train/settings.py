"""A training run's configuration: one JSON document that holds every hyper-parameter, saved as
RUNDIR/config.json so that a run can be read, repeated and resumed.

    {"kind": "registration" | "vqae" | "denoiser",
     "model":    the network's config (the model file's config),
     "training": TrainingSettings (the loop, shared by all kinds),
     "task":     the kind's own settings (loss weights, augmentation, patch size, ...)}

`--config FILE` holds any part of it; unknown keys are errors, never silently dropped.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, fields
from pathlib import Path

from ..errors import UserError
from ..models.config import check_values

PRECISIONS = ("auto", "bf16", "fp16", "fp32")


@dataclass
class TrainingSettings:
    iterations: int = 1000
    batch_size: int = 1             # the global batch: split over the processes of a torchrun job
    learning_rate: float = 1e-3
    warmup: int = 50                # linear warm-up steps, then cosine decay
    final_lr_fraction: float = 0.05  # the cosine ends at this share of the peak learning rate
    weight_decay: float = 0.0       # AdamW
    gradient_clip: float = 1.0      # max global gradient norm; 0 disables
    precision: str = "auto"         # auto: bf16 autocast on CUDA, fp32 elsewhere; fp16 adds a gradient scaler
    channels_last: bool = True      # channels-last memory for 3D convolutions on CUDA
    validate_every: int = 100       # steps; 0: only at the end
    checkpoint_every: int = 100     # steps between resumable checkpoints (and at the end, and when stopped)
    preview_every: int = 0          # steps between preview PNGs; 0: with each validation
    seed: int = 0

    def __post_init__(self):
        positive = {"iterations": self.iterations, "batch_size": self.batch_size, "learning_rate": self.learning_rate,
                    "checkpoint_every": self.checkpoint_every}
        for name, value in positive.items():
            if not value > 0:
                raise ValueError(f"training.{name} must be positive (got {value})")
        for name in ("warmup", "validate_every", "preview_every", "gradient_clip", "weight_decay"):
            if getattr(self, name) < 0:
                raise ValueError(f"training.{name} must not be negative (got {getattr(self, name)})")
        if not 0 <= self.final_lr_fraction <= 1:
            raise ValueError(f"training.final_lr_fraction must lie in [0, 1] (got {self.final_lr_fraction})")
        if self.precision not in PRECISIONS:
            raise ValueError(f"training.precision must be one of {', '.join(PRECISIONS)} (got {self.precision!r})")


def dataclass_from(cls, values: dict, section: str):
    """A settings dataclass from a dict; unknown keys and wrong values become one clear error."""
    if not isinstance(values, dict):
        raise UserError(f"{section}: the settings are a JSON object, not {type(values).__name__}")
    unknown = set(values) - {f.name for f in fields(cls)}
    if unknown:
        raise UserError(f"unknown {section} setting(s): {', '.join(sorted(unknown))} "
                        f"(known: {', '.join(f.name for f in fields(cls))})")
    try:
        check_values(cls, values, section)
        return cls(**values)
    except (TypeError, ValueError) as exc:
        raise UserError(f"{section}: {exc}") from None


def merged(base: dict, override: dict) -> dict:
    """`override` laid over `base`, section by section (a config file over the kind's defaults)."""
    result = dict(base)
    for key, value in override.items():
        result[key] = merged(result[key], value) if isinstance(value, dict) and isinstance(result.get(key), dict) else value
    return result


def read_config_file(path: str | Path) -> dict:
    path = Path(path)
    try:
        values = json.loads(path.read_text())
    except FileNotFoundError:
        raise UserError(f"{path}: no such config file") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UserError(f"{path}: not a readable JSON config ({exc})") from None
    if not isinstance(values, dict):
        raise UserError(f"{path}: a config is a JSON object with the sections kind, model, training, task")
    unknown = set(values) - {"kind", "model", "training", "task"}
    if unknown:
        raise UserError(f"{path}: unknown config section(s): {', '.join(sorted(unknown))} (known: kind, model, training, task)")
    return values
