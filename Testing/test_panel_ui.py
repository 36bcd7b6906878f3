"""The panel's .ui against the module that drives it, read without Slicer: every widget MedGenSlicer.py
touches exists with a class that has the members it uses, every parameter binding names a field of
the parameter node with a type that widget can hold, and the panel renders offscreen (PySide6)."""

from __future__ import annotations

import ast
import re
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
MODULE = ROOT / "MedGenSlicer" / "MedGenSlicer.py"
UI_FILE = ROOT / "Resources" / "UI" / "MedGenSlicer.ui"

SLICER_CLASS_MEMBERS = {
    # public properties, slots and signals from the CTK and Slicer headers (ctkDirectoryButton.h,
    # qMRMLSegmentSelectorWidget.h, qMRMLNodeComboBox.h, ctkSliderWidget.h, ctkCollapsibleButton.h)
    "ctkDirectoryButton": {"directory", "setDirectory", "directoryChanged", "directorySelected", "caption"},
    "qMRMLSegmentSelectorWidget": {"setCurrentNode", "setCurrentNodeID", "currentNode", "setCurrentSegmentID",
                                   "currentSegmentID", "currentNodeChanged", "currentSegmentChanged",
                                   "setMRMLScene", "segmentSelectionChanged"},
    "qMRMLNodeComboBox": {"currentNode", "setCurrentNode", "currentNodeID", "setCurrentNodeID", "nodeTypes",
                          "currentNodeChanged", "setMRMLScene", "noneEnabled", "addEnabled"},
    "ctkSliderWidget": {"value", "setValue", "minimum", "maximum", "singleStep", "decimals", "valueChanged"},
    "ctkCollapsibleButton": {"collapsed", "text", "contentsCollapsed"},
}
PARAMETER_WIDGETS = {
    # parameter node field type -> the widget classes parameterNodeWrapper connects to it
    "str": {"QLineEdit", "QComboBox"},
    "int": {"QSpinBox"},
    "float": {"QDoubleSpinBox", "ctkSliderWidget"},
    "bool": {"QCheckBox", "QRadioButton"},
    "vtkMRMLScalarVolumeNode": {"qMRMLNodeComboBox"},
}


def ui_widgets() -> dict[str, str]:
    """Widget name -> class, as declared in the .ui."""
    return {w.get("name"): w.get("class") for w in ET.parse(UI_FILE).getroot().iter("widget")}


def used_members() -> dict[str, set[str]]:
    """Widget name -> the members MedGenSlicer.py reads, calls, or connects to (signal names) on self.ui.X."""
    used: dict[str, set[str]] = {}
    for node in ast.walk(ast.parse(MODULE.read_text(encoding="utf-8"))):
        # self.ui.<widget>
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Attribute) \
                and node.value.attr == "ui" and isinstance(node.value.value, ast.Name) \
                and node.value.value.id == "self":
            used.setdefault(node.attr, set())
        # self.ui.<widget>.<member>
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Attribute) \
                and isinstance(node.value.value, ast.Attribute) and node.value.value.attr == "ui":
            used.setdefault(node.value.attr, set()).add(node.attr)
        # self.ui.<widget>.connect("signal(args)", ...)
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "connect" \
                and isinstance(node.func.value, ast.Attribute) and isinstance(node.func.value.value, ast.Attribute) \
                and node.func.value.value.attr == "ui" and node.args and isinstance(node.args[0], ast.Constant):
            used.setdefault(node.func.value.attr, set()).add(re.match(r"(\w+)\(", node.args[0].value).group(1))
    for members in used.values():
        members.discard("connect")  # PythonQt's own, on every QObject
    return used


def has_member(class_name: str, member: str) -> bool:
    """Whether a widget of class_name has member as Slicer's Python (PythonQt) sees it: a method, slot or
    signal, or a Qt property (PythonQt reads properties as attributes: `button.enabled`)."""
    if class_name in SLICER_CLASS_MEMBERS:
        return member in SLICER_CLASS_MEMBERS[class_name] or has_member("QWidget", member)
    from PySide6 import QtWidgets

    cls = getattr(QtWidgets, class_name)
    return hasattr(cls, member) or cls.staticMetaObject.indexOfProperty(member) >= 0


def parameter_fields() -> dict[str, str]:
    """Field -> type name of MedGenSlicerParameterNode (Annotated[int, ...] counts as int)."""
    tree = ast.parse(MODULE.read_text(encoding="utf-8"))
    node = next(n for n in ast.walk(tree) if isinstance(n, ast.ClassDef) and n.name == "MedGenSlicerParameterNode")
    fields = {}
    for item in node.body:
        if isinstance(item, ast.AnnAssign):
            annotation = item.annotation
            if isinstance(annotation, ast.Subscript):  # Annotated[int, WithinRange(...)]
                annotation = annotation.slice.elts[0]
            fields[item.target.id] = annotation.id
    return fields


def test_every_widget_the_module_uses_exists_with_the_members_it_uses():
    pytest.importorskip("PySide6")
    widgets = ui_widgets()
    used = used_members()
    assert len(used) >= 15, "the module's use of self.ui was not found"
    missing = sorted(set(used) - set(widgets))
    assert not missing, f"MedGenSlicer.py uses widgets the .ui lacks: {missing}"
    wrong = sorted(f"{name} ({widgets[name]}).{member}" for name, members in used.items()
                   for member in members if not has_member(widgets[name], member))
    assert not wrong, f"members the widget's class does not have: {wrong}"


def test_every_parameter_binding_names_a_field_the_widget_can_hold():
    fields = parameter_fields()
    root = ET.parse(UI_FILE).getroot()
    bound = {}
    for widget in root.iter("widget"):
        for prop in widget.findall("property[@name='SlicerParameterName']"):
            bound[prop.findtext("string")] = widget.get("class")
    assert len(bound) > 10
    unknown = sorted(set(bound) - set(fields))
    assert not unknown, f".ui binds names the parameter node lacks: {unknown}"
    mismatched = sorted(f"{name}: {fields[name]} in a {cls}" for name, cls in bound.items()
                        if cls not in PARAMETER_WIDGETS[fields[name]])
    assert not mismatched, mismatched


def test_panel_renders_offscreen_with_pyside6(tmp_path):
    pytest.importorskip("PySide6")
    from panel_screenshot import render_panel
    from PIL import Image

    width, height = render_panel(tmp_path / "panel.png")
    assert width >= 400 and height >= 600
    gray = np.asarray(Image.open(tmp_path / "panel.png").convert("L"))
    assert np.unique(gray).size > 10, "the screenshot is blank"
