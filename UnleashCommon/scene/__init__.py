"""The modules' scene code: everything that adds, changes or reads MRML nodes, without Qt.

Each file needs only Slicer's MRML classes, its module logics (volumes, transforms, segmentations, plots:
see context.py) and vtk, so the same code runs inside Slicer and on the `slicer-core` libraries, where
Testing/test_slicer_scene.py checks it on real scenes. Loading is all or nothing: a load that fails removes
the nodes it added.
"""
