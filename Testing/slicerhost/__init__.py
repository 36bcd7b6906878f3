"""A test host that runs a 3D Slicer scripted module's real widget and logic classes, with real Qt
(PySide6) on a real MRML scene (slicer-core), without a Slicer application.

The host emulates Slicer's APIs as Slicer defines them, not the module under test:

* ``import qt`` is PythonQt's qt module emulated over PySide6 (:mod:`slicerhost.pythonqt`: Qt properties as
  attributes, ``obj.connect("signal(args)", callable)``, the .ui loader);
* Slicer's own widget classes (qMRMLWidget, qMRMLNodeComboBox, qMRMLSegmentSelectorWidget,
  ctkCollapsibleButton, ctkSliderWidget, ctkDirectoryButton, ...) are stand-ins
  (:mod:`slicerhost.standins`), and ``import ctk`` gives the CTK ones;
* ``slicer.mrmlScene`` is a real ``vtkMRMLScene``; ``slicer.app`` (:mod:`slicerhost.application`) has a
  layout manager on the scene's real layout and slice nodes (:mod:`slicerhost.layout`), a module manager,
  settings in an INI file of a temporary folder; ``slicer.modules`` has the Segmentations and Volumes
  logic; ``slicer.util`` is slicer-core's, with dialogs that never block (:class:`~slicerhost.application.Dialogs`);
* ``slicer.ScriptedLoadableModule`` (:mod:`slicerhost.scripted`) and ``slicer.parameterNodeWrapper``
  (:mod:`slicerhost.parameter_node`) are written from Slicer's documented behaviour.

Use::

    import slicerhost
    host = slicerhost.install()                      # once per process
    panel = host.load_module("MedGenSlicer/MedGenSlicer.py")   # Module, Widget, setup(), enter()
    panel.ui.promptLineEdit.text = "a lesion"
    host.run_until(lambda: panel.ui.variantsListWidget.count > 0, timeout=60,
                   action=panel.ui.generateButton.click)
    print(host.meter.summary())                      # the longest GUI-thread stall
    assert not host.problems(), host.diagnostics.report()

What went wrong or oddly while the module ran (an exception escaping a slot, a string connection to a
signal that does not exist, a confirmation nobody scripted an answer for, ...) is in
``host.problems()``; what the module showed the user is in ``host.dialogs.shown``.
"""

from .diagnostics import DIAGNOSTICS, Problem
from .host import HostUnavailable, LoadedModule, SlicerHost, available, current, install
from .loop import StallMeter, pump, run_until

__all__ = ["DIAGNOSTICS", "HostUnavailable", "LoadedModule", "Problem", "SlicerHost", "StallMeter", "available",
           "current", "install", "pump", "run_until"]
