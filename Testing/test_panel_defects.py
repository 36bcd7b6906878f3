"""The defects a review of MedGenSlicer.py against Slicer's sources found, each pinned by a test.

The pure pieces are tested through MedGenSlicerLib; what needs Slicer's Qt (slots, the timer, the
layout) is checked by reading the module, as test_panel_ui.py does, since PythonQt is not on PyPI.
MEDGEN_PANEL_MODULE may point at another copy of MedGenSlicer.py (to check an older one fails).
"""

from __future__ import annotations

import ast
import os
import stat
from pathlib import Path

import pytest

from MedGenSlicerLib import (
    EngineClient,
    InsecureTransport,
    deliver,
    local_engine_token,
    write_private_report,
)

ROOT = Path(__file__).resolve().parents[1]
MODULE = Path(os.environ.get("MEDGEN_PANEL_MODULE", ROOT / "MedGenSlicer" / "MedGenSlicer.py"))
TREE = ast.parse(MODULE.read_text(encoding="utf-8"))


def method(class_name: str, name: str) -> ast.FunctionDef:
    cls = next(n for n in ast.walk(TREE) if isinstance(n, ast.ClassDef) and n.name == class_name)
    found = [n for n in cls.body if isinstance(n, ast.FunctionDef) and n.name == name]
    assert found, f"{class_name}.{name} is missing"
    return found[0]


def widget(name: str) -> ast.FunctionDef:
    return method("MedGenSlicerWidget", name)


def calls(node: ast.AST) -> list[str]:
    """Dotted names of every call under node (self.logic.restoreView, slicer.util.tryWithErrorDisplay)."""
    names = []
    for call in (n for n in ast.walk(node) if isinstance(n, ast.Call)):
        parts, target = [], call.func
        while isinstance(target, ast.Attribute):
            parts.append(target.attr)
            target = target.value
        if isinstance(target, ast.Name):
            parts.append(target.id)
        names.append(".".join(reversed(parts)))
    return names


def catches_everything(function: ast.FunctionDef) -> bool:
    """Whether the function has an `except Exception` (or wider) handler."""
    for handler in (n for n in ast.walk(function) if isinstance(n, ast.ExceptHandler)):
        names = handler.type.elts if isinstance(handler.type, ast.Tuple) else [handler.type]
        if any(isinstance(n, ast.Name) and n.id in ("Exception", "BaseException") for n in names):
            return True
    return False


# --- timer-driven code drops events after an unexpected exception --------------------------------


def test_deliver_hands_on_the_events_after_one_that_fails():
    handled, reported = [], []

    def handle(event):
        if event == "bad":
            raise KeyError("progress")
        handled.append(event)

    assert deliver(["a", "bad", "b", "c"], handle, lambda event, error: reported.append((event, error))) == 3
    assert handled == ["a", "b", "c"]
    assert [event for event, _ in reported] == ["bad"] and isinstance(reported[0][1], KeyError)


def test_the_timer_hands_every_drained_event_through_deliver_and_guards_each_step():
    on_timer = widget("onTimer")
    loops = [n for n in ast.walk(on_timer) if isinstance(n, ast.For)
             and isinstance(n.iter, ast.Call) and "drain" in calls(n.iter)[0]]
    assert not loops, "onTimer loops over drain() itself: one failing event drops the rest"
    assert calls(on_timer).count("deliver") == 1  # the export's events
    assert "self._session.tick" in calls(on_timer) and calls(on_timer).count("self._guarded") >= 3, \
        "the job's updates and the finished calls are not each guarded"
    finishing = [name for name in calls(on_timer) if name.startswith("self._finish")]
    assert not finishing, f"onTimer calls {finishing} unguarded; an error there stops the timer's work"
    assert catches_everything(widget("_guarded"))


def test_the_timer_never_sleeps_on_the_gui_thread():
    """Slicer's main thread holds the GIL while Qt waits, so the old 20 ms sleep per tick was what let
    engine threads run; the work is in a worker process now and nothing on the GUI thread waits."""
    widget_class = next(n for n in ast.walk(TREE) if isinstance(n, ast.ClassDef) and n.name == "MedGenSlicerWidget")
    assert not [name for name in calls(widget_class) if name.endswith("sleep")], "the GUI thread sleeps"
    assert "THREAD_SLICE_S" not in MODULE.read_text(encoding="utf-8")


# --- slots that catch too little ------------------------------------------------------------------


