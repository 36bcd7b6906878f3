"""Setting the host up (``install``) and loading a scripted module into it as Slicer does (``load_module``)."""

from __future__ import annotations

import atexit
import dataclasses
import importlib.metadata
import logging
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Callable, List, Optional

PYTHONPATH = Path(__file__).resolve().parent / "pythonpath"

_HOST: Optional["SlicerHost"] = None


class HostUnavailable(RuntimeError):
    """PySide6 or slicer-core is missing, or another ``qt``/``ctk`` module is already imported."""


def _require():
    try:
        import PySide6  # noqa: F401
        from PySide6 import QtWidgets  # noqa: F401
    except ImportError as error:
        raise HostUnavailable(f"PySide6 is not installed: {error}") from error
    try:
        import slicer
    except ImportError as error:
        raise HostUnavailable(f"slicer-core is not installed: {error}") from error
    if not hasattr(slicer, "vtkMRMLScene") or not hasattr(slicer, "vtkSlicerSegmentationsModuleLogic"):
        raise HostUnavailable("the 'slicer' package here is not Slicer's core libraries (slicer-core)")
    for name in ("qt", "ctk"):
        module = sys.modules.get(name)
        if module is not None and Path(getattr(module, "__file__", "") or "").resolve().parent != PYTHONPATH:
            raise HostUnavailable(f"another '{name}' module is already imported ({module!r})")


def available() -> bool:
    """Whether :func:`install` can work here (PySide6 and slicer-core present)."""
    try:
        _require()
    except HostUnavailable:
        return False
    return True


@dataclasses.dataclass
class LoadedModule:
    """A scripted module loaded into the host."""

    name: str
    module_object: object  # the qSlicerScriptedLoadableModule stand-in (``slicer.modules.<name lower>``)
    module: object  # the Python module class instance (``slicer.modules.<Name>Instance``)
    panel: object  # the qSlicerScriptedLoadableModuleWidget stand-in (the widget's ``parent``)
    host: "SlicerHost"

    @property
    def widget(self):
        """The Python widget (``slicer.modules.<Name>Widget``); a new one after a reload."""
        return self.panel.self()

    @property
    def ui(self):
        return self.widget.ui

    @property
    def logic(self):
        return getattr(self.widget, "logic", None)

    def enter(self) -> None:
        """Select the module (its panel shows): ``enter()``, as Slicer's module panel does."""
        if not self.panel.isEntered:
            self.panel.show()
            self.panel.enter()

    def exit(self) -> None:
        """Select another module: ``exit()``; the panel hides."""
        if self.panel.isEntered:
            self.panel.exit()
            self.panel.hide()

    def reload(self) -> None:
        """Developer mode's Reload: the widget's own ``onReload``."""
        self.widget.onReload()

    def unload(self) -> None:
        """What Slicer does at exit: leave the module, announce its unloading (the widget's ``cleanup``),
        and drop it."""
        import slicer

        self.exit()
        self.host.module_manager.unload(self.name)
        for attribute in (self.name.lower(), self.name + "Instance", self.name + "Widget"):
            if hasattr(slicer.modules, attribute):
                delattr(slicer.modules, attribute)
        self.panel.deleteLater()
        self.host.process_events()


