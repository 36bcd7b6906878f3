"""Stand-ins for Slicer's layout manager and slice view widgets, on the real MRML layout and slice nodes.

As in Slicer (qMRMLLayoutManager, qMRMLLayoutViewFactory, qMRMLSliceWidget):

* the layout is the ``ViewArrangement`` of the scene's singleton ``vtkMRMLLayoutNode``; slicer-core's own
  ``vtkMRMLLayoutLogic`` creates the view nodes a layout needs (Red, Yellow, Green slice nodes with their
  Axial, Sagittal and Coronal orientations, the 3D view node) and tells which are in the current layout;
* ``setLayout(n)`` does nothing when ``n`` is the current layout, replaces an unknown layout with the
  conventional one, and sets the layout node's view arrangement; ``layoutChanged(int)`` follows it;
* there is one slice widget per slice view node of the scene, made when the node is added, with its own
  ``vtkMRMLSliceLogic`` (registered with the application logic, which finds or makes the slice's
  composite node); a view in the current layout is marked ``SetMappedInLayout(1)`` and its widget shown,
  the others are unmapped and hidden. So ``sliceWidget(name)`` returns a widget for every slice view node
  of the scene, visible only when its view is in the layout (``None`` only for a name no slice node has).
"""

from __future__ import annotations

from typing import Dict, List, Optional

from PySide6 import QtCore, QtWidgets
from PySide6.QtCore import Property, Signal, Slot

from .pythonqt import pythonqt_class
from .standins import Observations

QObject = pythonqt_class(QtCore.QObject)
QWidget = pythonqt_class(QtWidgets.QWidget)
QGridLayout = pythonqt_class(QtWidgets.QGridLayout)


class StandInSliceWidget(QWidget):
    """Stand-in for ``qMRMLSliceWidget``: ``mrmlSliceNode()``, ``mrmlSliceCompositeNode()``,
    ``sliceLogic()`` (a real ``vtkMRMLSliceLogic``: FitSliceToAll, offsets, layers) and ``sliceViewName()``.
    Nothing is rendered."""

    slicerClassName = "qMRMLSliceWidget"

    def __init__(self, sliceNode, scene, applicationLogic, parent=None) -> None:
        super().__init__(parent)
        import slicer

        QtCore.QObject.setObjectName(self, f"qMRMLSliceWidget{sliceNode.GetLayoutName()}")
        self._sliceNode = sliceNode
        self._logic = slicer.vtkMRMLSliceLogic()
        self._logic.SetMRMLApplicationLogic(applicationLogic)
        self._logic.SetMRMLScene(scene)
        self._logic.SetSliceNode(sliceNode)
        self._scene = scene

    def mrmlSliceNode(self):
        return self._sliceNode

    def mrmlSliceCompositeNode(self):
        return self._logic.GetSliceCompositeNode()

    def sliceLogic(self):
        return self._logic

    def sliceViewName(self) -> str:
        return self._sliceNode.GetLayoutName()

    def mrmlScene(self):
        return self._scene

    def fitSliceToBackground(self) -> None:
        self._logic.FitSliceToBackground()

    def sliceController(self):
        """The slice controller's few scriptable actions, on the same logic."""
        return self

    def close(self):
        self._logic.SetMRMLScene(None)
        return QtWidgets.QWidget.close(self)


class StandInThreeDWidget(QWidget):
    """Stand-in for ``qMRMLThreeDWidget``: ``mrmlViewNode()`` only (nothing is rendered)."""

    slicerClassName = "qMRMLThreeDWidget"

    def __init__(self, viewNode, parent=None) -> None:
        super().__init__(parent)
        QtCore.QObject.setObjectName(self, f"ThreeDWidget{viewNode.GetLayoutName()}")
        self._viewNode = viewNode

    def mrmlViewNode(self):
        return self._viewNode