USER_SLOTS = ("onCheckConnection", "onGenerate", "onCancel", "onShowVariant", "onAccept", "onSendToPacs",
              "onDeleteJob", "onOpenReport")
TIMER_FINISHERS = ("_finishConnectionCheck", "_finishAccept", "_finishReport", "_finishDelete", "_finishCancelOnClose")


@pytest.mark.parametrize("slot", USER_SLOTS)
def test_every_button_slot_shows_its_error_to_the_user(slot):
    body = widget(slot).body
    statements = [s for s in body if not (isinstance(s, ast.Expr) and isinstance(s.value, ast.Constant))]
    assert len(statements) == 1 and isinstance(statements[0], ast.With), \
        f"{slot} does not run inside slicer.util.tryWithErrorDisplay"
    assert calls(statements[0].items[0].context_expr)[0] == "slicer.util.tryWithErrorDisplay"


@pytest.mark.parametrize("finisher", TIMER_FINISHERS)
def test_every_timer_finisher_catches_any_error_and_reports_it(finisher):
    assert catches_everything(widget(finisher)), f"{finisher} lets unexpected errors escape into the timer"


# --- the token in plain text in Slicer.ini ---------------------------------------------------------


def test_the_token_is_never_written_to_slicer_settings():
    for call in (n for n in ast.walk(TREE) if isinstance(n, ast.Call)):
        if isinstance(call.func, ast.Attribute) and call.func.attr == "setValue" and call.args:
            key = ast.unparse(call.args[0])
            value = ast.unparse(call.args[1]) if len(call.args) > 1 else ""
            assert "TOKEN" not in key.upper() and "token" not in value, f"setValue({key}, {value}) stores the token"
    setup = ast.unparse(widget("setup"))
    assert "settings.remove(LEGACY_SETTINGS_TOKEN)" in setup, "a token older versions saved is left in Slicer.ini"


def test_a_local_engine_token_is_read_from_its_data_folder(tmp_path):
    (tmp_path / "token").write_text("s3cret\n", encoding="utf-8")
    assert local_engine_token("http://127.0.0.1:8765", tmp_path) == "s3cret"
    assert local_engine_token("localhost:8765", tmp_path) == "s3cret"
    assert local_engine_token("http://gpu-box.example:8765", tmp_path) is None  # never for another machine
    assert local_engine_token("http://127.0.0.1:8765", tmp_path / "missing") is None
    assert local_engine_token("not a url at all::", tmp_path) is None


def test_the_token_goes_over_plain_http_to_another_host_only_when_agreed():
    with pytest.raises(InsecureTransport, match="travel unencrypted"):
        EngineClient("http://gpu-box.example:8765", "s3cret")
    assert EngineClient("http://gpu-box.example:8765", "s3cret", allow_plain_http=True).url == "http://gpu-box.example:8765"
    assert EngineClient("https://gpu-box.example:8765", "s3cret").url.startswith("https://")
    assert EngineClient("http://127.0.0.1:8765", "s3cret").url == "http://127.0.0.1:8765"


def test_the_panel_asks_before_sending_the_token_in_the_clear():
    client = widget("_client")
    assert "slicer.util.confirmYesNoDisplay" in calls(client)
    assert any(isinstance(h.type, ast.Name) and h.type.id == "InsecureTransport"
               for h in ast.walk(client) if isinstance(h, ast.ExceptHandler))


# --- "Accepted ... in the DICOM database" claimed without checking ---------------------------------


def test_accept_copies_into_the_dicom_database_and_checks_the_series_is_there():
    importer = method("MedGenSlicerLogic", "importIntoDicomDatabase")
    imports = [c for c in ast.walk(importer) if isinstance(c, ast.Call) and calls(c)[0] == "DICOMUtils.importDicom"]
    assert imports, "importDicom is not called"
    assert any(k.arg == "copyFiles" and getattr(k.value, "value", None) is True for k in imports[0].keywords), \
        "the database would point into the output folder (import without copying)"
    assert "database.instancesForSeries" in calls(importer), "the import is not checked in the database"
    assert any(isinstance(n, ast.Raise) for n in ast.walk(importer))


# --- the layout switched on every job and never restored ------------------------------------------


def test_the_compare_view_remembers_and_restores_the_users_views():
    """Every slice view's volumes, opacities, links, plane and field of view come back (MedGenSlicerLib.views,
    tested on a real scene in test_views_slicer.py), not only the layout and the link flags."""
    show = ast.unparse(widget("_showCompare"))
    assert "ViewState.capture" in show and "self._savedView" in show
    assert "saved.restore" in ast.unparse(widget("_restoreView"))
    for closing in ("exit", "cleanup", "onSceneStartClose", "onGenerate", "onAccept"):
        assert "self._restoreView" in calls(widget(closing)), f"{closing} leaves the compare layout in place"


