"""Training the VQ-autoencoder on vessel pairs: each pair lies on the VQ-AE's volume grid (the
paper's placement, encode.token_volume_grid), random patches of it are reconstructed through the
codebook. Loss: cross-entropy + soft Dice of the two 2-class outputs (vessels fill about 2 % of a
volume, so cross-entropy alone learns to draw background), plus the VQ codebook/commitment loss.
Validation: the reconstruction Dice of whole held-out pairs through encode -> tokens -> decode.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from ..encode import dice, occupancy_ijk, token_volume_grid
from ..jobs import Progress
from ..models.vqae import VQAEConfig, VQAutoEncoder
from .data import Mixture, Source, pair_files, read_pair
from .previews import pair_panels_png


@dataclass
class VQAETask:
    """The VQ-AE loss and patches (`task` in a run config)."""

    patch_shape_ijk: list[int] = field(default_factory=lambda: [128, 128, 128])  # cropped to the volume if larger
    dice_weight: float = 1.0
    vq_weight: float = 1.0


TRAINING_DEFAULTS = {"iterations": 10000, "batch_size": 2, "learning_rate": 3e-4, "warmup": 200,
                     "validate_every": 500, "checkpoint_every": 250}


def pair_on_token_grid(files, config: VQAEConfig) -> torch.Tensor:
    """A pair as uint8 (2, I, J, K) on the VQ-AE's volume grid (fixed, moving)."""
    fixed, moving = read_pair(files)
    grid = token_volume_grid(fixed.grid, config)
    return torch.stack([occupancy_ijk(fixed, grid, files.fixed)[0], occupancy_ijk(moving, grid, files.moving)[0]]).to(torch.uint8)


def reconstruction_loss(logits: torch.Tensor, pair: torch.Tensor, dice_weight: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(cross-entropy, 1 - soft Dice) of logits (N, 4, I, J, K) against the pair (N, 2, I, J, K)."""
    cross_entropy, dice = logits.new_zeros(()), logits.new_zeros(())
    for channel in range(2):
        scan_logits = logits[:, 2 * channel: 2 * channel + 2].float()
        target = pair[:, channel]
        cross_entropy = cross_entropy + F.cross_entropy(scan_logits, target.long()) / 2
        vessel = scan_logits.softmax(1)[:, 1]
        dims = tuple(range(1, vessel.ndim))
        overlap = 2 * (vessel * target).sum(dims) + 1
        dice = dice + (1 - overlap / (vessel.sum(dims) + target.sum(dims) + 1)).mean() / 2
    return cross_entropy, dice_weight * dice


class VQAETrainer:
    kind = "vqae"
    loss_parts = ["cross_entropy", "dice_loss", "vq"]
    validation_columns = ["dice", "dice_fixed", "dice_moving", "codes_used"]
    higher_is_better = True

    def __init__(self, config: VQAEConfig, settings: VQAETask, sources: list[Source], validation: list[Source],
                 device: torch.device, progress: Progress):
        self.model_config, self.settings, self.device = config, settings, device
        self.patch = [min(p, n) for p, n in zip(settings.patch_shape_ijk, config.volume_shape_ijk)]
        if any(p % config.downsampling for p in self.patch):
            raise ValueError(f"task.patch_shape_ijk {settings.patch_shape_ijk} is not divisible by the VQ-AE's "
                             f"downsampling {config.downsampling}")
        groups, self.names = [], []
        for source, pairs in zip(sources, pair_files(sources)):
            progress.log(f"reading {len(pairs)} training pairs from {source.path}")
            groups.append([pair_on_token_grid(files, config).to(device) for files in pairs])
            self.names += [files.name for files in pairs]
        self.data = Mixture(groups, [source.weight for source in sources])
        self.validation = [(files.name, pair_on_token_grid(files, config).to(device))
                           for pairs in pair_files(validation) for files in pairs]
        self.metric = "dice" if self.validation else None

    def network(self) -> VQAutoEncoder:
        return VQAutoEncoder(self.model_config)

    def sample(self, rng: np.random.Generator) -> dict:
        pair = self.data.draw(rng)
        start = [int(rng.integers(n - p + 1)) for n, p in zip(pair.shape[1:], self.patch)]
        crop = pair[:, start[0]:start[0] + self.patch[0], start[1]:start[1] + self.patch[1], start[2]:start[2] + self.patch[2]]
        return {"pair": crop[None].float()}

    def loss(self, network, batch: dict):
        logits, vq_loss = network(batch["pair"])
        cross_entropy, dice_loss = reconstruction_loss(logits, batch["pair"], self.settings.dice_weight)
        vq = self.settings.vq_weight * vq_loss
        return cross_entropy + dice_loss + vq, {"cross_entropy": cross_entropy, "dice_loss": dice_loss, "vq": vq}

    def _reconstruct(self, network: VQAutoEncoder, pair: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(tokens (1, i, j, k), reconstructed pair (2, I, J, K) in {0, 1}) of a whole pair (2, I, J, K)."""
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.device.type == "cuda"):
            tokens = network.encode(pair[None].float())
            logits = network.decode(tokens).float()[0]
        return tokens, torch.stack([logits[1] > logits[0], logits[3] > logits[2]]).float()

    @torch.no_grad()
    def validate(self, network: VQAutoEncoder) -> dict:
        network.eval()
        scores, codes = [], set()
        for _, pair in self.validation:
            tokens, reconstruction = self._reconstruct(network, pair)
            scores.append([dice(reconstruction[c], pair[c]) for c in range(2)])
            codes.update(tokens.unique().tolist())
        fixed, moving = np.mean(scores, axis=0)
        return {"dice": float((fixed + moving) / 2), "dice_fixed": float(fixed), "dice_moving": float(moving),
                "codes_used": len(codes)}

    @torch.no_grad()
    def preview(self, network: VQAutoEncoder, path) -> None:
        """Coronal projections of a pair (validation, else training) and its reconstruction."""
        network.eval()
        pair = self.validation[0][1] if self.validation else self.data.groups[0][0]
        _, reconstruction = self._reconstruct(network, pair)
        # (2, I, J, K): project along j, the anterior-posterior axis; transpose to (K, I) so superior is up
        project = [volume.float().amax(dim=1).T.cpu().numpy() for volume in (pair[0], pair[1], *reconstruction)]
        pair_panels_png(path, [("pair", project[0], project[1]), ("reconstruction", project[2], project[3])],
                        "fixed (magenta) and moving (green)")

    def card(self) -> dict:
        return {"trained_on": self.names, "validated_on": [name for name, _ in self.validation]}
