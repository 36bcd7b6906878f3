"""``slicer.parameterNodeWrapper`` on the test host, written from Slicer's documented behaviour
(Base/Python/slicer/parameterNodeWrapper).

``@parameterNodeWrapper`` turns a class of annotated fields into a typed view of a real
``vtkMRMLScriptedModuleNode``:

* fields of type ``str``, ``int``, ``float``, ``bool``, ``pathlib`` paths, and MRML node classes (or a
  ``Union``/``Optional`` of them), optionally ``Annotated`` with validators (``WithinRange``, ``Minimum``,
  ``Maximum``, ``Choice``, ``Exclude``, ``NotNone``, ``IsInstance``), ``Default(value)``, ``Decimals``,
  ``SingleStep``; a value set in the class body is the default;
* values are stored as Slicer stores them (numbers as ``str(value)``, booleans as "True"/"False", nodes as
  a node reference named after the field plus an empty parameter of the same name), so a scene saved by
  either reads in the other; a parameter missing from the node gets its default when the wrapper is made;
* a write is validated first (an int field takes ints, a float field ints or floats, a node field only
  instances of its classes or None), then made under ``StartModify``/``EndModify`` (one ModifiedEvent);
* ``connectGui(gui)`` binds every widget carrying the dynamic property ``SlicerParameterName`` (children
  of a widget, or the values of a ``childWidgetVariables`` object) both ways, with Slicer's connectors and
  their exact-type rules: QCheckBox/ctkCheckBox and checkable QPushButton for bool; QSpinBox/QSlider for
  int (range set from the validators, else the int32 range); QDoubleSpinBox/ctkSliderWidget for float or
  int (range from the validators; a ctkSliderWidget needs one); QComboBox/ctkComboBox for a field with
  ``Choice``; QLineEdit, QLabel, QTextEdit for str; ctkDirectoryButton for paths; qMRMLNodeComboBox for
  nodes (its ``nodeTypes`` set from the field's classes). A widget Slicer has no connector for (a
  QRadioButton, for one) raises RuntimeError, as in Slicer. The GUI follows every ModifiedEvent of the
  node; ``disconnectGui(tag)`` ends a binding.
* the wrapper forwards ``AddObserver``/``RemoveObserver``/``StartModify``/``EndModify``/``Modified`` to
  the node, so ``VTKObservationMixin.addObserver(wrapper, vtk.vtkCommand.ModifiedEvent, ...)`` works.

Not emulated (not used by the panels the host runs): parameter packs, lists, dicts, enums, QColor.
"""

from __future__ import annotations

import dataclasses
import logging
import pathlib
import typing
from typing import Annotated, Any, Dict, List, Optional, Tuple  # noqa: F401 - re-exported convenience

import ctk
import qt
import vtk
from PySide6 import QtCore, QtWidgets

import slicer

from .diagnostics import DIAGNOSTICS

__all__ = [
    "parameterNodeWrapper", "isParameterNodeWrapper", "findChildWidgetForParameter",
    "SlicerParameterNamePropertyName", "Validator", "NotNone", "IsInstance", "WithinRange", "Minimum", "Maximum",
    "Choice", "Exclude", "Default", "Decimals", "SingleStep", "GuiConnector", "createGuiConnector",
]

SlicerParameterNamePropertyName = "SlicerParameterName"


# --- annotations -------------------------------------------------------------------------------------


class Validator:
    def validate(self, value) -> None:
        raise NotImplementedError


class NotNone(Validator):
    def validate(self, value) -> None:
        if value is None:
            raise ValueError("Value must not be None")


class IsInstance(Validator):
    def __init__(self, classtype) -> None:
        self.classtype = classtype

    def validate(self, value) -> None:
        if value is not None and not isinstance(value, self.classtype):
            raise TypeError(f"Value must be of type '{self.classtype}', is type '{type(value)}' value '{value}'")


class WithinRange(Validator):
    def __init__(self, minimum, maximum) -> None:
        self.minimum, self.maximum = minimum, maximum

    def validate(self, value) -> None:
        if not self.minimum <= value <= self.maximum:
            raise ValueError(f"Value must be within range [{self.minimum}, {self.maximum}], is {value}")

    def __repr__(self) -> str:
        return f"WithinRange({self.minimum}, {self.maximum})"


class Minimum(Validator):
    def __init__(self, minimum) -> None:
        self.minimum = minimum

    def validate(self, value) -> None:
        if value < self.minimum:
            raise ValueError(f"Value must be at least {self.minimum}, is {value}")


