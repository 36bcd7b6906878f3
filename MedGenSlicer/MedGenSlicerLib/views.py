"""The user's slice views: which one shows the slice to inpaint, a compare view, and putting back what was there.

Everything here works on the scene's MRML nodes (slice nodes, slice composite nodes), which Slicer's
layout manager and slice widgets only display; the layout manager is asked for the layout number and
a slice widget's logic, nothing else. Importing needs neither Slicer nor VTK; calling does.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from .geometry import GeometryError, slice_in_view

VIEW_ORDER = ("Red", "Yellow", "Green")
SIDE_BY_SIDE_LAYOUT = 29  # vtkMRMLLayoutNode::SlicerLayoutSideBySideView: Red and Yellow


def _nodes(scene, class_name: str) -> list:
    collection = scene.GetNodesByClass(class_name)
    nodes = [collection.GetItemAsObject(n) for n in range(collection.GetNumberOfItems())]
    return nodes


def _matrix_values(matrix) -> List[float]:
    return [matrix.GetElement(row, column) for row in range(4) for column in range(4)]


def _as_array(matrix) -> np.ndarray:
    return np.array(_matrix_values(matrix)).reshape(4, 4)


def visible_slice_nodes(scene) -> list:
    """The slice nodes whose views the layout shows now, Red, Yellow, Green first; a view not in the
    layout keeps a position the user cannot see, so it never chooses the slice."""
    shown = []
    for node in _nodes(scene, "vtkMRMLSliceNode"):
        visible = node.IsViewVisibleInLayout() if hasattr(node, "IsViewVisibleInLayout") else node.IsMappedInLayout()
        if visible:
            shown.append(node)
    order = {name: n for n, name in enumerate(VIEW_ORDER)}
    return sorted(shown, key=lambda node: (order.get(node.GetLayoutName(), len(order)), node.GetLayoutName() or ""))


def slice_on_screen(scene, ijk_to_ras: np.ndarray, shape: Sequence[int]) -> Tuple[str, int]:
    """(view name, k): the volume slice shown by the first visible slice view that looks along the
    volume's slices; refuses when no view on screen does."""
    shown = visible_slice_nodes(scene)
    if not shown:
        raise GeometryError("no slice view is on screen to take the current slice from; show one (a layout "
                            "with a slice view) or choose 'every slice the segment touches'")
    first_error = None
    for node in shown:
        try:
            return node.GetLayoutName(), slice_in_view(ijk_to_ras, shape, _as_array(node.GetSliceToRAS()))
        except GeometryError as error:
            first_error = first_error or GeometryError(f"the {node.GetLayoutName()} view: {error}")
    raise first_error


@dataclass
class ViewState:
    """The layout and every slice view's layers, links, plane and field of view, as the user left them."""

    layout: Optional[int] = None
    composites: Dict[str, tuple] = field(default_factory=dict)
    slices: Dict[str, tuple] = field(default_factory=dict)

    @classmethod
    def capture(cls, scene, layout_manager=None) -> "ViewState":
        state = cls(layout=int(layout_manager.layout) if layout_manager is not None else None)
        for node in _nodes(scene, "vtkMRMLSliceCompositeNode"):
            state.composites[node.GetID()] = (
                node.GetBackgroundVolumeID(), node.GetForegroundVolumeID(), node.GetLabelVolumeID(),
                node.GetForegroundOpacity(), node.GetLabelOpacity(), node.GetLinkedControl(),
                node.GetHotLinkedControl(),
            )
        for node in _nodes(scene, "vtkMRMLSliceNode"):
            state.slices[node.GetID()] = (
                _matrix_values(node.GetSliceToRAS()), tuple(node.GetFieldOfView()), tuple(node.GetXYZOrigin()),
            )
        return state

    def restore(self, scene, layout_manager=None) -> None:
        """Put everything back; nodes removed since (a closed scene) are skipped."""
        if layout_manager is not None and self.layout is not None and int(layout_manager.layout) != self.layout:
            layout_manager.setLayout(self.layout)
        for node_id, values in self.composites.items():
            node = scene.GetNodeByID(node_id)
            if node is None:
                continue
            background, foreground, label, foreground_opacity, label_opacity, linked, hot_linked = values
            node.SetBackgroundVolumeID(background if scene.GetNodeByID(background or "") else None)
            node.SetForegroundVolumeID(foreground if scene.GetNodeByID(foreground or "") else None)
            node.SetLabelVolumeID(label if scene.GetNodeByID(label or "") else None)
            node.SetForegroundOpacity(foreground_opacity)
            node.SetLabelOpacity(label_opacity)
            node.SetLinkedControl(linked)
            node.SetHotLinkedControl(hot_linked)
        for node_id, (slice_to_ras, field_of_view, xyz_origin) in self.slices.items():
            node = scene.GetNodeByID(node_id)
            if node is None:
                continue
            matrix = node.GetSliceToRAS()
            for n, value in enumerate(slice_to_ras):
                matrix.SetElement(n // 4, n % 4, value)
            node.SetFieldOfView(*field_of_view)
            node.SetXYZOrigin(*xyz_origin)
            node.UpdateMatrices()

    def shows(self, node_id: str) -> bool:
        """Whether the user's own views showed this volume (then removing it would change them)."""
        return any(node_id in values[:3] for values in self.composites.values())


def show_side_by_side(layout_manager, scene, source_node, variant_node, reference_view: str = "Red") -> bool:
    """Source on the left (Red), variant on the right (Yellow), both on the plane ``reference_view`` shows
    (where the user painted), slices linked. False where there are no slice views to do it in."""
    if layout_manager is None:
        return False
    reference = next((n for n in _nodes(scene, "vtkMRMLSliceNode") if n.GetLayoutName() == reference_view), None)
    if reference is None:
        return False
    slice_to_ras = _matrix_values(reference.GetSliceToRAS())
    offset = reference.GetSliceOffset()
    layout_manager.setLayout(SIDE_BY_SIDE_LAYOUT)
    shown = False
    for view_name, volume in (("Red", source_node), ("Yellow", variant_node)):
        slice_widget = layout_manager.sliceWidget(view_name)
        if slice_widget is None:
            continue
        composite = slice_widget.mrmlSliceCompositeNode()
        composite.SetBackgroundVolumeID(volume.GetID())
        composite.SetForegroundVolumeID(None)
        composite.SetLinkedControl(True)
        composite.SetHotLinkedControl(True)
        slice_node = slice_widget.mrmlSliceNode()
        matrix = slice_node.GetSliceToRAS()
        for n, value in enumerate(slice_to_ras):
            matrix.SetElement(n // 4, n % 4, value)
        slice_node.UpdateMatrices()
        slice_widget.sliceLogic().FitSliceToAll()
        slice_node.SetSliceOffset(offset)
        shown = True
    return shown
