"""Test-time adaptation: fine-tune a copy of the network on the pair itself (the paper's
refinement), the alternative to instance optimisation of the field in `optimise.py`."""
from __future__ import annotations

import copy

import torch

from . import workgrid
from .models.registration import TwoStepRegistration
from .train.registration import RegistrationTask, registration_loss


def adapt(network: TwoStepRegistration, fixed_occupancy: torch.Tensor, moving_occupancy: torch.Tensor,
          iterations: int, learning_rate: float = 1e-4, on_iteration=None) -> TwoStepRegistration:
    """A copy of `network` after `iterations` Adam steps of the training loss on this pair only."""
    config = network.config
    a, _ = workgrid.resample_box(fixed_occupancy, config.spacing_mm, config.lattice_mm)
    b, _ = workgrid.resample_box(moving_occupancy, config.spacing_mm, config.lattice_mm)
    tuned = copy.deepcopy(network).train()
    optimiser = torch.optim.Adam(tuned.parameters(), lr=learning_rate)
    settings = RegistrationTask()
    for step in range(iterations):
        loss = registration_loss(tuned, a, b, settings, config.lattice_mm)[0]
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
        if on_iteration is not None:
            on_iteration(step + 1, iterations, loss.item())
    return tuned.eval()
