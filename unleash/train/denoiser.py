"""Training the absorbing-diffusion denoiser on token grids: each sample masks a random share of a
grid's tokens (the share drawn uniformly, as absorbing diffusion's time t/T) and the denoiser
predicts the masked ones. Loss: cross-entropy on the masked tokens, averaged per grid.
Validation: the held-out negative log-likelihood per masked token (nats), averaged over fixed
mask shares and fixed masks, so that values are comparable between steps and runs.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from ..jobs import Progress
from ..models.denoiser import Denoiser, DenoiserConfig
from .data import Mixture, Source, read_token_grids
from .previews import token_panels_png
from .settings import DenoiserTask


def masked(tokens: torch.Tensor, share: float, rng: np.random.Generator, mask_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(input with about `share` of the tokens replaced by the mask id, which positions); >= 1 masked."""
    positions = rng.random(tokens.shape) < share  # tokens (1, L)
    if not positions.any():
        positions[0, int(rng.integers(tokens.shape[-1]))] = True
    positions = torch.from_numpy(positions).to(tokens.device)
    return torch.where(positions, torch.full_like(tokens, mask_id), tokens), positions


def masked_nll(logits: torch.Tensor, tokens: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy over each grid's masked tokens, then over the grids: (N, L, V), (N, L), (N, L)."""
    per_token = F.cross_entropy(logits.float().transpose(1, 2), tokens, reduction="none")
    return ((per_token * positions).sum(1) / positions.sum(1)).mean()


class DenoiserTrainer:
    kind = "denoiser"
    loss_parts: list[str] = []
    validation_columns = ["nll", "accuracy"]
    metric = "nll"
    higher_is_better = False

    def __init__(self, config: DenoiserConfig, settings: DenoiserTask, sources: list[Source], validation: list[Source],
                 device: torch.device, progress: Progress):
        self.model_config, self.settings, self.device = config, settings, device
        groups, self.names, held_out = [], [], []
        for index, source in enumerate(sources):
            grids, names = read_token_grids(source.path, config.codebook_size, config.token_shape_ijk)
            if index == 0 and not validation and settings.held_out_grids:
                if len(grids) <= settings.held_out_grids:
                    raise ValueError(f"{source.path}: {len(grids)} token grids leave none for training after holding out "
                                     f"{settings.held_out_grids} (set task.held_out_grids or give --val)")
                keep = len(grids) - settings.held_out_grids
                held_out += [(name, grid) for name, grid in zip(names[keep:], grids[keep:])]
                grids, names = grids[:keep], names[:keep]
            progress.log(f"{len(grids)} training token grids from {source.path}")
            groups.append([torch.from_numpy(grid.reshape(1, -1)).to(device) for grid in grids])
            self.names += names
        for source in validation:
            grids, names = read_token_grids(source.path, config.codebook_size, config.token_shape_ijk)
            held_out += list(zip(names, grids))
        self.data = Mixture(groups, [source.weight for source in sources])
        self.validation = [(name, torch.from_numpy(grid.reshape(1, -1)).to(device)) for name, grid in held_out]
        if not self.validation:
            self.metric = None

    def network(self) -> Denoiser:
        return Denoiser(self.model_config)

    def sample(self, rng: np.random.Generator) -> dict:
        tokens = self.data.draw(rng)
        noisy, positions = masked(tokens, float(rng.uniform(0, 1)), rng, self.model_config.mask_id)
        return {"input": noisy, "tokens": tokens, "positions": positions}

    def loss(self, network, batch: dict):
        return masked_nll(network(batch["input"]), batch["tokens"], batch["positions"]), {}

    @torch.no_grad()
    def validate(self, network: Denoiser) -> dict:
        network.eval()
        losses, correct, count = [], 0, 0
        for index, (_, tokens) in enumerate(self.validation):
            rng = np.random.default_rng([index])  # the same masks at every validation
            for share in self.settings.validation_mask_shares:
                noisy, positions = masked(tokens, share, rng, self.model_config.mask_id)
                with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.device.type == "cuda"):
                    logits = network(noisy)
                losses.append(masked_nll(logits, tokens, positions).item())
                correct += int((logits.argmax(-1) == tokens)[positions].sum())
                count += int(positions.sum())
        return {"nll": float(np.mean(losses)), "accuracy": correct / count}

    @torch.no_grad()
    def preview(self, network: Denoiser, path) -> None:
        """The middle coronal slice of a token grid: as it is, half masked, and the denoiser's guess."""
        network.eval()
        tokens = self.validation[0][1] if self.validation else self.data.groups[0][0]
        noisy, positions = masked(tokens, 0.5, np.random.default_rng(0), self.model_config.mask_id)
        guess = torch.where(positions, network(noisy).argmax(-1), tokens)
        shape = self.model_config.token_shape_ijk
        middle = shape[1] // 2

        def coronal(sequence: torch.Tensor) -> np.ndarray:  # (1, L) -> (K, I) at the middle j
            return sequence.reshape(shape)[:, middle, :].T.cpu().numpy()

        token_panels_png(path, [("tokens", coronal(tokens)), ("half masked", coronal(noisy)),
                                ("prediction", coronal(guess))], self.model_config.codebook_size, "token grid, middle slice")

    def card(self) -> dict:
        return {"trained_on": self.names, "validated_on": [name for name, _ in self.validation]}
