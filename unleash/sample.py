"""Synthetic paired vessel volumes: absorbing-diffusion sampling of token grids, decoding, and
`unleash sample`'s files.

Sampling starts from a grid of mask tokens and unmasks it over `steps` denoiser passes; each pass
predicts every token, and a schedule decides which masked tokens take their prediction:
- "paper": the paper's (after Bond-Taylor et al.): at step t of T every still-masked token is
  unmasked with probability 1 / (T - t), so the last step unmasks the rest; tokens are drawn from
  the categorical at temperature 0.9. T = 256 is the reference.
- "maskgit": confidence-ordered (Chang et al., MaskGIT): tokens are drawn the same way, and the
  masked ones whose draws are most probable (plus annealed Gumbel noise, which keeps the order
  from always filling the easy background first) are kept, with a cosine schedule of how many
  stay masked: L cos(pi/2 (t+1)/T). It needs far fewer steps.
Same seed, device, batch size and settings -> the same tokens.

Decoded volumes: the VQ-AE's volume (256 x 208 x 256 voxels of 1 mm by default), identity
direction (LPS), origin chosen so that the volume's centre is at (0, 0, 0) mm. Token grid axes
(i, j, k) are the volume's (i, j, k): arrays [k, j, i] here are transposed from (i, j, k) tensors.
"""
from __future__ import annotations

import itertools
import json
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage

from . import __version__
from .checkpoints import DEFAULTS, load_model, model_id
from .devices import describe, resolve_device
from .errors import UserError
from .geometry import Grid, Volume, write_image
from .jobs import Progress
from .jobspec import DEFAULT_DEVICE, DEFAULT_SAMPLE_BATCH, DEFAULT_SCHEDULE, DEFAULT_TEMPERATURE, SCHEDULES
from .models.denoiser import Denoiser
from .models.refiner import Refiner
from .models.sampler import Sampler
from .models.vqae import VQAutoEncoder
from .output_folder import atomic_output_dir, check_output_dir
from .preflight import check_sample_options, check_steps
from .preview_pairs import pair_projections, pairs_preview_png
from .sample_space import check_free_space, sample_grid, upsampling

CHOICE_NOISE = 4.5  # MaskGIT's Gumbel noise on the confidence, annealed to 0 over the steps


def _draw(logits: torch.Tensor, temperature: float, generator: torch.Generator | None):
    """logits (M, V) -> (drawn tokens (M,), their log-probabilities (M,)) at `temperature`."""
    log_p = torch.log_softmax(logits.float() / temperature, dim=-1)
    drawn = torch.multinomial(log_p.exp(), 1, generator=generator)
    return drawn[:, 0], log_p.gather(1, drawn)[:, 0]


def _still_masked_after(step: int, steps: int, total: int, masked_now: int) -> int:
    """MaskGIT's cosine schedule: how many tokens stay masked after `step` (0-based); at least one is unmasked."""
    return max(0, min(masked_now - 1, math.floor(total * math.cos(math.pi / 2 * (step + 1) / steps))))


def _paper_step(logits, masked, step, steps, temperature, generator):
    """Each masked token is unmasked with probability 1 / (steps - step): (unmask, drawn), both (N, L)."""
    unmask = masked & (torch.rand(masked.shape, generator=generator, device=masked.device) < 1.0 / (steps - step))
    drawn = torch.zeros_like(masked, dtype=torch.long)
    drawn[unmask] = _draw(logits[unmask], temperature, generator)[0]
    return unmask, drawn