def test_the_compare_view_opens_only_while_the_module_is_shown():
    apply = ast.unparse(widget("_applyUpdate"))
    assert "self.parent.isEntered" in apply and "self._compareWanted = True" in apply
    assert "self._compareWanted" in ast.unparse(widget("enter"))


# --- resources and reload in developer mode -------------------------------------------------------


def test_resources_and_reload_work_from_the_source_tree():
    resource_path = widget("resourcePath")
    assert "moduleResourcePath" in calls(resource_path), "Edit UI would look for the .ui beside the module only"
    assert "self.resourcePath" in calls(widget("setup"))
    reload = ast.unparse(widget("onReload"))
    assert "MedGenSlicerLib" in reload and "sys.modules" in reload and "ScriptedLoadableModuleWidget.onReload" in reload
    cmake = (ROOT / "MedGenSlicer" / "CMakeLists.txt").read_text(encoding="utf-8")
    for lib in sorted((ROOT / "MedGenSlicer" / "MedGenSlicerLib").glob("*.py")):
        assert f"${{MODULE_NAME}}Lib/{lib.name}" in cmake, f"{lib.name} is not installed with the module"


# --- sliceWidget("Red") assumed to exist ------------------------------------------------------------


def test_no_slice_widget_or_layout_manager_is_used_without_a_check():
    for node in ast.walk(TREE):
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Call):
            called = calls(node.value)[0]
            assert not called.endswith(("sliceWidget", "layoutManager")), \
                f"line {node.lineno}: {called}(...).{node.attr} fails without that view or main window"


def test_the_current_slice_comes_from_a_view_on_screen():
    """A Red view outside the layout keeps a stale position: the slice comes from `views.slice_on_screen`."""
    assert "slice_on_screen" in calls(method("MedGenSlicerLogic", "sliceOnScreen"))
    assert "self.logic.sliceOnScreen" in calls(widget("onGenerate"))
    assert "redSliceNode" not in MODULE.read_text(encoding="utf-8")


# --- Delete from engine and Open report -----------------------------------------------------------


def test_delete_and_report_buttons_call_the_engine_and_open_a_private_file():
    delete = ast.unparse(widget("onDeleteJob"))
    assert "'delete_job'" in delete and "slicer.util.confirmOkCancelDisplay" in delete
    report = ast.unparse(widget("onOpenReport"))
    assert "'report'" in report and "self._reports" in report
    assert "qt.QDesktopServices.openUrl" in calls(widget("_finishReport"))
    # a downloaded report shows patient images: gone with its job, and when Slicer exits
    assert "remove_private_report" in calls(widget("_finishDelete"))
    assert "shutil.rmtree" in calls(widget("cleanup"))


def test_export_is_de_identified_unless_the_user_says_otherwise_and_confirms():
    node = next(n for n in ast.walk(TREE) if isinstance(n, ast.ClassDef) and n.name == "MedGenSlicerParameterNode")
    default = next(s for s in node.body if isinstance(s, ast.AnnAssign) and s.target.id == "deidentifyExport")
    assert default.value.value is True
    send = ast.unparse(widget("onSendToPacs"))
    assert "not deidentify and (not slicer.util.confirmYesNoDisplay" in send


def test_closing_the_scene_cancels_the_job_and_frees_generate():
    close = ast.unparse(widget("onSceneStartClose"))
    assert "self._closeSession(cancel=True)" in close and "self._updateButtons" in close


def test_the_report_is_written_where_only_this_user_can_read_it():
    path = write_private_report(b"<!DOCTYPE html><title>report</title>", "job/../1")
    try:
        assert path.read_bytes().startswith(b"<!DOCTYPE html>")
        assert path.name == "report-job____1.html"
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    finally:
        path.unlink()
        path.parent.rmdir()


def test_the_modality_choice_reaches_the_job_parameters():
    parameters = ast.unparse(widget("_parameters"))
    assert "source_modality=node.sourceModality or None" in parameters
    assert "self._parameterNode.sourceModality" in ast.unparse(widget("onModalityChanged"))
    ui = (ROOT / "Resources" / "UI" / "MedGenSlicer.ui").read_text(encoding="utf-8")
    assert 'name="modalityComboBox"' in ui
