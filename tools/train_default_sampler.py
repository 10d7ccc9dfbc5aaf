"""Train the shipped default sampler: a decoder for the paper's token space (trained on the ten
Lung250M-4B pairs whose tokens the paper published) and a denoiser trained on all 97 of the paper's
token grids, combined into one 'sampler' model file.

    .venv/bin/python tools/train_default_sampler.py --work runs/default-sampler --out unleash/weights/sampler_default.safetensors

Both trainings run as `unleash train` jobs, side by side with one thread each (they share this
machine's two cores), then the final decoder (see main() for why not the one with the best validation
Dice on the held-out pair case_041) and the best denoiser (held-out token NLL on the last 4 grids) are
combined. The sizes are CPU sizes (see
DECODER and DENOISER); on a GPU give --paper-size for the paper's configuration.

The shipped denoiser was trained in two parts: 400 steps, then resumed to 1000 (its held-out NLL was
still falling):

    .venv/bin/python -m unleash train denoiser --resume runs/default-sampler/denoiser --iterations 1000
    .venv/bin/python tools/train_default_sampler.py --work runs/default-sampler \
        --out unleash/weights/sampler_default.safetensors --combine-only

(a resumed run follows the cosine schedule of its new length from its step, so the learning rate rose
again at step 400); here the default is 1000 steps in one run.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from unleash.checkpoints import load_model, save_model  # noqa: E402
from unleash.geometry import Grid, Volume, read_volume, write_image  # noqa: E402
from unleash.models.sampler import Sampler  # noqa: E402

DATA = Path(os.environ.get("UNLEASH_DATA", REPO.parent / "shared" / "data"))
TRAIN = DATA / "lung250m4b_vessels" / "train"
TOKENS = DATA / "seed_tokens" / "lung250m4b_train_tokens.npz"
HELD_OUT_PAIR = "case_041"
CUT_TO_SLICES = {"case_035": 280}  # the paper cut case 035 to its first 280 slices (last axis) before encoding

# CPU sizes: a 2 mm decoder (128 x 104 x 128 voxels, 8x downsampling -> the paper's 16 x 13 x 16 tokens of
# 16 mm blocks) and a 4-layer, 128-wide denoiser; the paper's are 1 mm, 16x, 384-d codes and 12 x 512.
DECODER = {"model": {"channels": [16, 32, 32, 64, 64, 128], "strides": [1, 2, 1, 2, 1, 2], "volume_shape_ijk": [128, 104, 128],
                     "spacing_mm": 2.0},
           "training": {"batch_size": 2, "learning_rate": 2e-3, "warmup": 50, "validate_every": 250, "checkpoint_every": 250},
           "task": {"patch_shape_ijk": [64, 64, 64]}}
DENOISER = {"model": {"layers": 4, "width": 128, "heads": 4, "feed_forward": 256},
            "training": {"batch_size": 4, "learning_rate": 1e-3, "warmup": 30, "validate_every": 100, "checkpoint_every": 50},
            "task": {"held_out_grids": 4}}
PAPER_DECODER = {"model": {}, "training": {"batch_size": 2, "validate_every": 500}, "task": {"patch_shape_ijk": [128, 128, 128]}}
PAPER_DENOISER = {"model": {}, "training": {"batch_size": 8}, "task": {"held_out_grids": 4}}


def cut_first_slices(volume: Volume, slices: int) -> Volume:
    """The first `slices` slices along k (the last axis of the file), with the grid that keeps them in place."""
    grid = volume.grid
    return Volume(volume.array[:slices].copy(), Grid((grid.size[0], grid.size[1], slices), grid.spacing_mm,
                                                    grid.origin_lps, grid.direction))


def prepare_pairs(work: Path) -> tuple[Path, Path]:
    """work/pairs/train (nine pairs) and work/pairs/val (case_041): links, and case 035 cut as the paper did."""
    train, val = work / "pairs" / "train", work / "pairs" / "val"
    for folder in (train, val):
        folder.mkdir(parents=True, exist_ok=True)
    for fixed in sorted(TRAIN.glob("case_*_1.nii.gz")):
        name = fixed.name[: -len("_1.nii.gz")]
        target = val if name == HELD_OUT_PAIR else train
        for scan in ("1", "2"):
            source, link = TRAIN / f"{name}_{scan}.nii.gz", target / f"{name}_{scan}.nii.gz"
            if link.exists():
                continue
            if name in CUT_TO_SLICES:
                write_image(cut_first_slices(read_volume(source), CUT_TO_SLICES[name]).to_sitk(), link)
            else:
                link.symlink_to(source)
    return train, val


def unleash(args: list[str], log: Path) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    return subprocess.Popen([sys.executable, "-m", "unleash", *args, "--progress", "json"], stdout=open(log, "w"),
                            stderr=subprocess.STDOUT, env=env)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", required=True, help="folder for the prepared pairs and the two runs")
    parser.add_argument("--out", required=True, help="the sampler model file to write")
    parser.add_argument("--decoder-iterations", type=int, default=2000)
    parser.add_argument("--denoiser-iterations", type=int, default=1000)
    parser.add_argument("--paper-size", action="store_true", help="the paper's configurations (GPU work)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--combine-only", action="store_true", help="only combine the two finished runs in --work")
    args = parser.parse_args()
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    decoder_run, denoiser_run = work / "decoder", work / "denoiser"
    if not args.combine_only:
        train, val = prepare_pairs(work)
        for name, config in (("decoder", PAPER_DECODER if args.paper_size else DECODER),
                             ("denoiser", PAPER_DENOISER if args.paper_size else DENOISER)):
            (work / f"{name}.json").write_text(json.dumps(config, indent=2))
        jobs = [unleash(["train", "vqae", "--data", str(train), "--val", str(val), "--tokens", str(TOKENS),
                         "--config", str(work / "decoder.json"), "--iterations", str(args.decoder_iterations),
                         "--device", args.device, "--out", str(decoder_run)], work / "decoder.log"),
                unleash(["train", "denoiser", "--data", str(TOKENS), "--config", str(work / "denoiser.json"),
                         "--iterations", str(args.denoiser_iterations), "--device", args.device, "--out", str(denoiser_run)],
                        work / "denoiser.log")]
        if any(job.wait() for job in jobs):
            raise SystemExit(f"a training job failed: see {work}/decoder.log and {work}/denoiser.log")
    # The final decoder, not the one with the best validation Dice: that came early (step 250) from blob-like
    # maps, which overlap a held-out pair's thin vessels more but draw fixed and moving alike (Dice 0.9 between
    # the two, real pairs 0.17-0.42); the final decoder draws thin trees that differ between the scans.
    vqae, _, vqae_card = load_model(decoder_run / "model.safetensors", "vqae")
    denoiser, _, denoiser_card = load_model(denoiser_run / "best.safetensors", "denoiser")
    tokens = np.load(TOKENS)
    card = {"kind": "sampler", "date": datetime.date.today().isoformat(),
            "command": " ".join(["python", "tools/train_default_sampler.py", *sys.argv[1:]]),
            "token_space": f"the paper's VQ-autoencoder tokens ({TOKENS.name}, {len(tokens['tokens'])} Lung250M-4B pairs)",
            "decoder": vqae_card, "denoiser": denoiser_card}
    save_model(args.out, Sampler.of(vqae, denoiser), Sampler.of(vqae, denoiser).config, card)
    print(f"wrote {args.out}: decoder Dice {vqae_card['validation_metrics']}, denoiser {denoiser_card['validation_metrics']}")


if __name__ == "__main__":
    main()
