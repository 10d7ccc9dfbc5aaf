"""Training the VQ-autoencoder on vessel pairs: each pair lies on the VQ-AE's volume grid (the
paper's placement, encode.token_volume_grid), random patches of it are reconstructed through the
codebook. Loss: cross-entropy + soft Dice of the two 2-class outputs (vessels fill about 2 % of a
volume, so cross-entropy alone learns to draw background), plus the VQ codebook/commitment loss.
Optional: a clDice term (Shit et al., CVPR 2021) that rewards thin connected tubes: the soft
skeleton of each map must lie inside the other map, so a drawing that thickens or breaks vessels
pays even where its voxel overlap is good.
Validation: the reconstruction Dice of whole held-out pairs through encode -> tokens -> decode.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..encode import dice, occupancy_ijk, token_volume_grid
from ..jobs import Progress
from ..models.vqae import VQAEConfig, VQAutoEncoder
from .data import Mixture, Source, pair_files, read_pair, read_token_grids
from .previews import coronal_projection, pair_panels_png
from .settings import VQAETask


def pair_on_token_grid(files, config: VQAEConfig) -> torch.Tensor:
    """A pair as uint8 (2, I, J, K) on the VQ-AE's volume grid (fixed, moving)."""
    fixed, moving = read_pair(files)
    grid = token_volume_grid(fixed.grid, config)
    return torch.stack([occupancy_ijk(fixed, grid, files.fixed)[0], occupancy_ijk(moving, grid, files.moving)[0]]).to(torch.uint8)


# erosions of the soft skeleton: its radius reach in voxels (vessels of the 2 mm decoder: 1-3 voxels)
SKELETON_ITERATIONS = 4


def soft_skeleton(occupancy: torch.Tensor, iterations: int = SKELETON_ITERATIONS) -> torch.Tensor:
    """Differentiable skeleton of a soft map (N, I, J, K) in [0, 1]: what each erosion removes
    beyond its opening (min-pool erosion, max-pool dilation, 3 x 3 x 3)."""
    def erode(x):
        return -F.max_pool3d(-x, 3, 1, 1)

    x = occupancy[:, None]
    skeleton = F.relu(x - F.max_pool3d(erode(x), 3, 1, 1))
    for _ in range(iterations):
        x = erode(x)
        removed = F.relu(x - F.max_pool3d(erode(x), 3, 1, 1))
        skeleton = skeleton + F.relu(removed - skeleton * removed)
    return skeleton[:, 0]


