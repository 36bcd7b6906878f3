"""PythonQt semantics over PySide6: Qt as Slicer's Python sees it, for the test host's ``qt`` module.

What Slicer's Python (PythonQt) does that PySide6 does not, and the module relies on:

* every Qt property of a QObject is a Python attribute, readable and writable (``label.text = "x"``,
  ``button.enabled = False``, ``combo.count``); the property shadows a getter method of the same name
  (``w.text`` is the string, ``w.text()`` fails), while other methods stay methods (``setStyleSheet``,
  ``setCurrentRow``, ``blockSignals``);
* a QObject has ``connect(signature, callable)`` and ``disconnect(...)`` taking C++ signatures
  (``"clicked(bool)"``); a Python callable is called with as many of the signal's arguments as it takes;
* ``name`` is the object name (``slicer.util.childWidgetVariables`` relies on it), ``className()`` the
  Qt class name;
* an exception raised in a slot is printed to the console and Qt goes on.

How the host does it (the choice, and why)
------------------------------------------
For each PySide6 QObject class the ``qt`` module is asked for, the host makes once a Python subclass of the
same name (:func:`pythonqt_class`) whose class body holds one data descriptor per property of the class's
static QMetaObject (inherited properties included), plus ``connect``, ``disconnect``, ``name`` and
``className``. The .ui loader (:class:`PythonQtUiLoader`, which is ``qt.QUiLoader``) instantiates those
classes and Slicer's stand-ins, so every widget of a loaded panel, and every object the module creates
through ``qt.``, behaves as under PythonQt. ``type(w) is qt.QLineEdit`` holds for a loaded line edit
(parameterNodeWrapper's GUI connectors test exact types), and the classes' metaclass makes
``isinstance(x, qt.QWidget)`` true for any QWidget, as under PythonQt.

A string connection is made with PySide6's ``QObject.connect(sender, SIGNAL(signature), adapter)``. Slicer
signals whose arguments are VTK/MRML pointers (``currentNodeChanged(vtkMRMLNode*)``) are declared by the
stand-ins with Python-object arguments (PySide6 cannot emit an unregistered C++ pointer type), so a
signature naming ``vtk...*`` types is matched to the stand-in's ``PyObject`` form. The adapter calls the
Python callable with as many arguments as it takes, catches what it raises (recorded in
:data:`slicerhost.diagnostics.DIAGNOSTICS` as ``slot-error`` and logged, as PythonQt prints it), and times
the call (the slowest slot calls are the GUI stalls' suspects).

Rejected alternatives: PySide6's ``__feature__`` ``true_property`` switch is selected per importing module
(the module under test would have to opt in) and hides the setter methods the module calls; patching
PySide6's own classes would change them for every other test in the process.

Limits: objects that Qt creates internally and hands back (``combo.view()``, a header view, a spin box's
line edit) are plain PySide6 objects with PySide6's method-style API; non-QObject values
(``QTableWidgetItem``, ``QIcon``) are PySide6's own classes, which PythonQt also exposes with methods only.
Property reads go through the C++ getter (``QWidget.sizeHint(self)``) or ``QObject.property``; a re-entrant
read, which is PySide6 looking for a Python override of a virtual getter, answers "no override".
"""

from __future__ import annotations

import inspect
import re
import threading
import time
import types
import xml.etree.ElementTree as ET
from typing import Dict, List, Optional, Tuple

from PySide6 import QtCore, QtGui, QtUiTools, QtWidgets

from .diagnostics import DIAGNOSTICS

try:  # present in PySide6-Essentials; PythonQt's qt module has them too
    from PySide6 import QtNetwork
except ImportError:  # pragma: no cover
    QtNetwork = None
try:
    from PySide6 import QtXml
except ImportError:  # pragma: no cover
    QtXml = None

_ShibokenType = type(QtCore.QObject)
_reading = threading.local()


def _lookup(cls: type, name: str):
    """The attribute ``name`` as the PySide6 class ``cls`` (not our subclass) resolves it, or None."""
    for klass in cls.__mro__:
        if name in klass.__dict__:
            return klass.__dict__[name] if not isinstance(klass.__dict__[name], QtPropertyAttribute) else None
    return None


