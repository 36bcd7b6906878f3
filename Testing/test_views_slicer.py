"""The user's views (MedGenSlicerLib.views) on Slicer's core libraries: the current slice comes from a slice
view that is on screen, and the compare view gives back everything it changed (layout, each view's
volumes, opacities, links, plane and field of view)."""

from __future__ import annotations

import numpy as np
import pytest

slicer = pytest.importorskip("slicer")
if not hasattr(slicer, "vtkMRMLLayoutLogic"):
    pytest.skip("the 'slicer' package here is not Slicer's core libraries (slicer-core)", allow_module_level=True)
vtk = pytest.importorskip("vtk")

from MedGenSlicerLib.geometry import GeometryError  # noqa: E402
from MedGenSlicerLib.views import SIDE_BY_SIDE_LAYOUT, ViewState, show_side_by_side, slice_on_screen  # noqa: E402

FOUR_UP, RED_ONLY, YELLOW_ONLY = 3, 6, 7
VIEWS_IN_LAYOUT = {FOUR_UP: ("Red", "Yellow", "Green"), RED_ONLY: ("Red",), YELLOW_ONLY: ("Yellow",),
                   SIDE_BY_SIDE_LAYOUT: ("Red", "Yellow")}


class StandInSliceWidget:
    """Stand-in for Slicer's qMRMLSliceWidget: the real slice and composite nodes, and a real slice logic."""

    def __init__(self, scene, slice_node, composite_node):
        self._slice, self._composite = slice_node, composite_node
        self._logic = slicer.vtkMRMLSliceLogic()
        self._logic.SetMRMLScene(scene)
        self._logic.SetSliceNode(slice_node)

    def mrmlSliceNode(self):
        return self._slice

    def mrmlSliceCompositeNode(self):
        return self._composite

    def sliceLogic(self):
        return self._logic


class StandInLayoutManager:
    """Stand-in for Slicer's qSlicerLayoutManager (a Qt widget): the layout number on the real layout node,
    and the views of that layout marked mapped, as the real one does when it lays out its widgets."""

    def __init__(self, scene):
        self.scene = scene
        slicer.vtkMRMLSliceNode.AddDefaultSliceOrientationPresets(scene)  # as Slicer's application logic does
        self.layout_logic = slicer.vtkMRMLLayoutLogic()
        self.layout_logic.SetMRMLScene(scene)
        self.widgets = {}
        for name, orientation in (("Red", "Axial"), ("Yellow", "Sagittal"), ("Green", "Coronal")):
            slice_node = next(n for n in nodes(scene, "vtkMRMLSliceNode") if n.GetLayoutName() == name)
            slice_node.SetOrientation(orientation)
            composite = scene.AddNewNodeByClass("vtkMRMLSliceCompositeNode")
            composite.SetLayoutName(name)
            self.widgets[name] = StandInSliceWidget(scene, slice_node, composite)
        self.setLayout(FOUR_UP)

    @property
    def layout(self):
        return self.layout_logic.GetLayoutNode().GetViewArrangement()

    def setLayout(self, number):
        self.layout_logic.GetLayoutNode().SetViewArrangement(number)
        for name, widget in self.widgets.items():
            widget.mrmlSliceNode().SetMappedInLayout(name in VIEWS_IN_LAYOUT[number])

    def close(self):
        for widget in self.widgets.values():
            widget.sliceLogic().SetMRMLScene(None)
        self.layout_logic.SetMRMLScene(None)

    def sliceWidget(self, name):
        return self.widgets[name] if name in VIEWS_IN_LAYOUT[self.layout] else None


def nodes(scene, class_name):
    collection = scene.GetNodesByClass(class_name)
    return [collection.GetItemAsObject(n) for n in range(collection.GetNumberOfItems())]


@pytest.fixture()
def views():
    scene = slicer.vtkMRMLScene()
    manager = StandInLayoutManager(scene)
    yield scene, manager
    manager.close()
    scene.Clear(True)