class StandInLayoutManager(QObject):
    """Stand-in for ``qSlicerLayoutManager`` (``slicer.app.layoutManager()``), on the scene's layout node.

    ``layout`` (property), ``setLayout(int)``, ``layoutChanged(int)``, ``sliceWidget(name)``,
    ``sliceViewNames()``, ``threeDWidget(index)``, ``threeDViewCount``, ``layoutLogic()``,
    ``mrmlSliceLogics()``, ``resetSliceViews()``, ``pauseRender()``/``resumeRender()`` (no rendering)."""

    slicerClassName = "qSlicerLayoutManager"
    layoutChanged = Signal(int)

    def __init__(self, scene, applicationLogic, viewport) -> None:
        super().__init__()
        import slicer
        import vtk

        self._scene = scene
        self._applicationLogic = applicationLogic
        self._viewport = viewport
        self._sliceWidgets: Dict[str, StandInSliceWidget] = {}  # slice node ID -> widget
        self._threeDWidgets: Dict[str, StandInThreeDWidget] = {}
        self._sliceLogics = vtk.vtkCollection()
        applicationLogic.SetSliceLogics(self._sliceLogics)
        self._layoutLogic = slicer.vtkMRMLLayoutLogic()
        self._layoutLogic.SetMRMLScene(scene)
        self._observations = Observations(viewport)
        self._observedLayoutNode = None
        events = slicer.vtkMRMLScene
        self._observations.add(scene, events.NodeAddedEvent, self._onNodeAdded, calldata_object=True)
        self._observations.add(scene, events.NodeRemovedEvent, self._onNodeRemoved, calldata_object=True)
        for event in (events.EndCloseEvent, events.EndImportEvent, events.EndRestoreEvent, events.EndBatchProcessEvent):
            self._observations.add(scene, event, lambda *args: self._update())
        self._update()
        self._lastLayout = self._currentLayout()

    # the layout
    def _layoutNode(self):
        return self._layoutLogic.GetLayoutNode()

    def _currentLayout(self) -> int:
        node = self._layoutNode()
        return node.GetViewArrangement() if node is not None else 0

    @Slot(int)
    def setLayout(self, layout: int) -> None:
        if self._currentLayout() == layout:
            return
        node = self._layoutNode()
        if node is None:
            return
        if not node.IsLayoutDescription(layout):
            import slicer

            layout = slicer.vtkMRMLLayoutNode.SlicerLayoutConventionalView
        node.RemoveAllMaximizedViewNodes()
        node.SetViewArrangement(layout)

    layout = Property(int, _currentLayout, setLayout, notify=layoutChanged)

    def layoutLogic(self):
        return self._layoutLogic

    def _update(self, *args) -> None:
        """Widgets for the view nodes of the scene; the current layout's views mapped and shown."""
        scene = self._scene
        if scene.IsBatchProcessing():
            return
        node = self._layoutNode()
        if node is not self._observedLayoutNode:
            if self._observedLayoutNode is not None:
                self._observations.remove(self._observedLayoutNode)
            self._observedLayoutNode = node
            if node is not None:
                # after the layout logic's own observer, which updates its view nodes
                import vtk

                self._observations.add(node, vtk.vtkCommand.ModifiedEvent, self._onLayoutNodeModified, priority=-10.0)
        for index in range(scene.GetNumberOfNodes()):
            self._addWidget(scene.GetNthNode(index))
        mapped = set()
        views = self._layoutLogic.GetViewNodes()
        for index in range(views.GetNumberOfItems() if views is not None else 0):
            mapped.add(views.GetItemAsObject(index).GetID())
        for widgets in (self._sliceWidgets, self._threeDWidgets):
            for nodeId, widget in widgets.items():
                viewNode = scene.GetNodeByID(nodeId)
                if viewNode is None:
                    continue
                viewNode.SetMappedInLayout(1 if nodeId in mapped else 0)
                QtWidgets.QWidget.setVisible(widget, bool(viewNode.IsViewVisibleInLayout()))

    def _onLayoutNodeModified(self, caller, event) -> None:
        before = getattr(self, "_lastLayout", None)
        self._update()
        now = self._currentLayout()
        if now != before:
            self._lastLayout = now
            self.layoutChanged.emit(now)

    def _addWidget(self, node) -> None:
        if node is None or node.GetID() is None:
            return
        if node.IsA("vtkMRMLSliceNode") and node.GetID() not in self._sliceWidgets:
            if node.GetParentLayoutNode() is not None:
                return  # a view of another layout (not the main window's)
            widget = StandInSliceWidget(node, self._scene, self._applicationLogic, self._viewport)
            QtWidgets.QWidget.setVisible(widget, False)
            self._sliceWidgets[node.GetID()] = widget
            self._sliceLogics.AddItem(widget.sliceLogic())
        elif node.IsA("vtkMRMLViewNode") and node.GetID() not in self._threeDWidgets:
            widget = StandInThreeDWidget(node, self._viewport)
            QtWidgets.QWidget.setVisible(widget, False)
            self._threeDWidgets[node.GetID()] = widget

    def _onNodeAdded(self, scene, event, node) -> None:
        if scene.IsBatchProcessing():
            return
        if node is not None and (node.IsA("vtkMRMLAbstractViewNode") or node.IsA("vtkMRMLLayoutNode")):
            self._update()

    def _onNodeRemoved(self, scene, event, node) -> None:
        if node is None:
            return
        widget = self._sliceWidgets.pop(node.GetID(), None)
        if widget is not None:
            self._sliceLogics.RemoveItem(widget.sliceLogic())
            widget.close()
            widget.deleteLater()
        widget = self._threeDWidgets.pop(node.GetID(), None)
        if widget is not None:
            widget.deleteLater()

    # the views
    def _viewNodeByName(self, widgets: dict, name: str):
        for nodeId, widget in widgets.items():
            node = self._scene.GetNodeByID(nodeId)
            if node is not None and name in (node.GetName(), node.GetLayoutName()):
                return widget
        return None

    def sliceWidget(self, name: str) -> Optional[StandInSliceWidget]:
        return self._viewNodeByName(self._sliceWidgets, name)

    def sliceViewNames(self) -> List[str]:
        names = []
        for nodeId in self._sliceWidgets:
            node = self._scene.GetNodeByID(nodeId)
            if node is not None:
                names.append(node.GetName())
        return names

    def threeDWidget(self, index_or_name):
        if isinstance(index_or_name, str):
            return self._viewNodeByName(self._threeDWidgets, index_or_name)
        widgets = list(self._threeDWidgets.values())
        return widgets[index_or_name] if 0 <= index_or_name < len(widgets) else None

    threeDViewCount = Property(int, lambda self: len(self._threeDWidgets))

    def viewWidget(self, node):
        return self._sliceWidgets.get(node.GetID()) or self._threeDWidgets.get(node.GetID())

    def shutdown(self) -> None:
        """What Slicer's layout manager does as the application quits: its slice logics and the layout logic
        let go of the scene before anything is destroyed."""
        for widget in list(self._sliceWidgets.values()):
            widget.close()
        self._sliceWidgets.clear()
        self._threeDWidgets.clear()
        self._sliceLogics.RemoveAllItems()
        self._layoutLogic.SetMRMLScene(None)

    def mrmlSliceLogics(self):
        return self._sliceLogics

    def mrmlScene(self):
        return self._scene

    @Slot()
    def resetSliceViews(self) -> None:
        for widget in self._sliceWidgets.values():
            widget.sliceLogic().FitSliceToAll()

    @Slot()
    def resetThreeDViews(self) -> None:
        pass

    @Slot()
    def pauseRender(self) -> None:
        pass

    @Slot()
    def resumeRender(self) -> None:
        pass

    @Slot(bool)
    def setRenderPaused(self, pause: bool) -> None:
        pass