class Maximum(Validator):
    def __init__(self, maximum) -> None:
        self.maximum = maximum

    def validate(self, value) -> None:
        if value > self.maximum:
            raise ValueError(f"Value must be at most {self.maximum}, is {value}")


class Choice(Validator):
    def __init__(self, choices) -> None:
        self.choices = list(choices)

    def validate(self, value) -> None:
        if value not in self.choices:
            raise ValueError(f"Value is {value}, but must be one of {self.choices}")


class Exclude(Validator):
    def __init__(self, excluded) -> None:
        self.excluded = list(excluded)

    def validate(self, value) -> None:
        if value in self.excluded:
            raise ValueError(f"Value {value} is excluded ({self.excluded})")


class Default:
    def __init__(self, value) -> None:
        self.value = value


@dataclasses.dataclass
class Decimals:
    value: int


@dataclasses.dataclass
class SingleStep:
    value: float


def splitAnnotations(annotated) -> Tuple[Any, list]:
    if typing.get_origin(annotated) is typing.Annotated:
        base, *extras = typing.get_args(annotated)
        return base, list(extras)
    return annotated, []


def unannotatedType(annotated):
    return splitAnnotations(annotated)[0]


def _first(annotations, kind):
    return next((a for a in annotations if isinstance(a, kind)), None)


def _nodeClasses(type_) -> Optional[Tuple[type, ...]]:
    """The MRML node classes of a node type or a Union/Optional of them; None for other types."""
    if isinstance(type_, type) and issubclass(type_, slicer.vtkMRMLNode):
        return (type_,)
    if typing.get_origin(type_) is typing.Union or type(type_).__name__ == "UnionType":
        members = [a for a in typing.get_args(type_) if a is not type(None)]
        if members and all(isinstance(a, type) and issubclass(a, slicer.vtkMRMLNode) for a in members):
            return tuple(members)
    return None


def getNodeTypes(datatype) -> List[str]:
    classes = _nodeClasses(unannotatedType(datatype)) or ()
    return [c.__name__ for c in classes]


# --- storage on the node -----------------------------------------------------------------------------

_PATH_TYPES = (pathlib.Path, pathlib.PosixPath, pathlib.WindowsPath, pathlib.PurePath, pathlib.PurePosixPath,
               pathlib.PureWindowsPath)


class _Serializer:
    """How one field type is stored on the parameter node, with its default validators."""

    def __init__(self, type_) -> None:
        self.type = type_
        self.nodeClasses = _nodeClasses(type_)
        if self.nodeClasses:
            self.kind, self.validators = "node", [IsInstance(self.nodeClasses)]
        elif type_ in (int, float):
            self.kind = "number"
            self.validators = [NotNone(), IsInstance((int, float) if type_ is float else int)]
        elif type_ is bool:
            self.kind, self.validators = "bool", [NotNone(), IsInstance(bool)]
        elif type_ is str:
            self.kind, self.validators = "str", [NotNone(), IsInstance(str)]
        elif type_ in _PATH_TYPES:
            self.kind, self.validators = "path", [NotNone(), IsInstance(type_)]
        else:
            raise TypeError(f"the test host's parameterNodeWrapper does not support fields of type {type_!r}")

    def default(self):
        return {"node": None, "number": 0, "bool": False, "str": "", "path": self.type() if self.kind == "path" else None}[self.kind]

    def isIn(self, node, name: str) -> bool:
        return bool(node.HasParameter(name))

    def write(self, node, name: str, value) -> None:
        if self.kind == "node":
            node.SetParameter(name, "")
            node.SetNodeReferenceID(name, value.GetID() if value is not None else None)
        elif self.kind == "bool":
            node.SetParameter(name, "True" if value else "False")
        else:
            node.SetParameter(name, str(value))

    def read(self, node, name: str):
        if self.kind == "node":
            return node.GetNodeReference(name)
        text = node.GetParameter(name)
        if self.kind == "bool":
            return text == "True"
        if self.kind == "str":
            return text
        return self.type(text)

    def remove(self, node, name: str) -> None:
        node.UnsetParameter(name)
        if self.kind == "node":
            node.RemoveNodeReferenceIDs(name)


@dataclasses.dataclass
class ParameterInfo:
    basename: str
    serializer: _Serializer
    validators: list
    default: Default
    unalteredType: Any

    def validate(self, value) -> None:
        for validator in self.serializer.validators + self.validators:
            validator.validate(value)

    def read(self, node):
        if not self.serializer.isIn(node, self.basename):
            self.write(node, self.default.value)
        return self.serializer.read(node, self.basename)

    def write(self, node, value) -> None:
        self.validate(value)
        self.serializer.write(node, self.basename, value)


