"""The modules' scene code (UnleashCommon/scene) on real MRML scenes of Slicer's own libraries (slicer-core).

A real val pair (case 002, every second voxel) is registered once by the engine with the tiny test model,
and sampled pairs come from the shipped sampler; the scene code then loads them as it does in Slicer. Every
check reads the nodes back from the scene: classes, names, references, the transform direction against
SimpleITK, the resampled moving scan against the engine's, grids, landmarks, segments, charts, and a scene
saved and loaded again. Slicer's messages (VTK's output window) are captured: loading must log nothing.
"""
from __future__ import annotations

import json

import numpy as np
import pytest

slicer = pytest.importorskip("slicer", reason="slicer-core (Slicer's libraries) is not installed: pip install slicer-core")
import SimpleITK as sitk  # noqa: E402
import vtk  # noqa: E402
from vtk.util import numpy_support  # noqa: E402

from unleash.datasets import read_landmarks  # noqa: E402
from UnleashCommon.engine import checkModelFile  # noqa: E402
from UnleashCommon.scene import charts, display, inputs, registration, samples  # noqa: E402
from UnleashCommon.scene.context import headlessScene  # noqa: E402
from UnleashCommon.scene.landmarks import ijkToMarkups, markupsToIjk  # noqa: E402
from UnleashCommon.scene.nodes import nodeIds, uniqueName  # noqa: E402


class Messages:
    """Everything Slicer and VTK log (warnings and errors) while installed."""

    def __init__(self):
        self.window = vtk.vtkStringOutputWindow()
        self.previous = vtk.vtkOutputWindow.GetInstance()

    def __enter__(self):
        vtk.vtkOutputWindow.SetInstance(self.window)
        return self

    def __exit__(self, *exc):
        vtk.vtkOutputWindow.SetInstance(self.previous)

    @property
    def text(self) -> str:
        return self.window.GetOutput().strip()


@pytest.fixture
def logics():
    return headlessScene()


def loadInputs(logics, val_pair):
    fixed = logics.volumes.AddArchetypeVolume(str(val_pair["fixed"]), "fixed", 1)
    moving = logics.volumes.AddArchetypeVolume(str(val_pair["moving"]), "moving", 1)
    return fixed, moving


@pytest.fixture
def loaded(logics, val_pair, engine_result):
    fixed, moving = loadInputs(logics, val_pair)
    with Messages() as messages:
        result = registration.loadRegistrationResult(logics, engine_result["files"], fixed, moving, engine_result)
    return {"logics": logics, "fixed": fixed, "moving": moving, "result": result, "messages": messages.text}


def array(volumeNode) -> np.ndarray:
    image = volumeNode.GetImageData()
    i, j, k = image.GetDimensions()
    return numpy_support.vtk_to_numpy(image.GetPointData().GetScalars()).reshape(k, j, i, -1).squeeze(-1)


# ---------------------------------------------------------------------------------------------------
# Loading a registration result
# ---------------------------------------------------------------------------------------------------

