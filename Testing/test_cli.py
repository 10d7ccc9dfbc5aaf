"""`unleash register` as users and the Slicer module run it: end to end on a real pair, and every bad input."""
from __future__ import annotations

import itertools
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from safetensors.torch import save_file

from unleash.checkpoints import FORMAT
from unleash.cli import main
from unleash.jobs import parse_event, register_command
from unleash.output_folder import MARKER
from unleash.outputs import FILES


def test_register_end_to_end_on_a_real_pair_with_json_progress(val_folder, tmp_path):
    landmarks = val_folder.parent / "val_landmarks" / "case_002.csv"
    out = tmp_path / "case_002"
    command = register_command(val_folder / "case_002_1.nii.gz", val_folder / "case_002_2.nii.gz", out,
                               device="cpu", adapt_iters=10, landmarks=landmarks, python=sys.executable)
    job = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert job.returncode == 0, job.stderr
    lines = [line for line in job.stdout.splitlines() if line.strip()]
    events = [json.loads(line) for line in lines]  # every stdout line is a JSON event
    assert all(parse_event(line) is not None for line in lines)
    kinds = [e["event"] for e in events]
    assert "progress" in kinds and kinds[-1] == "result"
    result = events[-1]
    assert sorted(p.name for p in out.iterdir()) == sorted([*FILES.values(), MARKER])
    field = sitk.ReadImage(str(out / FILES["displacement"]), sitk.sitkVectorFloat64)
    fixed = sitk.ReadImage(str(val_folder / "case_002_1.nii.gz"))
    # on the shipped model's 2 mm work lattice, over every voxel of the 1 mm fixed scan
    assert field.GetSpacing() == (2.0, 2.0, 2.0) and np.prod(field.GetSize()) < np.prod(fixed.GetSize()) / 6
    for corner in itertools.product(*[(0, n - 1) for n in fixed.GetSize()]):
        index = field.TransformPhysicalPointToContinuousIndex(fixed.TransformIndexToPhysicalPoint(corner))
        assert all(-1e-3 <= x <= n - 1 + 1e-3 for x, n in zip(index, field.GetSize())), (corner, index)
    sitk.DisplacementFieldTransform(field)
    report = json.loads((out / FILES["report"]).read_text())
    assert report["tre_after_mm"]["mean"] < 0.5 * report["tre_before_mm"]["mean"]
    assert report["tre_after_mm"]["count"] == result["tre_after_mm"]["count"] > 50
    assert report["folding_fraction"] < 1e-3


# ---- bad input: one clear line on stderr, a non-zero exit, no traceback, nothing written ----

@pytest.fixture(scope="module")
def scans(tmp_path_factory):
    folder = tmp_path_factory.mktemp("scans")
    tree = np.zeros((40, 48, 56), np.uint8)
    tree[10:30, 20:24, 10:46] = 1
    tree[18:22, 8:40, 26:30] = 2
    for name, array in {"vessels": tree, "empty": np.zeros_like(tree)}.items():
        sitk.WriteImage(sitk.GetImageFromArray(array), str(folder / f"{name}.nii.gz"))
    sitk.WriteImage(sitk.GetImageFromArray(tree[20]), str(folder / "flat2d.nii.gz"))
    sitk.WriteImage(sitk.JoinSeries([sitk.GetImageFromArray(tree)] * 2), str(folder / "series4d.nii.gz"))
    (folder / "corrupt.nii.gz").write_bytes(b"\x1f\x8b this is not an image" * 10)
    (folder / "notes.txt").write_text("not a model\n")
    save_file({"w": np.zeros(3, np.float32).__array__()} if False else {}, str(folder / "empty.safetensors"))
    import torch

    save_file({"w": torch.zeros(3)}, str(folder / "denoiser.safetensors"),
              metadata={"format": FORMAT, "format_version": "1", "config": json.dumps({"kind": "denoiser"}), "card": "{}"})
    return folder


def run_cli(args: list[str], capsys) -> tuple[int, str]:
    code = main(args)
    captured = capsys.readouterr()
    return code, captured.err


