"""Stand-ins for Slicer's own Qt widget classes (qMRML*, CTK), which exist only inside Slicer.

Each stand-in is named ``StandIn<Class>`` and reports the Slicer class it stands for through
``className()``. It declares the properties, signals and slots Slicer's header declares for what Slicer
panels use, with Slicer's documented behaviour; MRML ones work on the real MRML scene (slicer-core).
Signals whose C++ arguments are VTK/MRML pointers are declared with Python-object arguments; string
connections naming the C++ form (``"currentNodeChanged(vtkMRMLNode*)"``) find them (see
``slicerhost.pythonqt``). Only what Qt needs to draw them offscreen is drawn: the node selector is a combo
box, the directory button a push button, the collapsible button a checkable frame.
"""

from __future__ import annotations

import logging
from typing import Callable, Dict, List, Optional, Tuple

import shiboken6
from PySide6 import QtCore, QtGui, QtWidgets
from PySide6.QtCore import Property, Signal, Slot

from .diagnostics import DIAGNOSTICS
from .pythonqt import pythonqt_class, register_custom_widget

QWidget = pythonqt_class(QtWidgets.QWidget)
QAbstractButton = pythonqt_class(QtWidgets.QAbstractButton)
QComboBox = pythonqt_class(QtWidgets.QComboBox)
QCheckBox = pythonqt_class(QtWidgets.QCheckBox)
QDoubleSpinBox = pythonqt_class(QtWidgets.QDoubleSpinBox)
QPushButton = pythonqt_class(QtWidgets.QPushButton)
QLabel = pythonqt_class(QtWidgets.QLabel)
QHBoxLayout = pythonqt_class(QtWidgets.QHBoxLayout)
QVBoxLayout = pythonqt_class(QtWidgets.QVBoxLayout)
QGridLayout = pythonqt_class(QtWidgets.QGridLayout)


# --- VTK observations that end with the widget ------------------------------------------------------


class Observations:
    """VTK observers a stand-in holds; removed when the widget is destroyed. An exception in a callback is
    recorded as an ``observer-error`` problem (VTK would only print it)."""

    def __init__(self, widget) -> None:
        self._widget_name = type(widget).__name__
        self._alive = lambda: shiboken6.isValid(widget)
        self._tags: List[Tuple[object, int]] = []
        widget.destroyed.connect(lambda *args: self.remove_all())

    def add(self, obj, event, callback: Callable, calldata_object: bool = False, priority: float = 0.0) -> None:
        if obj is None:
            return

        def guarded(caller, event_name, calldata=None):
            if not self._alive():
                self.remove_all()
                return
            try:
                if calldata_object:
                    callback(caller, event_name, calldata)
                else:
                    callback(caller, event_name)
            except Exception as error:  # noqa: BLE001 - recorded, as VTK would print it
                DIAGNOSTICS.add_exception("observer-error", f"{self._widget_name} observer of {event}", error)

        if calldata_object:
            import vtk

            guarded.CallDataType = vtk.VTK_OBJECT
        self._tags.append((obj, obj.AddObserver(event, guarded, priority)))

    def remove(self, obj) -> None:
        for entry in [e for e in self._tags if e[0] is obj]:
            entry[0].RemoveObserver(entry[1])
            self._tags.remove(entry)

    def remove_all(self) -> None:
        for obj, tag in self._tags:
            obj.RemoveObserver(tag)
        self._tags.clear()


# --- qMRMLWidget and qSlicerWidget --------------------------------------------------------------------


class StandInMRMLWidget(QWidget):
    """Stand-in for ``qMRMLWidget``: a QWidget with ``setMRMLScene(vtkMRMLScene*)`` (a slot),
    ``mrmlScene()`` and ``mrmlSceneChanged(vtkMRMLScene*)``, emitted when the scene changes. A panel's .ui
    connects it to its MRML children's ``setMRMLScene``, which is how a scene set on the panel reaches them."""

    slicerClassName = "qMRMLWidget"
    mrmlSceneChanged = Signal(object)

    def __init__(self, parent=None) -> None:
        super().__init__(parent)
        self._mrmlScene = None

    @Slot(object)
    def setMRMLScene(self, scene) -> None:
        if scene is self._mrmlScene:
            return
        self._mrmlScene = scene
        self.mrmlSceneChanged.emit(scene)

    def mrmlScene(self):
        return self._mrmlScene


