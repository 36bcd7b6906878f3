"""MedGenSlicer: inpaint synthetic pathology under a segment, using the local MedGen engine.

The module only glues Slicer nodes to MedGenSlicerLib (HTTP client, payloads, result decoding), which
runs without Slicer and is tested against the real engine. Nothing here blocks the GUI: engine calls
run on background threads and a qt.QTimer picks up what they produced.

No `from __future__ import annotations` here: parameterNodeWrapper reads the annotations as types.
"""

import logging
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Annotated, List, Optional

import numpy as np
import qt
import slicer
import vtk
from slicer import vtkMRMLScalarVolumeNode, vtkMRMLSegmentationNode
from slicer.parameterNodeWrapper import WithinRange, parameterNodeWrapper
from slicer.ScriptedLoadableModule import (
    ScriptedLoadableModule,
    ScriptedLoadableModuleLogic,
    ScriptedLoadableModuleTest,
    ScriptedLoadableModuleWidget,
)
from slicer.util import VTKObservationMixin

from MedGenSlicerLib import (
    DEFAULT_URL,
    BackgroundCall,
    EngineClient,
    EngineError,
    ExportMonitor,
    GeometryError,
    InpaintParameters,
    InsecureTransport,
    JobMonitor,
    JobUpload,
    RequestRefused,
    deliver,
    export_summary,
    extract_zip,
    local_engine_token,
    normalize_url,
    parse_prompt_variations,
    random_seed,
    slice_in_view,
    write_private_report,
)
from MedGenSlicerLib.nrrd import NrrdImage
from MedGenSlicerLib.results import JobResult, VariantInfo
from MedGenSlicerLib.scene import SYNTHETIC_ATTRIBUTE, ijk_to_ras, load_variant, upload_from_scene

SETTINGS_URL = "MedGenSlicer/EngineURL"
LEGACY_SETTINGS_TOKEN = "MedGenSlicer/EngineToken"  # older versions saved the token here in plain text
SETTINGS_OUTPUT = "MedGenSlicer/OutputDirectory"
TIMER_INTERVAL_MS = 200
THREAD_SLICE_S = 0.02  # each timer tick gives the engine threads this long to run (see onTimer)
TEMPLATE_MISMATCH = "pixels_differ_from_dicom"  # the engine's code for voxels that differ from their DICOM files


def moduleResourcePath(relativePath: str) -> str:
    """A resource file of this module: ``Resources/`` beside this file where a build or install put it,
    else the extension's top-level ``Resources/`` when the module is loaded from the source tree."""
    moduleDir = Path(__file__).resolve().parent
    for candidate in (moduleDir / "Resources" / relativePath, moduleDir.parent / "Resources" / relativePath):
        if candidate.is_file():
            return str(candidate)
    raise FileNotFoundError(f"MedGenSlicer resource {relativePath} is in neither {moduleDir}/Resources nor "
                            f"{moduleDir.parent}/Resources")


#
# Module
#


class MedGenSlicer(ScriptedLoadableModule):
    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = "MedGenSlicer"
        self.parent.categories = ["Segmentation"]
        self.parent.dependencies = []
        self.parent.contributors = ["MedGenSlicer developers"]
        self.parent.helpText = (
            "Paint a segment, type a prompt, and a Stable Diffusion model running in the local MedGen engine "
            "inpaints that finding into the scan. Every result is marked synthetic, in the volume name and in "
            "the DICOM it writes. Start the engine with <code>medgen serve</code> and paste its token below."
        )
        self.parent.acknowledgementText = "Synthetic images are for research, testing and teaching; never for diagnosis."
        # Slicer looks for the icon beside this file only; from the source tree it sits one level up
        self.parent.icon = qt.QIcon(moduleResourcePath("Icons/MedGenSlicer.png"))


#
# Parameter node
#


@parameterNodeWrapper
class MedGenSlicerParameterNode:
    """What the panel sets; the engine URL and token live in QSettings, never in a saved scene."""

    inputVolume: vtkMRMLScalarVolumeNode
    segmentation: vtkMRMLSegmentationNode
    segmentId: str = ""
    currentSliceOnly: bool = True
    prompt: str = ""
    negativePrompt: str = ""
    promptVariations: str = ""
    model: str = ""
    steps: Annotated[int, WithinRange(1, 200)] = 30
    guidance: Annotated[float, WithinRange(0.0, 30.0)] = 7.5
    strength: Annotated[float, WithinRange(0.01, 1.0)] = 1.0
    seed: Annotated[int, WithinRange(0, 2147483647)] = 0
    numVariants: Annotated[int, WithinRange(1, 16)] = 1
    maskDilationMm: Annotated[float, WithinRange(0.0, 20.0)] = 2.0
    forceModality: bool = False
    exportDestination: str = ""
    deidentifyExport: bool = False


#
# Widget
#


class MedGenSlicerWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    def __init__(self, parent=None) -> None:
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic: Optional[MedGenSlicerLogic] = None
        self._parameterNode: Optional[MedGenSlicerParameterNode] = None
        self._parameterNodeGuiTag = None
        self._connectionCall: Optional[BackgroundCall] = None
        self._acceptCall: Optional[BackgroundCall] = None
        self._acceptFolder: Optional[Path] = None
        self._monitor: Optional[JobMonitor] = None
        self._exportMonitor: Optional[ExportMonitor] = None
        self._jobSource: Optional[vtkMRMLScalarVolumeNode] = None
        self._variants: List[dict] = []
        self._modelRecommendations: dict = {}
        self._calls: List[tuple] = []  # (BackgroundCall, what to do with its result) for delete and report
        self._jobId: Optional[str] = None  # the last job, for Delete from engine and Open report
        self._resendWithoutTemplates = None  # builds the last job's upload again, voxels only
        self._plainHttpAgreed: set = set()  # engine URLs the user agreed to send the token to over http
        self._savedView: Optional[dict] = None  # the layout and slice links before the compare view
        self._timer = qt.QTimer()

    def setup(self) -> None:
        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/MedGenSlicer.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)
        self.logic = MedGenSlicerLogic()

        settings = qt.QSettings()
        self.ui.engineUrlLineEdit.text = settings.value(SETTINGS_URL, DEFAULT_URL)
        # the token stays in memory for the session; a copy older versions saved in Slicer.ini goes
        if settings.contains(LEGACY_SETTINGS_TOKEN):
            settings.remove(LEGACY_SETTINGS_TOKEN)
        self.ui.tokenLineEdit.text = local_engine_token(self.ui.engineUrlLineEdit.text) or ""
        self.ui.outputDirectoryButton.directory = settings.value(
            SETTINGS_OUTPUT, str(Path(slicer.app.defaultScenePath) / "MedGenSlicer")
        )
        self.ui.adaptersTableWidget.setHorizontalHeaderLabels(["Adapter", "Weight"])

        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)

        self.ui.checkConnectionButton.connect("clicked(bool)", self.onCheckConnection)
        self.ui.engineUrlLineEdit.connect("editingFinished()", self.onEngineSettingsChanged)
        self.ui.tokenLineEdit.connect("editingFinished()", self.onEngineSettingsChanged)
        self.ui.segmentSelector.connect("currentNodeChanged(vtkMRMLNode*)", self.onSegmentationChanged)
        self.ui.segmentSelector.connect("currentSegmentChanged(QString)", self.onSegmentChanged)
        self.ui.currentSliceRadioButton.connect("toggled(bool)", self.onScopeChanged)
        self.ui.modelComboBox.connect("currentTextChanged(QString)", self.onModelChanged)
        self.ui.diceButton.connect("clicked(bool)", self.onDice)
        self.ui.generateButton.connect("clicked(bool)", self.onGenerate)
        self.ui.cancelButton.connect("clicked(bool)", self.onCancel)
        self.ui.variantsListWidget.connect("currentRowChanged(int)", self.onVariantSelected)
        self.ui.variantsListWidget.connect("itemDoubleClicked(QListWidgetItem*)", lambda item: self.onShowVariant())
        self.ui.showVariantButton.connect("clicked(bool)", self.onShowVariant)
        self.ui.acceptButton.connect("clicked(bool)", self.onAccept)
        self.ui.destinationComboBox.connect("currentTextChanged(QString)", self.onDestinationChanged)
        self.ui.sendToPacsButton.connect("clicked(bool)", self.onSendToPacs)
        self.ui.deleteJobButton.connect("clicked(bool)", self.onDeleteJob)
        self.ui.openReportButton.connect("clicked(bool)", self.onOpenReport)
        self.ui.outputDirectoryButton.connect(
            "directoryChanged(QString)", lambda path: qt.QSettings().setValue(SETTINGS_OUTPUT, path)
        )
        self._timer.setInterval(TIMER_INTERVAL_MS)
        self._timer.connect("timeout()", self.onTimer)

        self.initializeParameterNode()

    def resourcePath(self, filename: str) -> str:
        """Resources sit in the extension's top-level Resources/ (the design's layout); the template's
        resourcePath looks beside the module only, which "Edit UI" and a source-tree load would miss."""
        return moduleResourcePath(filename)

    def onReload(self) -> None:
        """Developer mode's Reload: MedGenSlicerLib too, not only this file."""
        for name in [name for name in sys.modules if name == "MedGenSlicerLib" or name.startswith("MedGenSlicerLib.")]:
            del sys.modules[name]
        ScriptedLoadableModuleWidget.onReload(self)

    def cleanup(self) -> None:
        self._timer.stop()
        if self._monitor is not None and self._monitor.is_alive():
            self._monitor.cancel()
        self._restoreView()
        self.removeObservers()

    def enter(self) -> None:
        self.initializeParameterNode()

    def exit(self) -> None:
        self._restoreView()
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self._parameterNodeGuiTag = None
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._updateButtons)

    def onSceneStartClose(self, caller, event) -> None:
        self._restoreView()
        self.setParameterNode(None)
        # the variant volumes and their source leave with the scene
        self._variants = []
        self._jobSource = None
        self.ui.variantsListWidget.clear()

    def onSceneEndClose(self, caller, event) -> None:
        if self.parent.isEntered:
            self.initializeParameterNode()

    def initializeParameterNode(self) -> None:
        self.setParameterNode(self.logic.getParameterNode())
        if not self._parameterNode.inputVolume:
            first = slicer.mrmlScene.GetFirstNodeByClass("vtkMRMLScalarVolumeNode")
            if first and first.GetAttribute(SYNTHETIC_ATTRIBUTE) is None:
                self._parameterNode.inputVolume = first

    def setParameterNode(self, inputParameterNode: Optional[MedGenSlicerParameterNode]) -> None:
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._updateButtons)
        self._parameterNode = inputParameterNode
        if self._parameterNode:
            self._parameterNodeGuiTag = self._parameterNode.connectGui(self.ui)
            self.addObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._updateButtons)
            # read first: setting the segmentation can select its first segment and overwrite segmentId
            segmentId = self._parameterNode.segmentId
            self.ui.segmentSelector.setCurrentNode(self._parameterNode.segmentation)
            if segmentId:
                self.ui.segmentSelector.setCurrentSegmentID(segmentId)
            self.ui.currentSliceRadioButton.checked = self._parameterNode.currentSliceOnly
            self.ui.allSlicesRadioButton.checked = not self._parameterNode.currentSliceOnly
            self._updateButtons()

    # --- panel state ---------------------------------------------------------------------------

    def _updateButtons(self, caller=None, event=None) -> None:
        node = self._parameterNode
        busy = self._monitor is not None and self._monitor.is_alive()
        ready = bool(node and node.inputVolume and node.segmentation and node.segmentId and node.prompt.strip())
        self.ui.generateButton.enabled = ready and not busy
        self.ui.generateButton.toolTip = (
            "Inpaint the segment with the prompt" if ready else "Choose a volume and a segment, and type a prompt"
        )
        self.ui.cancelButton.enabled = busy
        chosen = self.ui.variantsListWidget.currentRow >= 0
        self.ui.showVariantButton.enabled = chosen
        self.ui.acceptButton.enabled = chosen and (self._acceptCall is None or self._acceptCall.done())
        exporting = self._exportMonitor is not None and self._exportMonitor.is_alive()
        destinations = self.ui.destinationComboBox.count > 0
        self.ui.sendToPacsButton.enabled = chosen and destinations and not busy and not exporting
        finished = self._jobId is not None and not busy
        self.ui.deleteJobButton.enabled = finished
        self.ui.openReportButton.enabled = finished and bool(self._variants)
        self.ui.sendToPacsButton.toolTip = (
            "Send the chosen variant's synthetic DICOM series from the engine to the chosen PACS" if destinations
            else "The engine has no PACS destinations: start it with "
                 "`medgen serve --destination NAME=dicom://CALLED_AET@HOST:PORT`, then Check connection"
        )

    def _showStatus(self, text: str, error: bool = False) -> None:
        self.ui.statusLabel.text = text
        self.ui.statusLabel.setStyleSheet("color: #c0392b;" if error else "")
        (logging.error if error else logging.info)("MedGenSlicer: %s", text)

    def _client(self) -> EngineClient:
        """A client for the panel's URL and token. Over plain http to another machine the token and the
        scans travel in the clear: only after the user agrees, once per URL and session."""
        url, token = self.ui.engineUrlLineEdit.text, self.ui.tokenLineEdit.text
        try:
            return EngineClient(url, token, allow_plain_http=normalize_url(url) in self._plainHttpAgreed)
        except InsecureTransport as error:
            if not slicer.util.confirmYesNoDisplay(f"{error}.\n\nSend them unencrypted to this engine anyway?",
                                                   windowTitle="MedGenSlicer: unencrypted connection"):
                raise
            self._plainHttpAgreed.add(normalize_url(url))
            return EngineClient(url, token, allow_plain_http=True)

    # --- engine connection -------------------------------------------------------------------

    def onEngineSettingsChanged(self) -> None:
        """Only the URL is saved in Slicer's settings; the token is read from a local engine's data folder
        when the field is empty, and otherwise lives in the field for this session."""
        url = self.ui.engineUrlLineEdit.text.strip()
        qt.QSettings().setValue(SETTINGS_URL, url)
        if not self.ui.tokenLineEdit.text.strip():
            self.ui.tokenLineEdit.text = local_engine_token(url) or ""

    def onCheckConnection(self) -> None:
        with slicer.util.tryWithErrorDisplay("Could not check the connection to the engine."):
            self.onEngineSettingsChanged()
            try:
                client = self._client()
            except EngineError as error:
                self.ui.connectionStatusLabel.text = str(error)
                return
            self.ui.connectionStatusLabel.text = "Connecting…"
            self.ui.checkConnectionButton.enabled = False
            self._connectionCall = BackgroundCall(client.check_connection)
            self._timer.start()

    def _finishConnectionCheck(self) -> None:
        call, self._connectionCall = self._connectionCall, None
        self.ui.checkConnectionButton.enabled = True
        try:
            info = call.result()
        except EngineError as error:
            self.ui.connectionStatusLabel.text = f"Not connected: {error}"
            return
        except Exception as error:  # noqa: BLE001 - a bug must not leave the button disabled or kill the timer
            self.ui.connectionStatusLabel.text = f"Not connected: unexpected error: {type(error).__name__}: {error}"
            logging.exception("MedGenSlicer: connection check")
            return
        try:
            self._showConnection(info)
        except Exception as error:  # noqa: BLE001 - an answer of another shape (another engine version)
            self.ui.connectionStatusLabel.text = f"Connected, but the engine's answer was not understood: {error}"
            logging.exception("MedGenSlicer: engine info")

    def _showConnection(self, info: dict) -> None:
        ready = [m["name"] for m in info["models"] if m["state"] != "failed"]
        self.ui.connectionStatusLabel.text = (
            f"Connected: medgen {info['version']} on {info['device']}; "
            f"{len(ready)} model(s), {info['queue']['queued']} job(s) waiting"
        )
        self._fillModels(info)
        self._fillDestinations(info)

    def _fillModels(self, info: dict) -> None:
        previous = self._parameterNode.model if self._parameterNode else ""
        combo = self.ui.modelComboBox
        # what each model recommends (its medgen.json), applied when the user picks it
        self._modelRecommendations = {model["name"]: model.get("recommended", {}) for model in info["models"]}
        # refilling is not the user picking a model: signals stay off so their steps and guidance are kept
        wasBlocked = combo.blockSignals(True)
        try:
            combo.clear()
            for model in info["models"]:
                combo.addItem(model["name"])
                if model.get("error"):
                    combo.setItemData(combo.count - 1, f"failed to load: {model['error']}", qt.Qt.ToolTipRole)
            default = next((m["name"] for m in info["models"] if m["default"]), "")
            combo.setCurrentText(previous if previous in [m["name"] for m in info["models"]] else default)
        finally:
            combo.blockSignals(wasBlocked)
        if combo.currentText != previous:
            self.onModelChanged(combo.currentText)
        table = self.ui.adaptersTableWidget
        table.setRowCount(0)
        for adapter in info.get("adapters", []):
            row = table.rowCount
            table.insertRow(row)
            item = qt.QTableWidgetItem(adapter["name"])
            item.setFlags(qt.Qt.ItemIsUserCheckable | qt.Qt.ItemIsEnabled)
            item.setCheckState(qt.Qt.Unchecked)
            table.setItem(row, 0, item)
            weight = qt.QDoubleSpinBox()
            weight.setRange(-2.0, 2.0)
            weight.setSingleStep(0.1)
            weight.value = 1.0
            table.setCellWidget(row, 1, weight)
        self.ui.adaptersTableWidget.enabled = table.rowCount > 0
        self.ui.adaptersTableWidget.toolTip = "" if table.rowCount else "the engine offers no adapters"

    def _fillDestinations(self, info: dict) -> None:
        previous = self._parameterNode.exportDestination if self._parameterNode else ""
        combo = self.ui.destinationComboBox
        combo.clear()
        names = []
        for destination in info.get("destinations", []):
            combo.addItem(destination["name"])
            combo.setItemData(combo.count - 1, f"{destination['kind']}: {destination['address']}", qt.Qt.ToolTipRole)
            names.append(destination["name"])
        if previous in names:
            combo.setCurrentText(previous)
        self._updateButtons()

    def _chosenAdapters(self) -> list:
        table = self.ui.adaptersTableWidget
        chosen = []
        for row in range(table.rowCount):
            item = table.item(row, 0)
            if item is not None and item.checkState() == qt.Qt.Checked:
                chosen.append((item.text(), float(table.cellWidget(row, 1).value)))
        return chosen

    # --- inputs ------------------------------------------------------------------------------

    def onSegmentationChanged(self, node) -> None:
        if self._parameterNode:
            self._parameterNode.segmentation = node

    def onSegmentChanged(self, segmentId: str) -> None:
        if self._parameterNode:
            self._parameterNode.segmentId = segmentId or ""

    def onScopeChanged(self, currentSliceOnly: bool) -> None:
        if self._parameterNode:
            self._parameterNode.currentSliceOnly = bool(currentSliceOnly)

    def onModelChanged(self, name: str) -> None:
        if not self._parameterNode:
            return
        self._parameterNode.model = name or ""
        recommended = self._modelRecommendations.get(name, {})
        if "num_inference_steps" in recommended:
            self._parameterNode.steps = int(recommended["num_inference_steps"])
        if "guidance_scale" in recommended:
            self._parameterNode.guidance = float(recommended["guidance_scale"])

    def onDestinationChanged(self, name: str) -> None:
        if self._parameterNode and name:
            self._parameterNode.exportDestination = name

    def onDice(self) -> None:
        if self._parameterNode:
            self._parameterNode.seed = random_seed()

    # --- generate ----------------------------------------------------------------------------

    def onGenerate(self) -> None:
        with slicer.util.tryWithErrorDisplay("Could not start the generation.", waitCursor=True):
            node = self._parameterNode
            client = self._client()
            parameters = InpaintParameters(
                prompt=node.prompt,
                negative_prompt=node.negativePrompt or None,
                prompt_variations=parse_prompt_variations(node.promptVariations),
                model=node.model or None,
                adapters=self._chosenAdapters(),
                control_from=self.ui.controlFromComboBox.currentText,
                num_inference_steps=node.steps,
                guidance_scale=node.guidance,
                strength=node.strength,
                seed=node.seed,
                num_variants=node.numVariants,
                mask_dilate_mm=node.maskDilationMm,
                force_modality=node.forceModality,
            )
            sliceToRAS = self.logic.redSliceToRAS() if node.currentSliceOnly else None
            volume, segmentation, segmentId = node.inputVolume, node.segmentation, node.segmentId
            upload = self.logic.buildUpload(volume, segmentation, segmentId, parameters, sliceToRAS)
            # if the engine finds the volume's DICOM files differ from its voxels, the same job goes again
            # with the voxels only (the synthetic series then starts a study of its own)
            self._resendWithoutTemplates = lambda: self.logic.buildUpload(
                volume, segmentation, segmentId, parameters, sliceToRAS, useDicomTemplates=False)
            self._restoreView()
            self._jobSource = volume
            self._variants = []
            self._jobId = None
            self.ui.variantsListWidget.clear()
            self._startJob(client, upload)

    def _startJob(self, client: EngineClient, upload: JobUpload) -> None:
        self.ui.progressBar.value = 0
        self._monitor = JobMonitor(client, upload).start()
        self._showStatus(f"Sending slices {upload.slab_start}–{upload.slab_stop - 1} "
                         f"({upload.size / 1e6:.1f} MB) to the engine…")
        self._timer.start()
        self._updateButtons()

    def onCancel(self) -> None:
        with slicer.util.tryWithErrorDisplay("Could not cancel the job."):
            if self._monitor is not None:
                self._monitor.cancel()
                self._showStatus("Cancelling: the engine stops at its next step…")
                self.ui.cancelButton.enabled = False

    def onTimer(self) -> None:
        """Everything the background threads produced since the last tick; waits only THREAD_SLICE_S.

        Slicer's PythonQt keeps the GIL on the main thread between Python calls, so the engine threads
        run only while this sleep releases it.

        Every step is guarded: an unexpected error is shown in the panel and the other steps, and the
        events after the one that failed, are still handled; the timer goes on until all is done.
        """
        time.sleep(THREAD_SLICE_S)
        if self._connectionCall is not None and self._connectionCall.done():
            self._guarded("connection check", self._finishConnectionCheck)
        if self._acceptCall is not None and self._acceptCall.done():
            self._guarded("accept", self._finishAccept)
        for call, finish in [entry for entry in self._calls if entry[0].done()]:
            self._calls.remove((call, finish))
            self._guarded("engine call", lambda: finish(call))
        if self._monitor is not None:
            deliver(self._monitor.drain(), self._handleJobEvent,
                    lambda event, error: self._showUnexpected(f"job event '{event.kind}'", error))
        if self._exportMonitor is not None:
            deliver(self._exportMonitor.drain(), self._handleExportEvent,
                    lambda event, error: self._showUnexpected(f"export event '{event.kind}'", error))
        idle = (
            self._connectionCall is None
            and (self._acceptCall is None or self._acceptCall.done())
            and not self._calls
            and (self._monitor is None or not self._monitor.is_alive())
            and (self._exportMonitor is None or not self._exportMonitor.is_alive())
        )
        drained = all(m is None or m.events.empty() for m in (self._monitor, self._exportMonitor))
        if idle and drained:
            self._timer.stop()
            self._guarded("panel update", self._updateButtons)

    def _guarded(self, what: str, step) -> None:
        try:
            step()
        except Exception as error:  # noqa: BLE001 - shown to the user; the timer must go on
            self._showUnexpected(what, error)

    def _showUnexpected(self, what: str, error: Exception) -> None:
        logging.error("MedGenSlicer: %s failed", what, exc_info=(type(error), error, error.__traceback__))
        self._showStatus(f"Unexpected error in the {what}: {type(error).__name__}: {error}", error=True)

    def _handleJobEvent(self, event) -> None:
        if event.kind == "submitted":
            position = event.status.get("queue_position")
            self._showStatus("Queued" + (f" (position {position})" if position and position > 1 else "") + "…")
        elif event.kind == "status":
            status = event.status
            progress = status["progress"]
            if status["state"] == "queued":
                self._showStatus(f"Waiting in the engine's queue (position {status['queue_position']})…")
            elif status["state"] == "running" and progress["steps_total"]:
                self.ui.progressBar.maximum = progress["steps_total"]
                self.ui.progressBar.value = progress["steps_done"]
                self._showStatus(f"Generating: step {progress['steps_done']} of {progress['steps_total']}, "
                                 f"{status['variants_ready']} of {status['num_variants']} variant(s) ready")
        elif event.kind == "variant":
            self._addVariant(event.variant, event.image, event.result)
        elif event.kind == "finished":
            state = event.status["state"]
            if state == "succeeded":
                self.ui.progressBar.value = self.ui.progressBar.maximum
                self._showStatus(f"Done: {len(self._variants)} variant(s). Compare them with the source, then Accept one.")
            else:
                self._showStatus(f"Cancelled; {len(self._variants)} variant(s) finished before the engine stopped.")
            self._updateButtons()
        elif event.kind == "error":
            error = event.error
            if (isinstance(error, RequestRefused) and error.code == TEMPLATE_MISMATCH
                    and self._resendWithoutTemplates is not None):
                resend, self._resendWithoutTemplates = self._resendWithoutTemplates, None
                self._showStatus("The volume's voxels differ from its DICOM files (edited, or a copy of the "
                                 "loaded series): sending its voxels alone; the synthetic series will not join "
                                 "the source's study.")
                self._startJob(self._client(), resend())
                return
            self._showStatus(str(error), error=True)
            self._updateButtons()
        if event.kind in ("submitted", "finished") and self._monitor is not None and self._monitor.job_id:
            self._jobId = self._monitor.job_id

    def _addVariant(self, variant: VariantInfo, image: NrrdImage, result: JobResult) -> None:
        if self._jobSource is None or not slicer.mrmlScene.IsNodePresent(self._jobSource):
            self._showStatus(f"Variant {variant.index} arrived after its source volume left the scene", error=True)
            return
        jobId = self._monitor.job_id if self._monitor is not None else result.job_id
        try:
            node = self.logic.addVariantVolume(self._jobSource, image, result, variant, jobId)
        except (GeometryError, ValueError) as error:
            self._showStatus(f"Variant {variant.index} could not be placed on the source volume: {error}", error=True)
            return
        except Exception as error:  # noqa: BLE001 - the next variants must still arrive
            self._showUnexpected(f"placing variant {variant.index}", error)
            return
        self._variants.append({"node": node, "variant": variant, "job_id": jobId})
        self.ui.variantsListWidget.addItem(f"Variant {variant.index} (seed {variant.seed})")
        if len(self._variants) == 1:
            self.ui.variantsListWidget.setCurrentRow(0)
            self._guarded("compare view", self.onShowVariant)

    # --- review and accept -------------------------------------------------------------------

    def onVariantSelected(self, row: int) -> None:
        self._updateButtons()

    def _selected(self) -> Optional[dict]:
        row = self.ui.variantsListWidget.currentRow
        return self._variants[row] if 0 <= row < len(self._variants) else None

    def onShowVariant(self) -> None:
        with slicer.util.tryWithErrorDisplay("Could not show the variant beside its source."):
            chosen = self._selected()
            if chosen is None:
                return
            previous = self.logic.showSideBySide(self._jobSource, chosen["node"])
            if previous is None:
                self._showStatus("No slice views to compare in (Slicer runs without its main window); "
                                 "the variant is in the scene as " + chosen["node"].GetName())
            elif self._savedView is None:
                self._savedView = previous  # the user's own view, restored when the compare view closes

    def _restoreView(self) -> None:
        """Back to the user's layout and slice links, once the compare view closes (module left, new job,
        scene closed)."""
        saved, self._savedView = self._savedView, None
        if saved is not None:
            try:
                self.logic.restoreView(saved)
            except Exception as error:  # noqa: BLE001 - a view that cannot be restored is not worth a crash
                logging.warning("MedGenSlicer: could not restore the layout: %s", error)

    def onAccept(self) -> None:
        with slicer.util.tryWithErrorDisplay("Could not accept the variant.", waitCursor=True):
            chosen = self._selected()
            if chosen is None:
                return
            folder = Path(self.ui.outputDirectoryButton.directory) / f"{chosen['job_id']}-variant-{chosen['variant'].index:02d}"
            client = self._client()
            self._acceptCall = BackgroundCall(
                lambda: extract_zip(client.download(chosen["variant"].dicom_zip_url), folder)
            )
            self._acceptFolder = folder
            self._showStatus(f"Writing the synthetic series to {folder}…")
            self._timer.start()
            self._updateButtons()

    def _finishAccept(self) -> None:
        call, self._acceptCall = self._acceptCall, None
        try:
            files = call.result()
        except Exception as error:  # noqa: BLE001 - engine, zip and disk errors alike end in the panel
            self._showStatus(f"Accept failed: {error}", error=True)
            self._updateButtons()
            return
        # reported in the panel, not raised: this runs in the timer, which must go on draining the monitors
        try:
            found = self.logic.importIntoDicomDatabase(self._acceptFolder, files)
        except Exception as error:  # noqa: BLE001 - the series is on disk either way
            self._showStatus(f"Wrote {len(files)} synthetic instance(s) to {self._acceptFolder}, but could not add "
                             f"them to the DICOM database: {error}", error=True)
        else:
            self._showStatus(f"Accepted: {len(files)} synthetic instance(s) in {self._acceptFolder}; the DICOM "
                             f"database holds the series with {found} instance(s) (its description starts "
                             f"with SYNTHETIC).")
        self._updateButtons()

    # --- send to PACS ------------------------------------------------------------------------

    def onSendToPacs(self) -> None:
        with slicer.util.tryWithErrorDisplay("Could not send the variant to the PACS."):
            chosen = self._selected()
            destination = self.ui.destinationComboBox.currentText
            if chosen is None or not destination:
                return
            self._exportMonitor = ExportMonitor(
                self._client(), chosen["job_id"], destination, variant=chosen["variant"].index,
                deidentify=bool(self._parameterNode and self._parameterNode.deidentifyExport),
            ).start()
            self._showExportStatus(f"Sending variant {chosen['variant'].index} to {destination}…")
            self._timer.start()
            self._updateButtons()

    # --- the job on the engine: report and deletion ------------------------------------------

    def _runInBackground(self, function, finish) -> None:
        self._calls.append((BackgroundCall(function), finish))
        self._timer.start()
        self._updateButtons()

    def onOpenReport(self) -> None:
        """Download the finished job's HTML report into a file only this user can read, and open it."""
        with slicer.util.tryWithErrorDisplay("Could not open the job's report."):
            jobId, client = self._jobId, self._client()
            if not jobId:
                return
            self._showStatus("Downloading the job's report…")
            self._runInBackground(lambda: write_private_report(client.report(jobId), jobId), self._finishReport)

    def _finishReport(self, call: BackgroundCall) -> None:
        try:
            path = call.result()
        except Exception as error:  # noqa: BLE001 - engine and disk errors alike end in the panel
            self._showStatus(f"Could not get the report: {error}", error=True)
            return
        if not qt.QDesktopServices.openUrl(qt.QUrl.fromLocalFile(str(path))):
            self._showStatus(f"The report is in {path}; no web browser opened it.", error=True)
        else:
            self._showStatus(f"Opened the report ({path}).")

    def onDeleteJob(self) -> None:
        """Remove the job's uploaded scan and results from the engine; the volumes in the scene stay."""
        with slicer.util.tryWithErrorDisplay("Could not delete the job from the engine."):
            jobId, client = self._jobId, self._client()
            if not jobId or not slicer.util.confirmOkCancelDisplay(
                    f"Delete job {jobId} (its uploaded slices and all its results) from the engine?",
                    windowTitle="MedGenSlicer"):
                return
            self._runInBackground(lambda: client.delete_job(jobId), lambda call: self._finishDelete(call, jobId))

    def _finishDelete(self, call: BackgroundCall, jobId: str) -> None:
        try:
            call.result()
        except RequestRefused as error:
            if error.status == 410:
                self._jobId = None
                self._showStatus(f"Job {jobId} was already deleted from the engine.")
            else:
                self._showStatus(f"Could not delete job {jobId}: {error}", error=True)
        except Exception as error:  # noqa: BLE001 - engine errors and bugs alike end in the panel
            self._showStatus(f"Could not delete job {jobId}: {error}", error=True)
        else:
            self._jobId = None
            self._showStatus(f"Deleted job {jobId} from the engine; its volumes stay in the scene.")
        self._updateButtons()

    def _handleExportEvent(self, event) -> None:
        if event.kind in ("started", "status"):
            self._showExportStatus(export_summary(event.status))
        elif event.kind == "finished":
            self._showExportStatus(export_summary(event.status), error=event.status["state"] != "succeeded")
            self._updateButtons()
        elif event.kind == "error":
            self._showExportStatus(f"Send to PACS failed: {event.error}", error=True)
            self._updateButtons()

    def _showExportStatus(self, text: str, error: bool = False) -> None:
        self.ui.pacsStatusLabel.text = text
        self.ui.pacsStatusLabel.setStyleSheet("color: #c0392b;" if error else "")
        (logging.error if error else logging.info)("MedGenSlicer: %s", text)