class QtPropertyAttribute:
    """A Qt property as a Python attribute (PythonQt style); at class level, what PySide6 has there."""

    __slots__ = ("name", "_getter", "_class_value", "_writable")

    def __init__(self, name: str, pyside_class: type, writable: bool) -> None:
        self.name = name
        found = getattr(pyside_class, name, None)
        self._class_value = found
        self._getter = found if callable(found) and not isinstance(found, type) else None
        self._writable = writable

    def __get__(self, obj, owner=None):
        if obj is None:  # qt.QTimer.singleShot(...) is the static method, as in PythonQt
            return self._class_value if self._class_value is not None else self
        active = getattr(_reading, "active", None)
        if active is None:
            active = _reading.active = set()
        key = (id(obj), self.name)
        if key in active:
            # PySide6 asks for a Python override of a virtual getter while we read it: there is none
            return None
        active.add(key)
        try:
            if self._getter is not None:
                try:
                    return self._getter(obj)
                except TypeError:  # a static method of the same name (QTimer.singleShot) or arguments needed
                    pass
            return QtCore.QObject.property(obj, self.name)
        finally:
            active.discard(key)

    def __set__(self, obj, value) -> None:
        if not self._writable:
            raise AttributeError(f"Qt property '{self.name}' of {type(obj).__name__} is read-only")
        if not QtCore.QObject.setProperty(obj, self.name, value):
            raise TypeError(f"Qt property '{self.name}' of {type(obj).__name__} cannot be set to {value!r}")

    def __repr__(self) -> str:
        return f"<Qt property {self.name}>"


class ObjectNameAttribute:
    """PythonQt's ``name``: the object name."""

    def __get__(self, obj, owner=None):
        return self if obj is None else QtCore.QObject.objectName(obj)

    def __set__(self, obj, value) -> None:
        QtCore.QObject.setObjectName(obj, value)


class InstanceOrClassAttribute:
    """On an instance, PythonQt's method; on the class, PySide6's static one (``QObject.connect``)."""

    def __init__(self, instance_function, class_value) -> None:
        self._function = instance_function
        self._class_value = class_value

    def __get__(self, obj, owner=None):
        if obj is None:
            return self._class_value
        return types.MethodType(self._function, obj)


def _class_name(self) -> str:
    """PythonQt's ``className()``: the Qt class name (a stand-in reports the Slicer class it stands for)."""
    return getattr(type(self), "slicerClassName", None) or self.metaObject().className()


def _dynamic_property(self, name: str):
    """PythonQt also reads dynamic properties (``setProperty`` of an undeclared name) as attributes."""
    if not name.startswith("_"):
        try:
            names = [bytes(n).decode() for n in QtCore.QObject.dynamicPropertyNames(self)]
        except (RuntimeError, TypeError):
            names = []
        if name in names:
            return QtCore.QObject.property(self, name)
    raise AttributeError(f"'{type(self).__name__}' object has no attribute '{name}'")


class PythonQtClassType(_ShibokenType):
    """Metaclass of the PythonQt-style classes: ``isinstance(x, qt.QWidget)`` holds for every QWidget.

    Every class made with it (a stand-in deriving from ``qt.QWidget`` too) gets PythonQt's ``connect`` and
    ``disconnect`` in its own namespace: PySide6 answers these two names from QObject's static methods
    unless the instance's exact class defines them."""

    def __new__(mcls, name, bases, namespace, **kwargs):
        namespace = dict(namespace)
        for attribute in ("connect", "disconnect"):
            if attribute not in namespace:
                for base in bases:
                    inherited = getattr(base, "__dict__", {}).get(attribute)
                    if isinstance(inherited, InstanceOrClassAttribute):
                        namespace[attribute] = inherited
                        break
        return super().__new__(mcls, name, bases, namespace, **kwargs)

    def __instancecheck__(cls, obj) -> bool:
        wrapped = cls.__dict__.get("_pythonqt_wraps")
        if wrapped is not None:
            return isinstance(obj, wrapped)
        return type.__instancecheck__(cls, obj)

    def __subclasscheck__(cls, subclass) -> bool:
        wrapped = cls.__dict__.get("_pythonqt_wraps")
        if wrapped is not None:
            return issubclass(subclass, wrapped)
        return type.__subclasscheck__(cls, subclass)


_CLASSES: Dict[type, type] = {}


