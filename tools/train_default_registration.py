"""Train the shipped default registration model on ../shared/data/lung250m4b_vessels/train.

    .venv/bin/python tools/train_default_registration.py --iterations 1500 --out unleash/weights/registration_default.safetensors

Writes the model file with its card and a loss log next to it (<out>.csv)."""
from __future__ import annotations

import argparse
import csv
import datetime
import os
import platform
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from unleash.checkpoints import save_model  # noqa: E402
from unleash.models.registration import RegistrationConfig  # noqa: E402
from unleash.train.registration import RegistrationTraining, load_occupancies, settings_dict, train  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    default_data = Path(os.environ.get("UNLEASH_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))
    parser.add_argument("--data", default=str(default_data / "lung250m4b_vessels" / "train"))
    parser.add_argument("--iterations", type=int, default=1500)
    parser.add_argument("--out", required=True)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(os.cpu_count() or 1)
    config = RegistrationConfig()
    settings = RegistrationTraining(iterations=args.iterations, seed=args.seed)
    started = time.time()
    pairs = load_occupancies([args.data], config)
    print(f"loaded {len(pairs)} pairs in {time.time() - started:.0f} s", flush=True)
    log_path = Path(args.out).with_suffix(".csv")
    with open(log_path, "w", newline="") as log:
        writer = csv.writer(log)
        writer.writerow(["step", "loss", "similarity", "seconds"])

        def on_step(step, total, loss, similarity, seconds):
            writer.writerow([step, f"{loss:.5f}", f"{similarity:.5f}", f"{seconds:.3f}"])
            if step % 25 == 0 or step == total:
                log.flush()
                print(f"step {step}/{total} loss {loss:.4f} similarity {similarity:.4f} {seconds:.2f} s/step", flush=True)

        network = train(pairs, config, settings, on_step=on_step)
    card = {
        "kind": "registration",
        "trained_on": [name for name, _, _ in pairs],
        "data": str(args.data),
        "iterations": args.iterations,
        "training": settings_dict(settings),
        "command": " ".join(["python", "tools/train_default_registration.py"] + sys.argv[1:]),
        "hardware": f"{platform.processor() or platform.machine()} CPU, {torch.get_num_threads()} threads",
        "training_seconds": round(time.time() - started),
        "date": datetime.date.today().isoformat(),
    }
    save_model(args.out, network, config, card)
    print(f"wrote {args.out}", flush=True)


if __name__ == "__main__":
    main()
