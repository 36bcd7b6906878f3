"""``import ctk`` on the test host: the CTK widget classes Slicer panels use, as the host's stand-ins
(``slicerhost.standins``); CTK classes without a stand-in are not available."""

import os as _os
import sys as _sys

try:
    from slicerhost import standins as _standins
except ImportError:  # this folder is on sys.path but the package's parent is not
    _sys.path.insert(0, _os.path.dirname(_os.path.dirname(_os.path.dirname(_os.path.abspath(__file__)))))
    from slicerhost import standins as _standins

ctkCollapsibleButton = _standins.StandInCtkCollapsibleButton
ctkSliderWidget = _standins.StandInCtkSliderWidget
ctkDirectoryButton = _standins.StandInCtkDirectoryButton
ctkCheckBox = _standins.StandInCtkCheckBox
ctkComboBox = _standins.StandInCtkComboBox


def __getattr__(name):
    raise AttributeError(f"the test host has no stand-in for ctk.{name}")
