"""Landmark pairs from Slicer markups -> the engine's landmark CSV (`unleash register --landmarks`).

The engine reads `fixed_i,fixed_j,fixed_k,moving_i,moving_j,moving_k`: one header line, then one row
per pair of continuous 0-based voxel indices of the fixed and the moving image files it registers.

Coordinates, carefully:
- Markups control points are in Slicer's world space, RAS millimetres.
- A volume node may sit under a transform; its voxels are on its own (local) RAS grid, so a world point
  is first brought into the volume's local RAS with the world -> volume transform (Slicer side).
- The volume's RASToIJK matrix maps local RAS to continuous IJK voxel indices (this file).
- Slicer writes a volume with the same voxel order it holds in memory: IJK of the node is the ITK index
  (i, j, k) of the exported file. The RAS -> LPS change happens in the file's origin and direction (Slicer
  flips the first two axes when writing), not in the indices, so no sign flip is applied to i, j, k here.
  Testing/test_slicer_extension.py checks this against the engine's own index -> LPS mapping.
Plain Python: no Slicer needed (scene/landmarks.py turns markups into these indices and back).
"""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

HEADER = "fixed_i,fixed_j,fixed_k,moving_i,moving_j,moving_k"

Matrix4 = Sequence[Sequence[float]]


def rasToIjk(pointsRas: Sequence[Sequence[float]], rasToIjkMatrix: Matrix4) -> list[tuple[float, float, float]]:
    """Local RAS points (mm) -> continuous IJK indices with a 4x4 RASToIJK matrix (rows)."""
    m = [[float(v) for v in row] for row in rasToIjkMatrix]
    out = []
    for point in pointsRas:
        r, a, s = (float(v) for v in point)
        out.append(tuple(m[row][0] * r + m[row][1] * a + m[row][2] * s + m[row][3] for row in range(3)))
    return out


def checkPairs(fixedIjk: Sequence, movingIjk: Sequence) -> None:
    if len(fixedIjk) == 0 and len(movingIjk) == 0:
        raise ValueError("the landmark lists are empty: place points in both, or select no landmarks")
    if len(fixedIjk) != len(movingIjk):
        raise ValueError(f"the fixed landmarks have {len(fixedIjk)} points and the moving ones {len(movingIjk)}: "
                         "they must be pairs, placed in the same order")


def writeLandmarksCsv(path: str | Path, fixedIjk: Sequence[Sequence[float]], movingIjk: Sequence[Sequence[float]]) -> Path:
    """The engine's landmark CSV; raises ValueError for lists that are not pairs."""
    checkPairs(fixedIjk, movingIjk)
    path = Path(path)
    rows = [HEADER] + [",".join(f"{float(v):.4f}" for v in (*f, *m)) for f, m in zip(fixedIjk, movingIjk)]
    path.write_text("\n".join(rows) + "\n")
    return path