#
# Logic
#


class MedGenSlicerLogic(ScriptedLoadableModuleLogic):
    """Slicer nodes ⇄ MedGenSlicerLib; usable without the GUI (see the self-test)."""

    def __init__(self) -> None:
        ScriptedLoadableModuleLogic.__init__(self)

    def getParameterNode(self):
        return MedGenSlicerParameterNode(super().getParameterNode())

    @staticmethod
    def ijkToRas(volumeNode) -> np.ndarray:
        return ijk_to_ras(volumeNode)

    @staticmethod
    def redSliceNode():
        """The Red view's slice node: from the layout when there is one, else from the scene (Slicer run
        with --no-main-window, or a layout without a Red view); None when there is neither."""
        layoutManager = slicer.app.layoutManager()
        sliceWidget = layoutManager.sliceWidget("Red") if layoutManager is not None else None
        if sliceWidget is not None:
            return sliceWidget.mrmlSliceNode()
        return slicer.mrmlScene.GetSingletonNode("Red", "vtkMRMLSliceNode")

    @classmethod
    def redSliceToRAS(cls) -> np.ndarray:
        sliceNode = cls.redSliceNode()
        if sliceNode is None:
            raise GeometryError("there is no Red slice view to take the current slice from; choose "
                                "'every slice the segment touches'")
        return slicer.util.arrayFromVTKMatrix(sliceNode.GetSliceToRAS())

    def buildUpload(self, volumeNode, segmentationNode, segmentId: str, parameters: InpaintParameters,
                    sliceToRAS: Optional[np.ndarray] = None, useDicomTemplates: bool = True) -> JobUpload:
        """The job upload: the volume's current voxels on the slab the segment touches (the slice
        ``sliceToRAS`` shows, when given); its DICOM files only as header templates."""
        slices = None
        if sliceToRAS is not None:
            shape = tuple(reversed(volumeNode.GetImageData().GetDimensions()))
            slices = [slice_in_view(ijk_to_ras(volumeNode), shape, sliceToRAS)]
        return upload_from_scene(volumeNode, segmentationNode, segmentId, parameters, slices,
                                 use_dicom_templates=useDicomTemplates)

    def addVariantVolume(self, sourceNode, image: NrrdImage, result: JobResult, variant: VariantInfo,
                         jobId: str):
        """A new volume like the source, with the variant's slab in place, named and marked synthetic."""
        return load_variant(sourceNode, image, result, variant, job_id=jobId)

    @staticmethod
    def showSideBySide(sourceNode, variantNode) -> Optional[dict]:
        """Source on the left, variant on the right, both on the plane the Red view shows now (where the
        user painted; FitSliceToAll alone would move them to the volume's centre), slices linked.

        Returns the layout and slice links it changed, for `restoreView`; None without slice views.
        """
        layoutManager = slicer.app.layoutManager()
        redSliceNode = MedGenSlicerLogic.redSliceNode()
        if layoutManager is None or redSliceNode is None:
            return None
        sliceToRAS = vtk.vtkMatrix4x4()
        sliceToRAS.DeepCopy(redSliceNode.GetSliceToRAS())  # also right for oblique (Reformat) views
        offset = redSliceNode.GetSliceOffset()
        previous = {"layout": layoutManager.layout, "links": {}}
        for compositeNode in slicer.util.getNodesByClass("vtkMRMLSliceCompositeNode"):
            previous["links"][compositeNode.GetID()] = (compositeNode.GetLinkedControl(),
                                                        compositeNode.GetHotLinkedControl())
        layoutManager.setLayout(slicer.vtkMRMLLayoutNode.SlicerLayoutSideBySideView)
        for viewName, node in (("Red", sourceNode), ("Yellow", variantNode)):
            sliceWidget = layoutManager.sliceWidget(viewName)
            if sliceWidget is None:
                continue
            compositeNode = sliceWidget.mrmlSliceCompositeNode()
            compositeNode.SetBackgroundVolumeID(node.GetID())
            compositeNode.SetForegroundVolumeID(None)
            compositeNode.SetLinkedControl(True)
            compositeNode.SetHotLinkedControl(True)
            sliceNode = sliceWidget.mrmlSliceNode()
            sliceNode.GetSliceToRAS().DeepCopy(sliceToRAS)
            sliceNode.UpdateMatrices()
            sliceWidget.sliceLogic().FitSliceToAll()
            sliceNode.SetSliceOffset(offset)
        return previous

    @staticmethod
    def restoreView(previous: dict) -> None:
        """The layout and slice links `showSideBySide` found."""
        layoutManager = slicer.app.layoutManager()
        if layoutManager is None:
            return
        for nodeId, (linked, hotLinked) in previous["links"].items():
            compositeNode = slicer.mrmlScene.GetNodeByID(nodeId)
            if compositeNode is not None:
                compositeNode.SetLinkedControl(linked)
                compositeNode.SetHotLinkedControl(hotLinked)
        layoutManager.setLayout(previous["layout"])

    @staticmethod
    def importIntoDicomDatabase(folder: Path, files: List[Path]) -> int:
        """Copy the series into Slicer's DICOM database (the database must not point into a folder the
        user may delete) and check that it is there. Returns how many instances the database holds of
        it; raises when the import failed or is incomplete (DICOMUtils.importDicom only logs)."""
        from DICOMLib import DICOMUtils

        database = getattr(slicer, "dicomDatabase", None)
        if database is None or not database.isOpen:
            raise RuntimeError("Slicer's DICOM database is not open; choose its folder in the DICOM module")
        if not files:
            raise RuntimeError(f"the engine's zip for {folder} held no DICOM files")
        import pydicom  # bundled with Slicer (its DICOM module reads headers with it)

        DICOMUtils.importDicom(str(folder), database, copyFiles=True)
        seriesUid = pydicom.dcmread(str(files[0]), stop_before_pixels=True).get("SeriesInstanceUID")
        found = len(database.instancesForSeries(seriesUid)) if seriesUid else 0
        if found < len(files):
            raise RuntimeError(f"the DICOM database holds {found} of the {len(files)} instances of series "
                               f"{seriesUid or '(unreadable)'} after the import; see the Python console")
        return found


