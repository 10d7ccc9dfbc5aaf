"""The model selector that the Registration and Sampler panels share: the shipped default model, the model
files of the trained runs (only those of the panel's kind), and "Browse for a model file...". Works on a
QComboBox through Slicer's PythonQt (properties such as `count` are attributes there)."""
import os

from unleash.modelfile import find_model_files

from .engine import defaultRunFolders

BROWSE = "__browse__"  # the item data of the Browse entry; "" is the shipped default


def fillModelCombo(combo, kind: str, defaultLabel: str, browseLabel: str) -> None:
    """Refill `combo`: the shipped default (data ""), each trained run's model file of `kind` (data: its path,
    shown as run/file), and the Browse entry."""
    combo.clear()
    combo.addItem(defaultLabel, "")
    for path in find_model_files(defaultRunFolders(), kind=kind):
        combo.addItem(f"{path.parent.name}/{path.name}", str(path))
        combo.setItemData(combo.count - 1, str(path), 3)  # 3: Qt.ToolTipRole
    combo.addItem(browseLabel, BROWSE)


def selectComboData(combo, data, addLabel=None) -> None:
    """Select the entry whose data is `data`; a path that is not listed yet is added before Browse."""
    for index in range(combo.count):
        if combo.itemData(index) == data:
            combo.currentIndex = index
            return
    if addLabel:
        combo.insertItem(combo.count - 1, os.path.basename(addLabel), data)
        combo.currentIndex = combo.count - 2