# --- GUI connectors ----------------------------------------------------------------------------------


class GuiConnector:
    """Adapts one widget to one field: read, write, and a callback when the user changes it."""

    signalName = ""

    def __init__(self, widget) -> None:
        self._widget = widget
        self._callback = None
        self._connected = False

    def widget(self):
        return self._widget

    def onChanged(self, callback) -> None:
        self._callback = callback
        if callback is None and self._connected:
            try:
                getattr(self._widget, self.signalName).disconnect(self.changed)
            except (RuntimeError, TypeError):
                pass
            self._connected = False
        elif callback is not None and not self._connected and self.signalName:
            getattr(self._widget, self.signalName).connect(self.changed)
            self._connected = True

    def changed(self, *args) -> None:
        if self._callback is None:
            return
        try:
            self._callback()
        except Exception as error:  # noqa: BLE001 - PythonQt prints it; the host records it
            DIAGNOSTICS.add_exception("slot-error", f"parameter node GUI binding of {type(self._widget).__name__} "
                                                    f"'{QtCore.QObject.objectName(self._widget)}'", error)

    def read(self):
        raise NotImplementedError

    def write(self, value) -> None:
        raise NotImplementedError


class _CheckBoxConnector(GuiConnector):
    signalName = "stateChanged"

    def read(self):
        return self._widget.checked

    def write(self, value) -> None:
        self._widget.checked = value


class _PushButtonConnector(_CheckBoxConnector):
    signalName = "toggled"

    def __init__(self, widget) -> None:
        super().__init__(widget)
        if not widget.checkable:
            logging.warning(f"Making push button checkable for conversion to bool: button {widget}")
            widget.checkable = True


def _bounds(annotations):
    withinRange = _first(annotations, WithinRange)
    if withinRange is not None:
        return withinRange.minimum, withinRange.maximum
    minimum, maximum = _first(annotations, Minimum), _first(annotations, Maximum)
    return (minimum.minimum if minimum else None), (maximum.maximum if maximum else None)


class _IntSpinConnector(GuiConnector):
    signalName = "valueChanged"

    def __init__(self, widget, annotations) -> None:
        super().__init__(widget)
        singleStep = _first(annotations, SingleStep)
        if singleStep is not None:
            widget.singleStep = singleStep.value
        low, high = _bounds(annotations)
        if type(widget) is qt.QSlider and (low is None or high is None):
            raise RuntimeError("Cannot have a connection to QSlider where the int type is unbounded.")
        widget.setRange(int(low) if low is not None else -(2 ** 31), int(high) if high is not None else 2 ** 31 - 1)

    def read(self):
        return self._widget.value

    def write(self, value) -> None:
        self._widget.value = value


class _DoubleConnector(GuiConnector):
    signalName = "valueChanged"

    def __init__(self, widget, datatype) -> None:
        super().__init__(widget)
        actual, annotations = splitAnnotations(datatype)
        self._isInteger = actual is int
        if self._isInteger:
            widget.decimals = 0
        elif _first(annotations, Decimals) is not None:
            widget.decimals = _first(annotations, Decimals).value
        if _first(annotations, SingleStep) is not None:
            widget.singleStep = _first(annotations, SingleStep).value
        low, high = _bounds(annotations)
        if type(widget) is ctk.ctkSliderWidget and (low is None or high is None):
            raise RuntimeError("Cannot have a connection to ctkSliderWidget where the float types is unbounded.")
        widget.minimum = low if low is not None else float("-inf")
        widget.maximum = high if high is not None else float("inf")

    def read(self):
        return int(self._widget.value) if self._isInteger else self._widget.value

    def write(self, value) -> None:
        self._widget.value = int(value) if self._isInteger else value


class _ComboBoxChoiceConnector(GuiConnector):
    signalName = "currentIndexChanged"

    def __init__(self, widget, choices) -> None:
        super().__init__(widget)
        self._choices = list(choices)
        widget.clear()
        for choice in self._choices:
            widget.addItem(str(choice))

    def read(self):
        return self._choices[self._widget.currentIndex]

    def write(self, value) -> None:
        if value not in self._choices:
            raise ValueError(f"Unable to find value {value} in choices {self._choices}")
        self._widget.currentIndex = self._choices.index(value)


class _LineEditConnector(GuiConnector):
    signalName = "textChanged"

    def read(self):
        return self._widget.text

    def write(self, value) -> None:
        if value != self._widget.text:  # writing moves the cursor: only when the text changes
            self._widget.text = value


class _LabelConnector(GuiConnector):
    def read(self):
        return self._widget.text

    def write(self, value) -> None:
        self._widget.text = value