register_custom_widget("qMRMLWidget", StandInMRMLWidget)


class StandInSlicerWidget(StandInMRMLWidget):
    """Stand-in for ``qSlicerWidget`` (a QWidget with an MRML scene, as qMRMLWidget)."""

    slicerClassName = "qSlicerWidget"


register_custom_widget("qSlicerWidget", StandInSlicerWidget)


# --- qMRMLNodeComboBox --------------------------------------------------------------------------------


class StandInMRMLNodeComboBox(QWidget):
    """Stand-in for ``qMRMLNodeComboBox``: lists the nodes of its scene whose class is one of ``nodeTypes``
    (subclasses too unless ``showChildNodeTypes`` is off, minus ``hideChildNodeTypes``; nodes hidden from
    editors only with ``showHidden``; attribute filters from ``addAttribute``), in scene order, with a
    "None" item first when ``noneEnabled``. It follows the scene: nodes added or removed are listed or
    dropped; a removed current node gives way to "None" (or, without it, to its neighbour). Without
    "None", the first node added to an empty list becomes current (as Qt's combo box selects the first
    item inserted). Emits ``currentNodeChanged(vtkMRMLNode*)``, ``currentNodeChanged(bool)`` and
    ``currentNodeIDChanged(QString)`` when the current node changes."""

    slicerClassName = "qMRMLNodeComboBox"

    currentNodeChanged = Signal((object,), (bool,))
    currentNodeIDChanged = Signal(str)
    nodeActivated = Signal(object)
    nodeAdded = Signal(object)
    nodeAboutToBeRemoved = Signal(object)
    nodeAddedByUser = Signal(object)
    nodeAboutToBeEdited = Signal(object)
    currentNodeRenamed = Signal(str)

    def __init__(self, parent=None) -> None:
        super().__init__(parent)
        self._scene = None
        self._nodeTypes: List[str] = []
        self._showHidden = False
        self._showChildNodeTypes = True
        self._hideChildNodeTypes: List[str] = []
        self._noneEnabled = False
        self._addEnabled = True
        self._removeEnabled = True
        self._editEnabled = False
        self._renameEnabled = False
        self._selectNodeUponCreation = True
        self._noneDisplay = "None"
        self._baseName = ""
        self._interactionNodeSingletonTag = "Singleton"
        self._attributes: Dict[str, Tuple[str, Optional[str]]] = {}
        self._ids: List[str] = []  # listed node IDs, scene order
        self._currentID: Optional[str] = None
        self._requestedID: Optional[str] = None
        self._observations = Observations(self)
        layout = QHBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        self._combo = QComboBox(self)
        layout.addWidget(self._combo)
        self._combo.currentIndexChanged.connect(self._onComboIndexChanged)
        self._fillCombo()
        QtWidgets.QWidget.setEnabled(self, False)  # enabled once it has a scene, as Slicer's

    # properties (qMRMLNodeComboBox.h)
    def _setNodeTypes(self, types) -> None:
        self._nodeTypes = [str(t) for t in (types or []) if str(t)]
        self._refresh()

    nodeTypes = Property("QStringList", lambda self: list(self._nodeTypes), _setNodeTypes)

    def _flag(name):  # noqa: N805 - a property factory used in the class body
        def getter(self):
            return getattr(self, "_" + name)

        def setter(self, value):
            setattr(self, "_" + name, bool(value))
            self._refresh()

        return Property(bool, getter, setter)

    showHidden = _flag("showHidden")
    showChildNodeTypes = _flag("showChildNodeTypes")
    addEnabled = _flag("addEnabled")
    removeEnabled = _flag("removeEnabled")
    editEnabled = _flag("editEnabled")
    renameEnabled = _flag("renameEnabled")
    selectNodeUponCreation = _flag("selectNodeUponCreation")
    noneEnabled = _flag("noneEnabled")
    del _flag

    def _setHideChildNodeTypes(self, types) -> None:
        self._hideChildNodeTypes = [str(t) for t in (types or [])]
        self._refresh()

    hideChildNodeTypes = Property("QStringList", lambda self: list(self._hideChildNodeTypes), _setHideChildNodeTypes)

    def _setNoneDisplay(self, text) -> None:
        self._noneDisplay = str(text)
        self._fillCombo()

    noneDisplay = Property(str, lambda self: self._noneDisplay, _setNoneDisplay)
    baseName = Property(str, lambda self: self._baseName, lambda self, v: setattr(self, "_baseName", str(v)))
    interactionNodeSingletonTag = Property(str, lambda self: self._interactionNodeSingletonTag,
                                           lambda self, v: setattr(self, "_interactionNodeSingletonTag", str(v)))
    currentNodeID = Property(str, lambda self: self._currentID or "", lambda self, v: self.setCurrentNodeID(v),
                             notify=currentNodeIDChanged)

    # the scene
    @Slot(object)
    def setMRMLScene(self, scene) -> None:
        if scene is self._scene:
            return
        previous = self._currentID if self._ids else None
        self._observations.remove_all()
        self._scene = scene
        if scene is not None:
            import slicer

            events = slicer.vtkMRMLScene
            self._observations.add(scene, events.NodeAddedEvent, self._onNodeAdded, calldata_object=True)
            self._observations.add(scene, events.NodeAboutToBeRemovedEvent, self._onNodeAboutToBeRemoved,
                                   calldata_object=True)
            self._observations.add(scene, events.NodeRemovedEvent, lambda *a: self._refresh())
            for event in (events.EndBatchProcessEvent, events.EndCloseEvent, events.EndImportEvent,
                          events.EndRestoreEvent):
                self._observations.add(scene, event, lambda *a: self._refresh())
        wanted = previous or self._requestedID
        self._requestedID = None
        self._ids = self._listed()
        if wanted not in self._ids:
            wanted = None
        if wanted is None and not self._noneEnabled and self._ids:
            wanted = self._ids[0]
        self._select(wanted, force_emit=False)
        QtWidgets.QWidget.setEnabled(self, scene is not None)

    def mrmlScene(self):
        return self._scene

    def _onNodeAdded(self, scene, event, node) -> None:
        if scene.IsBatchProcessing():
            return
        wasEmpty = not self._ids
        self._refresh()
        if node is not None and node.GetID() in self._ids:
            self.nodeAdded.emit(node)
            if wasEmpty and self._currentID is None and not self._noneEnabled:
                self._select(node.GetID())

    def _onNodeAboutToBeRemoved(self, scene, event, node) -> None:
        if node is not None and node.GetID() in self._ids:
            self.nodeAboutToBeRemoved.emit(node)

    def _accepts(self, node) -> bool:
        if not self._showHidden and node.GetHideFromEditors():
            return False
        if not self._nodeTypes:
            return True
        for nodeType in self._nodeTypes:
            if not node.IsA(nodeType):
                continue
            if not self._showChildNodeTypes and node.GetClassName() != nodeType:
                continue
            if self._showChildNodeTypes and any(node.IsA(hidden) for hidden in self._hideChildNodeTypes):
                continue
            if nodeType in self._attributes:
                name, value = self._attributes[nodeType]
                found = node.GetAttribute(name)
                if found is None or (value is not None and found != value):
                    continue
            return True
        return False

    def _listed(self) -> List[str]:
        if self._scene is None:
            return []
        ids = []
        for index in range(self._scene.GetNumberOfNodes()):
            node = self._scene.GetNthNode(index)
            if node is not None and node.GetID() and self._accepts(node):
                ids.append(node.GetID())
        return ids

    def _refresh(self) -> None:
        """The list again from the scene; a current node no longer listed gives way."""
        if self._scene is not None and self._scene.IsBatchProcessing():
            return
        before = list(self._ids)
        self._ids = self._listed()
        current = self._currentID
        if current is not None and current not in self._ids:
            if self._noneEnabled or not self._ids:
                current = None
            else:  # Qt's combo box moves to the item now at the removed row, or the last one
                row = before.index(current) if current in before else 0
                current = self._ids[min(row, len(self._ids) - 1)]
        self._select(current)

    def _fillCombo(self) -> None:
        combo = self._combo
        blocked = combo.blockSignals(True)
        try:
            combo.clear()
            if self._noneEnabled:
                combo.addItem(self._noneDisplay, "")
            for nodeId in self._ids:
                node = self._scene.GetNodeByID(nodeId) if self._scene is not None else None
                combo.addItem(node.GetName() if node is not None else nodeId, nodeId)
            index = combo.findData(self._currentID) if self._currentID else (0 if self._noneEnabled else -1)
            combo.setCurrentIndex(index)
        finally:
            combo.blockSignals(blocked)

    def _select(self, nodeId: Optional[str], force_emit: bool = False) -> None:
        changed = nodeId != self._currentID
        self._currentID = nodeId
        self._fillCombo()
        if changed or force_emit:
            self._emitCurrent()

    def _emitCurrent(self) -> None:
        node = self.currentNode()
        self.currentNodeChanged[object].emit(node)
        self.currentNodeChanged[bool].emit(node is not None)
        self.currentNodeIDChanged.emit(node.GetID() if node is not None else "")

    def _onComboIndexChanged(self, index: int) -> None:
        """The user picked an item."""
        data = QtWidgets.QComboBox.itemData(self._combo, index) if index >= 0 else None
        nodeId = data or None
        if nodeId != self._currentID:
            self._currentID = nodeId
            self._emitCurrent()
            self.nodeActivated.emit(self.currentNode())

    # the current node
    def currentNode(self):
        if self._scene is None or self._currentID is None:
            return None
        return self._scene.GetNodeByID(self._currentID)

    def currentNodeId(self) -> str:  # deprecated spelling, still in Slicer
        return self._currentID or ""

    @Slot(object)
    def setCurrentNode(self, node) -> None:
        if isinstance(node, str):  # the deprecated overload taking an ID
            self.setCurrentNodeID(node)
            return
        self.setCurrentNodeID(node.GetID() if node is not None else "")

    @Slot(str)
    def setCurrentNodeID(self, nodeId: str) -> None:
        nodeId = nodeId or None
        if self._scene is None:
            self._requestedID = nodeId
            return
        if nodeId is not None and nodeId not in self._ids:
            nodeId = None
        self._select(nodeId)

    @Slot(int)
    def setCurrentNodeIndex(self, index: int) -> None:
        self._select(self._ids[index] if 0 <= index < len(self._ids) else None)

    def nodeCount(self) -> int:
        return len(self._ids) if self._scene is not None else 0

    def nodeFromIndex(self, index: int):
        if self._scene is None or not 0 <= index < len(self._ids):
            return None
        return self._scene.GetNodeByID(self._ids[index])

    def addAttribute(self, nodeType: str, attributeName: str, attributeValue=None) -> None:
        self._attributes[nodeType] = (attributeName, None if attributeValue is None else str(attributeValue))
        self._refresh()

    def removeAttribute(self, nodeType: str, attributeName: str) -> None:
        if self._attributes.get(nodeType, (None,))[0] == attributeName:
            del self._attributes[nodeType]
            self._refresh()

    @Slot()
    def removeCurrentNode(self) -> None:
        node = self.currentNode()
        if node is not None:
            self._scene.RemoveNode(node)

    def addNode(self, nodeType: Optional[str] = None):
        """What "Create new ..." does: a node of the (first) node type, named from baseName, made current."""
        if self._scene is None or not (nodeType or self._nodeTypes):
            return None
        nodeType = nodeType or self._nodeTypes[0]
        name = self._scene.GenerateUniqueName(self._baseName or self._scene.GetTagByClassName(nodeType) or nodeType)
        node = self._scene.AddNewNodeByClass(nodeType, name)
        if self._selectNodeUponCreation:
            self.setCurrentNode(node)
        self.nodeAddedByUser.emit(node)
        return node

    def comboBox(self):
        return self._combo


