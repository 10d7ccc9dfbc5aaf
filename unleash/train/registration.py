"""Training the two-step registration network end to end, unsupervised, on vessel pairs.

The loss flows through the whole composition sqrt(phi1) o psi o sqrt(phi1), so the first step
learns what helps the second (the paper trained its steps greedily with detached inputs).
Loss: blurred-occupancy mismatch in both directions at two blurs, plus a diffusion penalty on
both displacements in mm. Augmentation: an independent random affine per scan, which adds
large, varied misalignments to the few real pairs. Validation: the network's landmark error
(TRE) on held-out pairs when they have landmarks, else their loss.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch

from .. import fields, workgrid
from ..jobs import Progress
from ..losses import gaussian_blur, occupancy_mse
from ..models.registration import RegistrationConfig, TwoStepRegistration
from ..outputs import landmark_errors_mm
from ..register import PreparedPair, network_fields, prepare_pair
from .data import Mixture, Source, pair_files, read_pair
from .previews import coronal_projection, pair_panels_png
from .settings import RegistrationTask


# the `training` defaults of a registration run: what the shipped model was trained with
def random_affine_mm(shape_dhw, spacing_mm: float, settings: RegistrationTask, rng: np.random.Generator,
                     device: torch.device | str = "cpu") -> torch.Tensor:
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
    axes = [(torch.arange(n, dtype=torch.float32, device=device) - (n - 1) / 2) * spacing_mm for n in shape_dhw]
    z, y, x = torch.meshgrid(*axes, indexing="ij")
    xyz = torch.stack([x, y, z], 0).reshape(3, -1)
    u = torch.as_tensor(matrix, dtype=torch.float32, device=device) @ xyz \
        + torch.as_tensor(shift, dtype=torch.float32, device=device)[:, None]
    return u.reshape(1, 3, *shape_dhw)


def registration_loss(network: TwoStepRegistration, a: torch.Tensor, b: torch.Tensor, settings: RegistrationTask,
                      spacing: float):
    """Symmetric blurred-occupancy mismatch + diffusion penalty of lattices (N, 1, D, H, W) with
    `spacing` mm; returns (loss, similarity, smoothness)."""
    forward, inverse = network(a, b)
    similarity = a.new_zeros(())
    for sigma in settings.blur_lattice_vox:
        a_s, b_s = gaussian_blur(a, sigma), gaussian_blur(b, sigma)
        similarity = similarity + occupancy_mse(fields.warp(b_s, forward, spacing), a_s) \
            + occupancy_mse(fields.warp(a_s, inverse, spacing), b_s)
    smoothness = fields.diffusion_penalty(forward, spacing) + fields.diffusion_penalty(inverse, spacing)
    return similarity + settings.regularisation * smoothness, similarity, smoothness


def _lattices(pair, config: RegistrationConfig, device) -> tuple[torch.Tensor, torch.Tensor]:
    a, _ = workgrid.resample_box(pair.fixed_occupancy, config.spacing_mm, config.lattice_mm)
    b, _ = workgrid.resample_box(pair.moving_occupancy, config.spacing_mm, config.lattice_mm)
    return a.to(device), b.to(device)


class ValidationPair(NamedTuple):
    """A held-out pair, prepared once: lattices (for the loss and previews) and occupancies on the device."""

    name: str
    pair: PreparedPair
    landmarks: Path | None
    lattices: tuple[torch.Tensor, torch.Tensor]
    occupancies: tuple[torch.Tensor, torch.Tensor]


class RegistrationTrainer:
    """The registration task for the shared loop (loop.py)."""

    kind = "registration"
    loss_parts = ["similarity", "smoothness"]

    def __init__(self, config: RegistrationConfig, settings: RegistrationTask, sources: list[Source],
                 validation: list[Source], device: torch.device, progress: Progress):
        self.model_config, self.settings, self.device = config, settings, device
        groups, self.names = [], []
        for source, pairs in zip(sources, pair_files(sources)):
            progress.log(f"reading {len(pairs)} training pairs from {source.path}")
            groups.append([_lattices(prepare_pair(*read_pair(files), config, inputs="vessels"), config, device)
                           for files in pairs])
            self.names += [files.name for files in pairs]
        self.data = Mixture(groups, [source.weight for source in sources])
        self.validation: list[ValidationPair] = []
        for pairs in pair_files(validation):
            progress.log(f"reading {len(pairs)} validation pairs")
            for files in pairs:
                pair = prepare_pair(*read_pair(files), config, inputs="vessels")
                self.validation.append(ValidationPair(files.name, pair, files.landmarks, _lattices(pair, config, device),
                                                      (pair.fixed_occupancy.to(device), pair.moving_occupancy.to(device))))
        has_landmarks = bool(self.validation) and all(v.landmarks is not None for v in self.validation)
        self.metric = ("tre_mm" if has_landmarks else "validation_loss") if self.validation else None
        self.higher_is_better = False
        self.validation_columns = ["tre_mm", "tre_before_mm"] if has_landmarks else ["validation_loss"]
        # the misalignment before registration does not change during training
        self.tre_before_mm = float(np.concatenate([landmark_errors_mm(v.pair, None, v.landmarks)
                                                   for v in self.validation]).mean()) if has_landmarks else None

    def network(self) -> TwoStepRegistration:
        return TwoStepRegistration(self.model_config)

    def sample(self, rng: np.random.Generator) -> dict:
        """A training pair in a random direction, each scan under its own random affine map."""
        a, b = self.data.draw(rng)
        if rng.random() < 0.5:
            a, b = b, a
        spacing = self.model_config.lattice_mm
        a = fields.warp(a, random_affine_mm(a.shape[2:], spacing, self.settings, rng, self.device), spacing)
        b = fields.warp(b, random_affine_mm(b.shape[2:], spacing, self.settings, rng, self.device), spacing)
        return {"fixed": a, "moving": b}

    def loss(self, network, batch: dict):
        loss, similarity, smoothness = registration_loss(network, batch["fixed"], batch["moving"], self.settings,
                                                         self.model_config.lattice_mm)
        return loss, {"similarity": similarity, "smoothness": smoothness}

    @torch.no_grad()
    def validate(self, network: TwoStepRegistration) -> dict:
        network.eval()
        if self.metric == "validation_loss":
            losses = [registration_loss(network, *v.lattices, self.settings, self.model_config.lattice_mm)[0].item()
                      for v in self.validation]
            return {"validation_loss": float(np.mean(losses))}
        after = []
        for v in self.validation:
            forward, _ = network_fields(network, *v.occupancies)
            after.append(landmark_errors_mm(v.pair, forward[0].float().cpu().numpy(), v.landmarks, field_grid=v.pair.grid))
        return {"tre_mm": float(np.concatenate(after).mean()), "tre_before_mm": self.tre_before_mm}

    @torch.no_grad()
    def preview(self, network: TwoStepRegistration, path) -> None:
        """Coronal projections of a validation (else training) pair before and after warping."""
        network.eval()
        a, b = self.validation[0].lattices if self.validation else self.data.groups[0][0]
        forward, _ = network(a, b)
        warped = fields.warp(b, forward, self.model_config.lattice_mm)
        fixed = coronal_projection(a[0, 0])
        pair_panels_png(path, [("before", fixed, coronal_projection(b[0, 0])),
                               ("after", fixed, coronal_projection(warped[0, 0]))],
                        "fixed (magenta) and moving (green)")

    def card(self) -> dict:
        return {"trained_on": self.names, "validated_on": [v.name for v in self.validation]}
