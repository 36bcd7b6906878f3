"""Slicer's application surface for the host: ``slicer.app``, its module manager, ``slicer.modules``, the
module objects Slicer makes for a scripted module and its panel, and the dialogs.

Dialogs never block. Message boxes (``errorDisplay``, ``warningDisplay``, ``infoDisplay``,
``messageBox``, ``delayDisplay``) are recorded in :class:`Dialogs` and logged. A confirmation
(``confirmYesNoDisplay``, ``confirmOkCancelDisplay``, ``confirmRetryCloseDisplay``) takes the next answer
the test queued with ``Dialogs.answer(...)`` and records the question; with none queued it answers as a
cancelled dialog (False) and records an ``unscripted-dialog`` problem.
"""

from __future__ import annotations

import collections
import dataclasses
import importlib.util
import logging
import os
import sys
import types
from typing import Deque, Dict, List, Optional

from PySide6 import QtCore, QtGui, QtWidgets
from PySide6.QtCore import Property, Signal

from .diagnostics import DIAGNOSTICS
from .pythonqt import pythonqt_class
from .standins import StandInSlicerWidget

QObject = pythonqt_class(QtCore.QObject)
QVBoxLayout = pythonqt_class(QtWidgets.QVBoxLayout)
QSettings = pythonqt_class(QtCore.QSettings)


# --- dialogs -----------------------------------------------------------------------------------------


@dataclasses.dataclass
class DialogRecord:
    kind: str  # error, warning, info, message, delay, confirm-yes-no, confirm-ok-cancel, confirm-retry-close, directory
    text: str
    title: Optional[str] = None
    detail: Optional[str] = None
    answer: Optional[object] = None


class Dialogs:
    """What the module showed the user, and the answers the test scripted for its questions."""

    def __init__(self) -> None:
        self.shown: List[DialogRecord] = []
        self._answers: Deque[object] = collections.deque()

    def answer(self, *answers) -> None:
        """Queue answers for the next confirmations (True: Yes/OK/Retry; False: No/Cancel/Close) or folder
        dialogs (a path, or "" for Cancel)."""
        self._answers.extend(answers)

    def pending_answers(self) -> int:
        return len(self._answers)

    def of_kind(self, *kinds: str) -> List[DialogRecord]:
        return [d for d in self.shown if d.kind in kinds]

    def errors(self) -> List[DialogRecord]:
        return self.of_kind("error")

    def clear(self) -> None:
        self.shown.clear()
        self._answers.clear()

    def _record(self, kind: str, text, title=None, detail=None, answer=None) -> DialogRecord:
        record = DialogRecord(kind, str(text), title, detail, answer)
        self.shown.append(record)
        return record

    def _ask(self, kind: str, text, title) -> object:
        if self._answers:
            answer = self._answers.popleft()
        else:
            answer = None
            DIAGNOSTICS.add("unscripted-dialog", f"{kind} dialog with no scripted answer (answered as cancelled): {text}")
        self._record(kind, text, title, answer=answer)
        return answer

    # the slicer.util functions (Slicer's signatures)
    def errorDisplay(self, text, windowTitle=None, parent=None, standardButtons=None, **kwargs):
        logging.error(text)
        self._record("error", text, windowTitle, kwargs.get("detailedText"))

    def warningDisplay(self, text, windowTitle=None, parent=None, standardButtons=None, **kwargs):
        logging.warning(text)
        self._record("warning", text, windowTitle, kwargs.get("detailedText"))

    def infoDisplay(self, text, windowTitle=None, parent=None, standardButtons=None, **kwargs):
        logging.info(text)
        self._record("info", text, windowTitle, kwargs.get("detailedText"))

    def messageBox(self, text, parent=None, **kwargs):
        logging.info(text)
        self._record("message", text, kwargs.get("windowTitle"), kwargs.get("detailedText"))
        return QtWidgets.QMessageBox.Ok

    def delayDisplay(self, message, autoCloseMsec=1000, parent=None, **kwargs):
        logging.info(message)
        self._record("delay", message)
        QtWidgets.QApplication.processEvents()

    def confirmYesNoDisplay(self, text, windowTitle=None, parent=None, **kwargs) -> bool:
        logging.info(text)
        return bool(self._ask("confirm-yes-no", text, windowTitle))

    def confirmOkCancelDisplay(self, text, windowTitle=None, parent=None, **kwargs) -> bool:
        logging.info(text)
        return bool(self._ask("confirm-ok-cancel", text, windowTitle))

    def confirmRetryCloseDisplay(self, text, windowTitle=None, parent=None, **kwargs) -> bool:
        logging.error(text)
        return bool(self._ask("confirm-retry-close", text, windowTitle))

    def browse_directory(self, button) -> str:
        answer = self._ask("directory", button.caption or button.toolTip, None)
        return str(answer) if answer else ""

    UTIL_FUNCTIONS = ("errorDisplay", "warningDisplay", "infoDisplay", "messageBox", "delayDisplay",
                      "confirmYesNoDisplay", "confirmOkCancelDisplay", "confirmRetryCloseDisplay")


