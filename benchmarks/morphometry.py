"""Morphometry of a vessel tree: what tells a real pulmonary tree from short thick fragments.

All measures take one binary vessel map [k, j, i] on an isotropic grid (`spacing_mm`) and work inside
its bounding box. The skeleton is scikit-image's 3D thinning (Lee et al.); radii are the Euclidean
distance from a skeleton voxel to the background. A skeleton voxel with three or more skeleton
neighbours (26-connected) is a junction, a cluster of junction voxels one bifurcation, and the
skeleton without its junctions falls apart into branches. The hilum of each lung is where its thickest
vessels are: the centroid of the skeleton voxels with the top 2 % radii of that half (left-right split
at the middle of the bounding box); tapering is the rank correlation of radius and distance from it
(real trees: negative, thinner towards the periphery).
"""
from __future__ import annotations

import numpy as np
from scipy import ndimage, stats

NEIGHBOURS_26 = np.ones((3, 3, 3), bool)
HILUM_RADIUS_QUANTILE = 0.98
TOP_COMPONENTS = 10

# measure -> (its heading in tables, format); the order of the table
MEASURES = {
    "vessel_fraction_pct": ("vessel % of the box", "{:.2f}"),
    "box_fraction_pct": ("vessel % of its bounding box", "{:.2f}"),
    "elongation_per_1000": ("skeleton voxels / 1000 vessel voxels", "{:.1f}"),
    "radius_p90_mm": ("radius p90 on the skeleton, mm", "{:.2f}"),
    "radius_median_mm": ("radius median on the skeleton, mm", "{:.2f}"),
    "top10_share": ("share in the 10 largest components", "{:.3f}"),
    "components": ("components (26-connected)", "{:.0f}"),
    "bifurcations_per_1000": ("bifurcations / 1000 skeleton voxels", "{:.1f}"),
    "branch_length_median_mm": ("branch length median, mm", "{:.1f}"),
    "branch_length_p90_mm": ("branch length p90, mm", "{:.1f}"),
    "tapering_rho": ("tapering: rank corr. radius vs hilum distance", "{:.3f}"),
    "lung_cover_pct": ("lung envelope % of the box", "{:.1f}"),
}


def bounding_box(mask: np.ndarray) -> tuple[slice, ...]:
    nonzero = np.nonzero(mask)
    return tuple(slice(int(axis.min()), int(axis.max()) + 1) for axis in nonzero)


def skeleton_of(vessels: np.ndarray) -> np.ndarray:
    from skimage.morphology import skeletonize

    return skeletonize(vessels).astype(bool)


def _junctions_and_branches(skeleton: np.ndarray) -> tuple[int, np.ndarray]:
    """(number of bifurcations, branch lengths in voxels) of a skeleton."""
    neighbours = ndimage.convolve(skeleton.astype(np.uint8), NEIGHBOURS_26.astype(np.uint8), mode="constant") - 1
    junction = skeleton & (neighbours >= 3)
    bifurcations = ndimage.label(junction, NEIGHBOURS_26)[1]
    branches, count = ndimage.label(skeleton & ~junction, NEIGHBOURS_26)
    return bifurcations, np.bincount(branches.ravel(), minlength=count + 1)[1:]


def _tapering(skeleton: np.ndarray, radius_mm: np.ndarray, spacing_mm: float) -> float:
    """Spearman rho of skeleton radius against the distance from its lung's hilum (both lungs pooled)."""
    points = np.argwhere(skeleton)  # [k, j, i]
    radii = radius_mm[skeleton]
    side = points[:, 2] >= skeleton.shape[2] / 2
    distance = np.zeros(len(points))
    for half in (side, ~side):
        if half.sum() < 10:
            continue
        thick = half & (radii >= np.quantile(radii[half], HILUM_RADIUS_QUANTILE))
        hilum = points[thick].mean(axis=0)
        distance[half] = np.linalg.norm(points[half] - hilum, axis=1) * spacing_mm
    if np.ptp(radii) == 0 or np.ptp(distance) == 0:  # one calibre: no tapering
        return 0.0
    return float(stats.spearmanr(radii, distance).statistic)


def scan_morphometry(vessels: np.ndarray, spacing_mm: float) -> dict[str, float]:
    """Binary vessel map [k, j, i] on an isotropic grid -> the measures of MEASURES but the lung envelope."""
    box = vessels[bounding_box(vessels)].astype(bool)
    skeleton = skeleton_of(box)
    radius_mm = ndimage.distance_transform_edt(box) * spacing_mm
    on_skeleton = radius_mm[skeleton]
    components, count = ndimage.label(box, NEIGHBOURS_26)
    sizes = np.sort(np.bincount(components.ravel())[1:])[::-1]
    bifurcations, branch_vox = _junctions_and_branches(skeleton)
    branch_mm = branch_vox * spacing_mm
    return {"vessel_fraction_pct": 100 * box.sum() / vessels.size,
            "box_fraction_pct": 100 * box.mean(),
            "elongation_per_1000": 1000 * skeleton.sum() / box.sum(),
            "radius_p90_mm": float(np.quantile(on_skeleton, 0.9)),
            "radius_median_mm": float(np.median(on_skeleton)),
            "top10_share": float(sizes[:TOP_COMPONENTS].sum() / box.sum()),
            "components": float(count),
            "bifurcations_per_1000": 1000 * bifurcations / max(1, skeleton.sum()),
            "branch_length_median_mm": float(np.median(branch_mm)) if branch_mm.size else 0.0,
            "branch_length_p90_mm": float(np.quantile(branch_mm, 0.9)) if branch_mm.size else 0.0,
            "tapering_rho": _tapering(skeleton, radius_mm, spacing_mm)}