def volume(scene, name, slices=10):
    node = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", name)
    image = vtk.vtkImageData()
    image.SetDimensions(64, 48, slices)
    image.AllocateScalars(vtk.VTK_SHORT, 1)
    node.SetAndObserveImageData(image)
    node.SetSpacing(0.7, 0.7, 2.5)
    node.SetOrigin(-20.0, -15.0, 30.0)
    return node


def ijk_to_ras(node):
    matrix = vtk.vtkMatrix4x4()
    node.GetIJKToRASMatrix(matrix)
    return np.array([[matrix.GetElement(r, c) for c in range(4)] for r in range(4)])


def put_on_slice(slice_node, matrix, k):
    slice_node.SetSliceOffset(float((matrix @ [0, 0, k, 1])[2]))


def test_the_current_slice_comes_from_a_view_on_screen_not_from_a_hidden_red(views):
    scene, manager = views
    ct = volume(scene, "CT")
    matrix, shape = ijk_to_ras(ct), (10, 48, 64)
    red = manager.widgets["Red"].mrmlSliceNode()
    put_on_slice(red, matrix, 4)
    assert slice_on_screen(scene, matrix, shape) == ("Red", 4)

    # Red leaves the layout with its old position; the one axial view on screen now shows slice 7
    manager.setLayout(YELLOW_ONLY)
    yellow = manager.widgets["Yellow"].mrmlSliceNode()
    yellow.SetOrientation("Axial")
    put_on_slice(yellow, matrix, 7)
    assert slice_on_screen(scene, matrix, shape) == ("Yellow", 7)

    yellow.SetOrientation("Sagittal")  # the only view on screen looks across the slices
    with pytest.raises(GeometryError, match="Yellow view.*not aligned"):
        slice_on_screen(scene, matrix, shape)
    for widget in manager.widgets.values():
        widget.mrmlSliceNode().SetMappedInLayout(False)
    with pytest.raises(GeometryError, match="no slice view is on screen"):
        slice_on_screen(scene, matrix, shape)


def test_the_compare_view_gives_back_every_view_as_the_user_left_it(views):
    scene, manager = views
    ct, overlay, labels, variant = (volume(scene, name) for name in ("CT", "PET", "labels", "SYNTHETIC CT"))
    red = manager.widgets["Red"]
    yellow = manager.widgets["Yellow"]
    red.mrmlSliceCompositeNode().SetBackgroundVolumeID(ct.GetID())
    red.mrmlSliceCompositeNode().SetForegroundVolumeID(overlay.GetID())
    red.mrmlSliceCompositeNode().SetForegroundOpacity(0.35)
    red.mrmlSliceCompositeNode().SetLabelVolumeID(labels.GetID())
    yellow.mrmlSliceCompositeNode().SetBackgroundVolumeID(overlay.GetID())
    yellow.mrmlSliceNode().SetFieldOfView(123.0, 98.0, 1.0)
    put_on_slice(red.mrmlSliceNode(), ijk_to_ras(ct), 5)
    before = ViewState.capture(scene, manager)
    yellow_plane = before.slices[yellow.mrmlSliceNode().GetID()]

    assert show_side_by_side(manager, scene, ct, variant)
    assert manager.layout == SIDE_BY_SIDE_LAYOUT
    assert yellow.mrmlSliceCompositeNode().GetBackgroundVolumeID() == variant.GetID()
    assert yellow.mrmlSliceNode().GetOrientation() == "Axial" and red.mrmlSliceCompositeNode().GetForegroundVolumeID() is None

    before.restore(scene, manager)
    after = ViewState.capture(scene, manager)
    assert after.layout == FOUR_UP
    assert after.composites == before.composites
    assert after.slices[yellow.mrmlSliceNode().GetID()][1:] == yellow_plane[1:]
    np.testing.assert_allclose(after.slices[yellow.mrmlSliceNode().GetID()][0], yellow_plane[0], atol=1e-9)
    assert yellow.mrmlSliceNode().GetOrientation() == "Sagittal"
    assert red.mrmlSliceCompositeNode().GetForegroundOpacity() == pytest.approx(0.35)

    scene.RemoveNode(overlay)  # a volume the user deleted meanwhile is not brought back
    before.restore(scene, manager)
    assert red.mrmlSliceCompositeNode().GetForegroundVolumeID() is None