# --- modules -----------------------------------------------------------------------------------------


class StandInModuleManager(QObject):
    """Stand-in for ``qSlicerModuleManager``: ``module(name)``, ``moduleAboutToBeUnloaded(QString)``."""

    slicerClassName = "qSlicerModuleManager"
    moduleAboutToBeUnloaded = Signal(str)
    moduleLoaded = Signal(str)

    def __init__(self) -> None:
        super().__init__()
        self._modules: Dict[str, object] = {}

    def register(self, module) -> None:
        self._modules[module.name] = module
        self.moduleLoaded.emit(module.name)

    def module(self, name: str):
        return self._modules.get(name)

    def factoryManager(self):
        return self

    def loadedModuleNames(self) -> List[str]:
        return list(self._modules)

    def unload(self, name: str) -> None:
        self.moduleAboutToBeUnloaded.emit(name)
        self._modules.pop(name, None)


class StandInCoreModule(QObject):
    """Stand-in for a C++ module object (``slicer.modules.segmentations``): ``logic()``, name, title."""

    slicerClassName = "qSlicerAbstractCoreModule"

    def __init__(self, name: str, title: str, logic) -> None:
        super().__init__()
        self._name, self._title, self._logic = name, title, logic

    name = Property(str, lambda self: self._name)
    title = Property(str, lambda self: self._title)
    path = Property(str, lambda self: "")

    def logic(self):
        return self._logic

    def widgetRepresentation(self):
        return None


class StandInScriptedLoadableModule(QObject):
    """Stand-in for ``qSlicerScriptedLoadableModule``, the ``parent`` a scripted module's class gets: the
    module properties the Python class sets (title, categories, contributors, helpText,
    acknowledgementText, icon, hidden, dependencies, index), ``name`` and ``path``, and its panel
    (``widgetRepresentation()``)."""

    slicerClassName = "qSlicerScriptedLoadableModule"

    def __init__(self, name: str, path: str) -> None:
        super().__init__()
        self._values = {"title": "", "categories": [], "contributors": [], "associatedNodeTypes": [],
                        "helpText": "", "acknowledgementText": "", "icon": QtGui.QIcon(), "hidden": False,
                        "dependencies": [], "index": -1}
        self._name, self._path = name, path
        self._python = None
        self._widget = None

    def _value(key, kind):  # noqa: N805 - a property factory used in the class body
        def setter(self, value):
            self._values[key] = list(value) if kind == "QStringList" else value

        return Property(kind, lambda self: self._values[key], setter)

    title = _value("title", str)
    categories = _value("categories", "QStringList")
    contributors = _value("contributors", "QStringList")
    associatedNodeTypes = _value("associatedNodeTypes", "QStringList")
    helpText = _value("helpText", str)
    acknowledgementText = _value("acknowledgementText", str)
    icon = _value("icon", QtGui.QIcon)
    hidden = _value("hidden", bool)
    dependencies = _value("dependencies", "QStringList")
    index = _value("index", int)
    del _value
    name = Property(str, lambda self: self._name)
    path = Property(str, lambda self: self._path)
    isInstalled = Property(bool, lambda self: False)
    isBuiltIn = Property(bool, lambda self: False)

    def self(this):  # noqa: N805 - PythonQt's name: the Python module object
        return this._python

    def logic(self):
        return None

    def widgetRepresentation(self):
        return self._widget

    def createNewWidgetRepresentation(self):
        return self._widget


