"""The VQ-autoencoder that turns a fixed+moving vessel pair into a grid of discrete tokens and back.

A convolutional autoencoder (autoencoder.py: MONAI's AutoEncoder architecture) with 2 input
channels (fixed, moving occupancy) and 4 output channels (two 2-class softmaxes: fixed
background/vessel, moving background/vessel); between encoder and decoder each latent vector
is replaced by its nearest codebook entry, whose index is the token.

Axis order: the paper's. Volumes are tensors (N, C, I, J, K) in nibabel (i, j, k) order, so a token
grid (N, I/16, J/16, K/16) has the axes of the paper's token files: (16, 13, 16) <-> (256, 208, 256).
The engine's Volume arrays are [k, j, i]; callers transpose (see sample.py and encode.py).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from . import init
from .autoencoder import AutoEncoder, InstanceNorm, NormAct
from .config import VQAEConfig

COMMITMENT = 0.25  # beta of the VQ loss (van den Oord et al.; the paper's value)


class VQAutoEncoder(nn.Module):
    """pair (N, 2, I, J, K) in {0, 1} <-> tokens (N, I/s, J/s, K/s) in 0..codebook_size-1 -> logits (N, 4, I, J, K)."""

    def __init__(self, config: VQAEConfig):
        super().__init__()
        self.config = config
        self.autoencoder = AutoEncoder(in_channels=2, out_channels=4, channels=config.channels, strides=config.strides)
        self.codebook = init.embedding(config.codebook_size, config.channels[-1])
        nn.init.uniform_(self.codebook.weight, -1 / config.codebook_size, 1 / config.codebook_size)
        if not config.encoder:
            self.autoencoder.encode.requires_grad_(False)

    def nearest_codes(self, latents: torch.Tensor) -> torch.Tensor:
        """latents (N, C, i, j, k) -> tokens (N, i, j, k): the index of the nearest code vector (L2)."""
        z = latents.float().movedim(1, -1)
        codes = self.codebook.weight.float()
        distance = (z * z).sum(-1, keepdim=True) - 2 * z @ codes.T + (codes * codes).sum(-1)
        return distance.argmin(-1)

    def codes(self, tokens: torch.Tensor) -> torch.Tensor:
        """tokens (N, i, j, k) -> quantised latents (N, C, i, j, k)."""
        return self.codebook(tokens.long()).movedim(-1, 1)

    def encode(self, pair: torch.Tensor) -> torch.Tensor:
        return self.nearest_codes(self.autoencoder.encode(pair))

    def decode(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.autoencoder.decode(self.codes(tokens))

    def channels_last(self) -> VQAutoEncoder:
        """This network, in place, for inference on the CPU: channels-last weights and instance norms that
        keep that layout (oneDNN's channels-last 3D convolutions; the same logits to about 1e-4, about a
        third less time for the shipped decoder). The codes already come channels-last (`codes`)."""
        for module in self.modules():
            if isinstance(module, NormAct) and isinstance(module.N, nn.InstanceNorm3d):
                module.N = InstanceNorm(module.N.eps)
        return self.to(memory_format=torch.channels_last_3d)

    def forward(self, pair: torch.Tensor | None = None, tokens: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Training pass: (logits (N, 4, I, J, K), VQ loss); the decoder's gradient reaches the
        encoder straight through the quantisation. With `tokens` (N, i, j, k) instead of a pair: the
        decoder alone, for a model trained to decode given tokens (VQ loss 0)."""
        if tokens is not None:
            logits = self.decode(tokens)
            return logits, logits.new_zeros(())
        latents = self.autoencoder.encode(pair)
        quantised = self.codes(self.nearest_codes(latents)).to(latents.dtype)
        vq_loss = F.mse_loss(quantised, latents.detach()) + COMMITMENT * F.mse_loss(latents, quantised.detach())
        logits = self.autoencoder.decode(latents + (quantised - latents).detach())
        return logits, vq_loss
