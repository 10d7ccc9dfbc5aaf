"""Small helpers on scene nodes: names, all-or-nothing adding, checks of what a node holds."""
from __future__ import annotations

from contextlib import contextmanager


def uniqueName(scene, base: str) -> str:
    """`base`, or `base_2`, `base_3`... if a node already has that name. (The scene's GenerateUniqueName
    counts every call, so a name it made is changed again when the node is added: "volume_1" in an empty scene.)"""
    name, number = base, 1
    while scene.GetFirstNodeByName(name) is not None:
        number += 1
        name = f"{base}_{number}"
    return name


def removeNode(scene, node) -> None:
    """Remove a node with its display and storage nodes (the scene leaves those behind on its own)."""
    attached = []
    if node.IsA("vtkMRMLDisplayableNode"):
        attached += [node.GetNthDisplayNode(i) for i in range(node.GetNumberOfDisplayNodes())]
    if node.IsA("vtkMRMLStorableNode"):
        attached += [node.GetNthStorageNode(i) for i in range(node.GetNumberOfStorageNodes())]
    scene.RemoveNode(node)
    for other in attached:
        if other is not None and scene.IsNodePresent(other):
            scene.RemoveNode(other)


def nodeIds(scene) -> list[str]:
    nodes = scene.GetNodes()
    return [nodes.GetItemAsObject(i).GetID() for i in range(nodes.GetNumberOfItems())]


def removeAddedSince(scene, before: set[str]) -> None:
    for nodeId in reversed([i for i in nodeIds(scene) if i not in before]):
        node = scene.GetNodeByID(nodeId)
        if node is not None:
            scene.RemoveNode(node)


@contextmanager
def removedOnFailure(scene):
    """If the block raises, every node added to the scene inside it (with the display and storage nodes that
    the logics add along) is removed again before the error goes on: a failed load leaves the scene as it was."""
    before = set(nodeIds(scene))
    try:
        yield
    except BaseException:
        removeAddedSince(scene, before)
        raise


@contextmanager
def removedAfterwards(scene):
    """Every node added inside the block (temporary nodes and what the logics made for them) is removed after it."""
    before = set(nodeIds(scene))
    try:
        yield
    finally:
        removeAddedSince(scene, before)


def hasVoxels(node) -> bool:
    image = node.GetImageData() if node is not None else None
    return image is not None and image.GetNumberOfPoints() > 0