register_custom_widget("qMRMLNodeComboBox", StandInMRMLNodeComboBox)


# --- qMRMLSegmentSelectorWidget ---------------------------------------------------------------------


class StandInMRMLSegmentSelectorWidget(StandInMRMLWidget):
    """Stand-in for ``qMRMLSegmentSelectorWidget``: a segmentation node selector (an inner node combo box
    that follows ``mrmlSceneChanged``) and a combo box of the chosen segmentation's segments, refilled when
    segments are added, removed or modified. As Slicer's: choosing a segmentation selects its first segment
    unless ``noneEnabled`` (then "None" stays); the stored segment stays selected while it exists; the
    selector's own ``currentNodeChanged`` comes after the segment list was refilled."""

    slicerClassName = "qMRMLSegmentSelectorWidget"
    NONE_DISPLAY = "None"

    currentNodeChanged = Signal((object,), (bool,))
    currentSegmentChanged = Signal(str)
    segmentSelectionChanged = Signal("QStringList")
    nodeAboutToBeEdited = Signal(object)

    def __init__(self, parent=None) -> None:
        super().__init__(parent)
        self._segmentationNode = None
        self._currentSegmentID = ""
        self._selectedSegmentIDs: List[str] = []
        self._multiSelection = False
        self._horizontalLayout = False
        self._observations = Observations(self)
        layout = QGridLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        self._nodeComboBox = StandInMRMLNodeComboBox(self)
        self._nodeComboBox.nodeTypes = ["vtkMRMLSegmentationNode"]
        self._nodeComboBox.addEnabled = False
        self._nodeComboBox.renameEnabled = True
        self._segmentLabel = QLabel("Segment: ", self)
        self._segmentComboBox = QComboBox(self)
        self._messageLabel = QLabel(self)
        layout.addWidget(self._nodeComboBox, 0, 0, 1, 2)
        layout.addWidget(self._segmentLabel, 1, 0)
        layout.addWidget(self._segmentComboBox, 1, 1)
        layout.addWidget(self._messageLabel, 2, 0, 1, 2)
        self._nodeComboBox.currentNodeChanged[object].connect(self._onCurrentNodeChanged)
        self._nodeComboBox.currentNodeChanged[object].connect(lambda node: self.currentNodeChanged[object].emit(node))
        self._nodeComboBox.currentNodeChanged[bool].connect(lambda valid: self.currentNodeChanged[bool].emit(valid))
        self._nodeComboBox.nodeAboutToBeEdited.connect(lambda node: self.nodeAboutToBeEdited.emit(node))
        self.mrmlSceneChanged.connect(self._nodeComboBox.setMRMLScene)
        self._segmentComboBox.currentIndexChanged.connect(self._onCurrentSegmentChanged)
        self.populateSegmentCombobox()

    # properties (qMRMLSegmentSelectorWidget.h)
    def _setNoneEnabled(self, enable) -> None:
        self._nodeComboBox.noneEnabled = bool(enable)
        self.populateSegmentCombobox()

    noneEnabled = Property(bool, lambda self: self._nodeComboBox.noneEnabled, _setNoneEnabled)
    editEnabled = Property(bool, lambda self: self._nodeComboBox.editEnabled,
                           lambda self, v: setattr(self._nodeComboBox, "editEnabled", bool(v)))
    segmentationNodeSelectorVisible = Property(
        bool, lambda self: not self._nodeComboBox.isHidden(),
        lambda self, v: QtWidgets.QWidget.setVisible(self._nodeComboBox, bool(v)))
    selectNodeUponCreation = Property(bool, lambda self: self._nodeComboBox.selectNodeUponCreation,
                                      lambda self, v: setattr(self._nodeComboBox, "selectNodeUponCreation", bool(v)))

    def _setMultiSelection(self, multi) -> None:
        self._multiSelection = bool(multi)
        if self._multiSelection:
            self._currentSegmentID = ""
        else:
            self._selectedSegmentIDs = []
        self.populateSegmentCombobox()

    multiSelection = Property(bool, lambda self: self._multiSelection, _setMultiSelection)
    horizontalLayout = Property(bool, lambda self: self._horizontalLayout,
                                lambda self, v: setattr(self, "_horizontalLayout", bool(v)))

    # the segmentation node
    def currentNode(self):
        return self._nodeComboBox.currentNode()

    def currentNodeID(self) -> str:
        return self._nodeComboBox.currentNodeID

    @Slot(object)
    def setCurrentNode(self, node) -> None:
        self._nodeComboBox.setCurrentNode(node)

    @Slot(str)
    def setCurrentNodeID(self, nodeId: str) -> None:
        self._nodeComboBox.setCurrentNodeID(nodeId)

    def _onCurrentNodeChanged(self, node) -> None:
        segmentation = node if node is not None and node.IsA("vtkMRMLSegmentationNode") else None
        if segmentation is self._segmentationNode:
            return
        import slicer

        if self._segmentationNode is not None:
            self._observations.remove(self._segmentationNode)
        self._segmentationNode = segmentation
        if segmentation is not None:
            for event in (slicer.vtkSegmentation.SegmentAdded, slicer.vtkSegmentation.SegmentRemoved,
                          slicer.vtkSegmentation.SegmentModified):
                self._observations.add(segmentation, event, lambda *args: self.populateSegmentCombobox())
        self.populateSegmentCombobox()

    # the segments
    def _segmentIdsOfNode(self) -> List[str]:
        node = self._segmentationNode
        if node is None or node.GetSegmentation() is None:
            return []
        segmentation = node.GetSegmentation()
        return [segmentation.GetNthSegmentID(i) for i in range(segmentation.GetNumberOfSegments())]

    @Slot()
    def populateSegmentCombobox(self) -> None:
        combo = self._segmentComboBox
        blocked = combo.blockSignals(True)
        combo.clear()
        combo.blockSignals(blocked)
        ids = self._segmentIdsOfNode()
        if not ids:
            self._messageLabel.text = ("No segments in segmentation" if self._segmentationNode is not None
                                       else "No node is selected")
            QtWidgets.QWidget.setVisible(self._segmentLabel, False)
            QtWidgets.QWidget.setVisible(combo, False)
            return
        self._messageLabel.text = ""
        QtWidgets.QWidget.setVisible(self._segmentLabel, True)
        QtWidgets.QWidget.setVisible(combo, True)
        segmentation = self._segmentationNode.GetSegmentation()
        blocked = combo.blockSignals(True)
        if self.noneEnabled and not self._multiSelection:
            combo.addItem(self.NONE_DISPLAY, self.NONE_DISPLAY)
        for segmentId in ids:
            combo.addItem(segmentation.GetSegment(segmentId).GetName(), segmentId)
        combo.blockSignals(blocked)
        if self._multiSelection:
            self.setSelectedSegmentIDs(self._selectedSegmentIDs)
            return
        if (self.noneEnabled and not self._currentSegmentID) or self._currentSegmentID in ids:
            blocked = combo.blockSignals(True)
            self.setCurrentSegmentID(self._currentSegmentID)
            combo.blockSignals(blocked)
        else:  # the stored segment is gone, or there was none: the first segment, with the signal
            blocked = combo.blockSignals(True)
            combo.setCurrentIndex(-1)
            combo.blockSignals(blocked)
            combo.setCurrentIndex(1 if self.noneEnabled else 0)

    def _onCurrentSegmentChanged(self, index: int) -> None:
        self._messageLabel.text = ""
        if self._segmentationNode is None:
            return
        data = QtWidgets.QComboBox.itemData(self._segmentComboBox, index) if index >= 0 else None
        self._currentSegmentID = "" if data in (None, self.NONE_DISPLAY) else str(data)
        self.currentSegmentChanged.emit(self._currentSegmentID)

    def currentSegmentID(self) -> str:
        if self._multiSelection:
            logging.error("qMRMLSegmentSelectorWidget::currentSegmentID: multi-selection is on, use selectedSegmentIDs")
            return ""
        return self._currentSegmentID

    @Slot(str)
    def setCurrentSegmentID(self, segmentId: str) -> None:
        if self._multiSelection:
            logging.error("qMRMLSegmentSelectorWidget::setCurrentSegmentID: multi-selection is on")
            return
        combo = self._segmentComboBox
        if not segmentId and self.noneEnabled:
            combo.setCurrentIndex(0)
            return
        index = combo.findData(segmentId)
        if index != -1 and combo.currentIndex != index:
            combo.setCurrentIndex(index)

    def segmentIDs(self) -> List[str]:
        return self._segmentIdsOfNode()

    def selectedSegmentIDs(self) -> List[str]:
        if not self._multiSelection:
            logging.error("qMRMLSegmentSelectorWidget::selectedSegmentIDs: multi-selection is off")
            return []
        return list(self._selectedSegmentIDs)

    @Slot("QStringList")
    def setSelectedSegmentIDs(self, segmentIds) -> None:
        if not self._multiSelection or self._segmentationNode is None:
            return
        valid = [s for s in segmentIds if s in self._segmentIdsOfNode()]
        changed = valid != self._selectedSegmentIDs
        self._selectedSegmentIDs = valid
        if changed and not self.signalsBlocked():
            self.segmentSelectionChanged.emit(list(valid))


