"""``slicer.ScriptedLoadableModule`` on the test host: the base classes of a scripted module, written from
Slicer's documented behaviour (Base/Python/slicer/ScriptedLoadableModule.py).

* ``ScriptedLoadableModule(parent)``: keeps ``parent`` (the module object), resets its title, categories,
  dependencies, contributors, help and acknowledgement, takes ``Resources/Icons/<Module>.svg|png`` beside the
  module file as icon, and registers ``runTest`` in ``slicer.selfTests``.
* ``ScriptedLoadableModuleWidget(parent=None)``: ``moduleName`` from the class name, ``developerMode`` from
  the ``Developer/DeveloperMode`` setting, ``parent`` (a qMRMLWidget with a QVBoxLayout made and shown when
  none is given), ``layout`` (the parent's layout), ``resourcePath``, ``setup`` (the Reload & Test section in
  developer mode), ``cleanup`` (called when the module manager announces this module's unloading),
  ``onReload`` (``slicer.util.reloadScriptedModule``), ``onTest``/``onReloadAndTest``.
* ``ScriptedLoadableModuleLogic``: ``getParameterNode()`` returns the scene's ``vtkMRMLScriptedModuleNode``
  singleton tagged with the module name (made, named and added when missing; its ``ModuleName`` attribute
  restored after a scene close), ``getAllParameterNodes``, ``createParameterNode``.
* ``ScriptedLoadableModuleTest``: a ``unittest.TestCase`` with ``delayDisplay``, ``takeScreenshot``
  (message only) and a ``runTest`` running every method with "test" in its name.
"""

from __future__ import annotations

import importlib
import logging
import os
import unittest

import qt
import vtk  # noqa: F401 - Slicer's module imports it too

import slicer

__all__ = ["ScriptedLoadableModule", "ScriptedLoadableModuleWidget", "ScriptedLoadableModuleLogic",
           "ScriptedLoadableModuleTest"]


class ScriptedLoadableModule:
    def __init__(self, parent):
        super().__init__()
        self.parent = parent
        self.moduleName = self.__class__.__name__
        parent.title = ""
        parent.categories = []
        parent.dependencies = []
        parent.contributors = ["(template default)"]
        parent.helpText = "This module was created from a template and the help section has not yet been updated."
        parent.acknowledgementText = "(template default)"
        moduleDir = os.path.dirname(self.parent.path)
        for extension in (".svg", ".png"):
            iconPath = os.path.join(moduleDir, "Resources", "Icons", self.moduleName + extension)
            if os.path.isfile(iconPath):
                parent.icon = qt.QIcon(iconPath)
                break
        if not hasattr(slicer, "selfTests"):
            slicer.selfTests = {}
        slicer.selfTests[self.moduleName] = self.runTest

    def resourcePath(self, filename):
        return os.path.join(os.path.dirname(self.parent.path), "Resources", filename)

    def getDefaultModuleDocumentationLink(self, docPage=None):
        url = (slicer.app.documentationBaseUrl + docPage) if docPage else slicer.app.moduleDocumentationUrl(self.moduleName)
        return f'<p>For more information, see the <a href="{url}">online documentation</a>.</p>'

    def runTest(self, msec=100, **kwargs):
        module = importlib.import_module(self.__module__)
        className = self.moduleName + "Test"
        testCaseClass = getattr(module, className, None)
        if testCaseClass is None:
            raise AssertionError(f"Test case class not found: {self.__module__}.{className} ")
        testCase = testCaseClass()
        testCase.messageDelay = msec
        testCase.runTest(**kwargs)


