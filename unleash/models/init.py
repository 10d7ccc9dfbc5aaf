"""Weight initialisation that also works where a network is built for its shapes only, on the meta
device (the fit check of model files and checkpoints): there torch's normal_ imports its compiler,
which takes over a second, so the draws that only set values are skipped."""
from __future__ import annotations

import torch
from torch import nn


def embedding(count: int, width: int) -> nn.Embedding:
    """An embedding (count, width) left for its owner to initialise (nn.Embedding's own N(0, 1) is skipped)."""
    return nn.Embedding(count, width, _weight=torch.empty(count, width))


def normal_(weight: torch.Tensor, std: float) -> None:
    """N(0, std^2) in place; nothing on the meta device, where a weight has a shape but no values."""
    if not weight.is_meta:
        nn.init.normal_(weight, 0.0, std)
