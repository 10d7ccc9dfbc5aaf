"""Training the two-step registration network end to end, unsupervised, on vessel pairs.

The loss flows through the whole composition sqrt(phi1) o psi o sqrt(phi1), so the first step
learns what helps the second (the paper trained its steps greedily with detached inputs).
Loss: blurred-occupancy mismatch in both directions at two blurs, plus a diffusion penalty on
both displacements in mm. Augmentation: an independent random affine per scan, which adds
large, varied misalignments to the few real pairs.
"""
from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field

import numpy as np
import torch

from .. import fields, workgrid
from ..datasets import find_pairs
from ..geometry import read_volume
from ..losses import gaussian_blur, occupancy_mse
from ..models.registration import RegistrationConfig, TwoStepRegistration
from ..register import prepare_pair


@dataclass
class RegistrationTraining:
    iterations: int = 600
    learning_rate: float = 1e-3
    warmup: int = 30
    regularisation: float = 1.0
    blur_lattice_vox: list[float] = field(default_factory=lambda: [2.0, 1.0])
    rotation_deg: float = 6.0
    scaling: float = 0.06
    translation_mm: float = 8.0
    gradient_clip: float = 1.0
    seed: int = 0


def load_occupancies(folders: list[str], config: RegistrationConfig) -> list[tuple[str, torch.Tensor, torch.Tensor]]:
    """(name, fixed, moving) lattice occupancies (1, 1, d, h, w) of every pair in `folders`."""
    pairs = []
    for folder in folders:
        for files in find_pairs(folder):
            prepared = prepare_pair(read_volume(files.fixed), read_volume(files.moving), config, inputs="vessels")
            a, _ = workgrid.resample_box(prepared.fixed_occupancy, config.spacing_mm, config.lattice_mm)
            b, _ = workgrid.resample_box(prepared.moving_occupancy, config.spacing_mm, config.lattice_mm)
            pairs.append((files.name, a, b))
    return pairs


def random_affine_mm(shape_dhw, spacing_mm: float, settings: RegistrationTraining, rng: np.random.Generator) -> torch.Tensor:
    """Displacement (1, 3, D, H, W) in mm of a random affine map about the box centre."""
    angles = np.deg2rad(rng.uniform(-settings.rotation_deg, settings.rotation_deg, 3))
    rotation = np.eye(3)
    for axis, angle in enumerate(angles):
        c, s = math.cos(angle), math.sin(angle)
        i, j = [a for a in range(3) if a != axis]
        r = np.eye(3)
        r[i, i], r[i, j], r[j, i], r[j, j] = c, -s, s, c
        rotation = rotation @ r
    matrix = rotation @ np.diag(1 + rng.uniform(-settings.scaling, settings.scaling, 3)) - np.eye(3)
    shift = rng.uniform(-settings.translation_mm, settings.translation_mm, 3)
    axes = [(torch.arange(n, dtype=torch.float32) - (n - 1) / 2) * spacing_mm for n in shape_dhw]
    z, y, x = torch.meshgrid(*axes, indexing="ij")
    xyz = torch.stack([x, y, z], 0).reshape(3, -1)
    u = torch.from_numpy(matrix.astype(np.float32)) @ xyz + torch.from_numpy(shift.astype(np.float32))[:, None]
    return u.reshape(1, 3, *shape_dhw)


def registration_loss(network: TwoStepRegistration, a: torch.Tensor, b: torch.Tensor, settings: RegistrationTraining):
    """Symmetric blurred-occupancy mismatch + diffusion penalty; returns (loss, similarity)."""
    spacing = network.config.lattice_mm
    forward, inverse = network(a, b)
    similarity = a.new_zeros(())
    for sigma in settings.blur_lattice_vox:
        a_s, b_s = gaussian_blur(a, sigma), gaussian_blur(b, sigma)
        similarity = similarity + occupancy_mse(fields.warp(b_s, forward, spacing), a_s) \
            + occupancy_mse(fields.warp(a_s, inverse, spacing), b_s)
    smoothness = fields.diffusion_penalty(forward, spacing) + fields.diffusion_penalty(inverse, spacing)
    return similarity + settings.regularisation * smoothness, similarity


def learning_rate_at(step: int, settings: RegistrationTraining) -> float:
    """Linear warm-up, then cosine decay to 5 % of the peak."""
    if step < settings.warmup:
        return settings.learning_rate * (step + 1) / settings.warmup
    progress = (step - settings.warmup) / max(1, settings.iterations - settings.warmup)
    return settings.learning_rate * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * progress)))


def train(pairs, config: RegistrationConfig, settings: RegistrationTraining, network: TwoStepRegistration | None = None,
          on_step=None) -> TwoStepRegistration:
    """Plain loop over random (pair, direction, augmentation) draws, batch 1."""
    torch.manual_seed(settings.seed)
    rng = np.random.default_rng(settings.seed)
    network = network or TwoStepRegistration(config)
    network.train()
    optimiser = torch.optim.Adam(network.parameters(), lr=settings.learning_rate)
    for step in range(settings.iterations):
        _, a, b = pairs[rng.integers(len(pairs))]
        if rng.random() < 0.5:
            a, b = b, a
        shape = a.shape[2:]
        a = fields.warp(a, random_affine_mm(shape, config.lattice_mm, settings, rng), config.lattice_mm)
        b = fields.warp(b, random_affine_mm(shape, config.lattice_mm, settings, rng), config.lattice_mm)
        for group in optimiser.param_groups:
            group["lr"] = learning_rate_at(step, settings)
        start = time.perf_counter()
        loss, similarity = registration_loss(network, a, b, settings)
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(network.parameters(), settings.gradient_clip)
        optimiser.step()
        if on_step is not None:
            on_step(step + 1, settings.iterations, loss.item(), similarity.item(), time.perf_counter() - start)
    return network.eval()


def settings_dict(settings: RegistrationTraining) -> dict:
    return asdict(settings)