register_custom_widget("qMRMLSegmentSelectorWidget", StandInMRMLSegmentSelectorWidget)


# --- CTK ---------------------------------------------------------------------------------------------


class StandInCtkCollapsibleButton(QAbstractButton):
    """Stand-in for ``ctkCollapsibleButton``: a checkable button whose contents (its layout's widgets) hide
    when ``collapsed``; ``contentsCollapsed(bool)`` tells. Checked means expanded, as in CTK."""

    slicerClassName = "ctkCollapsibleButton"
    contentsCollapsed = Signal(bool)
    TITLE_HEIGHT = 20

    def __init__(self, *args) -> None:
        text = args[0] if args and isinstance(args[0], str) else None
        parent = args[1] if text is not None and len(args) > 1 else (args[0] if args and text is None else None)
        super().__init__(parent)
        self._collapsedHeight = 14
        self.setCheckable(True)
        self.setChecked(True)
        self.setContentsMargins(0, self.TITLE_HEIGHT, 0, 0)
        if text is not None:
            self.setText(text)
        self.toggled.connect(self._onToggled)

    def _onToggled(self, checked: bool) -> None:
        for child in QtCore.QObject.children(self):
            if isinstance(child, QtWidgets.QWidget):
                QtWidgets.QWidget.setVisible(child, checked)
        self.contentsCollapsed.emit(not checked)

    collapsed = Property(bool, lambda self: not self.isChecked(), lambda self, v: self.setChecked(not v))
    collapsedHeight = Property(int, lambda self: self._collapsedHeight,
                               lambda self, v: setattr(self, "_collapsedHeight", int(v)))

    def paintEvent(self, event) -> None:  # noqa: N802 - Qt's name
        painter = QtGui.QPainter(self)
        title = QtCore.QRect(0, 0, QtWidgets.QWidget.width(self), self.TITLE_HEIGHT)
        painter.drawRect(title.adjusted(0, 0, -1, -1))
        painter.drawText(title.adjusted(6, 0, 0, 0), int(QtCore.Qt.AlignVCenter),
                         ("▸ " if not self.isChecked() else "▾ ") + QtWidgets.QAbstractButton.text(self))
        painter.end()

    def sizeHint(self):  # noqa: N802 - Qt's name
        layout = QtWidgets.QWidget.layout(self)
        inner = layout.sizeHint() if layout is not None and self.isChecked() else QtCore.QSize(100, 0)
        return QtCore.QSize(inner.width(), inner.height() + self.TITLE_HEIGHT)

    def hitButton(self, pos) -> bool:  # noqa: N802 - Qt's name: only the title toggles
        return pos.y() < self.TITLE_HEIGHT


