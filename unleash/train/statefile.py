"""A training checkpoint read and checked without torch (state.py loads its tensors): the format, the
kind of run, the step, the JSON skeleton of the optimiser's state, finite weights, and weights of
the shapes that the optimiser's moments were kept for. So a damaged checkpoint is refused before
torch is imported; whether the weights fit the run's model config is known once the network is
built (state.check_fits)."""
from __future__ import annotations

import json
import os
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from ..errors import UserError
from ..modelfile import TRAINING_STATE_FORMAT
from ..tensorfile import Header, nonfinite, read_header

FORMAT = TRAINING_STATE_FORMAT
FORMAT_VERSION = "1"
MODEL_PREFIX = "model."  # the network's weights; the optimiser's and scaler's tensors are named by the skeleton


def unpack(skeleton, tensors: dict):
    """The value that state._pack stored as `skeleton`, its tensors taken from `tensors` by name
    (torch tensors, or the header's entries for a check of their shapes)."""
    (tag, content), = skeleton.items()
    if tag == "tensor":
        return tensors[content]
    if tag == "dict":
        return {key: unpack(item, tensors) for key, item in content}
    if tag == "list":
        return [unpack(item, tensors) for item in content]
    if tag == "tuple":
        return tuple(unpack(item, tensors) for item in content)
    if tag == "value":
        return content
    raise ValueError(f"unknown entry {tag!r}")


@dataclass
class StateHeader:
    """What a checkpoint's header says, checked: the step, the skeleton, the best validation so far."""

    path: Path
    step: int
    skeleton: dict
    best: dict | None
    header: Header


def read_state_header(path: str | os.PathLike, kind: str) -> StateHeader:
    """The checked header of the training checkpoint of a `kind` run at `path`; UserError otherwise."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: no training checkpoint to resume from")
    try:
        header = read_header(path)
    except (OSError, ValueError) as exc:
        raise UserError(f"{path}: not a readable training checkpoint ({exc})") from None
    metadata = header.metadata
    if metadata.get("format") != FORMAT:
        raise UserError(f"{path}: not an unleash training checkpoint")
    if metadata.get("format_version") != FORMAT_VERSION:
        raise UserError(f"{path}: a training checkpoint of format version {metadata.get('format_version')!r}; this "
                        f"version of unleash reads version {FORMAT_VERSION!r}")
    if metadata.get("kind") != kind:
        raise UserError(f"{path}: is a checkpoint of a {metadata.get('kind')!r} run, not of a {kind!r} run")
    try:
        skeleton = json.loads(metadata["skeleton"])
        state = StateHeader(path, int(metadata["step"]), skeleton, json.loads(metadata.get("best", "null")), header)
        optimiser = unpack(skeleton["optimiser"], header.tensors)
        unpack(skeleton["scaler"], header.tensors)
        moments = [entry["exp_avg"].shape for entry in optimiser["state"].values() if "exp_avg" in entry]
    except (KeyError, ValueError, TypeError, AttributeError) as exc:
        raise UserError(f"{path}: the training checkpoint is damaged ({exc})") from None
    if state.step < 0:
        raise UserError(f"{path}: the training checkpoint is damaged (step {state.step})")
    weights = [name for name in header.tensors if name.startswith(MODEL_PREFIX)]
    broken = nonfinite(path, header, weights)
    if broken:
        raise UserError(f"{path}: the checkpoint's weights hold NaN or infinite values ({broken[0][len(MODEL_PREFIX):]})")
    # Adam keeps one moment per parameter, of its shape: a weight of another shape was not trained here
    unmatched = Counter(moments) - Counter(header.tensors[name].shape for name in weights)
    if unmatched:
        raise UserError(f"{path}: the checkpoint's weights do not fit its optimiser state (no weight of the shape "
                        f"{list(next(iter(unmatched)))})")
    return state
