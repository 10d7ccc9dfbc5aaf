"""Sampled pairs (the engine's `sample` result) as segmentations: one node a pair, its `fixed` and `moving`
vessel masks as two segments in two colours, with closed surfaces for the 3D view."""
from __future__ import annotations

import os

from .nodes import removedOnFailure, removeNode, uniqueName

SEGMENT_COLORS = {"fixed": (1.0, 0.0, 1.0), "moving": (0.0, 0.8, 0.0)}  # magenta and green, as in the engine's preview.png


def loadSampledPairs(logics, result: dict, limit: int | None = None) -> list:
    """The first `limit` pairs of a `result` event (all when None) as segmentation nodes. All or nothing:
    a missing or unreadable file is named and nothing stays in the scene."""
    pairs = list(result.get("pairs", []))[:limit]
    files = [os.path.join(result.get("output", ""), pair["files"][role]) for pair in pairs for role in SEGMENT_COLORS]
    missing = [path for path in files if not os.path.isfile(path)]
    if missing:
        raise ValueError(f"The sampled pairs are incomplete: missing {', '.join(missing)}")
    nodes = []
    with removedOnFailure(logics.scene):
        for pair in pairs:
            segmentationNode = logics.scene.AddNewNodeByClass("vtkMRMLSegmentationNode", uniqueName(logics.scene, pair["name"]))
            segmentationNode.CreateDefaultDisplayNodes()
            segmentation = segmentationNode.GetSegmentation()
            for role, color in SEGMENT_COLORS.items():
                path = os.path.join(result["output"], pair["files"][role])
                labelNode = logics.volumes.AddArchetypeVolume(path, f"{pair['name']} {role} (reading)", 1)
                if labelNode is None:
                    raise ValueError(f"Could not read {path}")
                try:
                    before = segmentation.GetNumberOfSegments()
                    if not logics.segmentations.ImportLabelmapToSegmentationNode(labelNode, segmentationNode):
                        raise ValueError(f"Could not import {path} as a segment")
                    added = segmentation.GetNumberOfSegments() - before
                    if added != 1:
                        raise ValueError(f"{path} holds {added} labels, not one vessel mask")
                finally:
                    removeNode(logics.scene, labelNode)
                segment = segmentation.GetNthSegment(before)
                segment.SetName(role)
                segment.SetColor(*color)
            if not segmentationNode.CreateClosedSurfaceRepresentation():
                raise RuntimeError(f"Could not make the surfaces of {pair['name']}")
            segmentationNode.GetDisplayNode().SetVisibility3D(True)
            nodes.append(segmentationNode)
    return nodes