class StandInScriptedLoadableModuleWidget(StandInSlicerWidget):
    """Stand-in for ``qSlicerScriptedLoadableModuleWidget``, the ``parent`` a scripted module's widget class
    gets: a qSlicerWidget with a QVBoxLayout, ``isEntered``, ``setPythonSource``/``reload`` (what
    ``slicer.util.reloadScriptedModule`` calls), ``setup``/``enter``/``exit`` that call the Python
    widget's, as Slicer's C++ side does, and ``self()`` (the Python widget)."""

    slicerClassName = "qSlicerScriptedLoadableModuleWidget"

    def __init__(self, module: StandInScriptedLoadableModule, parent=None) -> None:
        super().__init__(parent)
        QVBoxLayout(self)
        self._module = module
        self._isEntered = False
        self._python = None
        self._source = ""

    isEntered = Property(bool, lambda self: self._isEntered)

    def module(self):
        return self._module

    def self(this):  # noqa: N805 - PythonQt's name: the Python widget object
        return this._python

    def pythonSource(self) -> str:
        return self._source

    def setPythonSource(self, path: str, className: str = "") -> bool:
        """Instantiate ``<module>Widget`` from the module already imported (else load the file), as
        qSlicerScriptedLoadableModuleWidget::setPythonSource, and set ``slicer.modules.<Class>``."""
        import slicer

        moduleName = os.path.splitext(os.path.basename(path))[0]
        className = className or (moduleName if moduleName.endswith("Widget") else moduleName + "Widget")
        module = sys.modules.get(moduleName)
        if module is None or not hasattr(module, className):
            module = load_source_as_module(moduleName, path)
        self._python = getattr(module, className)(self)
        self._source = path
        setattr(slicer.modules, className, self._python)
        return True

    def reload(self) -> None:
        if os.path.isfile(self._source):
            self.setPythonSource(self._source)
            self.setup()

    def setup(self) -> None:
        self._python.setup()

    def enter(self) -> None:
        self._isEntered = True
        if hasattr(self._python, "enter"):
            self._python.enter()

    def exit(self) -> None:
        self._isEntered = False
        if hasattr(self._python, "exit"):
            self._python.exit()