def cldice_loss(vessel: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """1 - clDice of a soft vessel map and a binary target, both (N, I, J, K): the harmonic mean of
    the share of the target's skeleton inside the drawing and the drawing's skeleton inside the target."""
    dims = tuple(range(1, vessel.ndim))
    drawn_skeleton, target_skeleton = soft_skeleton(vessel), soft_skeleton(target)
    precision = ((drawn_skeleton * target).sum(dims) + 1) / (drawn_skeleton.sum(dims) + 1)
    sensitivity = ((target_skeleton * vessel).sum(dims) + 1) / (target_skeleton.sum(dims) + 1)
    return (1 - 2 * precision * sensitivity / (precision + sensitivity)).mean()


def reconstruction_loss(logits: torch.Tensor, pair: torch.Tensor, dice_weight: float,
                        cldice_weight: float = 0.0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(cross-entropy, 1 - soft Dice, 1 - clDice), weighted, of logits (N, 4, I, J, K) against the pair (N, 2, I, J, K)."""
    cross_entropy, dice, cldice = logits.new_zeros(()), logits.new_zeros(()), logits.new_zeros(())
    for channel in range(2):
        scan_logits = logits[:, 2 * channel: 2 * channel + 2].float()
        target = pair[:, channel]
        cross_entropy = cross_entropy + F.cross_entropy(scan_logits, target.long()) / 2
        vessel = scan_logits.softmax(1)[:, 1]
        dims = tuple(range(1, vessel.ndim))
        overlap = 2 * (vessel * target).sum(dims) + 1
        dice = dice + (1 - overlap / (vessel.sum(dims) + target.sum(dims) + 1)).mean() / 2
        if cldice_weight:
            cldice = cldice + cldice_loss(vessel, target.float()) / 2
    return cross_entropy, dice_weight * dice, cldice_weight * cldice


class VQAETrainer:
    kind = "vqae"
    loss_parts = ["cross_entropy", "dice_loss", "cldice_loss", "vq"]
    validation_columns = ["dice", "dice_fixed", "dice_moving", "codes_used"]
    higher_is_better = True

    def __init__(self, config: VQAEConfig, settings: VQAETask, sources: list[Source], validation: list[Source],
                 device: torch.device, progress: Progress):
        self.model_config, self.settings, self.device = config, settings, device
        self.patch = [min(p, n) for p, n in zip(settings.patch_shape_ijk, config.volume_shape_ijk)]
        if any(p % config.downsampling for p in self.patch):
            raise ValueError(f"task.patch_shape_ijk {settings.patch_shape_ijk} is not divisible by the VQ-AE's "
                             f"downsampling {config.downsampling}")
        self.tokens = self._read_tokens(settings.token_file, config) if settings.token_file else None
        if self.tokens is not None and config.encoder:
            raise ValueError("task.token_file trains a decoder for given tokens: set model.encoder to false")
        if not 0.0 <= settings.token_noise < 1.0 or (settings.token_noise and self.tokens is None):
            raise ValueError("task.token_noise is a share in [0, 1) of given tokens (it needs task.token_file)")
        # every token of the file, all grids: drawing from it follows the codes' frequencies
        self.code_pool = torch.cat([grid.flatten() for grid in self.tokens.values()]) if self.tokens else None
        groups, self.names = [], []
        for source, pairs in zip(sources, pair_files(sources)):
            progress.log(f"reading {len(pairs)} training pairs from {source.path}")
            groups.append([self._item(files) for files in pairs])
            self.names += [files.name for files in pairs]
        self.data = Mixture(groups, [source.weight for source in sources])
        self.validation = [(files.name, self._item(files)) for pairs in pair_files(validation) for files in pairs]
        self.metric = "dice" if self.validation else None

    @staticmethod
    def _read_tokens(path: str, config: VQAEConfig) -> dict[str, torch.Tensor]:
        grids, names = read_token_grids(Path(path), config.codebook_size, config.token_shape_ijk)
        return {name: torch.from_numpy(grid) for name, grid in zip(names, grids)}

    def _item(self, files) -> dict:
        """A pair on the VQ-AE's grid, uint8 (2, I, J, K), with its tokens (I/s, J/s, K/s) when decoding given tokens."""
        item = {"pair": pair_on_token_grid(files, self.model_config).to(self.device)}
        if self.tokens is not None:
            if files.name not in self.tokens:
                raise ValueError(f"{files.fixed}: the token file has no grid named {files.name}")
            item["tokens"] = self.tokens[files.name].to(self.device)
        return item

    def network(self) -> VQAutoEncoder:
        return VQAutoEncoder(self.model_config)

    def sample(self, rng: np.random.Generator) -> dict:
        """A random patch of a pair (and of its tokens: patches then start on token boundaries)."""
        item = self.data.draw(rng)
        step = self.model_config.downsampling if self.tokens is not None else 1
        start = [step * int(rng.integers((n - p) // step + 1)) for n, p in zip(item["pair"].shape[1:], self.patch)]
        box = tuple(slice(s, s + p) for s, p in zip(start, self.patch))
        sample = {"pair": item["pair"][(slice(None), *box)][None].float()}
        if self.tokens is not None:
            tokens = item["tokens"][tuple(slice(b.start // step, b.stop // step) for b in box)][None]
            sample["tokens"] = self._with_noise(tokens, rng) if self.settings.token_noise else tokens
        return sample

    def _with_noise(self, tokens: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
        """tokens (1, i, j, k) with a random `token_noise` share replaced by codes drawn from the token file."""
        replace = torch.from_numpy(rng.random(tokens.shape) < self.settings.token_noise).to(tokens.device)
        drawn = self.code_pool[torch.from_numpy(rng.integers(len(self.code_pool), size=tokens.shape))].to(tokens.device)
        return torch.where(replace, drawn, tokens)

    def loss(self, network, batch: dict):
        logits, vq_loss = network(tokens=batch["tokens"]) if "tokens" in batch else network(batch["pair"])
        cross_entropy, dice_loss, cldice_loss = reconstruction_loss(logits, batch["pair"], self.settings.dice_weight,
                                                                    self.settings.cldice_weight)
        vq = self.settings.vq_weight * vq_loss
        return cross_entropy + dice_loss + cldice_loss + vq, {"cross_entropy": cross_entropy, "dice_loss": dice_loss,
                                                              "cldice_loss": cldice_loss, "vq": vq}

    def _reconstruct(self, network: VQAutoEncoder, item: dict) -> tuple[torch.Tensor, torch.Tensor]:
        """(tokens (1, i, j, k), reconstructed pair (2, I, J, K) in {0, 1}) of a whole pair (2, I, J, K):
        through the encoder, or from the given tokens."""
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.device.type == "cuda"):
            tokens = item["tokens"][None] if "tokens" in item else network.encode(item["pair"][None].float())
            logits = network.decode(tokens).float()[0]
        return tokens, torch.stack([logits[1] > logits[0], logits[3] > logits[2]]).float()

    @torch.no_grad()
    def validate(self, network: VQAutoEncoder) -> dict:
        network.eval()
        scores, codes = [], set()
        for _, item in self.validation:
            tokens, reconstruction = self._reconstruct(network, item)
            scores.append([dice(reconstruction[c], item["pair"][c]) for c in range(2)])
            codes.update(tokens.unique().tolist())
        fixed, moving = np.mean(scores, axis=0)
        return {"dice": float((fixed + moving) / 2), "dice_fixed": float(fixed), "dice_moving": float(moving),
                "codes_used": len(codes)}

    @torch.no_grad()
    def preview(self, network: VQAutoEncoder, path) -> None:
        """Coronal projections of a pair (validation, else training) and its reconstruction."""
        network.eval()
        item = self.validation[0][1] if self.validation else self.data.groups[0][0]
        pair = item["pair"]
        _, reconstruction = self._reconstruct(network, item)
        # volumes (I, J, K) -> the [k, j, i] order that coronal_projection takes
        project = [coronal_projection(volume.permute(2, 1, 0)) for volume in (pair[0], pair[1], *reconstruction)]
        pair_panels_png(path, [("pair", project[0], project[1]), ("reconstruction", project[2], project[3])],
                        "fixed (magenta) and moving (green)")

    def card(self) -> dict:
        return {"trained_on": self.names, "validated_on": [name for name, _ in self.validation]}