def _maskgit_step(logits, masked, step, steps, temperature, generator):
    """The most confident draws among the masked tokens, as many as the cosine schedule asks for."""
    drawn = torch.zeros_like(masked, dtype=torch.long)
    values, log_p = _draw(logits[masked], temperature, generator)
    drawn[masked] = values
    noise = torch.rand(log_p.shape, generator=generator, device=masked.device).clamp(1e-20, 1)
    confidence = torch.full(masked.shape, -math.inf, device=masked.device)
    confidence[masked] = log_p + CHOICE_NOISE * (1 - (step + 1) / steps) * -torch.log(-torch.log(noise))
    masked_now = int(masked[0].sum())  # the same in every row: the schedule is deterministic
    keep = masked_now - _still_masked_after(step, steps, masked.shape[1], masked_now)
    unmask = torch.zeros_like(masked).scatter_(1, confidence.topk(keep, dim=1).indices, True)
    return unmask, drawn


STEPS = {"paper": _paper_step, "maskgit": _maskgit_step}


@torch.no_grad()
def sample_tokens(denoiser: Denoiser, count: int, schedule: str = DEFAULT_SCHEDULE, steps: int | None = None,
                  temperature: float = DEFAULT_TEMPERATURE, generator: torch.Generator | None = None,
                  on_step=None) -> torch.Tensor:
    """`count` token sequences (count, L) with no mask id left; on_step(step, steps, unmasked (count, L) bool)."""
    steps = steps or SCHEDULES[schedule]
    config = denoiser.config
    device = next(denoiser.parameters()).device
    tokens = torch.full((count, config.tokens), config.mask_id, dtype=torch.long, device=device)
    for step in range(steps):
        masked = tokens == config.mask_id
        if not masked.any():
            break
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            logits = denoiser(tokens)
        unmask, drawn = STEPS[schedule](logits, masked, step, steps, temperature, generator)
        tokens = torch.where(unmask, drawn, tokens)
        if on_step:
            on_step(step + 1, steps, unmask)
    return tokens


THRESHOLD = 0.5  # a voxel is vessel where the decoder's vessel probability is above this...
# ...unless that gives a vessel share of the box outside the range of the ten real training pairs
# (min and max of the pairs' mean, benchmarks/sampler.py): then the threshold that gives the nearest end
REAL_VESSEL_FRACTION = (0.0125, 0.0439)
THRESHOLD_BINS = 1024  # resolution of the matched threshold: a histogram, not a sort of 13.6 M voxels


def vessel_threshold(probability: torch.Tensor, fraction_range: tuple[float, float] = REAL_VESSEL_FRACTION) -> float:
    """The threshold of one scan's vessel probabilities (any shape): THRESHOLD if the share of voxels
    above it lies in `fraction_range`, else the histogram edge whose share above is nearest inside the
    range. A drawing with too few sure voxels keeps its shape and is widened along its own probability
    ranks (too many: narrowed), instead of a nearly empty or flooded scan being written."""
    low, high = fraction_range
    share = int(torch.count_nonzero(probability > THRESHOLD)) / probability.numel()
    if low <= share <= high:
        return THRESHOLD
    counts = torch.histc(probability.float(), bins=THRESHOLD_BINS, min=0.0, max=1.0)
    at_or_above = counts.double().flip(0).cumsum(0).flip(0) / probability.numel()  # [b]: share >= b / bins
    edges = torch.arange(1, THRESHOLD_BINS)  # never edge 0: that would make every voxel vessel
    if share < low:
        candidates = edges[at_or_above[1:] >= low]
        edge = int(candidates.max()) if len(candidates) else 1
    else:
        candidates = edges[at_or_above[1:] <= high]
        edge = int(candidates.min()) if len(candidates) else THRESHOLD_BINS - 1
    return edge / THRESHOLD_BINS


CENTRELINE_THRESHOLD = 0.25  # ...and the centrelines of the wider mask above this, where they join those vessels:
# a one-voxel vessel through a 2 mm block fills 2 of its 8 voxels, a block mean of 1/4
NEIGHBOURS_26 = np.ones((3, 3, 3), bool)
STEPS_26 = np.array([d for d in itertools.product((-1, 0, 1), repeat=3) if d != (0, 0, 0)])  # (26, 3)
HALF_STEPS = STEPS_26[13:]  # one of each +-d pair