register_custom_widget("ctkCollapsibleButton", StandInCtkCollapsibleButton)


class StandInCtkSliderWidget(QWidget):
    """Stand-in for ``ctkSliderWidget``: a double value with minimum, maximum, singleStep, pageStep,
    decimals, prefix and suffix (a double spin box shows it; the slider is not drawn); emits
    ``valueChanged(double)`` and ``valueIsChanging(double)`` when the value changes."""

    slicerClassName = "ctkSliderWidget"
    valueChanged = Signal(float)
    valueIsChanging = Signal(float)
    rangeChanged = Signal(float, float)

    def __init__(self, parent=None) -> None:
        super().__init__(parent)
        self._tracking = True
        layout = QHBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        self._spinBox = QDoubleSpinBox(self)
        self._spinBox.setRange(0.0, 99.99)
        self._spinBox.setDecimals(2)
        layout.addWidget(self._spinBox)
        self._spinBox.valueChanged.connect(self._onSpinBoxValueChanged)

    def _onSpinBoxValueChanged(self, value: float) -> None:
        self.valueIsChanging.emit(value)
        self.valueChanged.emit(value)

    def _spinProperty(name, kind=float):  # noqa: N805 - a property factory used in the class body
        getter_name, setter_name = name, "set" + name[0].upper() + name[1:]

        def getter(self):
            return getattr(QtWidgets.QDoubleSpinBox, getter_name)(self._spinBox)

        def setter(self, value):
            getattr(QtWidgets.QDoubleSpinBox, setter_name)(self._spinBox, kind(value))
            if name in ("minimum", "maximum"):
                self.rangeChanged.emit(self.minimum, self.maximum)

        return Property(kind, getter, setter)

    value = _spinProperty("value")
    minimum = _spinProperty("minimum")
    maximum = _spinProperty("maximum")
    singleStep = _spinProperty("singleStep")
    decimals = _spinProperty("decimals", int)
    prefix = _spinProperty("prefix", str)
    suffix = _spinProperty("suffix", str)
    del _spinProperty
    pageStep = Property(float, lambda self: getattr(self, "_pageStep", 10.0),
                        lambda self, v: setattr(self, "_pageStep", float(v)))
    tracking = Property(bool, lambda self: self._tracking, lambda self, v: setattr(self, "_tracking", bool(v)))

    @Slot(float)
    def setValue(self, value: float) -> None:
        self.value = value

    @Slot(float, float)
    def setRange(self, minimum: float, maximum: float) -> None:
        QtWidgets.QDoubleSpinBox.setRange(self._spinBox, float(minimum), float(maximum))
        self.rangeChanged.emit(self.minimum, self.maximum)

    def setMinimum(self, value: float) -> None:
        self.minimum = value

    def setMaximum(self, value: float) -> None:
        self.maximum = value

    def setSingleStep(self, value: float) -> None:
        self.singleStep = value

    def setDecimals(self, value: int) -> None:
        self.decimals = value

    @Slot()
    def reset(self) -> None:
        self.value = max(self.minimum, min(self.maximum, 0.0))

    def spinBox(self):
        return self._spinBox


