"""Decoding time of a sampled pair (decoder, 1 mm probabilities, thresholds, label maps: `decode_pair`),
the shipped sampler three ways, in rotating order over the same token grids in one process, so that a
machine whose load changes affects all three alike:
- `no refiner`: the plain decoder and trilinear upsampling, as `unleash sample` decoded before the refiner;
- `refiner under autocast`: the plain decoder and the refiner's forward under bfloat16 autocast, as it
  decoded when the refiner was added;
- `shipped`: what `unleash sample` runs now (load_sampler: the channels-last decoder; Refiner.probabilities).

    .venv/bin/python benchmarks/decoding.py [--pairs 6] [--out benchmarks/results/decoding_cpu.txt]

Token grids: the paper's tokens of its first training patients (../shared/data/seed_tokens, or $UNLEASH_DATA).
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tools"))

from train_default_sampler import TOKENS  # noqa: E402

from unleash.checkpoints import load_model  # noqa: E402
from unleash.models.refiner import Refiner  # noqa: E402
from unleash.sample import decode_pair, load_sampler, sample_grid  # noqa: E402


class AutocastRefiner:
    """The refiner as sampling ran it when it was added: forward under bfloat16 autocast."""

    def __init__(self, refiner: Refiner):
        self.refiner = refiner

    def probabilities(self, probability: torch.Tensor) -> torch.Tensor:
        with torch.autocast(probability.device.type, dtype=torch.bfloat16):
            return torch.sigmoid(self.refiner(probability).float())


@torch.no_grad()
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pairs", type=int, default=6, help="token grids, each decoded the three ways")
    parser.add_argument("--out", help="also write the lines printed to this file")
    args = parser.parse_args()
    device = torch.device("cpu")
    plain, _, _ = load_model(None, "sampler", device)
    shipped, _ = load_sampler(None, device)
    ways = {"no refiner": (plain.vqae, None), "refiner under autocast": (plain.vqae, AutocastRefiner(plain.refiner)),
            "shipped": (shipped.vqae, shipped.refiner)}
    grid = sample_grid(shipped.vqae.config)
    rows = np.load(TOKENS)["tokens"][:args.pairs]
    for vqae, refiner in ways.values():  # untimed: each way's first call sets up its kernels
        decode_pair(vqae, torch.from_numpy(rows[0].astype(np.int64)).view(-1), grid, refiner)
    seconds = {name: [] for name in ways}
    lines = [f"decode_pair of the shipped sampler on the CPU ({torch.get_num_threads()} threads), "
             f"{len(rows)} token grids, seconds a pair:"]
    print(lines[0], flush=True)
    for index, row in enumerate(rows):
        tokens = torch.from_numpy(row.astype(np.int64)).view(-1)
        names = list(ways)[index % 3:] + list(ways)[:index % 3]
        for name in names:
            started = time.perf_counter()
            decode_pair(ways[name][0], tokens, grid, ways[name][1])
            seconds[name].append(time.perf_counter() - started)
        lines.append(f"  grid {index + 1} (load {os.getloadavg()[0]:.1f}): "
                     + ", ".join(f"{name} {seconds[name][-1]:.2f}" for name in ways))
        print(lines[-1], flush=True)
    lines.append("median: " + ", ".join(f"{name} {np.median(values):.2f} s" for name, values in seconds.items()))
    print(lines[-1])
    if args.out:
        Path(args.out).write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
