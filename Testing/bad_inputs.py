"""Bad input as a new or an unlucky user gives it, one real file (or folder) per case: what the CLI
must refuse with one clear line, a non-zero exit and nothing written, changed or deleted.

Shared by Testing/test_reliability.py (which runs each case through the CLI's main) and
benchmarks/refusals.py (which runs each as a process and times the refusal). A case is
(class, name, make, expected): `make(workspace, fixtures)` writes its files under `workspace`
and returns the command's arguments; `expected` is a part of the one error line.
"""
from __future__ import annotations

import gzip
import json
import os
import shutil
import struct
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk
import torch
from safetensors import safe_open

from unleash.checkpoints import save_model, write_safetensors
from unleash.cli import main
from unleash.modelfile import DEFAULTS
from unleash.models.registration import RegistrationConfig, TwoStepRegistration
from unleash.output_folder import MARKER

# the tiny registration model of conftest.py: a 4 mm work grid and a few channels
TINY = RegistrationConfig(shape_xyz=[81, 57, 81], spacing_mm=4.0, lattice_mm=4.0, channels=[4, 8], squaring_steps=4)
TINY_TRAINING = {"model": TINY.to_dict(),
                 "training": {"warmup": 1, "learning_rate": 0.003, "validate_every": 0, "checkpoint_every": 1},
                 "task": {"rotation_deg": 0, "scaling": 0, "translation_mm": 4}}


@dataclass
class Fixtures:
    model: Path  # a tiny registration model file
    run: Path  # a finished two-step registration training run folder on `pairs`
    pairs: Path  # a folder with one pair_0001_fixed/_moving training pair


def tree() -> np.ndarray:
    """A small vessel label map [k, j, i]: two crossing bars, labels 1 and 2."""
    array = np.zeros((40, 48, 56), np.uint8)
    array[10:30, 20:24, 10:46] = 1
    array[18:22, 8:40, 26:30] = 2
    return array


def ct_like() -> np.ndarray:
    """CT-like values [k, j, i] in HU (air to soft tissue, many distinct values) on the tree's grid."""
    return (-1000 + 1400 * np.random.default_rng(0).random(tree().shape)).astype(np.int16)


def write_scan(path: Path, array: np.ndarray | None = None, origin=(0.0, 0.0, 0.0), direction=None) -> Path:
    image = sitk.GetImageFromArray(tree() if array is None else array)
    image.SetOrigin(origin)
    if direction is not None:
        image.SetDirection(direction)
    path.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(image, str(path), useCompression=path.name.endswith(".gz"))
    return path


def make_fixtures(root: Path) -> Fixtures:
    torch.manual_seed(0)
    model = root / "tiny_registration.safetensors"
    save_model(model, TwoStepRegistration(TINY), TINY, {"kind": "registration", "note": "tiny untrained test model"})
    pairs = root / "pairs"
    write_scan(pairs / "pair_0001_fixed.nii.gz")
    write_scan(pairs / "pair_0001_moving.nii.gz", np.roll(tree(), 2, axis=2))
    config = root / "tiny_training.json"
    config.write_text(json.dumps(TINY_TRAINING))
    run = root / "run"
    code = main(["train", "registration", "--data", str(pairs), "--out", str(run), "--config", str(config),
                 "--iterations", "2", "--device", "cpu", "--progress", "none"])
    assert code == 0, "the tiny training run failed"
    return Fixtures(model, run, pairs)


# ---- files that SimpleITK would read without a word ----

def nifti_edited(path: Path, edit: Callable[[bytearray], None]) -> Path:
    """The standard scan as NIfTI-1 with its header bytes edited (then gzipped for .nii.gz)."""
    plain = write_scan(path.with_name("plain_" + path.name.removesuffix(".gz")))
    data = bytearray(plain.read_bytes())
    plain.unlink()
    edit(data)
    path.write_bytes(gzip.compress(bytes(data)) if path.name.endswith(".gz") else bytes(data))
    return path


