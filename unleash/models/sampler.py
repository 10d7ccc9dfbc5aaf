"""A sampler model: the denoiser and the VQ-autoencoder whose tokens it speaks, in one file, so that
`unleash sample --model FILE` needs nothing else (and `unleash encode` can use the same file)."""
from __future__ import annotations

from dataclasses import dataclass, field

from torch import nn

from .config import from_dict_strict, require
from .denoiser import Denoiser, DenoiserConfig
from .vqae import VQAEConfig, VQAutoEncoder


@dataclass
class SamplerConfig:
    kind: str = "sampler"
    vqae: VQAEConfig = field(default_factory=VQAEConfig)
    denoiser: DenoiserConfig = field(default_factory=DenoiserConfig)

    def __post_init__(self):
        if self.denoiser.codebook_size != self.vqae.codebook_size:
            raise ValueError(f"the denoiser knows {self.denoiser.codebook_size} codes, the VQ-AE has {self.vqae.codebook_size}")
        if list(self.denoiser.token_shape_ijk) != self.vqae.token_shape_ijk:
            raise ValueError(f"the denoiser's token grid {self.denoiser.token_shape_ijk} is not the VQ-AE's "
                             f"{self.vqae.token_shape_ijk}")

    def to_dict(self) -> dict:
        return {"kind": self.kind, "vqae": self.vqae.to_dict(), "denoiser": self.denoiser.to_dict()}

    @staticmethod
    def from_dict(values: dict) -> SamplerConfig:
        require(isinstance(values, dict), f"a sampler config is a JSON object, not {type(values).__name__}")
        values = dict(values)
        parts = {"vqae": VQAEConfig.from_dict(values.pop("vqae", {})),
                 "denoiser": DenoiserConfig.from_dict(values.pop("denoiser", {}))}
        return from_dict_strict(SamplerConfig, {**values, **parts}, "sampler")


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