register_custom_widget("ctkSliderWidget", StandInCtkSliderWidget)


class StandInCtkDirectoryButton(QWidget):
    """Stand-in for ``ctkDirectoryButton``: ``directory`` (a QString property) and ``setDirectory``, which
    emits ``directorySelected(QString)`` and, when the folder differs, ``directoryChanged(QString)`` (as
    CTK: the absolute path is stored). ``browse()`` would open a folder dialog: on the host it takes the
    next answer scripted for dialogs (``slicerhost.application.Dialogs``)."""

    slicerClassName = "ctkDirectoryButton"
    directoryChanged = Signal(str)
    directorySelected = Signal(str)
    captionChanged = Signal(str)
    textChanged = Signal(str)

    #: set by the host: called with the button, returns a folder (or "" for Cancel)
    browse_hook: Optional[Callable] = None

    def __init__(self, *args) -> None:
        directory = args[0] if args and isinstance(args[0], str) else None
        parent = args[-1] if args and not isinstance(args[-1], str) else None
        super().__init__(parent)
        self._directory = QtCore.QDir(directory) if directory is not None else QtCore.QDir()
        self._caption = ""
        self._text = ""
        layout = QHBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        self._button = QPushButton(self)
        layout.addWidget(self._button)
        self._button.clicked.connect(lambda *args: self.browse())
        self._updateText()

    def _updateText(self) -> None:
        self._button.text = self._text or self._directory.path()

    def _directoryValue(self) -> str:
        return self._directory.path()

    @Slot(str)
    def setDirectory(self, directory: str) -> None:
        new = QtCore.QDir(str(directory))
        if self._directory == new:
            self.directorySelected.emit(new.path())
            return
        self._directory = QtCore.QDir(new.absolutePath())
        self._updateText()
        self.directorySelected.emit(new.path())
        self.directoryChanged.emit(self._directory.path())

    directory = Property(str, _directoryValue, setDirectory, notify=directoryChanged)

    def _setCaption(self, caption: str) -> None:
        self._caption = str(caption)
        self.captionChanged.emit(self._caption)

    caption = Property(str, lambda self: self._caption, _setCaption)

    def _setText(self, text: str) -> None:
        self._text = str(text)
        self.textChanged.emit(self._text)
        self._updateText()

    text = Property(str, lambda self: self._text, _setText)

    @Slot()
    def browse(self) -> str:
        hook = StandInCtkDirectoryButton.browse_hook
        chosen = hook(self) if hook is not None else ""
        if not chosen:
            return ""
        self.setDirectory(chosen)
        return chosen


register_custom_widget("ctkDirectoryButton", StandInCtkDirectoryButton)


class StandInCtkCheckBox(QCheckBox):
    """Stand-in for ``ctkCheckBox`` (a QCheckBox with an indicator icon)."""

    slicerClassName = "ctkCheckBox"


register_custom_widget("ctkCheckBox", StandInCtkCheckBox)


class StandInCtkComboBox(QComboBox):
    """Stand-in for ``ctkComboBox`` (a QComboBox with a default text)."""

    slicerClassName = "ctkComboBox"
    defaultText = Property(str, lambda self: getattr(self, "_defaultText", ""),
                           lambda self, v: setattr(self, "_defaultText", str(v)))


register_custom_widget("ctkComboBox", StandInCtkComboBox)
