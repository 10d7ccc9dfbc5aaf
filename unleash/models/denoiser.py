"""The absorbing-diffusion denoiser: a transformer that predicts every token of a pair's token grid
from a partly masked one (Bond-Taylor et al., "Unleashing Transformers", as used by the paper).

Tokens are a sequence (N, L), L = I*J*K of the token grid (I, J, K) flattened in C order (i slowest),
which is how the paper flattened its (16, 13, 16) grids; the mask id is `codebook_size` (1024).
The layers are the paper's nn.TransformerEncoderLayer (post-norm, GELU) with the same parameter
names, so its checkpoints load, but attention runs on PyTorch's fused scaled_dot_product_attention:
the default layer builds the whole L x L matrix, and with L = 3328 and attention dropout 0.1 it ran
out of 24 GB at batch 1 (measured). Attention weights are therefore never dropped out.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from . import init
from .config import DenoiserConfig


class SelfAttention(nn.Module):
    """Multi-head self-attention with nn.MultiheadAttention's parameters on the fused kernel."""

    def __init__(self, width: int, heads: int):
        super().__init__()
        self.heads = heads
        self.in_proj_weight = nn.Parameter(torch.empty(3 * width, width))
        self.in_proj_bias = nn.Parameter(torch.zeros(3 * width))
        self.out_proj = nn.Linear(width, width)
        nn.init.xavier_uniform_(self.in_proj_weight)
        nn.init.zeros_(self.out_proj.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, length, width = x.shape
        qkv = F.linear(x, self.in_proj_weight, self.in_proj_bias).view(n, length, 3, self.heads, width // self.heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4)  # each (N, heads, L, width / heads)
        y = F.scaled_dot_product_attention(q, k, v)
        return self.out_proj(y.transpose(1, 2).reshape(n, length, width))


class Block(nn.Module):
    """x = norm1(x + attention(x)); x = norm2(x + mlp(x)), as nn.TransformerEncoderLayer (norm_first=False)."""

    def __init__(self, config: DenoiserConfig):
        super().__init__()
        self.self_attn = SelfAttention(config.width, config.heads)
        self.linear1 = nn.Linear(config.width, config.feed_forward)
        self.linear2 = nn.Linear(config.feed_forward, config.width)
        self.norm1 = nn.LayerNorm(config.width)
        self.norm2 = nn.LayerNorm(config.width)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.norm1(x + self.dropout(self.self_attn(x)))
        return self.norm2(x + self.dropout(self.linear2(self.dropout(F.gelu(self.linear1(x))))))


class Denoiser(nn.Module):
    """tokens (N, L) in 0..codebook_size (mask) -> logits (N, L, codebook_size) of the unmasked tokens."""

    def __init__(self, config: DenoiserConfig):
        super().__init__()
        self.config = config
        self.token_embedding = init.embedding(config.codebook_size + 1, config.width)
        self.position_embedding = init.embedding(config.tokens, config.width)  # learned, one per grid cell
        self.transformer = nn.Sequential(*[Block(config) for _ in range(config.layers)])
        self.layer_norm = nn.LayerNorm(config.width)
        self.head = nn.Linear(config.width, config.codebook_size, bias=False)
        for embedding in (self.token_embedding, self.position_embedding, self.head):
            init.normal_(embedding.weight, 0.02)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        x = self.token_embedding(tokens) + self.position_embedding.weight
        return self.head(self.layer_norm(self.transformer(x)))
