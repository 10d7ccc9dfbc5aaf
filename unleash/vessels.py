"""Vessel maps from the user's input: a vessel label map is used as it is, a chest CT is segmented.

The registration network was trained on pulmonary vessel segmentations dilated by one voxel
(3x3x3), so a CT is turned into the same kind of binary map: a multi-scale Hessian vesselness
(Frangi, bright tubes) inside the lungs, gated by intensity, thresholded and dilated by one voxel.

Arrays are indexed [k, j, i] as in geometry.py; per-array-axis spacings are named `spacing_zyx`.
"""
from __future__ import annotations

import itertools

import numpy as np
import SimpleITK as sitk
import torch
from scipy import ndimage

from .errors import UserError
from .geometry import Grid, Volume
from .input_kind import check_voxel_values, detect_input_kind
from .jobspec import INPUT_KINDS
from .workgrid import field_to_grid

# Lung mask from a CT.
AIR_HU = -400.0                 # lung parenchyma is about -850 HU, soft tissue 0..50 HU
LUNG_WORK_SPACING_MM = 2.0      # lungs are large: 2 mm voxels are plenty and 10-30x cheaper
MIN_LUNG_VOLUME_ML = 100.0      # less air than this inside the body is no lung
SECOND_LUNG_MIN_RATIO = 0.2     # a second air region is a lung only if this large next to the first
LUNG_CLOSING_RADIUS_MM = 5.0    # closes the lung surface over vessels and fissures

# Vessel map from a CT.
VESSEL_SCALES_MM = (1.0, 1.7, 3.0)  # Gaussian sigmas: vessels of about 1.5 to 6 mm diameter
VESSEL_WORK_SPACING_MM = 1.0    # axes finer than this are resampled to it first (speed)
HU_CLIP = (-1000.0, 200.0)      # bone and contrast agent must not dominate the Hessian
FRANGI_ALPHA = 0.5              # tube vs plate
FRANGI_BETA = 0.5               # tube vs blob
FRANGI_C_HU = 100.0             # structure strength (scale-normalised Hessian, HU): noise is far below
VESSELNESS_THRESHOLD = 0.15
VESSEL_MIN_HU = -600.0          # halfway between lung (-850) and blood (about 40): the vessel's edge
MAX_VESSEL_FRACTION_OF_LUNG = 0.10  # guard: real vessels fill about 3-8 % of the lungs

# Lung mask approximated from a vessel map.
OCCUPANCY_SPACING_MM = 4.0
OCCUPANCY_SIGMA_MM = 8.0        # vessels reach to about 1-2 cm from the pleura
OCCUPANCY_THRESHOLD = 0.005     # of blurred vessel occupancy (vessels fill a few % of the lungs)


# ---------------------------------------------------------------------------- lung mask from CT

def lung_mask(ct: Volume) -> np.ndarray:
    """Lungs of a chest CT (bool [k, j, i] on the CT's grid): air inside the body, closed and filled."""
    low = _shrink(_image(ct.array, ct.grid), LUNG_WORK_SPACING_MM)  # block means in the CT's own type: HU to 1
    spacing_zyx = np.asarray(low.GetSpacing())[::-1]
    si_axis = _si_axis(ct.grid)
    inner_air = _drop_outside_air(sitk.GetArrayViewFromImage(low) < AIR_HU, si_axis)
    lungs = _largest_lungs(inner_air, float(np.prod(spacing_zyx)) / 1000.0)
    lungs = _close(lungs, spacing_zyx, LUNG_CLOSING_RADIUS_MM)
    return _to_grid(_fill_holes(lungs, si_axis), low, ct.grid)


def _drop_outside_air(air: np.ndarray, si_axis: int) -> np.ndarray:
    """Air not connected to the image's side faces. The faces across the superior-inferior axis are
    not used: the trachea reaches the top slice and joins the lungs, and lungs may touch the bottom."""
    labels, _ = ndimage.label(air)
    outside = [np.unique(np.take(labels, end, axis=axis))
               for axis in range(3) if axis != si_axis for end in (0, -1)]
    keep = np.ones(labels.max() + 1, bool)
    keep[np.concatenate(outside)] = False
    keep[0] = False
    return keep[labels]


