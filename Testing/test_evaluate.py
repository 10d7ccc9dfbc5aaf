"""`unleash evaluate` over a folder laid out like the val data: a per-pair and overall table as CSV and JSON."""
from __future__ import annotations

import csv
import json

import numpy as np

from unleash.cli import main
from unleash.geometry import write_image
from unleash.synthetic import example_pair


def make_folder(root, cases=(1, 2)):
    """Synthetic pairs named like Lung250M-4B, with landmarks at vessel voxels mapped by the known field."""
    folder, landmarks = root / "val", root / "val_landmarks"
    folder.mkdir()
    landmarks.mkdir()
    for case in cases:
        fixed, moving, u = example_pair(seed=case, spacing_mm=2.5, size=(116, 96, 116), max_displacement_mm=8.0)
        write_image(fixed.to_sitk(), folder / f"case_{case:03d}_1.nii.gz")
        write_image(moving.to_sitk(), folder / f"case_{case:03d}_2.nii.gz")
        k, j, i = [a[::400][:40] for a in np.nonzero(fixed.array)]
        fixed_ijk = np.stack([i, j, k], 1).astype(float)
        moving_lps = fixed.grid.index_to_physical(fixed_ijk) + u[:, k, j, i].T
        rows = np.concatenate([fixed_ijk, moving.grid.physical_to_index(moving_lps)], 1)
        np.savetxt(landmarks / f"case_{case:03d}.csv", rows, delimiter=",", fmt="%.3f",
                   header="fixed_i,fixed_j,fixed_k,moving_i,moving_j,moving_k", comments="")
    return folder


def test_evaluate_writes_a_per_pair_and_overall_table(tmp_path, tiny_model, capsys):
    folder = make_folder(tmp_path)
    out = tmp_path / "evaluation"
    code = main(["evaluate", str(folder), "-o", str(out), "--model", str(tiny_model), "--adapt-iters", "40"])
    assert code == 0
    table = capsys.readouterr().out
    assert "case_001" in table and "overall" in table
    rows = list(csv.DictReader(open(out / "evaluation.csv")))
    assert [r["case"] for r in rows] == ["case_001", "case_002", "overall"]
    summary = json.loads((out / "evaluation.json").read_text())["overall"]
    assert summary["pairs"] == 2 and summary["landmarks"] == 80
    assert summary["tre_mean"] < 0.7 * summary["tre_before_mean"]
