"""``slicer.i18n`` on the test host: ``translate(context, text)`` through Qt's translator (no translation is
installed, so the text comes back), ``tr(text)`` with the context Slicer derives from the caller's file
(``<package>.<file>`` inside a package, else the file name), and ``getContext``."""

from __future__ import annotations

import inspect
import os

from PySide6 import QtCore

_CONTEXTS: dict = {}


def translate(context: str, text: str) -> str:
    return QtCore.QCoreApplication.translate(context, text)


def getContext(sourceFile: str) -> str:
    if sourceFile not in _CONTEXTS:
        name = os.path.basename(sourceFile)
        if name.endswith(".py"):
            name = name[:-3]
        folder = os.path.dirname(sourceFile)
        if os.path.isfile(sourceFile) and os.path.isfile(os.path.join(folder, "__init__.py")):
            name = os.path.basename(folder) + "." + name
        _CONTEXTS[sourceFile] = name
    return _CONTEXTS[sourceFile]


def tr(text: str) -> str:
    frame = inspect.currentframe().f_back
    return translate(getContext(frame.f_code.co_filename), text)