def _largest_lungs(inner_air: np.ndarray, voxel_ml: float) -> np.ndarray:
    """The largest air region, and the second largest when it is big enough to be the other lung
    (they are one region when the trachea joins them, and then bowel gas must not count)."""
    labels, count = ndimage.label(inner_air)
    sizes = np.bincount(labels.ravel())[1:]
    if count == 0 or sizes.max() * voxel_ml < MIN_LUNG_VOLUME_ML:
        largest_ml = sizes.max() * voxel_ml if count else 0.0
        raise UserError(f"no lungs found in the CT (the largest air region inside the body is {largest_ml:.0f} mL): "
                        "is it a chest CT in Hounsfield units?")
    order = np.argsort(sizes)[::-1] + 1
    keep = [order[0]]
    if count > 1 and sizes[order[1] - 1] >= SECOND_LUNG_MIN_RATIO * sizes[order[0] - 1]:
        keep.append(order[1])
    return np.isin(labels, keep)


def _close(mask: np.ndarray, spacing_zyx: np.ndarray, radius_mm: float) -> np.ndarray:
    """Binary closing with a ball; padded so that the image border does not erode the mask."""
    ball = _ball(radius_mm, spacing_zyx)
    pad = max(ball.shape) // 2 + 1
    closed = ndimage.binary_closing(np.pad(mask, pad), structure=ball)
    return closed[pad:-pad, pad:-pad, pad:-pad]


def _ball(radius_mm: float, spacing_zyx: np.ndarray) -> np.ndarray:
    r = np.maximum(1, np.floor(radius_mm / spacing_zyx)).astype(int)
    z, y, x = np.ogrid[-r[0]:r[0] + 1, -r[1]:r[1] + 1, -r[2]:r[2] + 1]
    return (z * spacing_zyx[0]) ** 2 + (y * spacing_zyx[1]) ** 2 + (x * spacing_zyx[2]) ** 2 <= radius_mm ** 2


def _fill_holes(mask: np.ndarray, si_axis: int) -> np.ndarray:
    """Fill 3D holes, then the holes of every axial slice: vessels run from the lungs to the hilum,
    so in 3D they are not holes, but in an axial slice they are."""
    mask = _holes_filled(mask, ndimage.generate_binary_structure(3, 1), range(3))
    in_plane = np.zeros((3, 3, 3), bool)
    in_plane[(slice(None),) * si_axis + (1,)] = ndimage.generate_binary_structure(2, 1)
    return _holes_filled(mask, in_plane, [axis for axis in range(3) if axis != si_axis])


def _holes_filled(mask: np.ndarray, structure: np.ndarray, border_axes) -> np.ndarray:
    """`mask` with every background region that does not reach the faces across `border_axes` filled:
    one labelling of the background, where an iterated dilation from the border (scipy's
    binary_fill_holes) takes as many passes as the widest region."""
    labels, _ = ndimage.label(~mask, structure=structure)
    outside = np.zeros(labels.max() + 1, bool)
    for axis in border_axes:
        outside[np.take(labels, 0, axis=axis)] = True
        outside[np.take(labels, -1, axis=axis)] = True
    outside[0] = False
    return ~outside[labels]


# ---------------------------------------------------------------------------- vessel map from CT

