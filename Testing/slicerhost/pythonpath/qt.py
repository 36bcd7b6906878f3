"""``import qt`` on the test host: PythonQt's qt module emulated over PySide6.

Qt properties are attributes, ``obj.connect("signal(args)", callable)`` works, and ``qt.QUiLoader`` builds
Slicer's widget classes as the host's stand-ins. See ``slicerhost.pythonqt`` for how and why.
"""

import os as _os
import sys as _sys

try:
    from slicerhost.pythonqt import qt_attribute as _qt_attribute, qt_names as _qt_names
except ImportError:  # this folder is on sys.path but the package's parent is not
    _sys.path.insert(0, _os.path.dirname(_os.path.dirname(_os.path.dirname(_os.path.abspath(__file__)))))
    from slicerhost.pythonqt import qt_attribute as _qt_attribute, qt_names as _qt_names


def __getattr__(name):
    value = _qt_attribute(name)
    globals()[name] = value
    return value


def __dir__():
    return _qt_names()
