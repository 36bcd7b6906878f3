"""The module's real panel on the test host (Testing/slicerhost): MedGenSlicer.py's own Module, Widget and
Logic classes and Resources/UI/MedGenSlicer.ui, with real Qt (PySide6) on a real MRML scene (slicer-core),
Slicer's application and its own widget classes stood in as Slicer defines them.

What goes wrong in the panel while it runs (an exception escaping a slot, a connection to a signal that does
not exist, a dialog nobody answered) is recorded by the host; every test ends by asserting there was none.
Skipped where PySide6 or slicer-core is missing.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("PySide6")
slicer = pytest.importorskip("slicer")
if not hasattr(slicer, "vtkMRMLScene") or not hasattr(slicer, "vtkSlicerSegmentationsModuleLogic"):
    pytest.skip("the 'slicer' package here is not Slicer's core libraries (slicer-core)", allow_module_level=True)
vtk = pytest.importorskip("vtk")

import slicerhost  # noqa: E402

if not slicerhost.available():
    pytest.skip("the Slicer test host cannot run here (PySide6 or slicer-core missing)", allow_module_level=True)

ROOT = Path(__file__).resolve().parents[1]
MODULE = ROOT / "MedGenSlicer" / "MedGenSlicer.py"
SYNTHETIC_ATTRIBUTE = "MedGenSlicer.Synthetic"  # MedGenSlicerLib.scene's marker of a generated volume
SIDE_BY_SIDE = 29  # vtkMRMLLayoutNode.SlicerLayoutSideBySideView
SHAPE = (6, 64, 64)  # slices, rows, columns
SPACING = (0.8, 0.8, 2.5)
ORIGIN = (-25.0, -25.0, 40.0)
MASK_SLICES = (2, 3)


@pytest.fixture(scope="module")
def host():
    return slicerhost.install()


@pytest.fixture(scope="module")
def panel(host):
    loaded = host.load_module(MODULE)
    yield loaded
    loaded.unload()


@pytest.fixture()
def fresh(host, panel):
    """An empty scene (File > Close Scene, with the panel shown) and no findings from earlier tests; yields the
    Python warnings raised meanwhile."""
    host.reset_findings()
    host.close_scene()
    host.run_until(lambda: False, timeout=0.2)  # what the close set going (a cancelled job) settles
    assert not host.problems(), f"closing the scene went wrong:\n{host.diagnostics.report()}"
    host.reset_findings()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        yield caught


def ct_volume():
    """A CT-like volume: air around a soft-tissue body with a brighter organ, and noise."""
    rows, columns = np.mgrid[: SHAPE[1], : SHAPE[2]]
    body = ((rows - 32) / 26.0) ** 2 + ((columns - 32) / 22.0) ** 2 <= 1.0
    organ = ((rows - 28) / 10.0) ** 2 + ((columns - 36) / 12.0) ** 2 <= 1.0
    noise = np.random.default_rng(7).normal(0.0, 8.0, SHAPE)
    voxels = np.where(body, 40.0, -1000.0) + np.where(organ, 20.0, 0.0) + noise
    ijk_to_ras = np.diag([*SPACING, 1.0])
    ijk_to_ras[:3, 3] = ORIGIN
    return slicer.util.addVolumeFromArray(voxels.astype(np.int16), ijk_to_ras, name="CT phantom")


def painted_segment(volume):
    """A segment painted on MASK_SLICES, imported through the Segmentations logic (as the Segment Editor
    leaves it); the labelmap it came from stays in the scene."""
    segmentation = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLSegmentationNode", "lesion")
    segmentation.SetReferenceImageGeometryParameterFromVolumeNode(volume)
    labelmap = np.zeros(SHAPE, np.uint8)
    for k in MASK_SLICES:
        labelmap[k, 24:34, 30:42] = 1
    matrix = vtk.vtkMatrix4x4()
    volume.GetIJKToRASMatrix(matrix)
    label_node = slicer.util.addVolumeFromArray(labelmap, matrix, name="painted",
                                                nodeClassName="vtkMRMLLabelMapVolumeNode")
    slicer.modules.segmentations.logic().ImportLabelmapToSegmentationNode(label_node, segmentation)
    return segmentation, segmentation.GetSegmentation().GetNthSegmentID(0), label_node


def findings(host, caught) -> str:
    lines = [str(p) for p in host.problems()]
    lines += [f"[error dialog] {d.text}" for d in host.dialogs.errors()]
    lines += [f"[python warning] {w.category.__name__}: {w.message} ({Path(w.filename).name}:{w.lineno})"
              for w in caught if "MedGenSlicer" in w.filename or "slicerhost" in w.filename]
    return "\n".join(lines)


def test_the_panel_sets_up_on_a_real_scene_and_its_selectors_list_real_nodes(host, panel, fresh):
    ui = panel.ui
    assert type(ui.inputVolumeSelector).__name__ == "StandInMRMLNodeComboBox"
    assert ui.segmentSelector.className() == "qMRMLSegmentSelectorWidget"
    assert panel.panel.isEntered and ui.inputVolumeSelector.mrmlScene() is slicer.mrmlScene, \
        "the panel's setMRMLScene did not reach the selectors through the .ui's connections"

    volume = ct_volume()
    segmentation, segment_id, label_node = painted_segment(volume)
    host.process_events()

    listed = [ui.inputVolumeSelector.nodeFromIndex(i) for i in range(ui.inputVolumeSelector.nodeCount())]
    assert volume in listed
    assert label_node not in listed, "a labelmap is listed although the .ui turns showChildNodeTypes off"

    ui.inputVolumeSelector.setCurrentNode(volume)
    ui.segmentSelector.setCurrentNode(segmentation)
    assert ui.segmentSelector.segmentIDs() == [segment_id]
    ui.segmentSelector.setCurrentSegmentID(segment_id)
    assert ui.segmentSelector.currentSegmentID() == segment_id
    assert not ui.generateButton.enabled, "Generate is enabled before a prompt was typed"
    ui.promptLineEdit.text = "hypodense liver lesion"
    host.process_events()
    assert ui.generateButton.enabled, f"Generate stays disabled: {ui.generateButton.toolTip}"

    # the parameter node (a real vtkMRMLScriptedModuleNode) holds what the widgets show, as Slicer stores it
    node = slicer.mrmlScene.GetSingletonNode("MedGenSlicer", "vtkMRMLScriptedModuleNode")
    assert node is not None and node.GetParameter("prompt") == "hypodense liver lesion"
    assert node.GetNodeReference("inputVolume") is volume

    panel.exit()
    panel.enter()
    assert ui.generateButton.enabled, "leaving and re-entering the module lost the inputs"
    assert not findings(host, fresh), findings(host, fresh)


def test_generate_on_a_painted_segment_brings_a_variant_into_the_list_and_the_scene(host, panel, fresh, engine,
                                                                                   record_property):
    ui = panel.ui
    volume = ct_volume()
    segmentation, segment_id, _ = painted_segment(volume)
    slicer.util.setSliceViewerLayers(background=volume, fit=True)  # as loading a volume in Slicer shows it
    red = slicer.app.layoutManager().sliceWidget("Red").mrmlSliceNode()
    red.SetSliceOffset(ORIGIN[2] + MASK_SLICES[0] * SPACING[2])  # the user scrolled to the painted slice

    ui.engineUrlLineEdit.text = engine.url
    ui.tokenLineEdit.text = engine.token
    ui.inputVolumeSelector.setCurrentNode(volume)
    ui.segmentSelector.setCurrentNode(segmentation)
    ui.segmentSelector.setCurrentSegmentID(segment_id)
    ui.promptLineEdit.text = "hypodense liver lesion"
    ui.stepsSpinBox.value = 1
    ui.guidanceSpinBox.value = 1.0
    ui.seedSpinBox.value = 5
    ui.variantsSpinBox.value = 1
    ui.dilationSpinBox.value = 0.0
    if hasattr(ui, "modalityComboBox"):  # a volume without DICOM files: the user states its modality
        ui.modalityComboBox.setCurrentText("CT")
    host.process_events()
    assert ui.currentSliceRadioButton.checked
    assert ui.generateButton.enabled, f"Generate stays disabled: {ui.generateButton.toolTip}"

    def settled() -> bool:
        failed = "#c0392b" in ui.statusLabel.styleSheet or host.problems()
        done = ui.variantsListWidget.count >= 1 and not ui.cancelButton.enabled
        return bool(failed or done)

    host.meter.reset()
    finished = host.run_until(settled, timeout=240.0, action=ui.generateButton.click)
    # what arrives after the job ends (the compare view) settles
    host.run_until(lambda: slicer.app.layoutManager().layout == SIDE_BY_SIDE, timeout=5.0)

    stall = host.meter.summary()
    slowest = "; ".join(f"{t.seconds * 1000:.0f} ms in {t.what}" for t in host.diagnostics.slowest_slots[:3])
    print(f"\nGUI stall while generating: {stall}\nslowest slot calls: {slowest}")
    record_property("gui_longest_gap_ms", round(host.meter.longest * 1000))
    record_property("gui_slowest_slots", slowest)
    assert host.meter.ticks > 0, "the stall meter never ticked: the event loop did not run"

    assert finished, f"the job did not finish in time; status: {ui.statusLabel.text!r}"
    assert not findings(host, fresh), findings(host, fresh)
    assert "#c0392b" not in ui.statusLabel.styleSheet, f"the panel shows an error: {ui.statusLabel.text}"
    assert ui.variantsListWidget.count == 1
    assert ui.variantsListWidget.currentRow == 0

    synthetic = [n for n in slicer.util.getNodesByClass("vtkMRMLScalarVolumeNode")
                 if n.GetAttribute(SYNTHETIC_ATTRIBUTE) is not None]
    assert synthetic, "no volume marked synthetic came into the scene"
    variant = synthetic[0]
    source, result = slicer.util.arrayFromVolume(volume), slicer.util.arrayFromVolume(variant)
    if result.shape == source.shape:  # outside the painted slices the variant is the source
        untouched = [k for k in range(SHAPE[0]) if k != MASK_SLICES[0]]
        np.testing.assert_array_equal(result[untouched], source[untouched])

    layout_manager = slicer.app.layoutManager()
    assert layout_manager.layout == SIDE_BY_SIDE, "the variant is not shown beside its source"
    assert layout_manager.sliceWidget("Red").mrmlSliceCompositeNode().GetBackgroundVolumeID() == volume.GetID()
    assert layout_manager.sliceWidget("Yellow").mrmlSliceCompositeNode().GetBackgroundVolumeID() == variant.GetID()
    assert slicer.mrmlScene.GetNodeByID("vtkMRMLSliceNodeYellow").IsMappedInLayout()
    assert not slicer.mrmlScene.GetNodeByID("vtkMRMLSliceNodeGreen").IsMappedInLayout()


def test_the_host_gives_pythonqt_semantics_and_records_what_pythonqt_only_prints(host):
    """What the panel relies on from PythonQt, on the host's `qt` module."""
    import qt

    host.reset_findings()
    label = qt.QLabel()
    label.text = "status"
    assert label.text == "status" and isinstance(label, qt.QWidget)
    with pytest.raises(TypeError):
        label.text()  # the property shadows the getter, as in PythonQt
    label.setStyleSheet("color: red;")
    assert label.styleSheet == "color: red;"
    spin = qt.QDoubleSpinBox()
    spin.setRange(-2.0, 2.0)
    spin.value = 1.5
    assert spin.value == 1.5
    combo = qt.QComboBox()
    combo.addItem("a")
    combo.setItemData(combo.count - 1, "tip", qt.Qt.ToolTipRole)
    assert combo.count == 1 and combo.currentText == "a"
    timer = qt.QTimer()
    timer.setInterval(5)
    assert timer.interval == 5 and not timer.active

    button = qt.QPushButton()
    clicks = []
    assert button.connect("clicked(bool)", lambda: clicks.append("no arguments taken"))
    assert button.connect("clicked(bool)", clicks.append)
    button.click()
    assert clicks == ["no arguments taken", False]
    assert button.disconnect("clicked(bool)", clicks.append)
    assert not button.connect("pressedTwice()", print)
    assert host.problems("signal-not-found")
    button.connect("clicked()", lambda: 1 / 0)
    button.click()
    errors = host.problems("slot-error")
    assert len(errors) == 1 and "ZeroDivisionError" in errors[0].message
    assert clicks == ["no arguments taken", False, "no arguments taken"]
    host.reset_findings()