def vessel_map(ct: Volume, mask: np.ndarray | None = None) -> Volume:
    """Binary uint8 vessel map on the CT's grid: multi-scale vesselness inside the lungs, dilated by
    one voxel like the training data. `mask` is the lung mask (bool [k, j, i]); found if None."""
    if mask is None:
        mask = lung_mask(ct)
    if mask.shape != ct.array.shape:
        raise ValueError(f"lung mask shape {mask.shape} does not match the CT {ct.array.shape}")
    if not mask.any():
        raise UserError("no lungs found in the CT: the lung mask is empty")
    spacing_zyx = _spacing_zyx(ct.grid)
    margin = int(np.ceil(3 * max(VESSEL_SCALES_MM) / spacing_zyx.min())) + 2
    box = _bounding_box(mask, margin)
    hu = np.clip(ct.array[box].astype(np.float32), *HU_CLIP)
    lungs = mask[box]
    dense = np.flatnonzero((hu > VESSEL_MIN_HU) & lungs)  # the vessel's own edge: only these can be vessels
    scores = _vesselness_at(hu, lungs, _crop_grid(ct.grid, box), dense)
    vessels = np.zeros(hu.shape, bool)
    vessels.flat[dense[_tubular(scores, int(lungs.sum()))]] = True
    if not vessels.any():
        raise UserError("no vessels found in the lungs of the CT: is it a chest CT in Hounsfield units?")
    out = np.zeros(ct.array.shape, np.uint8)
    grown = _bounding_box(mask, margin + 1)  # dilation reaches one voxel beyond `box`
    out[box] = vessels
    out[grown] = _dilated(out[grown])
    return ct.with_array(out)


def _dilated(mask: np.ndarray) -> np.ndarray:
    """`mask` dilated by the 3x3x3 cube. The cube is separable: three 1-D dilations by one voxel, each
    two shifted ORs, instead of a 27-voxel structuring element at every voxel."""
    for axis in range(3):
        head = [slice(None)] * 3
        tail = [slice(None)] * 3
        head[axis], tail[axis] = slice(1, None), slice(None, -1)
        grown = mask.copy()
        grown[tuple(head)] |= mask[tuple(tail)]
        grown[tuple(tail)] |= mask[tuple(head)]
        mask = grown
    return mask


def _vesselness_at(hu: np.ndarray, lungs: np.ndarray, grid: Grid, at: np.ndarray) -> np.ndarray:
    """Vesselness at the lung voxels `at` (flat indices of `hu` on `grid`). Axes finer than
    VESSEL_WORK_SPACING_MM are computed on a coarser grid and interpolated (0.7 mm CTs have 2-3x the
    voxels and no more vessels at these scales); there the dense voxels' neighbours are computed too,
    since they are the corners that interpolate the dense voxels."""
    spacing = np.asarray(grid.spacing_mm, np.float64)
    work_spacing = np.maximum(spacing, VESSEL_WORK_SPACING_MM)
    if np.all(work_spacing <= spacing * 1.05):
        wanted = np.zeros(hu.shape, bool)
        wanted.flat[at] = True
        return _vesselness(hu, wanted, spacing[::-1]).flat[at]
    work_size = np.ceil(np.asarray(grid.size) * spacing / work_spacing).astype(int)
    work = Grid(tuple(int(s) for s in work_size), tuple(work_spacing), grid.origin_lps, grid.direction)
    work_hu = _resample(hu, grid, work)
    wanted = _nearest(lungs, grid, work) & _dilated(work_hu > VESSEL_MIN_HU)
    return _sample_at(_vesselness(work_hu, wanted, work_spacing[::-1]), work, grid, at)


def _vesselness(hu: np.ndarray, wanted: np.ndarray, spacing_zyx: np.ndarray) -> np.ndarray:
    """Maximum over scales of Frangi's bright-tube vesselness at the `wanted` voxels (0 elsewhere)."""
    inner = wanted.copy()
    for axis in range(3):  # the finite-difference stencils reach one voxel out
        inner[(slice(None),) * axis + (0,)] = False
        inner[(slice(None),) * axis + (-1,)] = False
    at = np.flatnonzero(inner)
    best = np.zeros(at.size, np.float32)
    for sigma_mm in VESSEL_SCALES_MM:
        smoothed = ndimage.gaussian_filter(hu, sigma_mm / spacing_zyx, mode="nearest", truncate=3.0)
        # sigma^2 normalises the Hessian so that the scales compete fairly (Lindeberg).
        hessian = [h * np.float32(sigma_mm ** 2) for h in _hessian_at(smoothed, at, spacing_zyx)]
        np.maximum(best, _frangi_bright_tubes(*_eigenvalues_by_magnitude(*hessian)), out=best)
    out = np.zeros(hu.shape, np.float32)
    out.flat[at] = best
    return out


