"""Train the vessel refiner of a sampler (models/refiner.py) and write the sampler file with it.

    .venv/bin/python tools/train_refiner.py --out unleash/weights/sampler_default.safetensors \
        [--sampler unleash/weights/sampler_default.safetensors] [--steps 2000] [--fresh --width 16 --layers 3]
        [--skeleton-recall-weight 0] [--cldice-weight 0]

A --sampler that has a refiner already: that refiner is trained further (e.g. a few hundred steps with
--cldice-weight, whose soft skeletons make each step about five times slower), unless --fresh: then a
new one of --width and --layers is trained from the sampler's decoder.

Inputs: the sampler's own decoder's 2 mm vessel probabilities of the paper's tokens of the Lung250M-4B
training pairs; targets: those pairs' real 1 mm masks in the same 256 x 208 x 256 mm box. Case 041 is
held out (the decoder did not see it either) and its Dice and skeleton share are printed before and
after; case 035 is left out: the paper cut it before encoding, so its tokens describe less than its scan.
"""
from __future__ import annotations

import argparse
import datetime
import sys
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tools"))

from train_default_sampler import CUT_TO_SLICES, HELD_OUT_PAIR, TOKENS, TRAIN  # noqa: E402

from unleash.checkpoints import load_model, save_model  # noqa: E402
from unleash.datasets import find_pairs  # noqa: E402
from unleash.models.refiner import Refiner, RefinerConfig  # noqa: E402
from unleash.models.sampler import Sampler  # noqa: E402
from unleash.models.vqae import VQAEConfig  # noqa: E402
from unleash.sample import fine_probabilities  # noqa: E402
from unleash.train.refiner import RefinerTraining, train_refiner  # noqa: E402
from unleash.train.vqae import pair_on_token_grid  # noqa: E402

LEFT_OUT = set(CUT_TO_SLICES)  # cut by the paper before encoding: its tokens describe less than its scan


@torch.no_grad()
def decoded_scans(sampler: Sampler) -> dict[str, list[tuple[torch.Tensor, torch.Tensor]]]:
    """name -> [(decoder probability (I, J, K) at its spacing, real mask (2I, 2J, 2K) uint8)] for fixed and moving."""
    tokens = np.load(TOKENS)
    rows = {f"case_{int(case):03d}": row for case, row in zip(tokens["case_ids"], tokens["tokens"])}
    scans = {}
    for files in find_pairs(TRAIN):
        if files.name in LEFT_OUT:
            continue
        logits = sampler.vqae.decode(torch.from_numpy(rows[files.name].astype(np.int64))[None])[0]
        coarse = [logits[0:2].softmax(0)[1], logits[2:4].softmax(0)[1]]
        real = pair_on_token_grid(files, VQAEConfig(volume_shape_ijk=[2 * n for n in sampler.vqae.config.volume_shape_ijk],
                                                    spacing_mm=sampler.vqae.config.spacing_mm / 2))
        scans[files.name] = list(zip(coarse, real))
        print(f"{files.name}: decoded", flush=True)
    return scans


@torch.no_grad()
def held_out_figures(scans, refiner: Refiner | None) -> str:
    """Dice with the real masks and skeleton voxels per 1000 vessel voxels of the held-out pair's drawings."""
    from skimage.morphology import skeletonize

    figures = []
    for coarse, real in scans:
        drawn = fine_probabilities(coarse[None], 2, refiner)[0] > 0.5
        real = real.bool()
        dice = 2 * float((drawn & real).sum()) / float(drawn.sum() + real.sum())
        elongation = 1000 * skeletonize(drawn.numpy()).sum() / max(1, int(drawn.sum()))
        figures.append(f"Dice {dice:.3f}, skeleton {elongation:.1f} per 1000, vessel {100 * float(drawn.float().mean()):.2f} %")
    return "; ".join(figures)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sampler", help="the sampler whose decoder is refined (default: the shipped one); "
                                          "if it has a refiner, that one is trained further")
    parser.add_argument("--out", required=True, help="the sampler model file to write (the given one plus the refiner)")
    parser.add_argument("--steps", type=int, default=RefinerTraining.steps)
    parser.add_argument("--fresh", action="store_true", help="train a new refiner even if the sampler has one")
    parser.add_argument("--width", type=int, default=RefinerConfig.width)
    parser.add_argument("--layers", type=int, default=RefinerConfig.layers)
    parser.add_argument("--skeleton-recall-weight", type=float, default=RefinerTraining.skeleton_recall_weight)
    parser.add_argument("--cldice-weight", type=float, default=RefinerTraining.cldice_weight)
    args = parser.parse_args()
    torch.manual_seed(0)
    sampler, _, card = load_model(args.sampler, "sampler")
    if sampler.vqae.config.spacing_mm != 2.0:
        raise SystemExit(f"this refiner brings a 2 mm decoder to 1 mm; this decoder is at {sampler.vqae.config.spacing_mm} mm")
    scans = decoded_scans(sampler)
    held_out = scans.pop(HELD_OUT_PAIR)
    given = None if args.fresh else sampler.refiner  # a sampler's refiner trains on
    start = "trilinear" if given is None else "the given refiner"
    before = held_out_figures(held_out, given)
    print(f"{HELD_OUT_PAIR}, {start}: {before}", flush=True)
    settings = RefinerTraining(steps=args.steps, skeleton_recall_weight=args.skeleton_recall_weight,
                               cldice_weight=args.cldice_weight)
    refiner = given or Refiner(RefinerConfig(width=args.width, layers=args.layers))
    train_refiner(refiner, [scan for pair in scans.values() for scan in pair], settings)
    after = held_out_figures(held_out, refiner)
    print(f"{HELD_OUT_PAIR}, refined: {after}", flush=True)
    card = {**card, "date": datetime.date.today().isoformat(),
            "refiner": {"command": " ".join(["python", "tools/train_refiner.py", *sys.argv[1:]]),
                        "trained_on": sorted(scans), "settings": vars(settings),
                        "held_out": {"pair": HELD_OUT_PAIR, start: before, "refined": after}}}
    out = Sampler.of(sampler.vqae, sampler.denoiser, refiner)
    save_model(args.out, out, out.config, card)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
