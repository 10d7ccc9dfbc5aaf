"""The VQ-autoencoder's convolutional network is MONAI's AutoEncoder in plain torch: the shipped weights
were trained with MONAI's, so names, shapes and outputs must match it exactly."""
from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from unleash.checkpoints import DEFAULTS
from unleash.modelfile import check_model_file
from unleash.models.autoencoder import AutoEncoder

monai_nets = pytest.importorskip("monai.networks.nets", reason="MONAI (the test extra) is the reference")
SHIPPED = check_model_file(DEFAULTS["sampler"], "sampler")[1].vqae if DEFAULTS["sampler"].is_file() else None
LAYOUTS = [([4, 8], [2, 1]), ([8, 8, 16], [1, 2, 2])] + ([(SHIPPED.channels, SHIPPED.strides)] if SHIPPED else [])


@pytest.mark.parametrize("channels, strides", LAYOUTS)
def test_names_shapes_and_outputs_are_monais(channels, strides):
    reference = monai_nets.AutoEncoder(spatial_dims=3, in_channels=2, out_channels=4, channels=channels, strides=strides)
    ours = AutoEncoder(2, 4, channels, strides)
    expected = {name: tuple(t.shape) for name, t in reference.state_dict().items()}
    assert {name: tuple(t.shape) for name, t in ours.state_dict().items()} == expected
    ours.load_state_dict(reference.state_dict())
    pair = (torch.rand(1, 2, 24, 16, 32, generator=torch.Generator().manual_seed(0)) > 0.7).float()
    with torch.no_grad():
        assert torch.equal(ours.encode(pair), reference.encode(pair))
        assert torch.equal(ours(pair), reference(pair))
    assert ours(pair).shape == (1, 4, 24, 16, 32)


def test_building_and_loading_the_sampler_does_not_import_monai():
    code = ("import sys; from unleash.checkpoints import load_model; load_model(None, 'sampler'); "
            "print('monai' in sys.modules)")
    if not DEFAULTS["sampler"].is_file():
        pytest.skip("no shipped sampler in this checkout")
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip() == "False"


def test_a_stride_per_channel_count_is_needed():
    with pytest.raises(ValueError, match="one stride per channel count"):
        AutoEncoder(2, 4, [8, 16], [2])
