"""The sampler's networks: the paper's configuration, its token layout, and checkpoints that load."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import DATA
from torch import nn

from unleash.models.denoiser import Denoiser, DenoiserConfig
from unleash.models.sampler import SamplerConfig
from unleash.models.vqae import VQAEConfig, VQAutoEncoder

TINY_VQAE = VQAEConfig(channels=[4, 8], strides=[2, 2], codebook_size=16, volume_shape_ijk=[32, 24, 32])
TINY_DENOISER = DenoiserConfig(codebook_size=16, token_shape_ijk=[8, 6, 8], layers=2, width=32, heads=4, feed_forward=64)


def test_the_default_configs_are_the_papers():
    vqae, denoiser = VQAEConfig(), DenoiserConfig()
    assert vqae.channels == [48, 48, 64, 64, 128, 192, 256, 384] and vqae.strides == [1, 2, 1, 2, 1, 2, 1, 2]
    assert vqae.token_shape_ijk == [16, 13, 16] and vqae.codebook_size == 1024
    assert denoiser.tokens == 3328 and denoiser.mask_id == 1024
    assert (denoiser.layers, denoiser.width, denoiser.heads, denoiser.feed_forward) == (12, 512, 16, 1024)
    SamplerConfig()  # the two parts agree


def test_the_papers_token_files_fit_the_default_grid():
    path = DATA / "seed_tokens" / "lung250m4b_train_tokens.npz"
    if not path.is_file():
        pytest.skip(f"the paper's token file is not at {path} (set UNLEASH_DATA)")
    tokens = np.load(path)["tokens"]
    assert list(tokens.shape[1:]) == VQAEConfig().token_shape_ijk
    assert 0 <= tokens.min() and tokens.max() < DenoiserConfig().codebook_size


class PaperTransformer(nn.Module):
    """The paper's denoiser, written with nn.TransformerEncoderLayer as in its repository."""

    def __init__(self, c: DenoiserConfig):
        super().__init__()
        self.token_embedding = nn.Embedding(c.codebook_size + 1, c.width)
        self.position_embedding = nn.Embedding(c.tokens, c.width)
        self.layer_norm = nn.LayerNorm(c.width)
        self.head = nn.Linear(c.width, c.codebook_size, bias=False)
        self.transformer = nn.Sequential(*[nn.TransformerEncoderLayer(c.width, c.heads, dim_feedforward=c.feed_forward,
                                                                      batch_first=True, activation=nn.GELU())
                                           for _ in range(c.layers)])

    def forward(self, q):
        return self.head(self.layer_norm(self.transformer(self.token_embedding(q) + self.position_embedding.weight)))


def test_the_denoiser_computes_what_the_papers_layers_compute_so_its_checkpoints_load():
    torch.manual_seed(0)
    paper = PaperTransformer(TINY_DENOISER).eval()
    ours = Denoiser(TINY_DENOISER).eval()
    ours.load_state_dict(paper.state_dict(), strict=True)
    tokens = torch.randint(0, TINY_DENOISER.codebook_size + 1, (2, TINY_DENOISER.tokens))
    with torch.no_grad():
        assert torch.allclose(ours(tokens), paper(tokens), atol=1e-5)


def test_a_token_at_grid_cell_ijk_decodes_near_the_voxel_block_at_ijk():
    torch.manual_seed(0)
    vqae = VQAutoEncoder(TINY_VQAE).eval()
    tokens = torch.zeros(1, *TINY_VQAE.token_shape_ijk, dtype=torch.long)
    changed = tokens.clone()
    cell = (5, 1, 3)
    changed[(0, *cell)] = 7
    with torch.no_grad():
        difference = (vqae.decode(changed) - vqae.decode(tokens)).abs().sum(1)[0]  # (I, J, K)
    # instance normalisation spreads a little of the change everywhere: look where most of it is
    centre = torch.nonzero(difference > difference.max() / 2).float().mean(0)
    block = TINY_VQAE.downsampling
    assert np.allclose(centre, [(c + 0.5) * block for c in cell], atol=block)  # with i and k swapped: 2 blocks off


def test_encoding_finds_the_nearest_code_and_decoding_gives_two_softmaxes():
    torch.manual_seed(0)
    vqae = VQAutoEncoder(TINY_VQAE).eval()
    pair = (torch.rand(2, 2, *TINY_VQAE.volume_shape_ijk) > 0.9).float()
    with torch.no_grad():
        latents = vqae.autoencoder.encode(pair)
        tokens = vqae.encode(pair)
        distances = ((latents[:, None] - vqae.codebook.weight[None, :, :, None, None, None]) ** 2).sum(2)
        assert torch.equal(tokens, distances.argmin(1))
        assert vqae.decode(tokens).shape == (2, 4, *TINY_VQAE.volume_shape_ijk)
    logits, vq_loss = vqae(pair)
    vq_loss.backward()
    assert vqae.autoencoder.encode[0].conv.weight.grad.abs().sum() > 0  # straight through to the encoder


@pytest.mark.parametrize("change, message", [
    ({"surprise": 1}, "unknown"),
    ({"denoiser": {**TINY_DENOISER.to_dict(), "codebook_size": 32}}, "codes"),
    ({"denoiser": {**TINY_DENOISER.to_dict(), "token_shape_ijk": [4, 3, 4]}}, "token grid"),
    ({"vqae": {**TINY_VQAE.to_dict(), "kind": "denoiser"}}, "'denoiser' config"),
])
def test_a_sampler_config_rejects_unknown_keys_and_parts_that_do_not_fit(change, message):
    values = {**SamplerConfig(vqae=TINY_VQAE, denoiser=TINY_DENOISER).to_dict(), **change}
    with pytest.raises(ValueError, match=message):
        SamplerConfig.from_dict(values)