def test_a_result_loads_as_transforms_and_volumes_with_their_names_and_references(loaded):
    result, fixed, moving = loaded["result"], loaded["fixed"], loaded["moving"]
    assert loaded["messages"] == "", f"Slicer logged while loading: {loaded['messages']}"
    assert result.forwardTransform.IsA("vtkMRMLGridTransformNode") and result.inverseTransform.IsA("vtkMRMLGridTransformNode")
    assert result.warpedVolume.IsA("vtkMRMLLabelMapVolumeNode")  # the moving input is a label map
    assert result.jacobianVolume.IsA("vtkMRMLScalarVolumeNode") and not result.jacobianVolume.IsA("vtkMRMLLabelMapVolumeNode")
    # the names as meant, without a stray "_1" in a scene that had none of them
    assert [n.GetName() for n in (result.forwardTransform, result.inverseTransform, result.warpedVolume, result.jacobianVolume)] \
        == ["moving to fixed (Unleash)", "moving to fixed inverse (Unleash)", "moving registered", "moving to fixed Jacobian"]
    assert registration.referencedNodes(result.forwardTransform) == (fixed, moving)
    assert registration.referencedNodes(result.inverseTransform) == (moving, fixed)
    assert moving.GetTransformNodeID() == result.forwardTransform.GetID()  # applied, not hardened
    assert fixed.GetTransformNodeID() is None
    assert not result.inverseTransform.GetDisplayNode().GetVisibility()
    assert result.report["folding_fraction"] == loaded["result"].report["folding_fraction"]
    # the grids are the scans' own: the Jacobian and the registered scan on the fixed grid
    assert result.jacobianVolume.GetImageData().GetDimensions() == fixed.GetImageData().GetDimensions()
    assert result.warpedVolume.GetImageData().GetDimensions() == fixed.GetImageData().GetDimensions()


def test_a_second_result_gets_numbered_names(loaded, engine_result):
    logics = loaded["logics"]
    again = registration.loadRegistrationResult(logics, engine_result["files"], loaded["fixed"], loaded["moving"])
    assert again.warpedVolume.GetName() == "moving registered_2"
    assert again.forwardTransform.GetName() == "moving to fixed (Unleash)_2"
    assert uniqueName(logics.scene, "nothing like it") == "nothing like it"


