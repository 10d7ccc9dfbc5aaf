"""A sampler model: the denoiser and the VQ-autoencoder whose tokens it speaks, in one file, so that
`unleash sample --model FILE` needs nothing else (and `unleash encode` can use the same file); optionally
a refiner that turns a coarse decoder's vessel probabilities into 1 mm ones (models/refiner.py)."""
from __future__ import annotations

from torch import nn

from .config import SamplerConfig
from .denoiser import Denoiser
from .refiner import Refiner
from .vqae import VQAutoEncoder


class Sampler(nn.Module):
    def __init__(self, config: SamplerConfig):
        super().__init__()
        self.config = config
        self.vqae = VQAutoEncoder(config.vqae)
        self.denoiser = Denoiser(config.denoiser)
        self.refiner = Refiner(config.refiner) if config.refiner else None

    @staticmethod
    def of(vqae: VQAutoEncoder, denoiser: Denoiser, refiner: Refiner | None = None) -> Sampler:
        """A sampler holding copies of the weights of a trained VQ-AE, denoiser and refiner (checked to fit)."""
        sampler = Sampler(SamplerConfig(vqae=vqae.config, denoiser=denoiser.config,
                                        refiner=refiner.config if refiner else None))
        for part, trained in ((sampler.vqae, vqae), (sampler.denoiser, denoiser), (sampler.refiner, refiner)):
            if trained is not None:
                part.load_state_dict(trained.state_dict())
        return sampler