class SlicerHost:
    """The running host: the QApplication, the MRML scene, ``slicer.app``, the layout, the dialogs, and what
    went wrong. Made once per process by :func:`install`."""

    def __init__(self, layout: Optional[int] = None, color_tables: bool = True, private_temp: bool = True) -> None:
        _require()
        os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
        if str(PYTHONPATH) not in sys.path:
            sys.path.insert(0, str(PYTHONPATH))
        from PySide6 import QtCore, QtGui, QtWidgets

        self.folder = Path(tempfile.mkdtemp(prefix="slicerhost-"))
        atexit.register(shutil.rmtree, self.folder, True)  # settings, scenes, temporary files: gone at exit
        self.temp_folder = self.folder / "temp"
        self.temp_folder.mkdir()
        if private_temp:  # what the module leaves in temporary folders is the host's to see (and not shared)
            tempfile.tempdir = str(self.temp_folder)
            os.environ["TMPDIR"] = str(self.temp_folder)
        self.qapp = QtWidgets.QApplication.instance() or QtWidgets.QApplication([sys.argv[0] if sys.argv else "slicerhost"])
        QtCore.QCoreApplication.setOrganizationName("NA-MIC")
        QtCore.QCoreApplication.setOrganizationDomain("www.na-mic.org")
        QtCore.QCoreApplication.setApplicationName("Slicer")
        QtCore.QSettings.setDefaultFormat(QtCore.QSettings.IniFormat)
        QtCore.QSettings.setPath(QtCore.QSettings.IniFormat, QtCore.QSettings.UserScope, str(self.folder / "settings"))

        import qt  # noqa: F401 - the host's (PYTHONPATH is first on sys.path)
        import ctk  # noqa: F401
        import slicer

        from . import application, layout as layout_module, standins
        from .diagnostics import DIAGNOSTICS
        from .loop import StallMeter

        self.diagnostics = DIAGNOSTICS
        self.dialogs = application.Dialogs()
        self.opened_urls: List[str] = []
        try:
            version = importlib.metadata.version("slicer-core")
            self.slicer_version = tuple(int(part) for part in version.split(".")[:2])
        except (importlib.metadata.PackageNotFoundError, ValueError):
            self.slicer_version = (5, 0)

        # what Slicer's Segmentations module registers at start-up
        factory = slicer.vtkSegmentationConverterFactory.GetInstance()
        if not factory.GetConverterRules():
            factory.RegisterConverterRule(slicer.vtkBinaryLabelmapToClosedSurfaceConversionRule())
            factory.RegisterConverterRule(slicer.vtkClosedSurfaceToBinaryLabelmapConversionRule())

        # the scene Slicer starts with: application logic (selection, interaction nodes), subject hierarchy,
        # color tables, and the layout's view nodes
        self.scene = slicer.vtkMRMLScene()
        self.application_logic = slicer.vtkSlicerApplicationLogic()
        self.application_logic.SetHomeDirectory(str(self.folder))
        self.application_logic.SetShareDirectory("share")  # no color files there: only the built-in tables
        (self.folder / "share" / "ColorFiles").mkdir(parents=True)
        self.application_logic.SetTemporaryPath(str(self.temp_folder))
        self.application_logic.SetMRMLScene(self.scene)
        slicer.vtkMRMLSubjectHierarchyNode.ResolveSubjectHierarchy(self.scene)
        self.color_logic = None
        if color_tables:
            self.color_logic = slicer.vtkSlicerColorLogic()
            self.color_logic.SetMRMLApplicationLogic(self.application_logic)
            self.color_logic.SetMRMLScene(self.scene)
            self.application_logic.SetColorLogic(self.color_logic)
        self.segmentations_logic = slicer.vtkSlicerSegmentationsModuleLogic()
        self.segmentations_logic.SetMRMLApplicationLogic(self.application_logic)
        self.segmentations_logic.SetMRMLScene(self.scene)
        self.volumes_logic = slicer.vtkSlicerVolumesLogic()
        self.volumes_logic.SetMRMLApplicationLogic(self.application_logic)
        self.volumes_logic.SetMRMLScene(self.scene)
        for name, logic in (("Colors", self.color_logic), ("Segmentations", self.segmentations_logic),
                            ("Volumes", self.volumes_logic)):
            if logic is not None:  # how module logics find each other in Slicer
                self.application_logic.SetModuleLogic(name, logic)

        self.module_manager = application.StandInModuleManager()
        self.viewport = qt.QWidget()
        self.viewport.name = "StandInViewport"
        self.viewport.resize(600, 400)
        self.layout_manager = layout_module.StandInLayoutManager(self.scene, self.application_logic, self.viewport)
        self.layout_manager.setLayout(layout if layout is not None else slicer.vtkMRMLLayoutNode.SlicerLayoutConventionalView)
        self.viewport.show()
        self.app = application.StandInSlicerApplication(self)
        self.io_manager = application.StandInCoreIOManager(self)
        self._startup_completed = False

        # the `slicer` namespace
        modules = application.modules_namespace()
        modules.segmentations = application.StandInCoreModule("Segmentations", "Segmentations", self.segmentations_logic)
        modules.volumes = application.StandInCoreModule("Volumes", "Volumes", self.volumes_logic)
        if self.color_logic is not None:
            modules.colors = application.StandInCoreModule("Colors", "Colors", self.color_logic)
        for module in (modules.segmentations, modules.volumes):
            self.module_manager.register(module)
        self.modules = modules
        slicer.mrmlScene = self.scene
        slicer.app = self.app
        slicer.modules = modules
        slicer.qMRMLWidget = standins.StandInMRMLWidget
        slicer.qSlicerWidget = standins.StandInSlicerWidget
        slicer.qMRMLNodeComboBox = standins.StandInMRMLNodeComboBox
        slicer.qMRMLSegmentSelectorWidget = standins.StandInMRMLSegmentSelectorWidget
        slicer.qMRMLSliceWidget = layout_module.StandInSliceWidget
        slicer.qMRMLThreeDWidget = layout_module.StandInThreeDWidget
        slicer.qSlicerLayoutManager = layout_module.StandInLayoutManager
        slicer.qSlicerScriptedLoadableModuleWidget = application.StandInScriptedLoadableModuleWidget
        slicer.qSlicerScriptedLoadableModule = application.StandInScriptedLoadableModule
        if not hasattr(slicer, "selfTests"):
            slicer.selfTests = {}
        for name in application.Dialogs.UTIL_FUNCTIONS:
            setattr(slicer.util, name, getattr(self.dialogs, name))
        standins.StandInCtkDirectoryButton.browse_hook = self.dialogs.browse_directory
        from .diagnostics import guard_vtk_observation_mixin

        guard_vtk_observation_mixin()  # an exception in a module's VTK observer is recorded, not only printed

        from . import i18n, parameter_node, scripted

        for name, module in (("ScriptedLoadableModule", scripted), ("parameterNodeWrapper", parameter_node),
                             ("i18n", i18n)):
            sys.modules["slicer." + name] = module
            setattr(slicer, name, module)

        # a browser or file manager never opens: the URL is recorded (Qt's own hook for openUrl)
        self._urlRecorder = _UrlRecorder(self.opened_urls)
        for scheme in ("file", "http", "https"):
            QtGui.QDesktopServices.setUrlHandler(scheme, self._urlRecorder, "open")

        self.meter = StallMeter()
        self.modules_loaded: List[LoadedModule] = []
        self.process_events()
        atexit.register(self.shutdown)  # runs before the rmtree above (atexit is last in, first out)

    def shutdown(self) -> None:
        """Quit as Slicer quits: modules unloaded (their ``cleanup``), the views and the module logics let go
        of the scene, the scene cleared, then Qt's objects deleted; left to the interpreter's teardown,
        VTK and Qt objects are destroyed in an order neither library expects, and the process crashes."""
        for loaded in list(self.modules_loaded):
            try:
                loaded.unload()
            except Exception:  # noqa: BLE001 - quitting goes on
                pass
        self.modules_loaded.clear()
        self.layout_manager.shutdown()
        self.scene.Clear(1)
        for logic in (self.volumes_logic, self.segmentations_logic, self.color_logic, self.application_logic):
            if logic is not None:
                logic.SetMRMLScene(None)
        self.viewport.close()
        self.viewport.deleteLater()
        self.process_events()

    # --- modules ---
    def load_module(self, path, enter: bool = True) -> LoadedModule:
        """Load a scripted module as Slicer does: its folder on sys.path, the file imported as a module of
        its name, ``<Name>(parent)`` with a module object, ``<Name>Widget(parent)`` with a panel,
        ``setup()``, the scene set on the panel, then (``enter``) the module selected: ``enter()``."""
        import slicer

        from . import application

        path = str(Path(path).resolve())
        name = Path(path).stem
        folder = str(Path(path).parent)
        if folder not in sys.path:
            sys.path.insert(0, folder)
        module_object = application.StandInScriptedLoadableModule(name, path)
        python_module = sys.modules.get(name)
        if python_module is None or getattr(python_module, "__file__", None) != path:
            python_module = application.load_source_as_module(name, path)
        module_object._python = getattr(python_module, name)(module_object)
        setattr(slicer.modules, name + "Instance", module_object._python)
        setattr(slicer.modules, name.lower(), module_object)
        self.module_manager.register(module_object)
        if not self._startup_completed:  # Slicer says so once, after loading its modules
            self._startup_completed = True
            self.app.startupCompleted.emit()
        panel = application.StandInScriptedLoadableModuleWidget(module_object)
        panel.resize(420, 900)
        module_object._widget = panel
        panel.setPythonSource(path)
        panel.setup()
        panel.setMRMLScene(self.scene)
        loaded = LoadedModule(name, module_object, module_object._python, panel, self)
        self.modules_loaded.append(loaded)
        if enter:
            loaded.enter()
        self.process_events()
        return loaded

    # --- the scene ---
    def close_scene(self) -> None:
        """File > Close Scene: the scene cleared, singletons kept (``vtkMRMLScene::Clear(false)``)."""
        self.scene.Clear(0)
        self.process_events()

    # --- the event loop ---
    def process_events(self) -> None:
        self.qapp.processEvents()

    def run_until(self, predicate: Callable[[], bool], timeout: float = 30.0,
                  action: Optional[Callable[[], None]] = None) -> bool:
        """Run the event loop until ``predicate()`` holds (see :func:`slicerhost.loop.run_until`); the GUI
        stall meter (``host.meter``) measures the run."""
        from .loop import run_until

        return run_until(predicate, timeout=timeout, action=action, meter=self.meter)

    def temp_entries(self) -> List[Path]:
        """What is in the host's temporary folder now (``private_temp``: everything the module's process and
        its child processes put in the system's temporary folder)."""
        return sorted(self.temp_folder.iterdir())

    def problems(self, *kinds: str):
        return self.diagnostics.of_kind(*kinds)

    def reset_findings(self) -> None:
        """Forget recorded problems, slot timings, dialogs and URLs (between tests)."""
        self.diagnostics.clear()
        self.dialogs.clear()
        self.opened_urls.clear()
        self.meter.reset()


def _make_url_recorder():
    from PySide6 import QtCore

    class UrlRecorder(QtCore.QObject):
        def __init__(self, urls: list) -> None:
            super().__init__()
            self._urls = urls

        @QtCore.Slot(QtCore.QUrl)
        def open(self, url) -> None:
            self._urls.append(url.toString())
            logging.info("slicerhost: would open %s", url.toString())

    return UrlRecorder


def _UrlRecorder(urls):  # noqa: N802 - the class is made on first use: PySide6 is imported only then
    return _make_url_recorder()(urls)


def install(**options) -> SlicerHost:
    """The host, set up on first call (later calls return the same one). Options: ``layout`` (the view
    arrangement to start with, default conventional), ``color_tables`` (Slicer's default color nodes),
    ``private_temp`` (default True: the process's temporary folder, ``tempfile.tempdir`` and ``TMPDIR``, becomes
    the host's own ``temp_folder``, which is also ``slicer.app.temporaryPath``, so what the module leaves there
    can be checked and nothing is shared with other processes). Raises :class:`HostUnavailable` when PySide6 or slicer-core is missing."""
    global _HOST
    if _HOST is None:
        _HOST = SlicerHost(**options)
    return _HOST


def current() -> Optional[SlicerHost]:
    return _HOST