def _hessian_at(image: np.ndarray, at: np.ndarray, spacing_zyx: np.ndarray) -> tuple[np.ndarray, ...]:
    """Hessian (zz, yy, xx, zy, zx, yx) in HU/mm^2 by central differences at flat indices `at` only,
    which is cheaper than six full-size derivative images when the lungs are a fraction of the box."""
    flat = np.ascontiguousarray(image).ravel()
    step = [int(np.prod(image.shape[axis + 1:])) for axis in range(3)]
    centre = flat[at]
    diagonal = [(flat[at + step[a]] - 2 * centre + flat[at - step[a]]) / np.float32(spacing_zyx[a] ** 2)
                for a in range(3)]
    mixed = []
    for a, b in ((0, 1), (0, 2), (1, 2)):
        plus, minus = step[a] + step[b], step[a] - step[b]
        difference = flat[at + plus] - flat[at + minus] - flat[at - minus] + flat[at - plus]
        mixed.append(difference / np.float32(4 * spacing_zyx[a] * spacing_zyx[b]))
    return (*diagonal, *mixed)


def _eigenvalues_by_magnitude(a, b, c, d, e, f) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Eigenvalues of the symmetric matrices [[a, d, e], [d, b, f], [e, f, c]] sorted by absolute
    value, in closed form (Smith 1961): far faster than a batched eigvalsh on millions of voxels."""
    q = (a + b + c) / 3
    aq, bq, cq = a - q, b - q, c - q
    p = np.sqrt((aq * aq + bq * bq + cq * cq + 2 * (d * d + e * e + f * f)) / 6)
    p_safe = np.where(p > 0, p, np.float32(1))
    det = aq * (bq * cq - f * f) - d * (d * cq - f * e) + e * (d * f - bq * e)
    phi = np.arccos(np.clip(det / (2 * p_safe ** 3), -1, 1)) / 3
    largest = q + 2 * p * np.cos(phi)
    smallest = q + 2 * p * np.cos(phi + np.float32(2 * np.pi / 3))
    values = [largest, 3 * q - largest - smallest, smallest]
    for i, j in ((0, 1), (1, 2), (0, 1)):  # a sorting network by magnitude: no per-voxel argsort
        swap = np.abs(values[i]) > np.abs(values[j])
        values[i], values[j] = np.where(swap, values[j], values[i]), np.where(swap, values[i], values[j])
    return values[0], values[1], values[2]


def _frangi_bright_tubes(l1: np.ndarray, l2: np.ndarray, l3: np.ndarray) -> np.ndarray:
    """Frangi et al. 1998 with |l1| <= |l2| <= |l3|: a bright tube has l2, l3 << 0 and l1 ~ 0."""
    tiny = np.float32(1e-6)
    abs2, abs3 = np.abs(l2), np.abs(l3) + tiny
    plate_vs_tube = abs2 / abs3
    blob_vs_tube = np.abs(l1) / np.sqrt(abs2 * abs3 + tiny)
    strength_sq = l1 * l1 + l2 * l2 + l3 * l3
    v = ((1 - np.exp(-plate_vs_tube ** 2 / (2 * FRANGI_ALPHA ** 2)))
         * np.exp(-blob_vs_tube ** 2 / (2 * FRANGI_BETA ** 2))
         * (1 - np.exp(-strength_sq / (2 * FRANGI_C_HU ** 2))))
    v[(l2 >= 0) | (l3 >= 0)] = 0
    return v.astype(np.float32, copy=False)


def _tubular(scores: np.ndarray, lung_voxels: int) -> np.ndarray:
    """Which of the dense lung voxels with vesselness `scores` are vessels: the tubular ones, and if
    implausibly many (noise, consolidation), only the most tubular of them."""
    vessels = scores > VESSELNESS_THRESHOLD
    cap = int(MAX_VESSEL_FRACTION_OF_LUNG * lung_voxels)
    count = int(vessels.sum())
    if count > cap > 0:
        vessels &= scores >= np.partition(scores[vessels], count - cap)[count - cap]
    return vessels


# ---------------------------------------------------------------------------- lung mask from vessels

def lung_mask_from_vessels(vessels: Volume) -> np.ndarray:
    """Approximate lungs (bool [k, j, i]) of a vessel map: where the blurred vessel occupancy is
    not negligible, holes filled. Computed at about 4 mm, returned on the vessel map's grid."""
    occupancy = _shrink(_image((vessels.array > 0).astype(np.float32), vessels.grid), OCCUPANCY_SPACING_MM)
    spacing_zyx = np.asarray(occupancy.GetSpacing())[::-1]
    blurred = ndimage.gaussian_filter(sitk.GetArrayViewFromImage(occupancy), OCCUPANCY_SIGMA_MM / spacing_zyx,
                                      mode="constant")
    lungs = _fill_holes(blurred > OCCUPANCY_THRESHOLD, _si_axis(vessels.grid))
    return _to_grid(lungs, occupancy, vessels.grid)