def lpsPoints(image: sitk.Image, count: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    size = np.array(image.GetSize(), float)
    return np.array([image.TransformContinuousIndexToPhysicalPoint(list(rng.uniform(4, size - 5))) for _ in range(count)])


def transformPoints(transformNode, pointsLps: np.ndarray, fromParent: bool = True) -> np.ndarray:
    """Points (LPS mm) through a transform node's resampling ("from parent") transform, back in LPS."""
    transform = transformNode.GetTransformFromParent() if fromParent else transformNode.GetTransformToParent()
    flip = np.array([-1.0, -1.0, 1.0])
    return np.array([transform.TransformPoint(list(p * flip)) for p in pointsLps]) * flip


def test_the_forward_transform_maps_points_as_simpleitk_maps_the_file(loaded, engine_result):
    field = sitk.ReadImage(engine_result["files"]["displacement"], sitk.sitkVectorFloat64)
    points = lpsPoints(field, 300)
    expected = np.array([sitk.DisplacementFieldTransform(sitk.Image(field)).TransformPoint(list(p)) for p in points])
    moved = transformPoints(loaded["result"].forwardTransform, points)
    error = np.linalg.norm(moved - expected, axis=1)
    assert np.abs(expected - points).max() > 1.0  # the field moves points: the check can tell a sign error
    assert error.max() < 1e-3, error.max()  # both interpolate the field linearly


def test_forward_then_inverse_returns_to_the_start(loaded, engine_result):
    field = sitk.ReadImage(engine_result["files"]["displacement"])
    points = lpsPoints(field, 300, seed=1)
    there = transformPoints(loaded["result"].forwardTransform, points)
    back = transformPoints(loaded["result"].inverseTransform, there)
    error = np.linalg.norm(back - points, axis=1)
    # the engine's own inverse consistency of these fields, plus the interpolation of two fields
    assert np.median(error) < engine_result["inverse_consistency_error_mm"]["p99"] + 0.2, np.median(error)


def test_the_moving_scan_resampled_through_the_forward_transform_is_the_engines_warped_scan(loaded):
    """Each fixed voxel takes the moving voxel nearest to where the loaded forward transform sends it."""
    result, fixed, moving = loaded["result"], loaded["fixed"], loaded["moving"]
    fixedIjkToRas, movingRasToIjk = vtk.vtkMatrix4x4(), vtk.vtkMatrix4x4()
    fixed.GetIJKToRASMatrix(fixedIjkToRas)
    moving.GetRASToIJKMatrix(movingRasToIjk)
    fixedToMovingIjk = vtk.vtkGeneralTransform()
    fixedToMovingIjk.PostMultiply()
    fixedToMovingIjk.Concatenate(fixedIjkToRas)
    fixedToMovingIjk.Concatenate(result.forwardTransform.GetTransformFromParent())
    fixedToMovingIjk.Concatenate(movingRasToIjk)
    reslice = vtk.vtkImageReslice()
    reslice.SetInputData(moving.GetImageData())
    reslice.SetResliceTransform(fixedToMovingIjk)
    reslice.SetInterpolationModeToNearestNeighbor()
    reslice.SetOutputOrigin(0, 0, 0)
    reslice.SetOutputSpacing(1, 1, 1)
    reslice.SetOutputExtent(fixed.GetImageData().GetExtent())
    reslice.Update()
    i, j, k = fixed.GetImageData().GetDimensions()
    mine = numpy_support.vtk_to_numpy(reslice.GetOutput().GetPointData().GetScalars()).reshape(k, j, i)
    engine = array(result.warpedVolume)
    assert mine.shape == engine.shape
    assert (engine > 0).sum() > 1000
    assert np.mean(mine != engine) < 0.002, np.mean(mine != engine)


def test_a_result_folder_missing_a_file_is_named_and_adds_nothing(logics, val_pair, engine_result, tmp_path):
    fixed, moving = loadInputs(logics, val_pair)
    before = nodeIds(logics.scene)
    files = dict(engine_result["files"], jacobian_determinant=str(tmp_path / "gone.nii.gz"))
    with pytest.raises(ValueError, match="missing jacobian_determinant"):
        registration.loadRegistrationResult(logics, files, fixed, moving)
    assert nodeIds(logics.scene) == before and moving.GetTransformNodeID() is None


def test_a_file_that_fails_to_load_midway_leaves_the_scene_as_it_was(logics, val_pair, engine_result, tmp_path):
    fixed, moving = loadInputs(logics, val_pair)
    before = nodeIds(logics.scene)
    broken = tmp_path / "jacobian_determinant.nii.gz"
    broken.write_bytes(b"not an image")
    with Messages():  # the reader's own complaint about the broken file
        with pytest.raises(ValueError, match="Could not read"):
            registration.loadRegistrationResult(logics, dict(engine_result["files"], jacobian_determinant=str(broken)),
                                                fixed, moving)
    assert nodeIds(logics.scene) == before and moving.GetTransformNodeID() is None


def test_a_scalar_field_is_not_taken_for_a_displacement_field(logics, val_pair, engine_result):
    fixed, moving = loadInputs(logics, val_pair)
    before = nodeIds(logics.scene)
    with pytest.raises(ValueError, match="not a displacement field"):
        files = dict(engine_result["files"], displacement=engine_result["files"]["jacobian_determinant"])
        registration.loadRegistrationResult(logics, files, fixed, moving)
    assert nodeIds(logics.scene) == before


# ---------------------------------------------------------------------------------------------------
# Display: grid and Jacobian overlay
# ---------------------------------------------------------------------------------------------------

def test_the_grid_and_the_overlay_are_set_on_the_result(loaded):
    logics, result, fixed = loaded["logics"], loaded["result"], loaded["fixed"]
    composite = logics.scene.AddNewNodeByClass("vtkMRMLSliceCompositeNode")
    display.showRegistration(result, gridSpacingMm=12.0)
    grid = result.forwardTransform.GetDisplayNode()
    assert grid.GetVisualizationMode() == slicer.vtkMRMLTransformDisplayNode.VIS_MODE_GRID
    assert grid.GetGridSpacingMm() == 12.0 and grid.GetVisibility() and grid.GetVisibility2D() and not grid.GetVisibility3D()
    assert grid.GetRegionNode() == fixed
    # the fixed input is a label map: the background is left alone; the overlay is in the label layer
    overlay = display.jacobianOverlay(result.jacobianVolume)
    assert overlay.IsA("vtkMRMLLabelMapVolumeNode") and overlay.GetName() == "moving to fixed Jacobian overlay"
    assert composite.GetLabelVolumeID() == overlay.GetID() and composite.GetBackgroundVolumeID() is None
    assert composite.GetForegroundVolumeID() is None and composite.GetLabelOpacity() == 1.0
    assert overlay.GetDisplayNode().GetColorNode().GetName() == display.JACOBIAN_COLOR_NAME
    labels, jacobian = array(overlay), array(result.jacobianVolume)
    assert np.array_equal(labels, display.jacobianLabels(jacobian))
    assert np.allclose([display.jacobianOfLabel(v) for v in labels.flat[::997]], np.clip(jacobian.flat[::997], 0, 2), atol=0.0051)

    display.showRegistration(result, gridVisible=False, jacobianVisible=False)
    assert not grid.GetVisibility()
    assert composite.GetForegroundVolumeID() == loaded["moving"].GetID() and composite.GetLabelVolumeID() is None
    assert composite.GetForegroundOpacity() == display.MOVING_OPACITY
    composite.SetForegroundVolumeID(None)
    display.showRegistration(result, setLayers=False)
    assert grid.GetVisibility() and composite.GetForegroundVolumeID() is None
    assert display.jacobianOverlay(result.jacobianVolume) is overlay  # made once
    display.showRegistration(registration.RegistrationResult())  # nothing to show: nothing happens


def test_the_overlay_colours_leave_no_change_clear_show_ten_percent_and_mark_folding(logics):
    table = display.jacobianColorNode(logics.scene)
    assert display.jacobianColorNode(logics.scene) is table  # made once a scene

    def rgba(j):
        color = [0.0] * 4
        table.GetColor(int(display.jacobianLabels(np.array([j]))[0]), color)
        return color

    assert rgba(1.0)[3] == 0.0 and rgba(0.97)[3] == 0.0 and rgba(1.03)[3] == 0.0
    for j in (0.9, 0.8):
        assert rgba(j)[3] >= 0.4 and rgba(j)[2] > rgba(j)[0]  # compression: blue
    for j in (1.1, 1.2):
        assert rgba(j)[3] >= 0.4 and rgba(j)[0] > rgba(j)[2]  # expansion: red
    assert rgba(0.8)[3] > rgba(0.9)[3]
    for j in (0.0, -0.5):
        assert np.allclose(rgba(j), display.FOLDING_RGBA, atol=1 / 255)
    assert rgba(5.0) == rgba(2.0) and rgba(float("nan"))[3] == 0.0
    outside = [0.0] * 4
    table.GetColor(0, outside)
    assert outside[3] == 0.0


# ---------------------------------------------------------------------------------------------------
# Saving and loading the scene
# ---------------------------------------------------------------------------------------------------

def test_a_result_survives_saving_and_loading_the_scene(loaded, engine_result, tmp_path):
    logics, result = loaded["logics"], loaded["result"]
    display.showRegistration(result, gridSpacingMm=20.0)
    folder = tmp_path / "bundle"
    folder.mkdir()
    with Messages() as saving:
        assert logics.appLogic.SaveSceneToSlicerDataBundleDirectory(str(folder))
    assert saving.text == "", saving.text
    scenes = sorted(folder.glob("*.mrml"))
    assert len(scenes) == 1

    reloaded = headlessScene()
    reloaded.scene.SetURL(str(scenes[0]))
    with Messages() as reading:
        assert reloaded.scene.Connect()
    assert reading.text == "", reading.text
    forward = reloaded.scene.GetFirstNodeByName(result.forwardTransform.GetName())
    again = registration.resultFromTransform(forward)
    assert again.report == result.report
    assert [n.GetName() for n in (again.inverseTransform, again.warpedVolume, again.jacobianVolume)] == \
        [n.GetName() for n in (result.inverseTransform, result.warpedVolume, result.jacobianVolume)]
    fixed, moving = registration.referencedNodes(forward)
    assert (fixed.GetName(), moving.GetName()) == ("fixed", "moving")
    assert moving.GetTransformNodeID() == forward.GetID()
    assert forward.GetDisplayNode().GetGridSpacingMm() == 20.0
    points = lpsPoints(sitk.ReadImage(engine_result["files"]["jacobian_determinant"]), 50)
    # Slicer reads a saved grid transform back with cubic interpolation (the module loads it linearly, as ITK
    # and the engine interpolate it): close on this 4 mm lattice, and the same field
    cubic = np.linalg.norm(transformPoints(forward, points) - transformPoints(result.forwardTransform, points), axis=1)
    assert cubic.mean() < 0.2 and cubic.max() < 0.5, (cubic.mean(), cubic.max())
    forward.GetTransformFromParent().SetInterpolationModeToLinear()
    assert np.allclose(transformPoints(forward, points), transformPoints(result.forwardTransform, points), atol=1e-3)
    assert np.array_equal(array(again.jacobianVolume), array(result.jacobianVolume))
    assert registration.resultFromTransform(None).forwardTransform is None


# ---------------------------------------------------------------------------------------------------
# Exporting inputs
# ---------------------------------------------------------------------------------------------------

def segmentationFrom(logics, labelmap, name, referenceGeometry: bool):
    segmentation = logics.scene.AddNewNodeByClass("vtkMRMLSegmentationNode", name)
    if referenceGeometry:
        segmentation.SetReferenceImageGeometryParameterFromVolumeNode(labelmap)
    assert logics.segmentations.ImportLabelmapToSegmentationNode(labelmap, segmentation)
    return segmentation


@pytest.mark.parametrize("referenceGeometry", [False, True], ids=["no geometry of its own", "with reference geometry"])
def test_a_segmentation_input_is_exported_on_the_full_fixed_grid(logics, val_pair, tmp_path, referenceGeometry):
    fixedLabels, moving = loadInputs(logics, val_pair)
    fixed = segmentationFrom(logics, fixedLabels, "fixed vessels", referenceGeometry)
    assert inputs.hasReferenceGeometry(fixed) == referenceGeometry
    before = nodeIds(logics.scene)
    notes = []
    fixedPath, movingPath, landmarks = inputs.exportInputs(logics, str(tmp_path), fixed, moving, log=notes.append)
    assert nodeIds(logics.scene) == before  # the temporary label map is gone
    assert landmarks is None and bool(notes) != referenceGeometry
    written, original = sitk.ReadImage(fixedPath), sitk.ReadImage(str(val_pair["fixed"]))
    assert written.GetSize() == original.GetSize()
    assert np.allclose(written.GetOrigin(), original.GetOrigin(), atol=1e-3)
    assert np.allclose(written.GetSpacing(), original.GetSpacing(), atol=1e-4)
    writtenVoxels, originalVoxels = sitk.GetArrayFromImage(written), sitk.GetArrayFromImage(original)
    assert np.array_equal(writtenVoxels > 0, originalVoxels > 0)
    assert np.array_equal(sitk.GetArrayFromImage(sitk.ReadImage(movingPath)), array(moving))


def test_two_segmentations_without_a_geometry_are_refused(logics, val_pair, tmp_path):
    fixedLabels, movingLabels = loadInputs(logics, val_pair)
    fixed = segmentationFrom(logics, fixedLabels, "fixed vessels", False)
    moving = segmentationFrom(logics, movingLabels, "moving vessels", False)
    before = nodeIds(logics.scene)
    with pytest.raises(ValueError, match="has no reference geometry"):
        inputs.exportInputs(logics, str(tmp_path), fixed, moving)
    assert nodeIds(logics.scene) == before and not list(tmp_path.iterdir())


def test_landmarks_go_to_the_engine_as_the_voxel_indices_they_came_from(logics, val_pair, tmp_path):
    fixed, moving = loadInputs(logics, val_pair)
    shift = logics.scene.AddNewNodeByClass("vtkMRMLLinearTransformNode", "shift")
    matrix = vtk.vtkMatrix4x4()
    matrix.SetElement(0, 3, 7.5)
    shift.SetMatrixTransformToParent(matrix)
    moving.SetAndObserveTransformNodeID(shift.GetID())  # a moving scan under a transform: its own voxels count
    fixedIjk, movingIjk = read_landmarks(val_pair["landmarks"])
    fixedPoints = ijkToMarkups(logics.scene, "F", fixedIjk, fixed)
    movingPoints = ijkToMarkups(logics.scene, "M", movingIjk, moving)
    assert movingPoints.GetNumberOfControlPoints() == len(movingIjk) and movingPoints.GetNthControlPointLabel(0) == "L1"
    assert np.allclose(markupsToIjk(movingPoints, moving), movingIjk, atol=1e-4)
    notes = []
    _, _, landmarks = inputs.exportInputs(logics, str(tmp_path), fixed, moving, fixedPoints, movingPoints, log=notes.append)
    writtenFixed, writtenMoving = read_landmarks(landmarks)
    assert np.allclose(writtenFixed, fixedIjk, atol=1e-3) and np.allclose(writtenMoving, movingIjk, atol=1e-3)
    assert any("under the transform shift" in note for note in notes)


def test_bad_inputs_are_refused_in_one_line_before_anything_is_written(logics, val_pair, tmp_path):
    fixed, moving = loadInputs(logics, val_pair)
    empty = logics.scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "empty")
    noSegments = logics.scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "no segments")
    points = logics.scene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode", "three")
    fewer = logics.scene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode", "two")
    for index in range(3):
        points.AddControlPoint(float(index), 0.0, 0.0)
        if index < 2:
            fewer.AddControlPoint(float(index), 0.0, 0.0)
    unplaced = logics.scene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode", "unplaced")
    for label in "ABC":
        unplaced.SetNthControlPointLabel(unplaced.AddControlPoint(0.0, 0.0, 0.0), label)
    unplaced.UnsetNthControlPointPosition(1)
    markupsOnly = logics.scene.AddNewNodeByClass("vtkMRMLModelNode", "a model")
    cases = [((empty, moving), "has no image data"), ((fixed, noSegments), "has no segments"),
             ((None, moving), "Select a fixed volume"), ((fixed, markupsOnly), "neither a volume nor a segmentation"),
             ((fixed, moving, points, fewer), "3 points and the moving ones 2"),
             ((fixed, moving, points, None), "Select both landmark lists"),
             ((fixed, moving, points, unplaced), r"unplaced: point 2 \(B\) is not placed yet")]
    before = nodeIds(logics.scene)
    for arguments, message in cases:
        with pytest.raises(ValueError, match=message) as raised:
            inputs.exportInputs(logics, str(tmp_path), *arguments)
        assert "\n" not in str(raised.value)
        assert nodeIds(logics.scene) == before
    assert not [p for p in tmp_path.iterdir() if p.suffix == ".nrrd"]