def nifti_with_voxel(path: Path, value: float, dtype=np.float32) -> Path:
    """The standard scan as float NIfTI with its middle voxel's bytes set to `value` (written past
    SimpleITK, whose NIfTI writer and reader turn NaN into 0)."""
    plain = write_scan(path.with_name("plain_" + path.name.removesuffix(".gz")), tree().astype(dtype))
    data = bytearray(plain.read_bytes())
    plain.unlink()
    middle = len(data) - tree().size // 2 * np.dtype(dtype).itemsize
    data[middle:middle + np.dtype(dtype).itemsize] = np.array([value], dtype).tobytes()
    path.write_bytes(gzip.compress(bytes(data)) if path.name.endswith(".gz") else bytes(data))
    return path


def set_pixdim(value: float):
    def edit(data: bytearray) -> None:
        data[80:84] = struct.pack("<f", value)  # pixdim[1], the voxel size along i
    return edit


def bad_datatype(data: bytearray) -> None:
    data[70:72] = struct.pack("<h", 999)  # datatype: no NIfTI type (niftilib prints its own error line)


def shear_sform(data: bytearray) -> None:
    rows = list(struct.unpack_from("<12f", data, 280))
    rows[1] = 0.5  # srow_x[1]: i moves along y as well as x
    data[280:328] = struct.pack("<12f", *rows)
    data[254:256] = struct.pack("<h", 1)  # sform_code: the sform is used


def cut(path: Path, keep: float) -> Path:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])
    return path