def assert_one_clear_line(code: int, err: str, expected: str):
    lines = [line for line in err.splitlines() if line.strip()]
    assert code != 0
    assert "Traceback" not in err
    assert len(lines) == 1 and lines[0].startswith("unleash: error: "), err
    assert expected in lines[0], lines[0]


def damaged_model(tiny_model: Path, folder: Path) -> Path:
    data = tiny_model.read_bytes()
    path = folder / "damaged.safetensors"
    path.write_bytes(data[: len(data) // 2])
    return path


@pytest.mark.parametrize("case, expected", [
    ("missing", "no such file"),
    ("corrupt", "cannot be read as an image"),
    ("flat2d", "2D image"),
    ("series4d", "4D image"),
    ("empty", "empty"),
    ("model_kind", "'denoiser' model"),
    ("model_text", "not a readable unleash model"),
    ("model_damaged", "not a readable unleash model"),
    ("model_no_header", "not an unleash model file"),
    ("landmarks_missing", "no such landmark file"),
    ("device", "CUDA is not available"),
    ("start_without_io", "--start identity needs --refinement io"),
    ("start_without_iterations", "--start identity needs --refinement io and --adapt-iters above 0"),
])
def test_bad_input_gets_one_clear_line_and_writes_nothing(case, expected, scans, tiny_model, tmp_path, capsys):
    if case == "device":
        if torch.cuda.is_available():
            pytest.skip("this machine has CUDA")
    fixed, moving = scans / "vessels.nii.gz", scans / "vessels.nii.gz"
    extra = ["--model", str(tiny_model)]
    if case in ("missing", "corrupt", "flat2d", "series4d", "empty"):
        moving = scans / f"{case}.nii.gz" if case != "missing" else scans / "absent.nii.gz"
    elif case == "model_kind":
        extra = ["--model", str(scans / "denoiser.safetensors")]
    elif case == "model_text":
        extra = ["--model", str(scans / "notes.txt")]
    elif case == "model_damaged":
        extra = ["--model", str(damaged_model(tiny_model, tmp_path))]
    elif case == "model_no_header":
        extra = ["--model", str(scans / "empty.safetensors")]
    elif case == "landmarks_missing":
        extra += ["--landmarks", str(scans / "absent.csv")]
    elif case == "device":
        extra += ["--device", "cuda"]
    elif case == "start_without_io":
        extra += ["--start", "identity", "--refinement", "tta"]
    elif case == "start_without_iterations":
        extra += ["--start", "identity", "--adapt-iters", "0"]
    out = tmp_path / "out"
    code, err = run_cli(["register", str(fixed), str(moving), "-o", str(out), "--adapt-iters", "2", *extra], capsys)
    assert_one_clear_line(code, err, expected)
    assert not out.exists()
    assert not [p for p in tmp_path.iterdir() if ".partial-" in p.name]


def test_an_existing_output_folder_is_refused_and_left_as_it_was(scans, tiny_model, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "precious.txt").write_text("keep me")
    code, err = run_cli(["register", str(scans / "vessels.nii.gz"), str(scans / "vessels.nii.gz"), "-o", str(out),
                         "--model", str(tiny_model)], capsys)
    assert_one_clear_line(code, err, "--overwrite")
    assert [p.name for p in out.iterdir()] == ["precious.txt"]


def test_an_output_under_a_file_is_refused(scans, tiny_model, tmp_path, capsys):
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    code, err = run_cli(["register", str(scans / "vessels.nii.gz"), str(scans / "vessels.nii.gz"), "-o",
                         str(blocker / "out"), "--model", str(tiny_model)], capsys)
    assert_one_clear_line(code, err, "does not exist")


def test_overwrite_replaces_an_earlier_output_whole(scans, tiny_model, tmp_path, capsys):
    out = tmp_path / "out"
    command = ["register", str(scans / "vessels.nii.gz"), str(scans / "vessels.nii.gz"), "-o", str(out),
               "--model", str(tiny_model), "--adapt-iters", "2", "--overwrite", "--progress", "none"]
    assert run_cli(command, capsys)[0] == 0
    (out / FILES["warped_moving"]).unlink()  # an earlier output with a file missing is still the tool's own
    assert run_cli(command, capsys)[0] == 0
    assert sorted(p.name for p in out.iterdir()) == sorted([*FILES.values(), MARKER])
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]
