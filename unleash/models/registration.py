"""The two-step inverse-consistent registration network (after Greer et al., MICCAI 2023).

Each step predicts a velocity from (A, B) and from (B, A) and integrates their antisymmetric
difference, phi = exp(v(A, B) - v(B, A)), so swapping the images inverts the transform exactly.
The second step sees both images warped to the midpoint by the square roots of the first:

    phi_AB = sqrt(phi1_AB) o psi_AB o sqrt(phi1_AB),   phi_BA = sqrt(phi1_BA) o psi_BA o sqrt(phi1_BA)

and phi_BA is the inverse of phi_AB by construction. Convention: B(phi_AB(x)) ~ A(x), i.e. A is
the fixed image, B the moving one, and phi_AB is the ITK fixed-to-moving map.

Tensors: images (N, 1, D, H, W) on the network lattice; displacements (N, 3, D, H, W) in mm.
"""
from __future__ import annotations

import torch
from torch import nn

from .. import fields
from .config import RegistrationConfig


def _block(c_in: int, c_out: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv3d(c_in, c_out, 3, stride=stride, padding=1),
                         nn.InstanceNorm3d(c_out, affine=True), nn.LeakyReLU(0.2, inplace=True))


class UNet(nn.Module):
    """A small 3D U-Net: (N, 2, D, H, W) -> (N, 3, (D+1)/2, (H+1)/2, (W+1)/2) velocity in mm.

    Odd lattice sizes keep the stride-2 output's first and last voxels on the input's corners."""

    def __init__(self, channels: list[int]):
        super().__init__()
        self.down = nn.ModuleList()
        c_prev = 2
        for c in channels:
            self.down.append(_block(c_prev, c, stride=2))
            c_prev = c
        self.up = nn.ModuleList()
        for c_skip in reversed(channels[:-1]):
            self.up.append(_block(c_prev + c_skip, c_skip))
            c_prev = c_skip
        self.head = nn.Conv3d(c_prev, 3, 3, padding=1)
        # A zero start means the untrained network predicts the identity, which is what the
        # refinement and the tests assume of a fresh model.
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)

    def forward(self, pair: torch.Tensor) -> torch.Tensor:
        skips = []
        x = pair
        for block in self.down:
            x = block(x)
            skips.append(x)
        for block, skip in zip(self.up, reversed(skips[:-1])):
            x = nn.functional.interpolate(x, size=skip.shape[2:], mode="trilinear", align_corners=False)
            x = block(torch.cat([x, skip], dim=1))
        return self.head(x)


class InverseConsistentStep(nn.Module):
    """phi = exp(v(A, B) - v(B, A)); returns the displacements of exp(t v) and exp(-t v)."""

    def __init__(self, config: RegistrationConfig):
        super().__init__()
        self.net = UNet(config.channels)
        self.steps = config.squaring_steps

    def velocity(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        both = self.net(torch.cat([torch.cat([a, b], 1), torch.cat([b, a], 1)], 0))
        v_ab, v_ba = both.chunk(2, dim=0)
        return v_ab - v_ba

    def forward(self, a, b, velocity_mm: float, fraction: float = 1.0):
        """Displacements of exp(fraction v) and exp(-fraction v), on the image lattice."""
        v = fraction * self.velocity(a, b)
        shape = a.shape[2:]
        forward = fields.resize(fields.exp(v, velocity_mm, self.steps), shape)
        inverse = fields.resize(fields.exp(-v, velocity_mm, self.steps), shape)
        return forward, inverse


class TwoStepRegistration(nn.Module):
    """(A, B) on the lattice -> (phi_AB, phi_BA) displacements in mm on the lattice."""

    def __init__(self, config: RegistrationConfig):
        super().__init__()
        self.config = config
        self.first = InverseConsistentStep(config)
        self.second = InverseConsistentStep(config)

    def forward(self, a: torch.Tensor, b: torch.Tensor):
        spacing = self.config.lattice_mm
        root_ab, root_ba = self.first(a, b, self.config.velocity_mm, fraction=0.5)
        a_mid = fields.warp(a, root_ba, spacing)
        b_mid = fields.warp(b, root_ab, spacing)
        psi_ab, psi_ba = self.second(a_mid, b_mid, self.config.velocity_mm)
        phi_ab = fields.compose(root_ab, fields.compose(psi_ab, root_ab, spacing), spacing)
        phi_ba = fields.compose(root_ba, fields.compose(psi_ba, root_ba, spacing), spacing)
        return phi_ab, phi_ba