def load_source_as_module(moduleName: str, path: str):
    """The file as module ``moduleName`` in sys.modules (what Slicer's loadSourceAsModule does)."""
    spec = importlib.util.spec_from_file_location(moduleName, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[moduleName] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        sys.modules.pop(moduleName, None)
        raise
    return module


# --- slicer.app ---------------------------------------------------------------------------------------


class CommandOptions:
    """``slicer.app.commandOptions()``: how the host 'started'."""

    noMainWindow = False
    disableModules = False
    disableScriptedLoadableModules = False
    testingEnabled = False
    pythonScript = ""


class StandInSlicerApplication(QObject):
    """Stand-in for ``qSlicerApplication`` (``slicer.app``), delegating to the process's QApplication:
    ``processEvents``, ``layoutManager()``, ``mrmlScene()``, ``applicationLogic()``, ``moduleManager()``,
    ``settings()``/``userSettings()`` (QSettings on the host's INI file), ``defaultScenePath``,
    ``temporaryPath``, ``applicationName``, ``aboutToQuit``, ``testingEnabled()`` (False: dialogs are
    'shown', see :class:`Dialogs`), override cursors."""

    slicerClassName = "qSlicerApplication"
    aboutToQuit = Signal()
    startupCompleted = Signal()

    def __init__(self, host) -> None:
        super().__init__()
        self._host = host
        self._testing = False
        self._defaultScenePath = str(host.folder / "scenes")
        self._temporaryPath = str(host.temp_folder)
        os.makedirs(self._defaultScenePath, exist_ok=True)
        os.makedirs(self._temporaryPath, exist_ok=True)
        QtWidgets.QApplication.instance().aboutToQuit.connect(self.aboutToQuit.emit)

    defaultScenePath = Property(str, lambda self: self._defaultScenePath,
                                lambda self, v: setattr(self, "_defaultScenePath", str(v)))
    temporaryPath = Property(str, lambda self: self._temporaryPath,
                             lambda self, v: setattr(self, "_temporaryPath", str(v)))
    applicationName = Property(str, lambda self: QtCore.QCoreApplication.applicationName())
    applicationVersion = Property(str, lambda self: QtCore.QCoreApplication.applicationVersion())
    organizationName = Property(str, lambda self: QtCore.QCoreApplication.organizationName())
    organizationDomain = Property(str, lambda self: QtCore.QCoreApplication.organizationDomain())
    majorVersion = Property(int, lambda self: self._host.slicer_version[0])
    minorVersion = Property(int, lambda self: self._host.slicer_version[1])
    slicerHome = Property(str, lambda self: str(self._host.folder))
    isRenderPaused = Property(bool, lambda self: False)

    @staticmethod
    def processEvents(*args) -> None:
        QtWidgets.QApplication.processEvents(*args)

    def layoutManager(self):
        return self._host.layout_manager

    def mrmlScene(self):
        return self._host.scene

    def applicationLogic(self):
        return self._host.application_logic

    def moduleManager(self):
        return self._host.module_manager

    def commandOptions(self):
        return CommandOptions()

    def testingEnabled(self) -> bool:
        return self._testing

    def setTestingEnabled(self, enabled: bool) -> None:
        self._testing = bool(enabled)

    def settings(self):
        return QSettings()

    userSettings = settings
    revisionUserSettings = settings

    @staticmethod
    def setOverrideCursor(cursor) -> None:
        QtWidgets.QApplication.setOverrideCursor(QtGui.QCursor(cursor) if not isinstance(cursor, QtGui.QCursor) else cursor)

    @staticmethod
    def restoreOverrideCursor() -> None:
        QtWidgets.QApplication.restoreOverrideCursor()

    @staticmethod
    def overrideCursor():
        return QtWidgets.QApplication.overrideCursor()

    @staticmethod
    def topLevelWidgets():
        return QtWidgets.QApplication.topLevelWidgets()

    @staticmethod
    def clipboard():
        return QtWidgets.QApplication.clipboard()

    @staticmethod
    def keyboardModifiers():
        return QtWidgets.QApplication.keyboardModifiers()

    @staticmethod
    def style():
        return QtWidgets.QApplication.style()

    def pauseRender(self) -> None:
        pass

    def resumeRender(self) -> None:
        pass

    def setRenderPaused(self, paused: bool) -> None:
        pass

    def pythonConsole(self):
        return None

    def coreIOManager(self):
        return self._host.io_manager

    ioManager = coreIOManager

    @staticmethod
    def translate(context: str, text: str) -> str:
        return QtCore.QCoreApplication.translate(context, text)

    @staticmethod
    def startupEnvironment():
        """The environment Slicer was started with (the host's own process environment)."""
        return QtCore.QProcessEnvironment.systemEnvironment()

    def quit(self) -> None:
        self.aboutToQuit.emit()

    def exit(self, status: int = 0) -> None:
        self.aboutToQuit.emit()

    def moduleDocumentationUrl(self, moduleName: str) -> str:
        return f"https://slicer.readthedocs.io/en/latest/user_guide/modules/{moduleName.lower()}.html"

    documentationBaseUrl = Property(str, lambda self: "https://slicer.readthedocs.io/en/latest")


def modules_namespace() -> types.ModuleType:
    """``slicer.modules``: module objects by lower-case name, Python module and widget instances."""
    return types.ModuleType("slicer.modules", "Slicer's loaded modules (test host)")


class StandInCoreIOManager(QObject):
    """Stand-in for ``qSlicerCoreIOManager`` (what ``slicer.util.loadVolume``/``loadSegmentation`` use):
    ``fileType(path)`` and ``loadNodes(fileType, properties, loadedNodes, userMessages)`` for volume files
    (Slicer's Volumes reader: vtkSlicerVolumesLogic.AddArchetypeVolume with the ``labelmap``, ``center``,
    ``singleFile`` and ``discardOrientation`` options, the volume shown in the slice views unless
    ``show`` is False) and segmentation files (the Segmentations logic). Other file types fail."""

    slicerClassName = "qSlicerCoreIOManager"

    def __init__(self, host) -> None:
        super().__init__()
        self._host = host

    @staticmethod
    def fileType(path) -> str:
        name = str(path).lower()
        if name.endswith(".seg.nrrd") or name.endswith(".seg.nii.gz"):
            return "SegmentationFile"
        if name.endswith((".nrrd", ".nhdr", ".nii", ".nii.gz", ".mha", ".mhd", ".dcm", ".vtk", ".tif", ".tiff")):
            return "VolumeFile"
        return "NoFile"

    def loadNodes(self, fileType, properties, loadedNodes=None, userMessages=None) -> bool:
        properties = dict(properties)
        fileName = str(properties.get("fileName", ""))
        if fileType == "VolumeFile":
            flags = ((1 if properties.get("labelmap") else 0) | (2 if properties.get("center") else 0)
                     | (4 if properties.get("singleFile") else 0) | (16 if properties.get("discardOrientation") else 0))
            name = properties.get("name") or os.path.basename(fileName).split(".")[0]
            node = self._host.volumes_logic.AddArchetypeVolume(fileName, name, flags)
            if node is not None and properties.get("show", True):
                import slicer

                if node.IsA("vtkMRMLLabelMapVolumeNode"):
                    slicer.util.setSliceViewerLayers(label=node, fit=True)
                else:
                    slicer.util.setSliceViewerLayers(background=node, fit=True)
        elif fileType == "SegmentationFile":
            node = self._host.segmentations_logic.LoadSegmentationFromFile(fileName, bool(properties.get("autoOpacities", True)))
        else:
            node = None
        if node is None:
            if userMessages is not None:
                userMessages.AddMessage(4, f"The host cannot read {fileName} as {fileType}")  # vtkCommand::ErrorEvent
            return False
        if loadedNodes is not None:
            loadedNodes.AddItem(node)
        return True