def vessels_from_input(volume: Volume, kind: str = "auto", lungs_wanted: bool = True) -> tuple[Volume, np.ndarray | None, str]:
    """(binary uint8 vessel map, lung mask bool [k, j, i], kind used) for a vessel label map or a CT;
    `kind` is 'auto' (detect), 'vessels' or 'ct'. A label map's lung mask is approximated only when
    `lungs_wanted` (None otherwise: registration needs the fixed scan's alone); a CT's is always made,
    its vessels need it."""
    if kind not in INPUT_KINDS:
        raise UserError(f"unknown input kind {kind!r}: use one of {', '.join(INPUT_KINDS)}")
    if kind == "auto":
        kind = detect_input_kind(volume)
    else:
        check_voxel_values(volume)
    if kind == "vessels":
        binary = (volume.array > 0).astype(np.uint8)
        if not binary.any():
            raise UserError("no voxel is above 0: the vessel mask is empty")
        vessels = volume.with_array(binary)
        return vessels, lung_mask_from_vessels(vessels) if lungs_wanted else None, kind
    lungs = lung_mask(volume)
    return vessel_map(volume, lungs), lungs, kind


# ---------------------------------------------------------------------------- geometry helpers

def _spacing_zyx(grid: Grid) -> np.ndarray:
    return np.asarray(grid.spacing_mm, np.float64)[::-1]


def _si_axis(grid: Grid) -> int:
    """The array axis closest to the patient's superior-inferior axis (LPS z)."""
    direction = np.asarray(grid.direction, np.float64).reshape(3, 3)
    file_axis = int(np.argmax(np.abs(direction[2])))  # columns are the file axes i, j, k
    return 2 - file_axis  # arrays are [k, j, i]


def _bounding_box(mask: np.ndarray, margin: int) -> tuple[slice, slice, slice]:
    box = []
    for axis in range(mask.ndim):
        present = np.flatnonzero(mask.any(axis=tuple(a for a in range(mask.ndim) if a != axis)))
        box.append(slice(max(0, present[0] - margin), min(mask.shape[axis], present[-1] + margin + 1)))
    return tuple(box)


def _crop_grid(grid: Grid, box: tuple[slice, slice, slice]) -> Grid:
    lower_ijk = np.array([[box[2].start, box[1].start, box[0].start]], np.float64)
    size = (box[2].stop - box[2].start, box[1].stop - box[1].start, box[0].stop - box[0].start)
    origin = grid.index_to_physical(lower_ijk)[0]
    return Grid(size, grid.spacing_mm, tuple(float(o) for o in origin), grid.direction)


def _image(array: np.ndarray, grid: Grid) -> sitk.Image:
    image = sitk.GetImageFromArray(array)
    image.SetSpacing([float(s) for s in grid.spacing_mm])
    image.SetOrigin([float(o) for o in grid.origin_lps])
    image.SetDirection([float(d) for d in grid.direction])
    return image


def _resample(array: np.ndarray, source: Grid, target: Grid) -> np.ndarray:
    """`array` [k, j, i] on `source` sampled on `target`, trilinearly, as float32; beyond `source` its
    border value. Scans and the grids made from them share a direction, so this is three 1-D
    interpolations (workgrid.field_to_grid), several times faster than SimpleITK's resampling."""
    values = torch.from_numpy(np.ascontiguousarray(array, np.float32))
    return field_to_grid(values[None, None], source, target)[0]


