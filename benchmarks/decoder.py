"""Decoder fidelity: the shipped sampler's decoder on the paper's own tokens of the ten Lung250M-4B
training pairs, against those pairs: vessel volume fraction and Dice, per scan. It separates what the
decoder loses from what the denoiser's sampled tokens lack (benchmarks/sampler.py).

    .venv/bin/python benchmarks/decoder.py [--model SAMPLER] [--write DIR] [--others DIR]

--write DIR also writes the decoded pairs (case_NNN_1/_2.nii.gz), e.g. for benchmarks/alignability.py.
--others DIR writes the decoded token grids of the paper's other 87 training patients (no volumes of
theirs are in ../shared), the control of the end-to-end test in the sampler's model card: real tokens
through this decoder, next to sampled ones.

The decoded maps are the ones `unleash sample` writes (1 mm, thresholded by sample.vessel_threshold); the real
pairs are placed in the same 256 x 208 x 256 mm box. The paper cut case 035 to its first 280 slices
before encoding it, so its tokens describe less than its full scan; it is listed but left out of the
totals. Nine of the pairs trained the decoder, case 041 did not.
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from unleash.checkpoints import load_model  # noqa: E402
from unleash.datasets import find_pairs  # noqa: E402
from unleash.encode import token_volume_grid  # noqa: E402
from unleash.geometry import read_volume, resample, write_image  # noqa: E402
from unleash.models.vqae import VQAEConfig  # noqa: E402
from unleash.sample import decode_pair, sample_grid  # noqa: E402
from unleash.train.data import read_token_grids  # noqa: E402

DATA = Path(os.environ.get("UNLEASH_DATA", REPO.parent / "shared" / "data"))
TRAIN = DATA / "lung250m4b_vessels" / "train"
TOKENS = DATA / "seed_tokens" / "lung250m4b_train_tokens.npz"
CUT_BY_THE_PAPER = {"case_035"}


def write_pair(volumes: dict, folder: Path, name: str) -> None:
    for scan, number in (("fixed", 1), ("moving", 2)):
        write_image(volumes[scan].to_sitk(), folder / f"{name}_{number}.nii.gz")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="sampler model file (default: the shipped one)")
    parser.add_argument("--write", metavar="DIR", help="also write the decoded pairs into this (new) folder")
    parser.add_argument("--others", metavar="DIR", help="write the decoded grids of the 87 patients not in train/ "
                                                        "into this (new) folder")
    args = parser.parse_args()
    for folder in (args.write, args.others):
        if folder:
            Path(folder).mkdir(parents=True)
    sampler, _, _ = load_model(args.model, "sampler")
    vqae = sampler.vqae
    grids, names = read_token_grids(TOKENS, vqae.config.codebook_size, vqae.config.token_shape_ijk)
    tokens = dict(zip(names, grids))

    def decode(name: str) -> dict:
        return decode_pair(vqae, torch.from_numpy(tokens[name]).view(-1), sample_grid(vqae.config))

    train = find_pairs(TRAIN)
    if args.others:
        for name in sorted(set(tokens) - {files.name for files in train}):
            write_pair(decode(name), Path(args.others), name)
    box = VQAEConfig()  # the paper's 1 mm box, the grid the sampled pairs are written on
    decoded_voxels = real_voxels = overlap = 0
    print(f"{'pair':<9} {'scan':<7} {'real %':>7} {'decoded %':>10} {'Dice':>6}")
    for files in train:
        volumes = decode(files.name)
        if args.write:
            write_pair(volumes, Path(args.write), files.name)
        for scan, path in (("fixed", files.fixed), ("moving", files.moving)):
            real_scan = read_volume(path)
            real = resample(real_scan, token_volume_grid(real_scan.grid, box), linear=False).array > 0
            decoded = volumes[scan].array > 0
            both = int(np.logical_and(real, decoded).sum())
            dice = 2 * both / max(1, real.sum() + decoded.sum())
            note = "  (cut by the paper: not in the totals)" if files.name in CUT_BY_THE_PAPER else ""
            print(f"{files.name:<9} {scan:<7} {100 * real.mean():7.2f} {100 * decoded.mean():10.2f} {dice:6.3f}{note}")
            if not note:
                decoded_voxels, real_voxels, overlap = decoded_voxels + decoded.sum(), real_voxels + real.sum(), overlap + both
    print(f"all but the cut pair: decoded/real vessel voxels {decoded_voxels / real_voxels:.3f}, "
          f"Dice {2 * overlap / (decoded_voxels + real_voxels):.3f}")


if __name__ == "__main__":
    main()
