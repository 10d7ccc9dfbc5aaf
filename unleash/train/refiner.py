"""Training the vessel refiner (models/refiner.py): from a coarse decoder's own vessel probabilities
of pairs whose real fine masks are known, random crops, to those masks.

Inputs are what the refiner meets when sampling: the decoder's probabilities of real tokens, not a
blurred copy of the masks (the decoder's blobs are its own). Loss: binary cross-entropy + soft Dice +
skeleton recall (Kirchhoff et al., ECCV 2024: the soft share of the target's centrelines, dilated by one
voxel, that the drawing covers; a thin vessel's centreline weighs as much as a thick one's, where Dice
counts voxels) + clDice (a drawing that thickens or breaks tubes pays even where it overlaps). Crops:
half centred on a vessel voxel of the target (vessels fill 2 % of a volume), half anywhere; random flips.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from ..models.refiner import Refiner
from .vqae import cldice_loss

SKELETON_TUBE = np.array([[[0, 0, 0], [0, 1, 0], [0, 0, 0]],
                          [[0, 1, 0], [1, 1, 1], [0, 1, 0]],
                          [[0, 0, 0], [0, 1, 0], [0, 0, 0]]], bool)  # one voxel's 6 face neighbours


def skeleton_tube(mask: torch.Tensor) -> torch.Tensor:
    """A binary mask (I, J, K) -> uint8 (I, J, K): 1 on its vessel voxels within one voxel (face
    neighbours) of its 3D skeleton (scikit-image's thinning, as benchmarks/morphometry.py), 0 elsewhere."""
    from scipy import ndimage
    from skimage.morphology import skeletonize

    vessel = mask.numpy().astype(bool)
    tube = ndimage.binary_dilation(skeletonize(vessel).astype(bool), SKELETON_TUBE) & vessel
    return torch.from_numpy(tube.astype(np.uint8))


@dataclass
class RefinerTraining:
    crop_coarse: int = 24  # crop edge in coarse voxels (the target's: factor times this)
    batch_size: int = 8
    steps: int = 2000
    learning_rate: float = 2e-3
    dice_weight: float = 1.0
    skeleton_recall_weight: float = 0.0  # the skeletons are the real masks', computed once per scan (1 s)
    cldice_weight: float = 0.0  # its soft skeletons make a step about five times slower on the CPU
    seed: int = 0


def draw_crop(coarse: torch.Tensor, fine: torch.Tensor, factor: int, edge: int, rng: np.random.Generator):
    """One crop of a scan: coarse probability (I, J, K) and fine target (f I, f J, f K), or fine maps
    (C, f I, f J, f K) whose first is the target -> (1, e, e, e), (C, f e, f e, f e) (C = 1: the target)."""
    shape = np.array(coarse.shape)
    fine = fine if fine.ndim == 4 else fine[None]
    if rng.random() < 0.5:
        vessel = torch.nonzero(fine[0, ::factor, ::factor, ::factor])
        centre = vessel[rng.integers(len(vessel))].numpy() if len(vessel) else shape // 2
    else:
        centre = rng.integers(0, shape)
    start = np.clip(centre - edge // 2, 0, shape - edge)
    box = tuple(slice(int(s), int(s) + edge) for s in start)
    fine_box = tuple(slice(factor * b.start, factor * b.stop) for b in box)
    x, y = coarse[box][None].float(), fine[(slice(None), *fine_box)].float()
    for axis in range(1, 4):
        if rng.random() < 0.5:
            x, y = x.flip(axis), y.flip(axis)
    return x, y


def refiner_loss(logits: torch.Tensor, targets: torch.Tensor, settings: RefinerTraining) -> torch.Tensor:
    """logits (N, 1, I, J, K) and binary targets (N, C, I, J, K): the mask, and with a skeleton-recall
    weight its skeleton tube -> the weighted sum of BCE, 1 - soft Dice, 1 - skeleton recall, 1 - clDice."""
    vessel = logits.sigmoid()[:, 0]
    target = targets[:, 0]
    dims = tuple(range(1, vessel.ndim))
    dice = 1 - (2 * (vessel * target).sum(dims) + 1) / (vessel.sum(dims) + target.sum(dims) + 1)
    loss = F.binary_cross_entropy_with_logits(logits[:, 0], target) + settings.dice_weight * dice.mean()
    if settings.skeleton_recall_weight:
        tube = targets[:, 1]
        recall = ((vessel * tube).sum(dims) + 1) / (tube.sum(dims) + 1)  # a crop without vessels: 1
        loss = loss + settings.skeleton_recall_weight * (1 - recall).mean()
    if settings.cldice_weight:
        loss = loss + settings.cldice_weight * cldice_loss(vessel, target)
    return loss


def train_refiner(refiner: Refiner, scans: list[tuple[torch.Tensor, torch.Tensor]], settings: RefinerTraining,
                  log=print) -> list[float]:
    """Train `refiner` in place on scans [(coarse probability (I, J, K), fine binary mask (f I, f J, f K))];
    AdamW, cosine learning rate. Returns the loss of each step; a non-finite loss stops with an error."""
    factor = refiner.config.factor
    if settings.skeleton_recall_weight:
        scans = [(coarse, torch.stack([fine, skeleton_tube(fine)])) for coarse, fine in scans]
    rng = np.random.default_rng(settings.seed)
    optimiser = torch.optim.AdamW(refiner.parameters(), lr=settings.learning_rate, weight_decay=1e-4)
    refiner.train()
    losses, started = [], time.perf_counter()
    for step in range(settings.steps):
        for group in optimiser.param_groups:
            group["lr"] = settings.learning_rate * 0.5 * (1 + math.cos(math.pi * step / settings.steps))
        crops = [draw_crop(*scans[rng.integers(len(scans))], factor, settings.crop_coarse, rng)
                 for _ in range(settings.batch_size)]
        x, y = (torch.stack(part) for part in zip(*crops))
        loss = refiner_loss(refiner(x), y, settings)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"refiner training: the loss is {loss.item()} at step {step}")
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        losses.append(loss.item())
        if step % 50 == 0 or step == settings.steps - 1:
            log(f"step {step + 1}/{settings.steps}: loss {np.mean(losses[-50:]):.4f} "
                f"({time.perf_counter() - started:.0f} s)")
    refiner.eval()
    return losses
