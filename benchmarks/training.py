"""Training throughput: `unleash train`'s loop against a faithful re-implementation of the paper's
loop, same model, same initial weights, same batch, same data, same machine, one after the other.

    .venv/bin/python benchmarks/training.py                         # CPU sizes, all three models
    .venv/bin/python benchmarks/training.py --device cuda --size paper --json benchmarks/results/training_cuda.json

The paper's loop, as its code trains: fp32, Adam, the batch assembled on the host and copied to
the device every step, the loss read back every step, and for the denoiser the stock
nn.TransformerEncoderLayer (attention through nn.MultiheadAttention with attention dropout 0.1).
Ours: loop.train exactly as `unleash train` runs it (bf16 autocast and channels-last on CUDA, data
kept on the device, fused attention), without writing files.

Sizes: `paper` is the paper's configuration (GPU work); `cpu` keeps the paper's VQ-AE channels on
a 64^3 patch and the paper's denoiser width with 2 of its 12 layers (the paper's layer stack
through the stock attention needs more than this machine's 24 GB at batch 1).
"""
from __future__ import annotations

import argparse
import functools
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from unleash.devices import describe, resolve_device  # noqa: E402
from unleash.jobs import Progress  # noqa: E402
from unleash.models.denoiser import DenoiserConfig  # noqa: E402
from unleash.models.registration import RegistrationConfig  # noqa: E402
from unleash.models.vqae import VQAEConfig  # noqa: E402
from unleash.train import denoiser, registration, vqae  # noqa: E402
from unleash.train.data import Source, sample_rng  # noqa: E402
from unleash.train.distributed import Processes  # noqa: E402
from unleash.train.loop import StopRequest, collate, train  # noqa: E402
from unleash.train.settings import TrainingSettings  # noqa: E402

DATA = Path(os.environ.get("UNLEASH_DATA", REPO.parent / "shared" / "data"))
TRAIN = DATA / "lung250m4b_vessels" / "train"
TOKENS = DATA / "seed_tokens" / "lung250m4b_train_tokens.npz"

# size -> kind -> (model config, task settings, batch size)
SIZES = {
    "cpu": {"registration": (RegistrationConfig(), registration.RegistrationTask(), 1),
            "vqae": (VQAEConfig(), vqae.VQAETask(patch_shape_ijk=[64, 64, 64]), 1),
            "denoiser": (DenoiserConfig(layers=2), denoiser.DenoiserTask(), 1)},
    "paper": {"registration": (RegistrationConfig(), registration.RegistrationTask(), 8),
              "vqae": (VQAEConfig(), vqae.VQAETask(patch_shape_ijk=[128, 128, 128]), 2),
              "denoiser": (DenoiserConfig(), denoiser.DenoiserTask(), 8)},
}
TRAINERS = {"registration": registration.RegistrationTrainer, "vqae": vqae.VQAETrainer, "denoiser": denoiser.DenoiserTrainer}


class PaperDenoiser(nn.Module):
    """The denoiser on stock nn.TransformerEncoderLayer modules (the paper's code path); the same
    parameter names as unleash's Denoiser, so both start from the same weights."""

    def __init__(self, config: DenoiserConfig):
        super().__init__()
        self.token_embedding = nn.Embedding(config.codebook_size + 1, config.width)
        self.position_embedding = nn.Embedding(config.tokens, config.width)
        self.transformer = nn.Sequential(*[
            nn.TransformerEncoderLayer(config.width, config.heads, config.feed_forward, config.dropout,
                                       activation="gelu", batch_first=True) for _ in range(config.layers)])
        self.layer_norm = nn.LayerNorm(config.width)
        self.head = nn.Linear(config.width, config.codebook_size, bias=False)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        x = self.token_embedding(tokens) + self.position_embedding.weight
        return self.head(self.layer_norm(self.transformer(x)))


@functools.cache
def make_trainer(kind: str, size: str, device: torch.device):
    """The task with its data read onto `device` (once: both loops on one device share it)."""
    config, task, _ = SIZES[size][kind]
    sources = [Source(TOKENS)] if kind == "denoiser" else [Source(TRAIN)]
    trainer = TRAINERS[kind](config, task, sources, [], device, Progress("none"))
    trainer.metric = None  # throughput only: no validation, no previews
    return trainer


class StepClock(Progress):
    """Records when each step ended."""

    def __init__(self):
        super().__init__("none")
        self.times = [time.perf_counter()]

    def progress(self, stage, step, total, **extra):
        self.times.append(time.perf_counter())


def seconds_per_step(times: list[float], warmup: int) -> float:
    return float(np.median(np.diff(times)[warmup:]))


def ours(kind: str, size: str, device: torch.device, steps: int, warmup: int) -> float:
    trainer = make_trainer(kind, size, device)
    settings = TrainingSettings(iterations=steps + warmup, batch_size=SIZES[size][kind][2], warmup=1,
                                validate_every=0, checkpoint_every=10**9)
    clock = StepClock()
    with StopRequest() as stop:
        train(trainer, settings, None, Processes(), device, clock, None, lambda *args: None, stop)
    return seconds_per_step(clock.times, warmup)


def paper(kind: str, size: str, device: torch.device, steps: int, warmup: int) -> float:
    trainer = make_trainer(kind, size, torch.device("cpu"))  # the data lives on the host
    torch.manual_seed(0)
    network = PaperDenoiser(trainer.model_config) if kind == "denoiser" else trainer.network()
    network = network.to(device).train()
    optimiser = torch.optim.Adam(network.parameters(), lr=1e-4)
    batch_size = SIZES[size][kind][2]
    times = [time.perf_counter()]
    for step in range(steps + warmup):
        batch = collate([trainer.sample(sample_rng(0, step, position)) for position in range(batch_size)])
        batch = {key: value.to(device) for key, value in batch.items()}
        loss, _ = trainer.loss(network, batch)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        loss.item()
        times.append(time.perf_counter())
    return seconds_per_step(times, warmup)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--kinds", nargs="+", default=["registration", "vqae", "denoiser"])
    parser.add_argument("--size", choices=sorted(SIZES), default="cpu")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--steps", type=int, default=5, help="timed steps per loop (after the warm-up steps)")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--json", help="write the table here")
    args = parser.parse_args()
    device = resolve_device(args.device)
    rows = []
    print(f"{'model':<13} {'batch':>5} {'paper loop s/step':>18} {'unleash s/step':>15} {'samples/s paper':>16} "
          f"{'samples/s unleash':>18} {'speed-up':>9}")
    for kind in args.kinds:
        batch = SIZES[args.size][kind][2]
        reference = paper(kind, args.size, device, args.steps, args.warmup)
        found = ours(kind, args.size, device, args.steps, args.warmup)
        rows.append({"model": kind, "batch": batch, "paper_s_per_step": round(reference, 3),
                     "unleash_s_per_step": round(found, 3), "speedup": round(reference / found, 2)})
        print(f"{kind:<13} {batch:>5} {reference:>18.3f} {found:>15.3f} {batch / reference:>16.2f} {batch / found:>18.2f} "
              f"{reference / found:>8.2f}x", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps({
            "device": describe(device), "threads": torch.get_num_threads(), "size": args.size, "steps": args.steps,
            "warmup": args.warmup, "torch": torch.__version__, "platform": platform.platform(terse=True),
            "command": " ".join(["python", "benchmarks/training.py", *sys.argv[1:]]), "rows": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
