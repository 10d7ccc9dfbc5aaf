"""The vessel refiner: a coarse decoder's vessel probability -> vessel logits at `factor` times its
resolution (the shipped sampler: 2 mm -> 1 mm).

Why: the 2 mm decoder draws thin vessels as soft, thick blobs (its probabilities of the paper's tokens
of the training pairs, upsampled trilinearly and thresholded, give 18-21 skeleton voxels per 1000 vessel
voxels where the real 1 mm masks give 27-29; the 2 mm grid alone costs only about one). A small 3D
convolutional net learns how such a soft map continues as crisp tubes at 1 mm. It works on the coarse
grid and writes the factor^3 fine voxels of each coarse voxel as channels (a 3D pixel shuffle), so its
cost is that of a few convolutions at 2 mm; the upsampled input's logit is its starting point.

Tensors: (N, 1, I, J, K) probabilities in [0, 1] -> (N, 1, f I, f J, f K) logits (`forward`, for
training) or probabilities (`probabilities`, for sampling).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .config import RefinerConfig

PROBABILITY_FLOOR = 1e-4  # the input's logit is taken of probabilities clamped to [floor, 1 - floor]


def pixel_shuffle_3d(x: torch.Tensor, factor: int) -> torch.Tensor:
    """(N, C f^3, I, J, K) -> (N, C, f I, f J, f K): channel (a, b, c) of a voxel is its fine voxel (a, b, c)."""
    n, c, i, j, k = x.shape
    c //= factor ** 3
    x = x.view(n, c, factor, factor, factor, i, j, k).permute(0, 1, 5, 2, 6, 3, 7, 4)
    return x.reshape(n, c, i * factor, j * factor, k * factor)


class Refiner(nn.Module):
    def __init__(self, config: RefinerConfig):
        super().__init__()
        self.config = config
        width, layers = config.width, []
        for index in range(config.layers):
            dilation = 2 if 0 < index < config.layers - 1 else 1
            layers += [nn.Conv3d(1 if index == 0 else width, width, 3, padding=dilation, dilation=dilation),
                       nn.LeakyReLU(0.1)]
        self.body = nn.Sequential(*layers)
        self.head = nn.Conv3d(width, config.factor ** 3, 1)
        nn.init.zeros_(self.head.weight)  # untrained: the upsampled input, unchanged
        nn.init.zeros_(self.head.bias)

    def start(self, probability: torch.Tensor) -> torch.Tensor:
        """The upsampled input's logit (N, 1, f I, f J, f K) float32, to which the net adds its correction."""
        start = probability.float().clamp(PROBABILITY_FLOOR, 1 - PROBABILITY_FLOOR).logit()
        if self.config.factor > 1:
            start = F.interpolate(start, scale_factor=self.config.factor, mode="trilinear", align_corners=False)
        return start

    def forward(self, probability: torch.Tensor) -> torch.Tensor:
        return self.start(probability) + pixel_shuffle_3d(self.head(self.body(probability)), self.config.factor)

    @torch.no_grad()
    def probabilities(self, probability: torch.Tensor) -> torch.Tensor:
        """sigmoid(forward) as sampling needs it, float32 (N, 1, f I, f J, f K): the convolutions in
        bfloat16 (on the CPU too, where bfloat16 and float32 drawings agree on 99.96 % of the voxels) on
        channels-last tensors, the leaky ReLUs in place, and the correction added into the upsampled
        logit through a strided view instead of a shuffled copy: the same numbers as autocast, in
        about half its time on the CPU (oneDNN's channels-last 3D convolutions)."""
        def conv(x, layer):  # channels-last weights: with one input channel, only they make oneDNN go channels-last
            weight = layer.weight.to(torch.bfloat16, memory_format=torch.channels_last_3d)
            return F.conv3d(x, weight, layer.bias.to(torch.bfloat16), padding=layer.padding, dilation=layer.dilation)

        x = probability.to(torch.bfloat16).contiguous(memory_format=torch.channels_last_3d)
        for layer in self.body:
            x = conv(x, layer) if isinstance(layer, nn.Conv3d) else F.leaky_relu(x, layer.negative_slope, inplace=True)
        correction = conv(x, self.head)
        f, (n, _, i, j, k) = self.config.factor, correction.shape
        fine = self.start(probability)
        fine.view(n, 1, i, f, j, f, k, f).add_(correction.view(n, 1, f, f, f, i, j, k).permute(0, 1, 5, 2, 6, 3, 7, 4))
        return fine.sigmoid_()
