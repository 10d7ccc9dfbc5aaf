"""The realism benchmark's morphometry (benchmarks/morphometry.py) on trees whose answers are known."""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("skimage", reason="the morphometry needs scikit-image (an engine dependency)")
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

from morphometry import scan_morphometry  # noqa: E402


def tube(volume: np.ndarray, start, end, radius_vox: float) -> None:
    """Mark the voxels within `radius_vox` of the segment start-end ([k, j, i] points)."""
    start, end = np.asarray(start, float), np.asarray(end, float)
    points = np.indices(volume.shape).reshape(3, -1).T
    along = np.clip((points - start) @ (end - start) / np.sum((end - start) ** 2), 0, 1)
    distance = np.linalg.norm(points - (start + along[:, None] * (end - start)), axis=1)
    volume.ravel()[distance <= radius_vox] = True


def test_a_straight_tube_has_its_radius_one_branch_and_no_bifurcation():
    volume = np.zeros((90, 20, 20), bool)
    tube(volume, (5, 10, 10), (85, 10, 10), 4)
    measures = scan_morphometry(volume, 1.0)
    assert 3.5 <= measures["radius_p90_mm"] <= 5.0
    assert measures["bifurcations_per_1000"] == 0 and measures["components"] == 1
    assert measures["branch_length_p90_mm"] >= 60  # one branch along most of the 80 mm axis
    # a skeleton is one voxel per mm of axis: about 80 voxels for about 80 * pi * 4^2 vessel voxels
    assert 15 <= measures["elongation_per_1000"] <= 25


def test_a_fork_is_one_bifurcation_and_its_branches_taper_away_from_the_thick_trunk():
    volume = np.zeros((100, 60, 60), bool)
    tube(volume, (5, 30, 30), (50, 30, 30), 5)
    tube(volume, (50, 30, 30), (95, 10, 10), 2)
    tube(volume, (50, 30, 30), (95, 50, 50), 2)
    measures = scan_morphometry(volume, 1.0)
    skeleton_voxels = measures["elongation_per_1000"] * volume.sum() / 1000
    assert 1 <= round(measures["bifurcations_per_1000"] * skeleton_voxels / 1000) <= 2  # the fork (thinning may split it)
    assert measures["tapering_rho"] < -0.3
    assert measures["top10_share"] == 1.0


def test_debris_lowers_the_share_of_the_largest_components_and_thinner_vessels_are_more_elongated():
    thick, thin = np.zeros((90, 30, 30), bool), np.zeros((90, 30, 30), bool)
    tube(thick, (5, 15, 15), (85, 15, 15), 5)
    tube(thin, (5, 15, 15), (85, 15, 15), 2)
    assert scan_morphometry(thin, 1.0)["elongation_per_1000"] > 2 * scan_morphometry(thick, 1.0)["elongation_per_1000"]
    debris = thin.copy()
    for n in range(12):  # twelve isolated 3-voxel specks
        debris[5 + 7 * n, 2, 2:5] = True
    assert scan_morphometry(debris, 1.0)["top10_share"] < scan_morphometry(thin, 1.0)["top10_share"] == 1.0
