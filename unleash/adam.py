"""Adam on one tensor, as the refinement and the affine start use it."""
from __future__ import annotations

import math

import torch


class Adam:
    """Adam (Kingma and Ba, 2015) on one tensor, step for step as torch.optim.Adam computes it. Written out
    because the first torch.optim optimiser of a process imports torch._dynamo: 1.5 s of start-up."""

    def __init__(self, parameter: torch.Tensor, learning_rate: float, betas=(0.9, 0.999), eps: float = 1e-8):
        self.parameter, self.learning_rate, self.betas, self.eps = parameter, learning_rate, betas, eps
        self.mean = torch.zeros_like(parameter)
        self.mean_square = torch.zeros_like(parameter)
        self.steps = 0

    @torch.no_grad()
    def step(self) -> None:
        (beta1, beta2), gradient = self.betas, self.parameter.grad
        self.steps += 1
        self.mean.lerp_(gradient, 1 - beta1)
        self.mean_square.mul_(beta2).addcmul_(gradient, gradient, value=1 - beta2)
        step_mm = self.learning_rate / (1 - beta1 ** self.steps)
        denominator = (self.mean_square.sqrt() / math.sqrt(1 - beta2 ** self.steps)).add_(self.eps)
        self.parameter.addcdiv_(self.mean, denominator, value=-step_mm)