def test_a_model_file_of_the_wrong_kind_is_named(tiny_model, tmp_path):
    checkModelFile(tiny_model, "registration")
    with pytest.raises(ValueError, match="is a registration model, not a sampler model"):
        checkModelFile(tiny_model, "sampler")
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"\x00" * 16)
    with pytest.raises(ValueError, match="not an unleash model file"):
        checkModelFile(junk, "registration")
    with pytest.raises(ValueError, match="does not exist"):
        checkModelFile(tmp_path / "none.safetensors", "registration")


# ---------------------------------------------------------------------------------------------------
# Sampled pairs and the training chart
# ---------------------------------------------------------------------------------------------------

def test_sampled_pairs_become_two_colour_segmentations_with_closed_surfaces(logics, sampled):
    with Messages() as messages:
        nodes = samples.loadSampledPairs(logics, sampled)
    assert messages.text == "", messages.text
    assert [n.GetName() for n in nodes] == [p["name"] for p in sampled["pairs"]]
    assert not logics.scene.GetNodesByClass("vtkMRMLLabelMapVolumeNode").GetNumberOfItems()  # read and removed
    closed = slicer.vtkSegmentationConverter.GetSegmentationClosedSurfaceRepresentationName()
    for node in nodes:
        segmentation = node.GetSegmentation()
        assert [segmentation.GetNthSegment(i).GetName() for i in range(segmentation.GetNumberOfSegments())] == ["fixed", "moving"]
        assert [tuple(round(c, 3) for c in segmentation.GetNthSegment(i).GetColor()) for i in range(2)] == \
            [samples.SEGMENT_COLORS["fixed"], samples.SEGMENT_COLORS["moving"]]
        assert segmentation.ContainsRepresentation(closed)
        for i in range(2):
            surface = segmentation.GetNthSegment(i).GetRepresentation(closed)
            assert surface.GetNumberOfPoints() > 1000
        assert node.GetDisplayNode().GetVisibility3D()
    assert len(samples.loadSampledPairs(logics, sampled, limit=1)) == 1