class _TextEditConnector(GuiConnector):
    signalName = "textChanged"

    def read(self):
        return self._widget.toPlainText()

    def write(self, value) -> None:
        self._widget.setPlainText(value)


class _DirectoryButtonConnector(GuiConnector):
    signalName = "directoryChanged"

    def __init__(self, widget, pathType) -> None:
        super().__init__(widget)
        self._type = pathType

    def read(self):
        return self._type(self._widget.directory)

    def write(self, value) -> None:
        self._widget.directory = str(value)


class _NodeComboBoxConnector(GuiConnector):
    signalName = "currentNodeChanged"

    def __init__(self, widget, datatype) -> None:
        super().__init__(widget)
        widget.nodeTypes = getNodeTypes(datatype)

    def read(self):
        return self._widget.currentNode()

    def write(self, value) -> None:
        self._widget.setCurrentNode(value)


def createGuiConnector(widget, datatype) -> GuiConnector:
    """Slicer's connector for this widget and field type (exact widget classes, as Slicer tests them)."""
    actual, annotations = splitAnnotations(datatype)
    kind = type(widget)
    if actual is bool and kind in (qt.QCheckBox, ctk.ctkCheckBox):
        return _CheckBoxConnector(widget)
    if actual is bool and kind is qt.QPushButton:
        return _PushButtonConnector(widget)
    if actual is int and kind in (qt.QSlider, qt.QSpinBox):
        return _IntSpinConnector(widget, annotations)
    if actual in (float, int) and kind in (qt.QDoubleSpinBox, ctk.ctkSliderWidget):
        return _DoubleConnector(widget, datatype)
    if kind in (qt.QComboBox, ctk.ctkComboBox) and actual in (int, float, str, bool):
        choice = _first(annotations, Choice)
        if choice is None:
            raise RuntimeError("ComboBoxToStringableConnector requires the Choice annotation to be used.")
        return _ComboBoxChoiceConnector(widget, choice.choices)
    if actual is str and kind is qt.QLineEdit:
        return _LineEditConnector(widget)
    if actual is str and kind is qt.QLabel:
        return _LabelConnector(widget)
    if actual is str and kind is qt.QTextEdit:
        return _TextEditConnector(widget)
    if actual in _PATH_TYPES and kind is ctk.ctkDirectoryButton:
        return _DirectoryButtonConnector(widget, actual)
    if _nodeClasses(actual) and kind is slicer.qMRMLNodeComboBox:
        return _NodeComboBoxConnector(widget, datatype)
    raise RuntimeError(f"Unable to create GUI connector from datatype '{datatype}' to widget type '{kind}'.")


# --- the wrapper -------------------------------------------------------------------------------------


def _isWidget(obj) -> bool:
    return bool(getattr(obj, "isWidgetType", lambda: False)())


def findChildWidgetForParameter(widget, parameter: str):
    for child in QtCore.QObject.findChildren(widget, QtWidgets.QWidget):
        if child.property(SlicerParameterNamePropertyName) == parameter:
            return child
    return None


def isParameterNodeWrapper(classOrObj) -> bool:
    return bool(getattr(classOrObj, "_is_parameter_node_wrapper", False))


def _makeProperty(name: str):
    def getter(self):
        return self.allParameters[name].read(self.parameterNode)

    def setter(self, value):
        with slicer.util.NodeModify(self.parameterNode):
            self.allParameters[name].write(self.parameterNode, value)

    return property(getter, setter)


def _checkName(self, name: str) -> None:
    if name not in self.allParameters:
        raise ValueError(f"Cannot find a param with the given name: {name}; parameters: {list(self.allParameters)}")


def _init(self, parameterNode, prefix: Optional[str] = None) -> None:
    if prefix:
        raise NotImplementedError("the test host's parameterNodeWrapper has no parameter name prefixes")
    self.parameterNode = parameterNode
    self._parameterGUIs: Dict[int, Dict[str, GuiConnector]] = {}
    self._nextParameterGUIsTag = 0
    self._guiVtkObserverTags: Dict[int, int] = {}
    self._updatingGUIFromParameterNode = False
    for info in self.allParameters.values():
        if not info.serializer.isIn(parameterNode, info.basename):
            info.write(parameterNode, info.default.value)


def _getValue(self, name: str):
    _checkName(self, name)
    return getattr(self, name)


def _setValue(self, name: str, value) -> None:
    _checkName(self, name)
    setattr(self, name, value)


def _default(self, name: str) -> Default:
    _checkName(self, name)
    return self.allParameters[name].default