def _shrink(image: sitk.Image, target_mm: float) -> sitk.Image:
    """Average whole blocks of voxels so that each axis is about `target_mm` (never finer than now);
    edge-padded first so that no partial block at the far border is dropped."""
    factors = [max(1, round(target_mm / s)) for s in image.GetSpacing()]
    if max(factors) == 1:
        return image
    pad = [(-size) % factor for size, factor in zip(image.GetSize(), factors)]
    return sitk.BinShrink(sitk.ZeroFluxNeumannPad(image, [0, 0, 0], pad), factors)


def _to_grid(mask: np.ndarray, low: sitk.Image, grid: Grid) -> np.ndarray:
    """A mask computed on the reduced image `low`, brought back to `grid` (linear, > 0.5: nearest
    neighbours would leave the lung surface in 2 mm steps, and the chest wall's edges in the lungs).
    Only the box around the mask is interpolated: the lungs fill about half of a chest CT's grid."""
    source = Grid.of(low)
    if not mask.any() or not _aligned(source, grid):
        return _resample(mask, source, grid) > 0.5
    box = _bounding_box(mask, margin=1)
    target_box = []
    for position, around in zip(_axis_positions(source, grid), box):
        inside = np.flatnonzero((position >= around.start) & (position <= around.stop - 1))
        if inside.size == 0:
            return np.zeros(grid.shape_zyx, bool)
        target_box.append(slice(inside[0], inside[-1] + 1))
    target_box = tuple(target_box)
    out = np.zeros(grid.shape_zyx, bool)
    out[target_box] = _resample(mask[box], _crop_grid(source, box), _crop_grid(grid, target_box)) > 0.5
    return out


def _nearest(mask: np.ndarray, source: Grid, target: Grid) -> np.ndarray:
    """Bool `mask` [k, j, i] on `source` at every voxel of `target`: the value of the nearest `source`
    voxel (clamped at the border)."""
    if not _aligned(source, target):
        return _resample(mask, source, target) > 0.5
    index = [np.clip(np.rint(p), 0, n - 1).astype(np.intp) for p, n in zip(_axis_positions(source, target), mask.shape)]
    return mask[np.ix_(*index)]


def _sample_at(values: np.ndarray, source: Grid, target: Grid, at: np.ndarray) -> np.ndarray:
    """`values` [k, j, i] on `source`, trilinearly at the voxels `at` (flat indices) of `target`, clamped
    at the border: eight reads per voxel asked for, instead of resampling the whole grid."""
    if not _aligned(source, target):
        return _resample(values, source, target).ravel()[at]
    lows, highs, weights = [], [], []
    for position, n, index in zip(_axis_positions(source, target), values.shape,
                                  np.unravel_index(at, target.shape_zyx)):
        p = np.clip(position, 0, n - 1)[index]
        low = np.minimum(np.floor(p), max(0, n - 2)).astype(np.intp)
        lows.append(low)
        highs.append(np.minimum(low + 1, n - 1))
        weights.append((p - low).astype(np.float32))
    out = np.zeros(len(at), np.float32)
    flat = values.ravel()
    for corner in itertools.product((0, 1), repeat=3):
        index = [high if c else low for c, low, high in zip(corner, lows, highs)]
        weight = np.prod([w if c else 1 - w for c, w in zip(corner, weights)], axis=0)
        out += flat[np.ravel_multi_index(index, values.shape)] * weight
    return out


def _aligned(source: Grid, target: Grid) -> bool:
    """The grids share a direction (the grids made here from a scan's grid do), so each axis of one
    runs along the same axis of the other."""
    return np.allclose(source.direction, target.direction, atol=1e-6)


def _axis_positions(source: Grid, target: Grid) -> list[np.ndarray]:
    """For aligned grids: per array axis (k, j, i), the continuous `source` index of each `target` index."""
    positions = []
    for axis in (2, 1, 0):
        along = np.zeros((target.size[axis], 3))
        along[:, axis] = np.arange(target.size[axis])
        positions.append(source.physical_to_index(target.index_to_physical(along))[:, axis])
    return positions
