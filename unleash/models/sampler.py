"""A sampler model: the denoiser and the VQ-autoencoder whose tokens it speaks, in one file, so that
`unleash sample --model FILE` needs nothing else (and `unleash encode` can use the same file)."""
from __future__ import annotations

from torch import nn

from .config import SamplerConfig
from .denoiser import Denoiser
from .vqae import VQAutoEncoder


class Sampler(nn.Module):
    def __init__(self, config: SamplerConfig):
        super().__init__()
        self.config = config
        self.vqae = VQAutoEncoder(config.vqae)
        self.denoiser = Denoiser(config.denoiser)

    @staticmethod
    def of(vqae: VQAutoEncoder, denoiser: Denoiser) -> Sampler:
        """A sampler holding copies of the weights of a trained VQ-AE and denoiser (checked to fit)."""
        sampler = Sampler(SamplerConfig(vqae=vqae.config, denoiser=denoiser.config))
        sampler.vqae.load_state_dict(vqae.state_dict())
        sampler.denoiser.load_state_dict(denoiser.state_dict())
        return sampler