def test_engine_calls_leave_no_worker_folders_behind(host, panel, fresh, engine):
    """Each engine call's worker folder goes as soon as its answer is read, whenever its process exits."""
    ui = panel.ui
    ui.engineUrlLineEdit.text = engine.url
    ui.tokenLineEdit.text = engine.token
    before = set(host.temp_entries())
    for _ in range(3):  # whether a call leaves its folder depends on when its worker exits: a few calls
        host.run_until(lambda: ui.checkConnectionButton.enabled, timeout=60.0, action=ui.checkConnectionButton.click)
        assert "Connected" in ui.connectionStatusLabel.text, ui.connectionStatusLabel.text
    host.run_until(lambda: False, timeout=1.0)  # the last worker exits; the panel's timer goes idle
    assert not findings(host, fresh), findings(host, fresh)
    left = sorted(p.name for p in set(host.temp_entries()) - before)
    assert not left, f"left in the temporary folder after Check connection: {left}"


def test_generate_with_the_red_view_off_the_segment_says_so_instead_of_staying_busy(host, panel, fresh):
    """A slice the segment does not touch ends the job at once with the reason shown, and the panel is free."""
    ui = panel.ui
    volume = ct_volume()
    segmentation, segment_id, _ = painted_segment(volume)
    slicer.util.setSliceViewerLayers(background=volume, fit=True)
    red = slicer.app.layoutManager().sliceWidget("Red").mrmlSliceNode()
    red.SetSliceOffset(ORIGIN[2] + (SHAPE[0] - 1) * SPACING[2])  # a slice the segment does not touch
    ui.engineUrlLineEdit.text = "http://127.0.0.1:9"  # nothing is sent: the upload is refused before
    ui.tokenLineEdit.text = "token"
    ui.inputVolumeSelector.setCurrentNode(volume)
    ui.segmentSelector.setCurrentNode(segmentation)
    ui.segmentSelector.setCurrentSegmentID(segment_id)
    ui.promptLineEdit.text = "hypodense liver lesion"
    ui.currentSliceRadioButton.checked = True
    host.process_events()
    assert ui.generateButton.enabled

    host.run_until(lambda: not ui.cancelButton.enabled and bool(ui.statusLabel.text), timeout=5.0,
                   action=ui.generateButton.click)
    stuck = ui.cancelButton.enabled
    if stuck:  # leave the panel usable for the next test
        host.run_until(lambda: not ui.cancelButton.enabled, timeout=5.0, action=ui.cancelButton.click)
    assert not host.problems("slot-error"), host.diagnostics.report(("slot-error",))
    assert not stuck, "the panel stays busy (Cancel enabled, Generate disabled) with nothing running"
    assert "#c0392b" in ui.statusLabel.styleSheet and ui.statusLabel.text, "no error is shown"