def pythonqt_class(pyside_class: type) -> type:
    """The PythonQt-style subclass of a PySide6 QObject class (made once); other classes as they are."""
    if not (isinstance(pyside_class, type) and issubclass(pyside_class, QtCore.QObject)):
        return pyside_class
    if isinstance(pyside_class, PythonQtClassType):
        return pyside_class
    cached = _CLASSES.get(pyside_class)
    if cached is not None:
        return cached
    name = pyside_class.__name__
    namespace = {
        "__module__": "qt",
        "__qualname__": name,
        "__doc__": f"{name} as PythonQt shows it: Qt properties are attributes (see slicerhost.pythonqt).",
        "_pythonqt_wraps": pyside_class,
    }
    meta = pyside_class.staticMetaObject
    for index in range(meta.propertyCount()):
        prop = meta.property(index)
        namespace[prop.name()] = QtPropertyAttribute(prop.name(), pyside_class, prop.isWritable())
    namespace.setdefault("name", ObjectNameAttribute())
    namespace["connect"] = InstanceOrClassAttribute(pythonqt_connect, _lookup(pyside_class, "connect"))
    namespace["disconnect"] = InstanceOrClassAttribute(pythonqt_disconnect, _lookup(pyside_class, "disconnect"))
    namespace["className"] = _class_name
    namespace["__getattr__"] = _dynamic_property
    if pyside_class is QtCore.QTimer:  # qt.QTimer.singleShot(msec, callable): the callable runs as a slot does
        namespace["singleShot"]._class_value = _single_shot
    cls = PythonQtClassType(name, (pyside_class,), namespace)
    _CLASSES[pyside_class] = cls
    return cls


def _single_shot(*args):
    """``QTimer.singleShot(msec, callable)`` with the callable run as PythonQt runs a slot (an exception
    recorded as a ``slot-error``, the call timed); the receiver-and-slot forms are PySide6's own."""
    args = list(args)
    if args and callable(args[-1]) and not isinstance(args[-1], (QtCore.QObject, str)):
        args[-1] = SlotAdapter(args[-1], None, "singleShot()")
    return QtCore.QTimer.singleShot(*args)


# --- string-signature connections ---------------------------------------------------------------

_VTK_POINTER = re.compile(r"\bvtk\w*\s*\*")


def _normalized(signature: str) -> str:
    return bytes(QtCore.QMetaObject.normalizedSignature(signature)).decode()


def _python_object_form(signature: str) -> str:
    """``currentNodeChanged(vtkMRMLNode*)`` as a stand-in declares it: ``currentNodeChanged(PyObject)``."""
    return _VTK_POINTER.sub("PyObject", signature)


def _argument_count(signature: str) -> int:
    inside = signature[signature.index("(") + 1: signature.rindex(")")].strip()
    if not inside:
        return 0
    depth, count = 0, 1
    for char in inside:
        depth += char == "<"
        depth -= char == ">"
        count += char == "," and depth == 0
    return count


def resolve_method(obj, signature: str, kinds=("signal",)) -> Optional[str]:
    """The normalized signature under which ``obj``'s meta-object has the signal (or slot), or None."""
    meta = QtCore.QObject.metaObject(obj)
    for candidate in dict.fromkeys((_normalized(signature), _normalized(_python_object_form(signature)))):
        for kind in kinds:
            index = (meta.indexOfSignal if kind == "signal" else meta.indexOfSlot if kind == "slot"
                     else meta.indexOfMethod)(candidate)
            if index >= 0:
                return candidate
    return None


def describe(obj) -> str:
    try:
        name = QtCore.QObject.objectName(obj)
    except (RuntimeError, TypeError):
        name = ""
    return f"{type(obj).__name__}{'(' + repr(name) + ')' if name else ''}"


def _accepted_arguments(target, available: int) -> int:
    """How many of a signal's arguments PythonQt passes: as many as the callable takes, at most all."""
    try:
        parameters = inspect.signature(target).parameters.values()
    except (TypeError, ValueError):
        return available
    count = 0
    for parameter in parameters:
        if parameter.kind == parameter.VAR_POSITIONAL:
            return available
        if parameter.kind in (parameter.POSITIONAL_ONLY, parameter.POSITIONAL_OR_KEYWORD):
            count += 1
    return min(count, available)


def _callable_name(target) -> str:
    function = getattr(target, "__func__", target)
    return getattr(function, "__qualname__", None) or repr(target)


class SlotAdapter:
    """Calls a Python callable for a signal as PythonQt does: fewer arguments when it takes fewer, an
    exception recorded and logged instead of propagated; each call timed on the GUI thread."""

    def __init__(self, target, sender, signature: str) -> None:
        self.target = target
        self.arguments = _accepted_arguments(target, _argument_count(signature))
        self.what = f"{describe(sender) if sender is not None else 'QTimer'}.{signature} -> {_callable_name(target)}"

    def __call__(self, *args):
        start = time.perf_counter()
        try:
            self.target(*args[: self.arguments])
        except Exception as error:  # noqa: BLE001 - PythonQt prints it and Qt goes on
            DIAGNOSTICS.add_exception("slot-error", self.what, error)
        finally:
            DIAGNOSTICS.slot_timing(self.what, time.perf_counter() - start)


