"""Render the module's panel (Resources/UI/MedGenSlicer.ui) offscreen with PySide6 and save it as a PNG.

Slicer's own widget classes (CTK, MRML) do not exist outside Slicer, so each is drawn as the plain Qt
widget closest in look (STAND_INS: a node selector as a combo box, a collapsible button as a group box),
else as the Qt class it extends per the .ui's <customwidgets>; everything else is the .ui as Slicer sees it.

    python3 Testing/panel_screenshot.py Resources/Screenshots/MedGenSlicer-panel.png
"""

from __future__ import annotations

import os
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

UI_FILE = Path(__file__).resolve().parents[1] / "Resources" / "UI" / "MedGenSlicer.ui"
PANEL_WIDTH = 420
STAND_INS = {
    "qMRMLNodeComboBox": "QComboBox",
    "qMRMLSegmentSelectorWidget": "QComboBox",
    "ctkSliderWidget": "QDoubleSpinBox",
    "ctkDirectoryButton": "QPushButton",
    "ctkCollapsibleButton": "QGroupBox",
}


def custom_widget_bases(root: ET.Element) -> dict[str, str]:
    """Each custom class -> the first standard Qt class up its <extends> chain."""
    extends = {w.findtext("class"): w.findtext("extends") for w in root.iter("customwidget")}
    bases = {}
    for name in extends:
        base = extends[name]
        while base in extends:
            base = extends[base]
        bases[name] = base
    return bases


def standard_ui_text(ui_file: Path = UI_FILE) -> bytes:
    """The .ui with every Slicer class replaced by its Qt base; no <customwidgets>, and no <connections>
    (they carry MRML scene signals only Slicer's classes have)."""
    root = ET.parse(ui_file).getroot()
    bases = custom_widget_bases(root)
    for widget in root.iter("widget"):
        name = widget.get("class")
        if name in STAND_INS:
            widget.set("class", STAND_INS[name])
            if name == "ctkCollapsibleButton":  # its caption is "text"; a group box's is "title"
                for prop in widget.findall("property[@name='text']"):
                    prop.set("name", "title")
        elif name in bases:
            widget.set("class", bases[name])
    for section in root.findall("customwidgets") + root.findall("connections"):  # MRML scene signals
        root.remove(section)
    return ET.tostring(root, encoding="utf-8")


def render_panel(png_path: Path, ui_file: Path = UI_FILE) -> tuple[int, int]:
    """Load, lay out and grab the panel; returns the image size in pixels."""
    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
    from PySide6.QtCore import QBuffer, QByteArray, QIODevice
    from PySide6.QtUiTools import QUiLoader
    from PySide6.QtWidgets import QApplication

    app = QApplication.instance() or QApplication([])
    data = QByteArray(standard_ui_text(ui_file))  # the buffer reads it: keep it alive as long
    buffer = QBuffer(data)
    buffer.open(QIODevice.ReadOnly)
    loader = QUiLoader()
    panel = loader.load(buffer)
    if panel is None:
        raise RuntimeError(f"PySide6 could not load {ui_file}")
    panel.resize(PANEL_WIDTH, panel.sizeHint().height())
    panel.show()
    app.processEvents()
    image = panel.grab().toImage()
    png_path = Path(png_path)
    png_path.parent.mkdir(parents=True, exist_ok=True)
    if not image.save(str(png_path), "PNG"):
        raise RuntimeError(f"could not write {png_path}")
    size = (image.width(), image.height())
    panel.close()
    return size


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    print(render_panel(Path(sys.argv[1])))