def _updateGUIFromParameterNode(self) -> None:
    if self._updatingGUIFromParameterNode:
        return
    self._updatingGUIFromParameterNode = True
    try:
        with slicer.util.NodeModify(self):
            for mapping in list(self._parameterGUIs.values()):
                for name, connector in mapping.items():
                    connector.write(self.getValue(name))
    finally:
        self._updatingGUIFromParameterNode = False


def _guiToParameterCallback(self, name: str, connector: GuiConnector):
    def callback():
        with slicer.util.NodeModify(self):
            if not self._updatingGUIFromParameterNode:
                self.setValue(name, connector.read())

    return callback


def _connectParametersToGui(self, mapping) -> int:
    for name in mapping:
        _checkName(self, name)
    connectors = {name: value if isinstance(value, GuiConnector) else createGuiConnector(value, self.dataType(name))
                  for name, value in mapping.items()}
    tag = self._nextParameterGUIsTag
    self._nextParameterGUIsTag += 1
    self._parameterGUIs[tag] = connectors
    for name, connector in connectors.items():
        connector.write(self.getValue(name))
        connector.onChanged(_guiToParameterCallback(self, name, connector))

    def onModified(caller, event):
        try:
            _updateGUIFromParameterNode(self)
        except Exception as error:  # noqa: BLE001 - VTK would print it
            DIAGNOSTICS.add_exception("observer-error", "parameter node -> GUI update", error)

    self._guiVtkObserverTags[tag] = self.AddObserver(vtk.vtkCommand.ModifiedEvent, onModified)
    return tag


def _connectGui(self, gui) -> int:
    widgets = {}
    children = QtCore.QObject.findChildren(gui, QtWidgets.QWidget) if _isWidget(gui) else list(gui.__dict__.values())
    for widget in children:
        name = widget.property(SlicerParameterNamePropertyName)
        if name:
            widgets[name] = widget
    return _connectParametersToGui(self, widgets)


def _disconnectGui(self, tag) -> None:
    for connector in self._parameterGUIs.pop(tag, {}).values():
        connector.onChanged(None)
    if tag in self._guiVtkObserverTags:
        self.RemoveObserver(self._guiVtkObserverTags.pop(tag))


def _process(classtype):
    hints = typing.get_type_hints(classtype, include_extras=True)
    allParameters: Dict[str, ParameterInfo] = {}
    for name, hint in hints.items():
        actual, annotations = splitAnnotations(hint)
        validators = [a() if isinstance(a, type) and issubclass(a, Validator) else a
                      for a in annotations if isinstance(a, Validator) or (isinstance(a, type) and issubclass(a, Validator))]
        serializer = _Serializer(actual)
        if name in classtype.__dict__:
            default = Default(classtype.__dict__[name])
        else:
            default = _first(annotations, Default) or Default(serializer.default())
        allParameters[name] = ParameterInfo(name, serializer, validators, default, hint)
        setattr(classtype, name, _makeProperty(name))

    def reserve(attribute, value):
        if attribute in classtype.__dict__ or hasattr(classtype, attribute) and attribute != "__init__":
            raise ValueError(f"Cannot use reserved name '{attribute}' in a parameterNodeWrapper")
        setattr(classtype, attribute, value)

    reserve("allParameters", allParameters)
    reserve("_is_parameter_node_wrapper", True)
    classtype.__init__ = _init
    reserve("default", _default)
    reserve("isCached", lambda self, name: True)
    reserve("dataType", staticmethod(lambda name: (_checkName(classtype, name), allParameters[name].unalteredType)[1]))
    reserve("getValue", _getValue)
    reserve("setValue", _setValue)
    reserve("connectGui", _connectGui)
    reserve("connectParametersToGui", _connectParametersToGui)
    reserve("disconnectGui", _disconnectGui)
    reserve("StartModify", lambda self: self.parameterNode.StartModify())
    reserve("EndModify", lambda self, wasModified: self.parameterNode.EndModify(wasModified))
    reserve("AddObserver", lambda self, event, callback, priority=0.0: self.parameterNode.AddObserver(event, callback, priority))
    reserve("RemoveObserver", lambda self, tag: self.parameterNode.RemoveObserver(tag))
    reserve("Modified", lambda self: self.parameterNode.Modified())
    return classtype


def parameterNodeWrapper(classtype=None):
    """Class decorator: a typed view of a parameter node with GUI binding (see the module's docstring)."""
    if classtype is None:
        return _process
    return _process(classtype)


def parameterPack(classtype=None):
    raise NotImplementedError("the test host's parameterNodeWrapper has no parameter packs")