def _connections(obj) -> List[Tuple[str, object, SlotAdapter]]:
    return obj.__dict__.setdefault("_pythonqt_connections", [])


def pythonqt_connect(sender, signal, *target) -> bool:
    """PythonQt's ``obj.connect("signal(args)", callable)`` and ``obj.connect("signal(args)", receiver,
    "slot(args)")``. Returns whether the connection was made; a signal the object lacks is recorded as a
    ``signal-not-found`` problem (PythonQt only warns)."""
    if not isinstance(signal, str):  # PySide6's own form, e.g. QObject.connect(a, SIGNAL(...), b, SLOT(...))
        return QtCore.QObject.connect(sender, signal, *target)
    resolved = resolve_method(sender, signal)
    if resolved is None:
        DIAGNOSTICS.add("signal-not-found", f"{describe(sender)}.connect({signal!r}): the object has no such signal")
        return False
    if len(target) == 1 and callable(target[0]):
        adapter = SlotAdapter(target[0], sender, resolved)
        QtCore.QObject.connect(sender, QtCore.SIGNAL(resolved), adapter)
        _connections(sender).append((resolved, target[0], adapter))
        return True
    if len(target) == 2 and isinstance(target[1], str):
        receiver, slot = target
        return connect_by_signature(sender, resolved, receiver, slot)
    raise TypeError(f"connect({signal!r}, ...) needs a callable, or a receiver and a slot signature")


def connect_by_signature(sender, signal: str, receiver, slot: str) -> bool:
    """A Qt connection from a signal to a receiver's slot (or signal), both named by C++ signature."""
    signal_resolved = resolve_method(sender, signal)
    slot_resolved = resolve_method(receiver, slot, kinds=("slot", "method"))
    as_signal = False
    if slot_resolved is None:
        slot_resolved = resolve_method(receiver, slot)
        as_signal = slot_resolved is not None
    if signal_resolved is None or slot_resolved is None:
        return False
    target = QtCore.SIGNAL(slot_resolved) if as_signal else QtCore.SLOT(slot_resolved)
    return bool(QtCore.QObject.connect(sender, QtCore.SIGNAL(signal_resolved), receiver, target))


def pythonqt_disconnect(sender, signal, *target) -> bool:
    """PythonQt's ``obj.disconnect("signal(args)", callable)`` (or every callable of that signal)."""
    if not isinstance(signal, str):
        return QtCore.QObject.disconnect(sender, signal, *target)
    resolved = resolve_method(sender, signal)
    if resolved is None:
        return False
    if len(target) == 2 and isinstance(target[1], str):
        receiver, slot = target
        slot_resolved = resolve_method(receiver, slot, kinds=("slot", "method")) or resolve_method(receiver, slot)
        if slot_resolved is None:
            return False
        return bool(QtCore.QObject.disconnect(sender, QtCore.SIGNAL(resolved), receiver, QtCore.SLOT(slot_resolved)))
    entries = _connections(sender)
    matching = [entry for entry in entries
                if entry[0] == resolved and (not target or entry[1] == target[0])]
    for entry in matching:
        QtCore.QObject.disconnect(sender, QtCore.SIGNAL(resolved), entry[2])
        entries.remove(entry)
    return bool(matching)


# --- the .ui loader ---------------------------------------------------------------------------------

#: .ui class name -> the host's stand-in class (filled by slicerhost.standins)
CUSTOM_WIDGETS: Dict[str, type] = {}


def register_custom_widget(ui_class_name: str, cls: type) -> type:
    CUSTOM_WIDGETS[ui_class_name] = cls
    return cls


