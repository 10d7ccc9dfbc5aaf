"""The convolutional encoder and decoder of the VQ-autoencoder, in plain torch.

The architecture (and the weight names) of MONAI's `AutoEncoder` with its defaults (kernel 3, no
residual units, instance norm without affine terms, one PReLU slope per layer), which the shipped
weights were trained with; defined here because importing MONAI takes seconds and registration,
listing and checking model files must not wait for it. Each encoder layer is conv -> norm -> PReLU,
each decoder layer its transpose (stride s adds s - 1 output padding, so strides multiply the size
back exactly), the last decoder layer a bare transposed conv that gives the logits.
"""
from __future__ import annotations

import torch
from torch import nn

KERNEL = 3
PRELU_SLOPE = 0.25  # torch's and MONAI's initial slope


class NormAct(nn.Sequential):
    """Instance norm then PReLU, as MONAI's ADN block names them (N, A)."""

    def __init__(self, channels: int):
        super().__init__()
        self.N = nn.InstanceNorm3d(channels, affine=False)
        self.A = nn.PReLU(num_parameters=1, init=PRELU_SLOPE)


class InstanceNorm(nn.Module):
    """NormAct's instance norm (no affine terms, no running statistics) for inference on channels-last
    tensors, which it keeps channels-last: nn.InstanceNorm3d copies them to contiguous and back."""

    def __init__(self, eps: float):
        super().__init__()
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        var, mean = torch.var_mean(x, dim=tuple(range(2, x.ndim)), keepdim=True, correction=0)
        return (x - mean).mul_(torch.rsqrt(var + self.eps))


class ConvLayer(nn.Sequential):
    """(N, c_in, I, J, K) -> (N, c_out, I/s, J/s, K/s); transposed: -> (N, c_out, I*s, J*s, K*s)."""

    def __init__(self, c_in: int, c_out: int, stride: int, transposed: bool = False, last: bool = False):
        super().__init__()
        if transposed:
            self.conv = nn.ConvTranspose3d(c_in, c_out, KERNEL, stride, padding=KERNEL // 2, output_padding=stride - 1)
        else:
            self.conv = nn.Conv3d(c_in, c_out, KERNEL, stride, padding=KERNEL // 2)
        if not last:
            self.adn = NormAct(c_out)


class AutoEncoder(nn.Module):
    """pair (N, in_channels, I, J, K) -> latents (N, channels[-1], I/S, J/S, K/S) -> logits
    (N, out_channels, I, J, K), S the product of `strides` (each a divisor of I, J and K)."""

    def __init__(self, in_channels: int, out_channels: int, channels: list[int], strides: list[int]):
        super().__init__()
        if len(channels) != len(strides):
            raise ValueError("one stride per channel count is needed")
        widths = [in_channels, *channels]
        self.encode = nn.Sequential()
        for i, stride in enumerate(strides):
            self.encode.add_module(f"encode_{i}", ConvLayer(widths[i], widths[i + 1], stride))
        back = [*channels[::-1], out_channels]
        self.decode = nn.Sequential()
        for i, stride in enumerate(strides[::-1]):
            layer = ConvLayer(back[i], back[i + 1], stride, transposed=True, last=i == len(strides) - 1)
            self.decode.add_module(f"decode_{i}", nn.Sequential())
            self.decode[i].add_module("conv", layer)

    def forward(self, x):
        return self.decode(self.encode(x))