def damaged_middle(path: Path) -> Path:
    data = bytearray(path.read_bytes())
    data[len(data) // 2: len(data) // 2 + 16] = bytes(16)
    path.write_bytes(bytes(data))
    return path


def register(workspace: Path, fixtures: Fixtures, fixed: Path | None = None, moving: Path | None = None,
             out: str | None = None, *extra: str) -> list[str]:
    fixed = fixed or write_scan(workspace / "fixed.nii.gz")
    moving = moving or write_scan(workspace / "moving.nii.gz")
    return ["register", str(fixed), str(moving), "-o", out if out is not None else str(workspace / "out"),
            "--model", str(fixtures.model), "--adapt-iters", "2", "--device", "cpu", *extra]


def with_moving(make_moving: Callable[[Path], Path]):
    return lambda w, f: register(w, f, moving=make_moving(w))


# ---- output folders ----

def user_folder(w: Path, f: Fixtures) -> list[str]:
    (w / "out").mkdir()
    (w / "out" / "thesis.docx").write_text("years of work")
    return register(w, f, None, None, None, "--overwrite")


def earlier_output_with_user_file(w: Path, f: Fixtures) -> list[str]:
    out = w / "out"
    out.mkdir()
    (out / "report.json").write_text("{}")
    (out / MARKER).write_text(json.dumps({"files": ["report.json"]}))
    (out / "notes.txt").write_text("mine")
    return register(w, f, None, None, None, "--overwrite")


def inputs_inside(w: Path, f: Fixtures) -> list[str]:
    fixed, moving = write_scan(w / "res" / "fixed.nii.gz"), write_scan(w / "res" / "moving.nii.gz")
    return register(w, f, fixed, moving, str(w / "res"), "--overwrite")


def parent_of_inputs(w: Path, f: Fixtures) -> list[str]:
    fixed, moving = write_scan(w / "scans" / "a" / "fixed.nii.gz"), write_scan(w / "scans" / "a" / "moving.nii.gz")
    return register(w, f, fixed, moving, str(w / "scans"), "--overwrite")


def evaluate_into_its_folder(w: Path, f: Fixtures) -> list[str]:
    write_scan(w / "val" / "case_001_1.nii.gz")
    write_scan(w / "val" / "case_001_2.nii.gz")
    return ["evaluate", str(w / "val"), "-o", str(w / "val"), "--overwrite", "--model", str(f.model)]


def output_is_a_file(w: Path, f: Fixtures) -> list[str]:
    (w / "out").write_text("a file")
    return register(w, f, None, None, str(w / "out"))


# ---- model files with a damaged config ----

def edited_model(source: Path, values, path: Path) -> Path:
    """The model file `source` with its config edited by `values`, written to `path`."""
    with safe_open(str(source), framework="pt") as handle:
        metadata = handle.metadata()
        tensors = {name: handle.get_tensor(name) for name in handle.keys()}
    config = values(json.loads(metadata["config"]))
    return write_safetensors(path, tensors, {**metadata, "config": json.dumps(config)})


def model_config(values, command: str = "register") -> Callable[[Path, Fixtures], list[str]]:
    """`command` (register or evaluate) with the tiny registration model, its config edited by `values`."""
    def make(w: Path, f: Fixtures) -> list[str]:
        path = str(edited_model(f.model, values, w / "model.safetensors"))
        if command == "evaluate":
            return [*evaluate_limit("1")(w, f), "--model", path]
        return register(w, f, None, None, None, "--model", path)
    return make


def sampler_config(values) -> Callable[[Path, Fixtures], list[str]]:
    """`unleash sample` with the shipped sampler file, its config edited by `values`."""
    return lambda w, f: sample("--model", str(edited_model(DEFAULTS["sampler"], values, w / "sampler.safetensors")))(w, f)


def wider_first_level(config: dict) -> dict:
    return {**config, "channels": [config["channels"][0] * 2] + config["channels"][1:]}


def model_metadata(key: str, value: str) -> Callable[[Path, Fixtures], list[str]]:
    """register with the tiny model, its safetensors metadata entry `key` set to `value`."""
    def make(w: Path, f: Fixtures) -> list[str]:
        with safe_open(str(f.model), framework="pt") as handle:
            metadata = handle.metadata()
            tensors = {name: handle.get_tensor(name) for name in handle.keys()}
        path = write_safetensors(w / "model.safetensors", tensors, {**metadata, key: value})
        return register(w, f, None, None, None, "--model", str(path))
    return make


def nan_weights(w: Path, f: Fixtures) -> list[str]:
    with safe_open(str(f.model), framework="pt") as handle:
        metadata = handle.metadata()
        tensors = {name: handle.get_tensor(name) for name in handle.keys()}
    name = next(n for n, t in tensors.items() if t.is_floating_point())
    tensors[name] = torch.full_like(tensors[name], float("nan"))
    path = write_safetensors(w / "model.safetensors", tensors, metadata)
    return register(w, f, None, None, None, "--model", str(path))


def named_pipe(path: Path) -> Path:
    """A FIFO: a reader that opened it would wait for a writer for ever."""
    os.mkfifo(path)
    return path


def folder_scan(w: Path) -> Path:
    (w / "moving.nii.gz").mkdir()
    return w / "moving.nii.gz"


def model_folder(w: Path, f: Fixtures) -> list[str]:
    (w / "model.safetensors").mkdir()
    return register(w, f, None, None, None, "--model", str(w / "model.safetensors"))


# ---- landmarks ----

def landmarks(text: str) -> Callable[[Path, Fixtures], list[str]]:
    def make(w: Path, f: Fixtures) -> list[str]:
        (w / "landmarks.csv").write_text(text)
        return register(w, f, None, None, None, "--landmarks", str(w / "landmarks.csv"))
    return make


HEADER = "fixed_i,fixed_j,fixed_k,moving_i,moving_j,moving_k\n"


# ---- training runs ----

def damaged_run(damage: Callable[[Path], None]) -> Callable[[Path, Fixtures], list[str]]:
    def make(w: Path, f: Fixtures) -> list[str]:
        run = w / "run"
        shutil.copytree(f.run, run)
        damage(run)
        return ["train", "registration", "--resume", str(run), "--iterations", "4", "--device", "cpu"]
    return make


def edit_config(edit: Callable[[dict], object]) -> Callable[[Path], None]:
    def damage(run: Path) -> None:
        config = json.loads((run / "config.json").read_text())
        (run / "config.json").write_text(json.dumps(edit(config)))
    return damage


def edit_checkpoint(edit: Callable[[dict, dict], None]) -> Callable[[Path], None]:
    def damage(run: Path) -> None:
        path = run / "checkpoints" / "last.safetensors"
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata()
            tensors = {name: handle.get_tensor(name) for name in handle.keys()}
        edit(metadata, tensors)
        write_safetensors(path, tensors, metadata)
    return damage


def negative_step(metadata: dict, tensors: dict) -> None:
    metadata["step"] = "-3"


def wrong_shape(metadata: dict, tensors: dict) -> None:
    name = next(n for n in tensors if n.startswith("model.") and tensors[n].dim() == 5)
    tensors[name] = torch.zeros(*tensors[name].shape[:-1], tensors[name].shape[-1] + 1)


def newer_format(metadata: dict, tensors: dict) -> None:
    metadata["format_version"] = "99"


def garbage_metrics(run: Path) -> None:
    (run / "metrics.csv").write_bytes(b"\x00\xff garbage \x89PNG\n1,2\n")


def new_run(*options: str) -> Callable[[Path, Fixtures], list[str]]:
    def make(w: Path, f: Fixtures) -> list[str]:
        return ["train", "registration", "--data", str(f.pairs), "--out", str(w / "run"), "--device", "cpu", *options]
    return make


def config_file(values: dict) -> Callable[[Path, Fixtures], list[str]]:
    def make(w: Path, f: Fixtures) -> list[str]:
        (w / "settings.json").write_text(json.dumps(values))
        return new_run("--config", str(w / "settings.json"))(w, f)
    return make


def duplicate_cases(w: Path, f: Fixtures) -> list[str]:
    for name in ("case_001_1.nii.gz", "case_001_2.nii.gz", "case_001_1.nii", "case_001_2.nii"):
        write_scan(w / "val" / name)
    return ["evaluate", str(w / "val"), "-o", str(w / "out"), "--model", str(f.model)]


def evaluate_limit(limit: str) -> Callable[[Path, Fixtures], list[str]]:
    def make(w: Path, f: Fixtures) -> list[str]:
        write_scan(w / "val" / "case_001_1.nii.gz")
        write_scan(w / "val" / "case_001_2.nii.gz")
        return ["evaluate", str(w / "val"), "-o", str(w / "out"), "--model", str(f.model), "--limit", limit]
    return make


def symlinked_output(target: str) -> Callable[[Path, Fixtures], list[str]]:
    """-o a symbolic link to `target` (relative to the workspace; a link to itself loops)."""
    def make(w: Path, f: Fixtures) -> list[str]:
        (w / "out").symlink_to(w / target)
        return register(w, f)
    return make


def with_spacing(spacing_mm: float) -> Callable[[Path, Fixtures], list[str]]:
    """Both scans with voxels of `spacing_mm` (a header's mistake: metres or micrometres for mm)."""
    def make(w: Path, f: Fixtures) -> list[str]:
        paths = []
        for name in ("fixed.nrrd", "moving.nrrd"):
            image = sitk.GetImageFromArray(tree())
            image.SetSpacing([spacing_mm] * 3)
            sitk.WriteImage(image, str(w / name))
            paths.append(w / name)
        return register(w, f, *paths)
    return make


def sample(*options: str) -> Callable[[Path, Fixtures], list[str]]:
    return lambda w, f: ["sample", "-n", "1", "-o", str(w / "out"), "--device", "cpu", *options]


def training_pair(make_moving: Callable[[Path], Path], kind: str = "registration",
                  suffix: str = ".nii.gz") -> Callable[[Path, Fixtures], list[str]]:
    """A new `kind` run on a folder of two pairs: a good one and one whose moving scan `make_moving(path)`
    writes (NIfTI cannot hold NaN: SimpleITK writes it as 0)."""
    def make(w: Path, f: Fixtures) -> list[str]:
        folder = w / "data"
        for name in ("pair_0001_fixed.nii.gz", "pair_0001_moving.nii.gz", f"pair_0002_fixed{suffix}"):
            write_scan(folder / name)
        make_moving(folder / f"pair_0002_moving{suffix}")
        return ["train", kind, "--data", str(folder), "--out", str(w / "run"), "--device", "cpu"]
    return make


def encode_pair(make_moving: Callable[[Path], Path]) -> Callable[[Path, Fixtures], list[str]]:
    """`unleash encode` (the shipped sampler's VQ-autoencoder) on a folder with one good pair and one whose
    moving scan `make_moving(path)` writes."""
    def make(w: Path, f: Fixtures) -> list[str]:
        argv = training_pair(make_moving)(w, f)
        return ["encode", argv[argv.index("--data") + 1], "-o", str(w / "tokens"), "--model", str(DEFAULTS["sampler"])]
    return make


def train_data(kind: str, data: str | None, *options: str) -> Callable[[Path, Fixtures], list[str]]:
    """A new `kind` run on the folder `data` (relative to the workspace, made empty when it ends in /;
    None: the training pairs)."""
    def make(w: Path, f: Fixtures) -> list[str]:
        if data and data.endswith("/"):
            (w / data).mkdir()
        folder = w / data if data else f.pairs
        return ["train", kind, "--data", str(folder), "--out", str(w / "run"), "--device", "cpu", *options]
    return make


@dataclass(frozen=True)
class Case:
    kind: str
    name: str
    make: Callable[[Path, Fixtures], list[str]]
    expected: str
    # refused once torch is imported: whether weights fit a network is known when it is built (on the meta device)
    needs_torch: bool = False


CASES = [
    Case("output folder", "--overwrite on a folder of user files", user_folder, "was not written by unleash"),
    Case("output folder", "--overwrite on an output with a user's file added", earlier_output_with_user_file,
         "did not write (notes.txt)"),
    Case("output folder", "--overwrite on the folder holding the inputs", inputs_inside, "holds the input"),
    Case("output folder", "--overwrite on a parent of the inputs", parent_of_inputs, "holds the input"),
    Case("output folder", "evaluate -o FOLDER --overwrite", evaluate_into_its_folder, "holds the input"),
    Case("output folder", "-o .", lambda w, f: register(w, f, None, None, "."), "current folder"),
    Case("output folder", "-o ''", lambda w, f: register(w, f, None, None, ""), "empty name"),
    Case("output folder", "-o /", lambda w, f: register(w, f, None, None, "/", "--overwrite"), "current folder"),
    Case("output folder", "-o an existing file", output_is_a_file, "is not a folder"),
    Case("reading", ".nii.gz cut in half", with_moving(lambda w: cut(write_scan(w / "moving.nii.gz"), 0.5)),
         "truncated"),
    Case("reading", ".nii.gz cut at 90 %", with_moving(lambda w: cut(write_scan(w / "moving.nii.gz"), 0.9)),
         "truncated"),
    Case("reading", ".nii cut in half", with_moving(lambda w: cut(write_scan(w / "moving.nii"), 0.5)), "truncated"),
    Case("reading", ".nii.gz with 16 damaged bytes", with_moving(lambda w: damaged_middle(write_scan(w / "moving.nii.gz"))),
         "damaged"),
    Case("reading", "an empty .nii.gz", with_moving(lambda w: cut(write_scan(w / "moving.nii.gz"), 0)), "moving.nii.gz"),
    Case("reading", "pixdim 0", with_moving(lambda w: nifti_edited(w / "moving.nii.gz", set_pixdim(0.0))), "pixdim"),
    Case("reading", "pixdim NaN", with_moving(lambda w: nifti_edited(w / "moving.nii.gz", set_pixdim(float("nan")))),
         "pixdim"),
    Case("reading", "pixdim -2", with_moving(lambda w: nifti_edited(w / "moving.nii", set_pixdim(-2.0))), "pixdim"),
    Case("reading", "a shearing sform", with_moving(lambda w: nifti_edited(w / "moving.nii.gz", shear_sform)),
         "sform is not a rotation"),
    Case("reading", "an NRRD with a non-orthogonal direction",
         with_moving(lambda w: write_scan(w / "moving.nrrd", direction=(1, 0.3, 0, 0, 1, 0, 0, 0, 1))),
         "not a rotation"),
    Case("reading", "moving shifted by 1 m", with_moving(lambda w: write_scan(w / "moving.nii.gz", origin=(1000.0, 0, 0))),
         "do not overlap"),
    Case("reading", "NaN voxels",
         with_moving(lambda w: write_scan(w / "moving.nrrd", np.full((40, 48, 56), np.nan, np.float32))), "NaN"),
    Case("reading", "a NaN voxel in a float .nii.gz",
         with_moving(lambda w: nifti_with_voxel(w / "moving.nii.gz", float("nan"))), "NaN"),
    Case("reading", "an infinite voxel in a float64 .nii",
         with_moving(lambda w: nifti_with_voxel(w / "moving.nii", float("inf"), np.float64)), "infinite"),
    Case("training data", "a NaN voxel in a training .nii.gz", training_pair(lambda path: nifti_with_voxel(path, float("nan"))),
         "NaN"),
    Case("model config", "a training checkpoint as the model file",
         lambda w, f: register(w, f, None, None, None, "--model", str(f.run / "checkpoints" / "last.safetensors")),
         "is a training checkpoint"),
    Case("model config", "a model file of a newer format version", model_metadata("format_version", "99"),
         "format version '99'"),
    Case("model config", "a JSON list", model_config(lambda c: [c]), "damaged"),
    Case("model config", "shape [1, 1, 1]", model_config(lambda c: {**c, "shape_xyz": [1, 1, 1]}), "shape_xyz"),
    Case("model config", "spacing 0", model_config(lambda c: {**c, "spacing_mm": 0}), "spacing_mm"),
    Case("model config", "spacing -4", model_config(lambda c: {**c, "spacing_mm": -4}), "spacing_mm"),
    Case("model config", "spacing NaN", model_config(lambda c: {**c, "spacing_mm": float("nan")}), "spacing_mm"),
    Case("model config", "a 2000^3 grid", model_config(lambda c: {**c, "shape_xyz": [2000] * 3}), "voxels"),
    Case("model config", "squaring 1e9", model_config(lambda c: {**c, "squaring_steps": 10 ** 9}), "squaring_steps"),
    Case("model config", "lattice 0", model_config(lambda c: {**c, "lattice_mm": 0}), "lattice_mm"),
    Case("model config", "channels as text", model_config(lambda c: {**c, "channels": "16,32"}), "channels"),
    Case("model config", "shape of floats", model_config(lambda c: {**c, "shape_xyz": [81.5, 57, 81]}), "shape_xyz"),
    Case("model fit", "a channel count edited", model_config(wider_first_level), "has the shape", True),
    Case("model fit", "a level added", model_config(lambda c: {**c, "channels": c["channels"] + [8]}), "is missing", True),
    Case("model fit", "a level removed", model_config(lambda c: {**c, "channels": c["channels"][:1]}),
         "belongs to no part of the network", True),
    Case("model fit", "sample: the VQ-autoencoder's channels edited",
         sampler_config(lambda c: {**c, "vqae": wider_first_level(c["vqae"])}), "has the shape", True),
    Case("model fit", "evaluate: a channel count edited",
         model_config(wider_first_level, "evaluate"), "has the shape", True),
    Case("NaN/Inf", "a model with NaN weights", nan_weights, "NaN or infinite"),
    Case("NaN/Inf", "landmarks with NaN", landmarks(HEADER + "1,2,3,nan,2,3\n"), "not finite"),
    Case("NaN/Inf", "landmarks with Inf", landmarks(HEADER + "1,2,3,inf,2,3\n"), "not finite"),
    Case("reading", "a named pipe as the moving scan", with_moving(lambda w: named_pipe(w / "moving.nii.gz")),
         "not a regular file"),
    Case("model config", "a character device as the model file",
         lambda w, f: register(w, f, None, None, None, "--model", "/dev/zero"), "not a regular file"),
    Case("landmarks", "a named pipe as the landmark file",
         lambda w, f: register(w, f, None, None, None, "--landmarks", str(named_pipe(w / "landmarks.csv"))),
         "not a regular file"),
    Case("training settings", "--config a named pipe",
         lambda w, f: new_run("--config", str(named_pipe(w / "settings.json")))(w, f), "not a regular file"),
    Case("landmarks", "no header", landmarks("1,2,3,1,2,3\n4,5,6,4,5,6\n"), "header"),
    Case("landmarks", "an index of 1e6", landmarks(HEADER + "1000000,2,3,1,2,3\n"), "outside the fixed scan"),
    Case("landmarks", "a negative index", landmarks(HEADER + "1,2,3,1,-7,3\n"), "outside the moving scan"),
    Case("landmarks", "a short row", landmarks(HEADER + "1,2,3,1,2,3\n4,5,6,4,5\n"), "line 3 has 5 values"),
    Case("landmarks", "text in a value", landmarks(HEADER + "1,2,3,a,2,3\n"), "not a number"),
    Case("landmarks", "header only", landmarks(HEADER), "no landmarks"),
    Case("training state", "config.json a list", damaged_run(edit_config(lambda c: [c])), "damaged"),
    Case("training state", "config.json without training", damaged_run(edit_config(
        lambda c: {k: v for k, v in c.items() if k != "training"})), "'training'"),
    Case("training state", "a negative checkpoint step", damaged_run(edit_checkpoint(negative_step)), "step -3"),
    Case("training state", "a garbage metrics.csv", damaged_run(garbage_metrics), "metrics.csv"),
    Case("training state", "weights of the wrong shape", damaged_run(edit_checkpoint(wrong_shape)), "shape"),
    Case("training state", "a checkpoint of a newer format version", damaged_run(edit_checkpoint(newer_format)),
         "format version '99'"),
    Case("training state", "config.json's model edited", damaged_run(edit_config(
        lambda c: {**c, "model": wider_first_level(c["model"])})), "do not fit the run's model", True),
    Case("training settings", "--lr inf", new_run("--lr", "inf"), "learning_rate"),
    Case("training settings", "--lr nan", new_run("--lr", "nan"), "learning_rate"),
    Case("training settings", "a NaN regularisation", config_file({"task": {"regularisation": float("nan")}}),
         "regularisation"),
    Case("training settings", "iterations as text", config_file({"training": {"iterations": "many"}}), "iterations"),
    Case("training settings", "a model section that is a list", config_file({"model": [1, 2]}), "model"),
    Case("evaluate", "duplicate case names", duplicate_cases, "two scans of case_001"),
    Case("evaluate", "--limit 0", evaluate_limit("0"), "--limit"),
    Case("evaluate", "--limit -1", evaluate_limit("-1"), "--limit"),
    Case("output folder", "-o a symlink to nowhere", symlinked_output("nowhere"), "symbolic link"),
    Case("output folder", "-o a symlink loop", symlinked_output("out"), "symbolic link"),
    Case("output folder", "-o a folder that cannot be made (/proc)", lambda w, f: register(w, f, None, None, "/proc/unleash"),
         "cannot create the output folder"),
    Case("reading", "a folder as the scan (a DICOM series)", with_moving(folder_scan), "is a folder"),
    Case("reading", "a NIfTI datatype that does not exist", with_moving(lambda w: nifti_edited(w / "moving.nii", bad_datatype)),
         "cannot be read as an image"),
    Case("reading", "a zero-byte .nii", with_moving(lambda w: cut(write_scan(w / "moving.nii"), 0)), "is empty (0 bytes)"),
    Case("reading", "voxels of 1e6 mm", with_spacing(1e6), "a chest scan is"),
    Case("reading", "voxels of 1e-6 mm", with_spacing(1e-6), "a chest scan is"),
    Case("reading", "all zeros", with_moving(lambda w: write_scan(w / "moving.nii.gz", np.zeros((40, 48, 56), np.uint8))),
         "all zeros"),
    Case("reading", "all zeros with --inputs vessels",
         lambda w, f: register(w, f, None, write_scan(w / "moving.nii.gz", np.zeros((40, 48, 56), np.uint8)), None,
                               "--inputs", "vessels"), "all zeros"),
    Case("NaN/Inf", "one infinite voxel", with_moving(lambda w: write_scan(w / "moving.nrrd", np.where(
        tree() == 1, np.float32(np.inf), tree().astype(np.float32)))), "NaN or infinite"),
    Case("model config", "a folder as the model file", model_folder, "is a folder"),
    Case("options", "--adapt-iters -1", lambda w, f: register(w, f, None, None, None, "--adapt-iters", "-1"), "--adapt-iters"),
    Case("options", "--adapt-iters 10^12", lambda w, f: register(w, f, None, None, None, "--adapt-iters", str(10 ** 12)),
         "--adapt-iters"),
    Case("options", "--adapt-iters as text", lambda w, f: register(w, f, None, None, None, "--adapt-iters", "many"),
         "invalid int value"),
    Case("options", "--start identity --refinement none",
         lambda w, f: register(w, f, None, None, None, "--start", "identity", "--refinement", "none"), "--start identity"),
    Case("options", "register --seed -1", lambda w, f: register(w, f, None, None, None, "--seed", "-1"), "--seed"),
    Case("options", "register --seed 2^70", lambda w, f: register(w, f, None, None, None, "--seed", str(2 ** 70)), "--seed"),
    Case("options", "--device garbage", lambda w, f: register(w, f, None, None, None, "--device", "garbage"),
         "not a device name"),
    Case("options", "an unknown option", lambda w, f: register(w, f, None, None, None, "--speed", "fast"),
         "unrecognized arguments"),
    Case("options", "sample -n 0", sample("-n", "0"), "-n must be 1 or more"),
    Case("options", "sample --steps 0", sample("--steps", "0"), "--steps"),
    Case("options", "sample --temperature inf", sample("--temperature", "inf"), "--temperature"),
    Case("options", "sample --steps above the token count", sample("--steps", str(10 ** 9)), "--steps must lie in 1..3328"),
    Case("options", "sample --batch-size 0", sample("--batch-size", "0"), "--batch-size"),
    Case("options", "sample more pairs than the disk holds", lambda w, f: ["sample", "-n", str(10**12), "-o", str(w / "out")],
         "MiB free"),
    Case("options", "train --seed 2^70", new_run("--seed", str(2 ** 70)), "--seed"),
    Case("training data", "a training scan cut at 60 %",
         training_pair(lambda path: cut(write_scan(path), 0.6)), "truncated"),
    Case("training data", "a training scan with damaged bytes",
         training_pair(lambda path: damaged_middle(write_scan(path))), "damaged"),
    Case("training data", "a training scan of NaN voxels",
         training_pair(lambda path: write_scan(path, np.full((40, 48, 56), np.nan, np.float32)), suffix=".nrrd"), "NaN"),
    Case("training data", "vqae: a training scan of NaN voxels",
         training_pair(lambda path: write_scan(path, np.full((40, 48, 56), np.nan, np.float32)), "vqae", ".nrrd"), "NaN"),
    Case("training data", "a CT among the training vessel maps",
         training_pair(lambda path: write_scan(path, ct_like())), "is not a vessel label map"),
    Case("training data", "an empty training scan",
         training_pair(lambda path: write_scan(path, np.zeros((40, 48, 56), np.uint8))), "is empty"),
    Case("training data", "fixed and moving of different sizes",
         training_pair(lambda path: write_scan(path, tree()[:, :, :40])), "differs"),
    Case("model config", "encode with a decoder-only VQ-autoencoder", encode_pair(write_scan), "cannot encode pairs"),
    Case("model config", "encode with no model file",
         lambda w, f: [a for a in encode_pair(write_scan)(w, f) if a not in ("--model", str(DEFAULTS["sampler"]))],
         "required: --model"),
    Case("training data", "encode: a scan cut at 60 %", encode_pair(lambda path: cut(write_scan(path), 0.6)), "truncated"),
    Case("training data", "--data DIR:abc", lambda w, f: new_run()(w, f) + ["--data", f"{f.pairs}:abc"], "not a number"),
    Case("training data", "--data DIR:inf", lambda w, f: new_run()(w, f) + ["--data", f"{f.pairs}:inf"], "positive number"),
    Case("training data", "--data a missing folder", train_data("registration", "missing"), "no such folder"),
    Case("training data", "--data a folder without pairs", train_data("registration", "empty/"), "no image pairs"),
    Case("training data", "vqae --tokens a missing file", train_data("vqae", None, "--tokens", "none.npz"),
         "no such token file"),
    Case("training data", "denoiser --data a folder without token files", train_data("denoiser", "empty/"),
         "no such token file"),
]


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file under `folder` (symlinks as their target) and its bytes: what must not change."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def verdict(code: int, stderr: str, expected: str, before: dict, after: dict, workspace: Path) -> str | None:
    """None when the promise held: one 'unleash: error:' line naming the problem, a non-zero exit,
    no file changed or added and no temporary folder left; else what broke."""
    lines = [line for line in stderr.splitlines() if line.strip()]
    if code == 0:
        return "exit code 0"
    if len(lines) != 1 or not lines[0].startswith("unleash: error: "):
        return f"{len(lines)} lines on stderr: {stderr[-300:]!r}"
    if expected not in lines[0]:
        return f"the line does not say {expected!r}: {lines[0]}"
    if after != before:
        changed = sorted(set(before) ^ set(after) | {k for k in before if k in after and before[k] != after[k]})
        return f"files changed: {changed[:4]}"
    left = [p.name for p in workspace.rglob(".*") if ".partial-" in p.name or ".old-" in p.name]
    if left:
        return f"temporary folders left: {left}"
    return None