def _gather(probability: torch.Tensor, voxels: np.ndarray) -> np.ndarray:
    """probability at integer voxels (..., 3), as numpy (...)."""
    return probability[tuple(torch.from_numpy(voxels).to(probability.device).movedim(-1, 0))].cpu().numpy()


def _ridge_paths(probability: torch.Tensor, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """The inner voxels (M', 3) of 26-connected paths from voxels a[m] to b[m] (both (M, 3)) along the
    probability's ridge: each step to the most probable neighbour one step nearer b. A path with an inner
    voxel at or below CENTRELINE_THRESHOLD is left out: it would cross the background."""
    apart = np.abs(b - a).max(axis=1) > 1
    here, b = a[apart], b[apart]
    steps, ok, rows = [], np.ones(len(here), bool), np.arange(len(here))
    while len(here) and (going := np.abs(b - here).max(axis=1) > 1).any():
        left = np.abs(b - here).max(axis=1)  # steps still to go (the Chebyshev distance)
        candidates = np.clip(here[:, None] + STEPS_26, 0, np.array(probability.shape) - 1)  # (M, 26, 3)
        nearer = np.abs(b[:, None] - candidates).max(axis=2) == left[:, None] - 1
        value = _gather(probability, candidates)
        best = np.where(nearer, value, -1.0).argmax(axis=1)
        ok &= ~going | (value[rows, best] > CENTRELINE_THRESHOLD)
        here = np.where(going[:, None], candidates[rows, best], here)
        steps.append((here[going], going))
    return np.concatenate([np.zeros((0, 3), np.int64)] + [voxels[ok[going]] for voxels, going in steps])


def vessel_mask(probability: torch.Tensor, threshold: float, factor: int) -> torch.Tensor:
    """One scan's vessel mask (bool, the shape of `probability`, sides multiples of `factor`): probability
    above `threshold`, and the one-voxel centrelines of the wider mask above CENTRELINE_THRESHOLD where they
    join it. A thin vessel that the decoder only half sees keeps a ridge below the threshold along its
    centreline: a lower threshold would thicken every vessel, the centreline joins the pieces and extends
    the tips at little volume. The centrelines are the skeleton (scikit-image's 3D thinning) of the wider
    mask on the decoder's grid (mean probability of each factor^3 block: 1/factor^3 of the fine skeleton's
    cost), kept where a piece passes through a block holding a vessel voxel, and drawn back as fine lines:
    each skeleton block's most probable voxel, joined to its neighbours' along the fine probability's ridge."""
    from skimage.morphology import skeletonize  # on first use: the module imports only the sampler needs

    mask = probability > threshold
    wide = (F.avg_pool3d(probability[None, None], factor)[0, 0] > CENTRELINE_THRESHOLD).cpu().numpy()  # (n / f)^3
    if not wide.any():
        return mask
    spans = [np.flatnonzero(wide.any(axis=tuple({0, 1, 2} - {axis}))) for axis in range(3)]
    start = np.array([span[0] for span in spans])
    skeleton = np.pad(skeletonize(wide[tuple(slice(span[0], span[-1] + 1) for span in spans)]).astype(bool), 1)
    cells = np.argwhere(skeleton)  # (M, 3) in the padded box
    inside = factor * (cells - 1 + start)[:, None] + np.array(list(itertools.product(range(factor), repeat=3)))
    values = _gather(probability, inside)  # (M, f^3): the fine voxels of each skeleton block
    peaks = inside[np.arange(len(cells)), values.argmax(axis=1)]  # (M, 3) fine
    pieces = ndimage.label(skeleton, NEIGHBOURS_26)[0][tuple(cells.T)]
    keep = np.isin(pieces, pieces[values.max(axis=1) > threshold])  # pieces through a block that holds a vessel voxel
    skeleton[tuple(cells[~keep].T)] = False
    cells, peaks = cells[keep], peaks[keep]
    peak_of = np.zeros(skeleton.shape + (3,), np.int64)
    peak_of[tuple(cells.T)] = peaks
    ends = [(peaks[linked], peak_of[tuple((cells[linked] + d).T)])
            for d in HALF_STEPS for linked in [skeleton[tuple((cells + d).T)]]]
    a, b = (np.concatenate(side) for side in zip(*ends))
    fine = np.concatenate([peaks, _ridge_paths(probability, a, b)])
    mask[tuple(torch.from_numpy(fine).to(mask.device).T)] = True
    return mask


def fine_probabilities(coarse: torch.Tensor, factor: int, refiner: Refiner | None) -> torch.Tensor:
    """The decoder's vessel probabilities (N, I, J, K) -> (N, f I, f J, f K) on the written grid: the
    refiner's, else trilinear (voxel edges aligned: align_corners=False)."""
    if refiner is not None:
        return refiner.probabilities(coarse[:, None])[:, 0]
    if factor == 1:
        return coarse
    return F.interpolate(coarse[:, None], scale_factor=factor, mode="trilinear", align_corners=False)[:, 0]


@torch.no_grad()
def decode_pair(vqae: VQAutoEncoder, tokens: torch.Tensor, grid: Grid, refiner: Refiner | None = None
                ) -> dict[str, Volume | float]:
    """One token sequence (L,) -> {"fixed", "moving"} uint8 label maps (`vessel_mask` at
    `vessel_threshold`) and {"fixed_probability", "moving_probability"} float32 vessel probabilities,
    all on `grid`, and {"fixed_threshold", "moving_threshold"}. One pair at a time: the decoder's
    full-resolution activations are the largest tensors of the whole chain."""
    device = tokens.device
    grid_tokens = tokens.view(1, *vqae.config.token_shape_ijk)
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
        logits = vqae.decode(grid_tokens)[0].float()  # (4, I, J, K)
    coarse = torch.stack([torch.softmax(logits[0:2], dim=0)[1], torch.softmax(logits[2:4], dim=0)[1]])
    factor = upsampling(vqae.config)
    fine = fine_probabilities(coarse, factor, refiner)
    volumes = {}
    for name, probability in zip(("fixed", "moving"), fine):  # (I, J, K)
        volumes[f"{name}_threshold"] = threshold = vessel_threshold(probability)
        mask = vessel_mask(probability, threshold, factor)
        volumes[name] = Volume(mask.permute(2, 1, 0).to(torch.uint8).cpu().numpy(), grid)  # -> [k, j, i]
        volumes[f"{name}_probability"] = Volume(probability.permute(2, 1, 0).cpu().numpy(), grid)
    return volumes


# ----------------------------------------------------------------------------------------------
# `unleash sample`: files


NO_DEFAULT_MODEL = ("the shipped sampler model file is missing from this installation (unleash/weights/"
                    "sampler_default.safetensors): reinstall, or give a 'sampler' model file with --model FILE")
PREVIEW_PAIRS = 32


@dataclass
class SampleOptions:
    model: str | None = None
    schedule: str = DEFAULT_SCHEDULE
    steps: int | None = None  # None: the schedule's default
    temperature: float = DEFAULT_TEMPERATURE
    batch_size: int = DEFAULT_SAMPLE_BATCH  # pairs per denoiser batch; decoding is one pair at a time
    seed: int = 0
    device: str = DEFAULT_DEVICE
    probabilities: bool = False

    def check(self, count: int) -> None:
        check_sample_options(count, self.schedule, self.steps, self.temperature, self.batch_size)


def load_sampler(path: str | None, device: torch.device) -> tuple[Sampler, dict]:
    """The sampler of a model file; None: the shipped one."""
    if path is None and not DEFAULTS["sampler"].is_file():
        raise UserError(NO_DEFAULT_MODEL)
    model, _, card = load_model(path, "sampler", device)
    if device.type == "cpu":
        model.vqae.channels_last()
    return model, card


def _write_pair(folder: Path, name: str, volumes: dict[str, Volume], probabilities: bool) -> dict[str, str]:
    files = {"fixed": f"{name}_fixed.nii.gz", "moving": f"{name}_moving.nii.gz"}
    if probabilities:
        files.update(fixed_probability=f"{name}_fixed_probability.nii.gz",
                     moving_probability=f"{name}_moving_probability.nii.gz")
    for key, file in files.items():
        volume = volumes[key]
        if key.endswith("probability"):  # steps of 1/255: a soft map then compresses like a label map
            volume = volume.with_array((np.round(volume.array * 255) / 255).astype(np.float32))
        write_image(volume.to_sitk(), folder / file)
    return files


def sample_files(count: int, output_dir, options: SampleOptions, progress: Progress, overwrite: bool = False) -> dict:
    """Sample `count` pairs into `output_dir` (pair_NNNN_fixed/moving.nii.gz, samples.json, preview.png)."""
    started = time.perf_counter()
    options.check(count)
    output_dir = check_output_dir(output_dir, overwrite, inputs=[options.model])
    device = resolve_device(options.device)
    model, card = load_sampler(options.model, device)
    grid = sample_grid(model.vqae.config)
    check_steps(options.steps, model.denoiser.config.tokens)
    check_free_space(output_dir.resolve().parent, count, grid, options.probabilities)
    steps = options.steps or SCHEDULES[options.schedule]
    progress.log(f"sampling {count} pairs with the {options.schedule} schedule ({steps} steps) on {describe(device)}")
    generator = torch.Generator(device).manual_seed(options.seed)
    seconds = {"load": time.perf_counter() - started}

    tick = time.perf_counter()
    batches, done, total = [], 0, math.ceil(count / options.batch_size) * steps

    def on_step(*_):
        nonlocal done
        done += 1
        progress.progress("sampling", done, total)

    for first in range(0, count, options.batch_size):
        size = min(options.batch_size, count - first)
        batches.append(sample_tokens(model.denoiser, size, options.schedule, steps, options.temperature, generator, on_step))
    tokens = torch.cat(batches)  # (count, L): small, so all pairs are sampled before any is decoded
    seconds["sampling"] = time.perf_counter() - tick

    tick = time.perf_counter()
    pairs, projections = [], []
    with atomic_output_dir(output_dir, overwrite, inputs=[options.model]) as staging:
        for index, row in enumerate(tokens):
            volumes = decode_pair(model.vqae, row, grid, model.refiner)
            name = f"pair_{index + 1:04d}"
            files = _write_pair(staging, name, volumes, options.probabilities)
            pairs.append({"name": name, "files": files,
                          "vessel_fraction": {k: round(float(volumes[k].array.mean()), 5) for k in ("fixed", "moving")},
                          "threshold": {k: round(volumes[f"{k}_threshold"], 4) for k in ("fixed", "moving")}})
            if len(projections) < PREVIEW_PAIRS:
                projections.append(pair_projections(volumes["fixed"], volumes["moving"]))
            progress.progress("decoding", index + 1, count)
        seconds["decoding_and_writing"] = time.perf_counter() - tick
        pairs_preview_png(staging / "preview.png", projections, grid.spacing_mm,
                          f"{min(count, PREVIEW_PAIRS)} of {count} sampled pairs: fixed (magenta), moving (green)")
        seconds["total"] = time.perf_counter() - started
        seconds["per_pair"] = seconds["total"] / count
        report = {"version": __version__, "count": count, "device": describe(device),
                  "model": {"id": model_id(options.model, "sampler"), "path": str(options.model or DEFAULTS["sampler"]),
                            "card": card},
                  "settings": {**asdict(options), "steps": steps}, "grid": grid.to_json(),
                  "seconds": {k: round(v, 2) for k, v in seconds.items()}, "pairs": pairs}
        (staging / "samples.json").write_text(json.dumps(report, indent=2) + "\n")
    report["output"] = str(output_dir)
    return report
