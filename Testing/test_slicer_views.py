"""Views rendered offscreen by Slicer's own displayable managers (slicer-core, OpenGL from Mesa's EGL or
OSMesa), checked on their pixels: the Red/Yellow/Green slices of a real registered val pair with the grid and
the Jacobian overlay, and the 3D view of sampled pairs. Skipped, with the reason, where no OpenGL context
can be made."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

slicer = pytest.importorskip("slicer", reason="slicer-core (Slicer's libraries) is not installed: pip install slicer-core")
import vtk  # noqa: E402
from vtk.util import numpy_support  # noqa: E402

from UnleashCommon.scene import display, registration, samples  # noqa: E402
from UnleashCommon.scene.context import headlessScene  # noqa: E402
from UnleashCommon.scene.views import SLICE_ORIENTATIONS, SliceView, ThreeDView, savePng  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
PROBE = ("from UnleashCommon.scene.views import offscreenWindow, pixels\n"
         "window, renderer = offscreenWindow((8, 8)); renderer.SetBackground(1, 0, 0); window.Render()\n"
         "assert pixels(window)[4, 4, 0] == 255\n")


@pytest.fixture(scope="module", autouse=True)
def opengl():
    """A context is tried in a child process: a machine without OpenGL may crash rather than raise."""
    probe = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, timeout=120)
    if probe.returncode != 0:
        pytest.skip(f"no offscreen OpenGL here (install Mesa: libegl1 libgl1-mesa-dri, or libosmesa6): "
                    f"{(probe.stderr.strip().splitlines() or ['no output'])[-1]}")


@pytest.fixture
def shown(val_pair, engine_result):
    """The result in a scene with the three slice views, the fixed label map as a grey background."""
    logics = headlessScene()
    fixed = logics.volumes.AddArchetypeVolume(str(val_pair["fixed"]), "fixed", 0)  # a scalar volume: the background
    moving = logics.volumes.AddArchetypeVolume(str(val_pair["moving"]), "moving", 0)
    fixed.CreateDefaultDisplayNodes()
    fixed.GetDisplayNode().AutoWindowLevelOff()
    fixed.GetDisplayNode().SetWindowLevelMinMax(0.0, 2.5)
    views = {name: SliceView(logics, name, size=(320, 320)) for name in SLICE_ORIENTATIONS}
    for view in views.values():
        view.composite.SetBackgroundVolumeID(fixed.GetID())
        view.fit()
    result = registration.loadRegistrationResult(logics, engine_result["files"], fixed, moving, engine_result)
    return {"logics": logics, "views": views, "result": result, "fixed": fixed}


def jacobianAtPixels(view: SliceView, jacobianVolume) -> np.ndarray:
    """J of the voxel under each pixel of a slice view (nearest voxel; NaN outside the volume), top row first."""
    width, height = view.window.GetSize()
    xyToRas = np.array([[view.node.GetXYToRAS().GetElement(r, c) for c in range(4)] for r in range(4)])
    rasToIjk = vtk.vtkMatrix4x4()
    jacobianVolume.GetRASToIJKMatrix(rasToIjk)
    rasToIjk = np.array([[rasToIjk.GetElement(r, c) for c in range(4)] for r in range(4)])
    y, x = np.mgrid[height - 1:-1:-1, 0:width]
    xy = np.stack([x.ravel(), y.ravel(), np.zeros(x.size), np.ones(x.size)])
    ijk = np.rint(rasToIjk @ xyToRas @ xy)[:3].astype(int)
    image = jacobianVolume.GetImageData()
    i, j, k = image.GetDimensions()
    values = numpy_support.vtk_to_numpy(image.GetPointData().GetScalars()).reshape(k, j, i)
    inside = np.all((ijk >= 0) & (ijk < np.array([[i], [j], [k]])), axis=0)
    out = np.full(x.size, np.nan)
    out[inside] = values[ijk[2, inside], ijk[1, inside], ijk[0, inside]]
    return out.reshape(height, width)


def test_the_grid_is_drawn_over_every_slice_when_shown_and_gone_when_hidden(shown, tmp_path):
    views, result = shown["views"], shown["result"]
    plain = {name: view.render() for name, view in views.items()}
    display.showRegistration(result, gridSpacingMm=15.0, jacobianVisible=False)
    display.setSliceLayers(shown["logics"].scene, foreground="none")  # the grid alone over the fixed scan
    for name, view in views.items():
        withGrid = view.render()
        changed = np.any(withGrid != plain[name], axis=2)
        assert changed.mean() > 0.03, f"{name}: the grid covers {changed.mean():.1%} of the view"
        lines = withGrid[changed].astype(int)
        assert np.mean(lines.max(axis=1) - lines.min(axis=1) > 60) > 0.5  # coloured lines, not grey CT
        savePng(view.window, str(tmp_path / f"{name}.png"))
    display.showGrid(result.forwardTransform, shown["fixed"], visible=False)
    for name, view in views.items():
        assert np.array_equal(view.render(), plain[name]), f"{name}: something of the grid is left"


def test_the_overlay_leaves_no_change_as_the_scan_and_shows_compression_expansion_and_folding(shown):
    """The Jacobian volume is given known values (J = 1, 0.85, 1.15 and -0.2 in four blocks of the slice's
    volume) before the overlay is made: each pixel is then checked against the J under it."""
    views, result = shown["views"], shown["result"]
    jacobian = result.jacobianVolume
    values = numpy_support.vtk_to_numpy(jacobian.GetImageData().GetPointData().GetScalars())
    k, j, i = (jacobian.GetImageData().GetDimensions()[::-1])
    block = values.reshape(k, j, i)
    block[:] = 1.0
    block[:, : j // 2, : i // 2] = 0.85
    block[:, : j // 2, i // 2:] = 1.15
    block[:, j // 2:, : i // 4] = -0.2
    jacobian.GetImageData().Modified()
    view = views["Red"]
    plain = view.render().astype(int)
    display.showRegistration(result, gridVisible=False, jacobianVisible=True)
    overlaid = view.render().astype(int)
    underneath = jacobianAtPixels(view, jacobian)
    difference = overlaid - plain
    same = underneath == 1.0
    assert same.sum() > 1000 and np.abs(difference[same]).max() <= 2  # no change: the scan as it is
    compressed, expanded, folded = underneath == np.float32(0.85), underneath == np.float32(1.15), underneath < 0
    for region in (compressed, expanded, folded):
        assert region.sum() > 1000
    assert difference[compressed][:, 2].mean() > 60 and difference[compressed][:, 0].mean() < 10  # bluer
    assert difference[expanded][:, 0].mean() > 60 and difference[expanded][:, 2].mean() < 10  # redder
    yellow = overlaid[folded]
    assert np.mean((yellow[:, 0] > 200) & (yellow[:, 1] > 180) & (yellow[:, 2] < 80)) > 0.95  # opaque yellow


def test_the_real_overlay_keeps_the_scan_readable(shown):
    """On the real Jacobian: where |J - 1| < 5 % the pixels are the scan's, and the vessels stay visible
    under the colour where the lung is compressed."""
    view, result = shown["views"]["Red"], shown["result"]
    plain = view.render().astype(int)
    display.showRegistration(result, gridVisible=False)
    overlaid = view.render().astype(int)
    underneath = jacobianAtPixels(view, result.jacobianVolume)
    clear = np.abs(underneath - 1.0) < display.JACOBIAN_CLEAR - display.JACOBIAN_STEP
    unchanged = np.abs(overlaid[clear] - plain[clear]).max(axis=1) <= 2
    assert clear.sum() > 1000 and unchanged.mean() > 0.97, unchanged.mean()  # (pixels on voxel borders may differ)
    coloured = np.abs(underneath - 1.0) >= 0.1
    vessels, tissue = coloured & (plain[..., 0] > 100), coloured & (plain[..., 0] < 20)
    assert vessels.sum() > 50 and tissue.sum() > 50
    assert overlaid[vessels].sum(axis=1).mean() > overlaid[tissue].sum(axis=1).mean() + 60


def test_sampled_pairs_are_drawn_in_3d_in_their_two_colours(sampled, tmp_path):
    logics = headlessScene()
    nodes = samples.loadSampledPairs(logics, sampled, limit=1)
    view = ThreeDView(logics, size=(320, 320))
    picture = view.render().astype(int)
    savePng(view.window, str(tmp_path / "3d.png"))
    r, g, b = picture[..., 0], picture[..., 1], picture[..., 2]
    magenta = (r > 120) & (b > 120) & (g < 80)
    green = (g > 100) & (r < 80) & (b < 80)
    assert magenta.mean() > 0.01 and green.mean() > 0.01, (magenta.mean(), green.mean())
    nodes[0].GetDisplayNode().SetSegmentVisibility(nodes[0].GetSegmentation().GetNthSegmentID(0), False)
    hidden = view.render().astype(int)
    assert ((hidden[..., 0] > 120) & (hidden[..., 2] > 120) & (hidden[..., 1] < 80)).mean() < 0.001  # no magenta left


def test_the_screenshot_command_pictures_a_result_folder_and_refuses_others(engine_result, sampled, val_pair, tmp_path):
    sys.path.insert(0, str(REPO / "tools"))
    import slicer_screenshots

    resultDir = Path(engine_result["files"]["report"]).parent
    out = tmp_path / "pictures"
    assert slicer_screenshots.main([str(resultDir), "-o", str(out), "--samples", sampled["output"], "--size", "128"]) == 0
    for name, width in (("registration.png", 3 * 128), ("sampled_pairs.png", 2 * 128)):
        picture = vtk.vtkPNGReader()
        picture.SetFileName(str(out / name))
        picture.Update()
        assert picture.GetOutput().GetDimensions()[:2] == (width, 128)
        assert numpy_support.vtk_to_numpy(picture.GetOutput().GetPointData().GetScalars()).std() > 10  # not blank
    for arguments in ([str(tmp_path), "-o", str(tmp_path / "none")],
                      [str(resultDir), "-o", str(tmp_path / "none"), "--fixed", str(tmp_path / "gone.nii.gz")],
                      [str(resultDir), "-o", str(tmp_path / "none"), "--samples", str(tmp_path)]):
        with pytest.raises(SystemExit) as refused:
            slicer_screenshots.main(arguments)
        assert refused.value.code == 2
    assert not (tmp_path / "none").exists()