#
# Test
#


class MedGenSlicerTest(ScriptedLoadableModuleTest):
    """Runs inside Slicer. The engine round trip runs when MEDGEN_TEST_ENGINE_URL and
    MEDGEN_TEST_ENGINE_TOKEN point at a running `medgen serve`."""

    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        self.setUp()
        self.test_NrrdGeometryMatchesSlicer()
        self.setUp()
        self.test_UploadFromSegment()
        self.setUp()
        self.test_EngineRoundTrip()

    def _makeVolume(self):
        volume = np.arange(6 * 20 * 24, dtype=np.int16).reshape(6, 20, 24) % 300
        node = slicer.util.addVolumeFromArray(volume, name="MedGenSlicerTestVolume")
        node.SetSpacing(0.7, 0.8, 2.5)
        node.SetOrigin(12.5, -30.25, 101.0)
        directions = vtk.vtkMatrix4x4()
        directions.SetElement(0, 0, -1.0)
        directions.SetElement(1, 1, -1.0)
        node.SetIJKToRASDirectionMatrix(directions)
        return node

    def _makeSegment(self, volumeNode):
        segmentationNode = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLSegmentationNode")
        segmentationNode.SetReferenceImageGeometryParameterFromVolumeNode(volumeNode)
        labelmap = np.zeros(slicer.util.arrayFromVolume(volumeNode).shape, np.uint8)
        labelmap[2:4, 8:12, 10:14] = 1
        labelNode = slicer.util.addVolumeFromArray(labelmap, nodeClassName="vtkMRMLLabelMapVolumeNode")
        matrix = vtk.vtkMatrix4x4()
        volumeNode.GetIJKToRASMatrix(matrix)
        labelNode.SetIJKToRASMatrix(matrix)
        slicer.modules.segmentations.logic().ImportLabelmapToSegmentationNode(labelNode, segmentationNode)
        return segmentationNode, segmentationNode.GetSegmentation().GetNthSegmentID(0)

    def test_NrrdGeometryMatchesSlicer(self):
        """An NRRD we write loads in Slicer with exactly our IJK-to-RAS and values."""
        from MedGenSlicerLib.nrrd import nrrd_bytes

        self.delayDisplay("NRRD written by MedGenSlicerLib, read by Slicer")
        source = self._makeVolume()
        expected = MedGenSlicerLogic.ijkToRas(source)
        array = slicer.util.arrayFromVolume(source)
        path = Path(tempfile.mkdtemp()) / "ours.nrrd"
        for space in ("RAS", "LPS"):
            path.write_bytes(nrrd_bytes(array, expected, space=space))
            loaded = slicer.util.loadVolume(str(path))
            np.testing.assert_allclose(MedGenSlicerLogic.ijkToRas(loaded), expected, atol=1e-6)
            np.testing.assert_array_equal(slicer.util.arrayFromVolume(loaded), array)

    def test_UploadFromSegment(self):
        """The Red slice and the segment become a one-slice upload at the right place."""
        self.delayDisplay("Upload built from a segment and the Red view")
        volumeNode = self._makeVolume()
        segmentationNode, segmentId = self._makeSegment(volumeNode)
        logic = MedGenSlicerLogic()
        sliceToRAS = np.eye(4)
        sliceToRAS[:3, 3] = (logic.ijkToRas(volumeNode) @ [10, 10, 3, 1])[:3]
        upload = logic.buildUpload(volumeNode, segmentationNode, segmentId,
                                   InpaintParameters(prompt="lesion"), sliceToRAS)
        self.assertEqual((upload.slab_start, upload.slab_stop), (3, 4))
        upload = logic.buildUpload(volumeNode, segmentationNode, segmentId, InpaintParameters(prompt="lesion"))
        self.assertEqual((upload.slab_start, upload.slab_stop), (2, 4))

    def test_EngineRoundTrip(self):
        url, token = os.environ.get("MEDGEN_TEST_ENGINE_URL"), os.environ.get("MEDGEN_TEST_ENGINE_TOKEN")
        if not url or not token:
            self.delayDisplay("No engine given (MEDGEN_TEST_ENGINE_URL/TOKEN); engine round trip not run")
            return
        import time

        self.delayDisplay("Round trip through the engine")
        volumeNode = self._makeVolume()
        segmentationNode, segmentId = self._makeSegment(volumeNode)
        logic = MedGenSlicerLogic()
        upload = logic.buildUpload(volumeNode, segmentationNode, segmentId,
                                   InpaintParameters(prompt="lesion", num_inference_steps=1, seed=1))
        monitor = JobMonitor(EngineClient(url, token), upload, poll_interval=0.1).start()
        deadline = time.monotonic() + 300
        variants = []
        while time.monotonic() < deadline:
            for event in monitor.drain():
                if event.kind == "error":
                    raise AssertionError(str(event.error))
                if event.kind == "variant":
                    variants.append(logic.addVariantVolume(volumeNode, event.image, event.result, event.variant,
                                                           monitor.job_id))
            if not monitor.is_alive() and monitor.events.empty():
                break
            slicer.app.processEvents()
            time.sleep(0.05)
        self.assertEqual(len(variants), 1)
        source, synthetic = slicer.util.arrayFromVolume(volumeNode), slicer.util.arrayFromVolume(variants[0])
        np.testing.assert_array_equal(synthetic[[0, 1, 4, 5]], source[[0, 1, 4, 5]])
        self.assertEqual(variants[0].GetAttribute(SYNTHETIC_ATTRIBUTE), "true")
        logic.showSideBySide(volumeNode, variants[0])
