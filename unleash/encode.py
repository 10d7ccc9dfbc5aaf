"""`unleash encode`: a trained VQ-autoencoder turns a folder of vessel pairs into token grids, the
training data of the denoiser, so the whole chain can be trained on one's own pairs.

Where a pair lies in the VQ-AE's volume is the paper's: it padded/cropped each (H, W, D) array to
256 x 208 x 256 by (352-H)//2-48, (256-W)//2-32, (352-D)//2-48 voxels, which centres the scan's box,
except that the volume reaches 8 voxels further along +j (posterior). As a grid: identity direction,
1 mm, centred 8 mm posterior of the fixed scan's box centre, plus half a voxel along an axis of odd
size so that grid points stay on voxel centres. For the Lung250M-4B files (1 mm, identity LPS) this
is the paper's placement voxel for voxel, so these tokens and the paper's token files agree; other
scans are resampled onto it (nearest neighbour). Scans should be cropped to the lungs like those.

Writes OUTDIR/tokens.npz (`tokens` int16 (N, I, J, K) in (i, j, k) order, as the paper's files;
`names` (N,) the pair names) and OUTDIR/encode.json (model, grids, reconstruction Dice per pair).
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import torch

from . import __version__
from .checkpoints import load_model, model_id
from .datasets import find_pairs
from .devices import describe, resolve_device
from .errors import UserError
from .geometry import Grid, Volume, network_grid, read_volume, resample
from .jobs import Progress
from .modelfile import check_encoder_file
from .models.vqae import VQAEConfig, VQAutoEncoder
from .output_folder import atomic_output_dir, check_output_dir

POSTERIOR_MARGIN_MM = 8.0
MAX_LABEL_VALUES = 8  # more distinct values than this: a CT or a soft map, not a vessel label map


def token_volume_grid(scan: Grid, config: VQAEConfig) -> Grid:
    """The VQ-AE's volume grid for a pair whose fixed scan lies on `scan` (see the module docstring)."""
    size = np.asarray(scan.size)
    centre_ijk = (size - 1) / 2 + 0.5 * (size % 2)
    centre_lps = scan.index_to_physical(centre_ijk[None])[0] + np.array([0.0, POSTERIOR_MARGIN_MM, 0.0])
    return network_grid(centre_lps, tuple(config.volume_shape_ijk), config.spacing_mm)


def occupancy_ijk(volume: Volume, grid: Grid, path) -> tuple[torch.Tensor, float]:
    """A vessel label map on `grid` as a float tensor (I, J, K) in {0, 1}, and the share of its
    vessel voxels that the grid holds."""
    if np.unique(volume.array[::4, ::4, ::4]).size > MAX_LABEL_VALUES:
        raise UserError(f"{path}: is not a vessel label map (more than {MAX_LABEL_VALUES} distinct values)")
    vessels = int((volume.array > 0).sum())
    if vessels == 0:
        raise UserError(f"{path}: has no vessel voxels")
    on_grid = resample(volume, grid, linear=False).array > 0
    return torch.from_numpy(on_grid.transpose(2, 1, 0).astype(np.float32)), float(on_grid.sum()) / vessels


def load_vqae(path: str | None, device: torch.device) -> VQAutoEncoder:
    """The VQ-AE of a 'vqae' model file, or the one inside a 'sampler' model file."""
    _, config = check_encoder_file(path)
    model = load_model(path, config.kind, device)[0]
    return model.vqae if config.kind == "sampler" else model


def dice(a: torch.Tensor, b: torch.Tensor) -> float:
    """Dice overlap of two binary tensors (1 when both are empty)."""
    total = float(a.sum() + b.sum())
    return 2 * float((a * b).sum()) / total if total else 1.0


@torch.no_grad()
def encode_folder(folder, output_dir, model: str | None, device_name: str, progress: Progress,
                  overwrite: bool = False) -> dict:
    """Encode every pair of `folder` (see datasets.find_pairs) into OUTDIR/tokens.npz; returns the report."""
    started = time.perf_counter()
    output_dir = check_output_dir(output_dir, overwrite, inputs=[folder, model])
    pairs = find_pairs(folder)
    device = resolve_device(device_name)
    vqae = load_vqae(model, device)
    progress.log(f"encoding {len(pairs)} pairs on {describe(device)}")
    tokens, rows = [], []
    for index, files in enumerate(pairs):
        fixed, moving = read_volume(files.fixed), read_volume(files.moving)
        grid = token_volume_grid(fixed.grid, vqae.config)
        fixed_on, fixed_kept = occupancy_ijk(fixed, grid, files.fixed)
        moving_on, moving_kept = occupancy_ijk(moving, grid, files.moving)
        pair = torch.stack([fixed_on, moving_on])[None].to(device)  # (1, 2, I, J, K)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            grid_tokens = vqae.encode(pair)
            logits = vqae.decode(grid_tokens).float()
        tokens.append(grid_tokens[0].cpu().numpy().astype(np.int16))
        rows.append({"name": files.name, "fixed": str(files.fixed), "moving": str(files.moving), "grid": grid.to_json(),
                     "vessels_kept": {"fixed": round(fixed_kept, 4), "moving": round(moving_kept, 4)},
                     "reconstruction_dice": {"fixed": round(dice(logits[0, 1] > logits[0, 0], pair[0, 0]), 4),
                                             "moving": round(dice(logits[0, 3] > logits[0, 2], pair[0, 1]), 4)}})
        progress.progress("encoding", index + 1, len(pairs))
    report = {"version": __version__, "folder": str(folder), "device": describe(device),
              "model": {"id": model_id(model, "vqae"), "path": str(model)},
              "token_shape_ijk": vqae.config.token_shape_ijk, "pairs": rows}
    with atomic_output_dir(output_dir, overwrite, inputs=[folder, model]) as staging:
        np.savez_compressed(staging / "tokens.npz", tokens=np.stack(tokens), names=np.array([r["name"] for r in rows]))
        report["seconds"] = round(time.perf_counter() - started, 2)
        (staging / "encode.json").write_text(json.dumps(report, indent=2) + "\n")
    report["files"] = {"tokens": str(Path(output_dir) / "tokens.npz"), "report": str(Path(output_dir) / "encode.json")}
    return report