def test_sampled_pairs_with_a_missing_file_add_nothing(logics, sampled):
    broken = json.loads(json.dumps(sampled))
    broken["pairs"][1]["files"]["moving"] = "gone.nii.gz"
    before = nodeIds(logics.scene)
    with pytest.raises(ValueError, match="gone.nii.gz"):
        samples.loadSampledPairs(logics, broken)
    assert nodeIds(logics.scene) == before


def test_a_pair_file_with_more_than_one_label_is_refused(logics, sampled, val_pair):
    """A val label map has two labels (the two vessel trees): not a sampled vessel mask."""
    other = json.loads(json.dumps(sampled))
    other["pairs"][0]["files"]["moving"] = str(val_pair["moving"])
    before = nodeIds(logics.scene)
    with pytest.raises(ValueError, match="holds 2 labels, not one vessel mask"):
        samples.loadSampledPairs(logics, other)
    assert nodeIds(logics.scene) == before


def test_the_training_chart_shows_the_loss_against_the_step(logics):
    table = charts.lossChart(logics, [5, 10, 15], [0.9, 0.7, 0.65])
    assert table.GetName() == charts.TABLE_NAME
    assert [table.GetColumnName(i) for i in range(table.GetNumberOfColumns())] == ["step", "loss"]
    chart = logics.scene.GetFirstNodeByClass("vtkMRMLPlotChartNode")
    series = chart.GetNthPlotSeriesNode(0)
    assert series.GetTableNode() == table and (series.GetXColumnName(), series.GetYColumnName()) == ("step", "loss")
    assert series.GetPlotType() == slicer.vtkMRMLPlotSeriesNode.PlotTypeLine
    assert charts.lossChart(logics, [5, 10, 15, 20], [0.9, 0.7, 0.65, 0.6], table) is table  # updated in place
    column = numpy_support.vtk_to_numpy(table.GetTable().GetColumnByName("loss"))
    assert np.allclose(column, [0.9, 0.7, 0.65, 0.6])
    assert logics.scene.GetNodesByClass("vtkMRMLPlotChartNode").GetNumberOfItems() == 1
    with pytest.raises(ValueError, match="3 steps and 2 losses"):
        charts.fillTable(table, [1, 2, 3], [0.5, 0.4])
    logics.scene.RemoveNode(table)
    assert charts.lossChart(logics, [1], [1.0], table, showInLayout=False) is not table