class ScriptedLoadableModuleWidget:
    def __init__(self, parent=None):
        super().__init__()
        self.moduleName = self.__class__.__name__
        if self.moduleName.endswith("Widget"):
            self.moduleName = self.moduleName[: -len("Widget")]
        self.developerMode = slicer.util.settingsValue("Developer/DeveloperMode", False, converter=slicer.util.toBool)
        if not parent:
            self.parent = slicer.qMRMLWidget()
            self.parent.setLayout(qt.QVBoxLayout())
            self.parent.setMRMLScene(slicer.mrmlScene)
        else:
            self.parent = parent
        self.layout = self.parent.layout()
        if not parent:
            self.setup()
            self.parent.show()
        slicer.app.moduleManager().connect("moduleAboutToBeUnloaded(QString)", self._onModuleAboutToBeUnloaded)

    def resourcePath(self, filename):
        return os.path.join(os.path.dirname(slicer.util.modulePath(self.moduleName)), "Resources", filename)

    def cleanup(self):
        pass

    def _onModuleAboutToBeUnloaded(self, moduleName):
        if moduleName == self.moduleName:
            self.cleanup()
            slicer.app.moduleManager().disconnect("moduleAboutToBeUnloaded(QString)", self._onModuleAboutToBeUnloaded)

    def setupDeveloperSection(self):
        if not self.developerMode:
            return
        import ctk

        self.reloadCollapsibleButton = ctk.ctkCollapsibleButton()
        self.reloadCollapsibleButton.text = "Reload && Test"
        self.layout.addWidget(self.reloadCollapsibleButton)
        formLayout = qt.QFormLayout(self.reloadCollapsibleButton)
        self.reloadButton = qt.QPushButton("Reload")
        self.reloadButton.toolTip = "Reload this module."
        self.reloadButton.name = "ScriptedLoadableModuleTemplate Reload"
        self.reloadButton.connect("clicked()", self.onReload)
        self.testButton = qt.QPushButton("Reload and Test")
        self.testButton.name = "ScriptedLoadableModuleTemplate Testing"
        self.testButton.connect("clicked()", self.onReloadAndTest)
        row = qt.QHBoxLayout()
        row.addWidget(self.reloadButton)
        row.addWidget(self.testButton)
        formLayout.addRow(row)

    def setup(self):
        self.setupDeveloperSection()

    def onReload(self):
        print("\n" * 2 + "-" * 30 + "\nReloading module: " + self.moduleName + "\n" + "-" * 30 + "\n" * 2)
        slicer.util.reloadScriptedModule(self.moduleName)

    def _selfTestDelay(self):
        value = slicer.app.userSettings().value("Developer/SelfTestDisplayMessageDelay")
        return int(value) if value not in (None, "") else 100

    def onTest(self, **kwargs):
        with slicer.util.tryWithErrorDisplay("Test failed."):
            slicer.selfTests[self.moduleName](msec=self._selfTestDelay(), **kwargs)

    def onReloadAndTest(self, **kwargs):
        with slicer.util.tryWithErrorDisplay("Reload and Test failed."):
            self.onReload()
            slicer.selfTests[self.moduleName](msec=self._selfTestDelay(), **kwargs)

    def onEditSource(self):
        qt.QDesktopServices.openUrl(qt.QUrl.fromLocalFile(slicer.util.modulePath(self.moduleName)))


class ScriptedLoadableModuleLogic:
    def __init__(self, parent=None):
        super().__init__()
        self.moduleName = self.__class__.__name__
        if self.moduleName.endswith("Logic"):
            self.moduleName = self.moduleName[: -len("Logic")]
        self.isSingletonParameterNode = True

    def getParameterNode(self):
        if self.isSingletonParameterNode:
            node = slicer.mrmlScene.GetSingletonNode(self.moduleName, "vtkMRMLScriptedModuleNode")
            if node:
                if node.GetAttribute("ModuleName") != self.moduleName:  # a scene close may have reset it
                    node.SetAttribute("ModuleName", self.moduleName)
                return node
        else:
            for node in self.getAllParameterNodes():
                return node
        return slicer.mrmlScene.AddNode(self.createParameterNode())

    def getAllParameterNodes(self):
        found = []
        for index in range(slicer.mrmlScene.GetNumberOfNodesByClass("vtkMRMLScriptedModuleNode")):
            node = slicer.mrmlScene.GetNthNodeByClass(index, "vtkMRMLScriptedModuleNode")
            if node.GetAttribute("ModuleName") == self.moduleName:
                found.append(node)
        return found

    def createParameterNode(self):
        if slicer.mrmlScene is None:
            return None
        node = slicer.mrmlScene.CreateNodeByClass("vtkMRMLScriptedModuleNode")
        node.UnRegister(None)  # the Python variable owns it now
        if self.isSingletonParameterNode:
            node.SetSingletonTag(self.moduleName)
        node.SetAttribute("ModuleName", self.moduleName)
        node.SetName(slicer.mrmlScene.GenerateUniqueName(self.moduleName))
        return node


class ScriptedLoadableModuleTest(unittest.TestCase):
    def __init__(self, *args, **kwargs):
        self.moduleTestNames = []
        super().__init__(*args, **kwargs)
        self.enableScreenshots = False
        self.screenshotScaleFactor = 1.0
        if not self.moduleTestNames:
            self.moduleTestNames = [name for name in dir(self) if "test" in name and callable(getattr(self, name))]

    def delayDisplay(self, message, requestedDelay=None, msec=None):
        if hasattr(self, "messageDelay"):
            msec = self.messageDelay
        if msec is None:
            msec = requestedDelay if requestedDelay is not None else 100
        slicer.util.delayDisplay(message, msec)

    def takeScreenshot(self, name, description, type=-1):
        self.delayDisplay(description)

    def setUp(self):
        return

    def tearDown(self):
        return

    def runTest(self):
        if not self.moduleTestNames:
            logging.warning("No test is defined in " + self.__class__.__name__)
            return
        self.setUpClass()
        for name in self.moduleTestNames:
            self.setUp()
            logging.info(f"Running {name}")
            getattr(self, name)()
            self.tearDown()
        self.tearDownClass()
