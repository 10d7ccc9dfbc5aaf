"""Pictures of a registration result and of sampled pairs as Slicer shows them, rendered offscreen by Slicer's
own displayable managers (slicer-core), with the modules' scene code:

    python tools/slicer_screenshots.py RESULT_DIR -o DIR [--samples SAMPLES_DIR] [--size 480]

RESULT_DIR is an `unleash register` output folder (its report.json names the fixed and moving scans; give
--fixed/--moving when they have moved). DIR gets registration.png: the Red, Yellow and Green slices of the
fixed scan with the deformation grid and the Jacobian overlay; with --samples (an `unleash sample` output
folder), sampled_pairs.png: the first pairs in the 3D view. The Extensions Index screenshots in
Resources/Screenshots/ are made with it.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from unleash.jobspec import REGISTRATION_FILES  # noqa: E402
from UnleashCommon.scene import display, registration, samples  # noqa: E402
from UnleashCommon.scene.context import headlessScene  # noqa: E402
from UnleashCommon.scene.views import SLICE_ORIENTATIONS, SliceView, ThreeDView  # noqa: E402

GRID_SPACING_MM = 15.0
PAIRS_SHOWN = 2


def writePng(pixels, path: Path) -> None:
    """An (height, width, 3) uint8 array, top row first, as a PNG."""
    import vtk
    from vtk.util import numpy_support

    height, width, _ = pixels.shape
    image = vtk.vtkImageData()
    image.SetDimensions(width, height, 1)
    image.GetPointData().SetScalars(numpy_support.numpy_to_vtk(pixels[::-1].reshape(-1, 3).copy(), deep=True,
                                                               array_type=vtk.VTK_UNSIGNED_CHAR))
    writer = vtk.vtkPNGWriter()
    writer.SetFileName(str(path))
    writer.SetInputData(image)
    writer.Write()


def busiestPointRas(volumeNode):
    """The point whose axial, sagittal and coronal slices hold the most of the scan's non-zero voxels (for
    vessel label maps: the slices with the most vessels, e.g. the sagittal one through a lung, not between)."""
    import numpy as np
    import vtk
    from vtk.util import numpy_support

    image = volumeNode.GetImageData()
    i, j, k = image.GetDimensions()
    mask = numpy_support.vtk_to_numpy(image.GetPointData().GetScalars()).reshape(k, j, i) > 0
    ijk = [int(np.argmax(mask.sum(axis=axes))) for axes in ((0, 1), (0, 2), (1, 2))]
    matrix = vtk.vtkMatrix4x4()
    volumeNode.GetIJKToRASMatrix(matrix)
    return matrix.MultiplyPoint((*ijk, 1.0))[:3]


def registrationPicture(resultDir: Path, fixedPath: Path, movingPath: Path, size: int):
    import numpy as np

    logics = headlessScene()
    isLabels = 1 if json.loads((resultDir / REGISTRATION_FILES["report"]).read_text()).get("inputs") == "vessels" else 0
    fixed = logics.volumes.AddArchetypeVolume(str(fixedPath), "fixed", 0)  # shown as a grey scan
    moving = logics.volumes.AddArchetypeVolume(str(movingPath), "moving", isLabels)
    if fixed is None or moving is None:
        raise ValueError(f"could not read {fixedPath if fixed is None else movingPath}")
    fixed.CreateDefaultDisplayNodes()
    if isLabels:  # vessel label maps: background black, vessels grey
        fixed.GetDisplayNode().AutoWindowLevelOff()
        fixed.GetDisplayNode().SetWindowLevelMinMax(0.0, 2.5)
    views = [SliceView(logics, name, (size, size)) for name in SLICE_ORIENTATIONS]
    busiest = busiestPointRas(fixed)
    for view in views:
        view.composite.SetBackgroundVolumeID(fixed.GetID())
        view.fit()
        view.moveThrough(busiest)
    files = {role: str(resultDir / name) for role, name in REGISTRATION_FILES.items()}
    report = json.loads(Path(files["report"]).read_text())
    result = registration.loadRegistrationResult(logics, files, fixed, moving, report)
    display.showRegistration(result, GRID_SPACING_MM, gridVisible=True, jacobianVisible=True)
    return np.hstack([view.render() for view in views])


def samplesPicture(samplesDir: Path, size: int):
    import numpy as np

    result = json.loads((samplesDir / "samples.json").read_text())
    result["output"] = str(samplesDir)
    pictures = []
    for pair in result["pairs"][:PAIRS_SHOWN]:
        logics = headlessScene()
        samples.loadSampledPairs(logics, dict(result, pairs=[pair]))
        pictures.append(ThreeDView(logics, (size, size)).render())
    return np.hstack(pictures)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("result", type=Path, help="an `unleash register` output folder")
    parser.add_argument("-o", "--output", type=Path, required=True, help="folder for the PNG files")
    parser.add_argument("--fixed", type=Path, help="the fixed scan (default: the one report.json names)")
    parser.add_argument("--moving", type=Path, help="the moving scan (default: the one report.json names)")
    parser.add_argument("--samples", type=Path, help="an `unleash sample` output folder: also sampled_pairs.png")
    parser.add_argument("--size", type=int, default=480, help="pixels of one view, square (default: 480)")
    args = parser.parse_args(argv)

    report = args.result / "report.json"
    if not report.is_file():
        parser.error(f"{args.result} is not a registration result folder (no report.json)")
    names = json.loads(report.read_text())
    fixedPath, movingPath = args.fixed or Path(names.get("fixed", "")), args.moving or Path(names.get("moving", ""))
    for path in (fixedPath, movingPath):
        if not path.is_file():
            parser.error(f"{path}: no such scan (give --fixed and --moving)")
    if args.samples is not None and not (args.samples / "samples.json").is_file():
        parser.error(f"{args.samples} is not a sampler output folder (no samples.json)")
    if args.size < 64:
        parser.error("--size must be at least 64")
    try:
        pictures = {"registration.png": registrationPicture(args.result, fixedPath, movingPath, args.size)}
        if args.samples is not None:
            pictures["sampled_pairs.png"] = samplesPicture(args.samples, args.size)
    except ValueError as error:
        print(f"slicer_screenshots: {error}", file=sys.stderr)
        return 1
    args.output.mkdir(parents=True, exist_ok=True)
    for name, pixels in pictures.items():
        writePng(pixels, args.output / name)
        print(args.output / name)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
