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
from dataclasses import dataclass, field, fields
from pathlib import Path

from ..errors import UserError
from ..jobspec import MAX_SEED
from ..models.config import check_grid, check_values, require
from ..paths import require_file

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
        if self.seed > MAX_SEED:
            raise ValueError(f"training.seed must lie in 0..{MAX_SEED} (got {self.seed})")
        if self.precision not in PRECISIONS:
            raise ValueError(f"training.precision must be one of {', '.join(PRECISIONS)} (got {self.precision!r})")


@dataclass
class RegistrationTask:
    """The registration loss and augmentation (`task` in a run config)."""

    regularisation: float = 1.0
    blur_lattice_vox: list[float] = field(default_factory=lambda: [2.0, 1.0])
    rotation_deg: float = 6.0
    scaling: float = 0.06
    translation_mm: float = 8.0

    def __post_init__(self):
        require(self.scaling < 1, f"task.scaling is a share below 1 (got {self.scaling})")


@dataclass
class VQAETask:
    """The VQ-AE loss and patches (`task` in a run config)."""

    patch_shape_ijk: list[int] = field(default_factory=lambda: [128, 128, 128])  # cropped to the volume if larger
    dice_weight: float = 1.0
    vq_weight: float = 1.0
    # a token file (unleash encode's tokens.npz, or the paper's): train only codebook + decoder to turn these
    # tokens into their pairs (matched by name, e.g. case_032); the model then cannot encode
    token_file: str | None = None
    # with a token file: the share of a patch's tokens replaced by codes drawn from the whole file. A
    # decoder for given tokens learns from few pairs (the paper's tokens: ten) and memorises their token
    # neighbourhoods; sampled grids and other patients' grids hold neighbourhoods it never saw.
    token_noise: float = 0.0
    cldice_weight: float = 0.0  # weight of 1 - clDice (soft skeletons of SKELETON_ITERATIONS erosions)

    def __post_init__(self):
        check_grid(self.patch_shape_ijk, "task.patch_shape_ijk")
        require(self.token_noise <= 1, f"task.token_noise is a share in [0, 1] (got {self.token_noise})")


@dataclass
class DenoiserTask:
    """Masking and validation (`task` in a run config)."""

    held_out_grids: int = 4  # without --val: the last grids of the first token file validate
    validation_mask_shares: list[float] = field(default_factory=lambda: [0.15, 0.35, 0.55, 0.75, 0.95])

    def __post_init__(self):
        require(len(self.validation_mask_shares) > 0 and all(0 < s <= 1 for s in self.validation_mask_shares),
                f"task.validation_mask_shares are shares in (0, 1] (got {self.validation_mask_shares})")


# kind -> its `task` settings (its model config: models.config.CONFIGS; its `training` defaults: jobspec.TRAINING_DEFAULTS)
TASKS = {"registration": RegistrationTask, "vqae": VQAETask, "denoiser": DenoiserTask}


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
    path = require_file(path, "config file")
    try:
        values = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UserError(f"{path}: not a readable JSON config ({exc})") from None
    if not isinstance(values, dict):
        raise UserError(f"{path}: a config is a JSON object with the sections kind, model, training, task")
    unknown = set(values) - {"kind", "model", "training", "task"}
    if unknown:
        raise UserError(f"{path}: unknown config section(s): {', '.join(sorted(unknown))} (known: kind, model, training, task)")
    return values