class PythonQtUiLoader(QtUiTools.QUiLoader):
    """``qt.QUiLoader``: loads a .ui with PythonQt-style widgets and the host's stand-ins for Slicer's
    classes, then makes the .ui's <connections>.

    The connections are made after loading, by this loader, rather than by QUiLoader: theirs name MRML
    pointer types (``mrmlSceneChanged(vtkMRMLScene*)``) that PySide6 cannot emit, which the stand-ins declare
    with Python-object arguments. A connection that cannot be made, and a .ui class the host has no
    stand-in for (it is then built as the Qt class it extends), are recorded as problems."""

    def __init__(self, parent=None) -> None:
        super().__init__(parent)
        self._extends: Dict[str, str] = {}
        self._created_custom: set = set()

    # QUiLoader calls these for every widget and layout of the file
    def createWidget(self, className, parent=None, name=""):  # noqa: N802 - Qt's name
        cls = CUSTOM_WIDGETS.get(className)
        if cls is None:
            pyside = getattr(QtWidgets, className, None)
            if isinstance(pyside, type) and issubclass(pyside, QtWidgets.QWidget):
                cls = pythonqt_class(pyside)
        if cls is None and className in self._extends:
            base = className
            while base in self._extends:
                base = self._extends[base]
            if className not in self._created_custom:
                DIAGNOSTICS.add("no-stand-in", f".ui class {className} has no stand-in in the host; built as {base}")
                self._created_custom.add(className)
            pyside = getattr(QtWidgets, base, QtWidgets.QWidget)
            cls = pythonqt_class(pyside)
        if cls is None:
            return super().createWidget(className, parent, name)
        widget = cls(parent)
        QtCore.QObject.setObjectName(widget, name)
        return widget

    def createLayout(self, className, parent=None, name=""):  # noqa: N802 - Qt's name
        pyside = getattr(QtWidgets, className, None)
        if not (isinstance(pyside, type) and issubclass(pyside, QtWidgets.QLayout)):
            return super().createLayout(className, parent, name)
        cls = pythonqt_class(pyside)
        layout = cls() if isinstance(parent, QtWidgets.QLayout) or parent is None else cls(parent)
        QtCore.QObject.setObjectName(layout, name)
        return layout

    def load(self, device, parentWidget=None):  # noqa: N802 - Qt's name
        if isinstance(device, str):
            path, device = device, QtCore.QFile(device)
            if not device.open(QtCore.QIODevice.ReadOnly):
                raise RuntimeError(f"cannot open {path}")
        root = ET.fromstring(bytes(device.readAll()))
        connections = []
        for section in root.findall("connections"):
            for connection in section.findall("connection"):
                connections.append(tuple(connection.findtext(tag, "") for tag in ("sender", "signal", "receiver", "slot")))
            root.remove(section)
        self._extends = {custom.findtext("class"): custom.findtext("extends") or "QWidget"
                         for custom in root.iter("customwidget")}
        declared = [(element.get("name"), element.get("class"),
                     [p.get("name") for p in element.findall("property") if p.get("stdset") != "0"])
                    for element in root.iter("widget") if element.get("class") in CUSTOM_WIDGETS]
        data = QtCore.QByteArray(ET.tostring(root, encoding="utf-8"))
        buffer = QtCore.QBuffer(data)
        buffer.open(QtCore.QIODevice.ReadOnly)
        widget = super().load(buffer, parentWidget)
        buffer.close()
        if widget is None:
            return None
        for name, className, properties in declared:  # a property Slicer's class has and the stand-in lacks
            found = _find_named(widget, name)
            for prop in properties if found is not None else ():
                if QtCore.QObject.metaObject(found).indexOfProperty(prop) < 0:
                    DIAGNOSTICS.add("stand-in-gap", f"the .ui sets {className}.{prop} on '{name}', which the host's "
                                                    f"stand-in does not declare (kept as a dynamic property)")
        for sender_name, signal, receiver_name, slot in connections:
            sender, receiver = _find_named(widget, sender_name), _find_named(widget, receiver_name)
            if sender is None or receiver is None or not connect_by_signature(sender, signal, receiver, slot):
                DIAGNOSTICS.add("ui-connection", f".ui connection {sender_name}.{signal} -> {receiver_name}.{slot} "
                                                 f"could not be made")
        return widget


def _find_named(top, name: str):
    if QtCore.QObject.objectName(top) == name:
        return top
    return QtCore.QObject.findChild(top, QtCore.QObject, name)


# --- the `qt` module's namespace --------------------------------------------------------------------

_SOURCES = [m for m in (QtCore, QtGui, QtWidgets, QtUiTools, QtNetwork, QtXml) if m is not None]
_OVERRIDES = {"QUiLoader": PythonQtUiLoader}


def qt_attribute(name: str):
    """What ``qt.<name>`` is: PythonQt-style classes for QObjects, PySide6's own values otherwise."""
    if name in _OVERRIDES:
        return _OVERRIDES[name]
    for module in _SOURCES:
        value = getattr(module, name, None)
        if value is not None:
            return pythonqt_class(value) if isinstance(value, type) else value
    raise AttributeError(f"module 'qt' has no attribute '{name}'")


def qt_names() -> List[str]:
    names = set(_OVERRIDES)
    for module in _SOURCES:
        names.update(n for n in dir(module) if not n.startswith("_"))
    return sorted(names)
