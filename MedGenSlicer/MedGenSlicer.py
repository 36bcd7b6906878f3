"""MedGenSlicer: inpaint synthetic pathology under a segment, using the local MedGen engine.

The module only glues Slicer's widgets to MedGenSlicerLib, which holds everything else (the HTTP client,
jobs, the scene work, the views) and is tested on Slicer's core libraries against the real engine.
Nothing here blocks the GUI: engine calls run in a worker process and a qt.QTimer moves the work along
in short steps.

No `from __future__ import annotations` here: parameterNodeWrapper reads the annotations as types.
"""

import logging
import os
import shutil
import sys
import tempfile
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
    EngineClient,
    EngineError,
    InpaintParameters,
    InsecureTransport,
    JobMonitor,
    JobUpload,
    RequestRefused,
    deliver,
    export_summary,
    local_engine_token,
    normalize_url,
    parse_prompt_variations,
    random_seed,
)
from MedGenSlicerLib.background import ExportProcess, ProcessCall, private_folder
from MedGenSlicerLib.job_session import JobSession
from MedGenSlicerLib.nrrd import NrrdImage
from MedGenSlicerLib.results import JobResult, VariantInfo, remove_private_report
from MedGenSlicerLib.scene import SYNTHETIC_ATTRIBUTE, UploadBuilder, ijk_to_ras, load_variant, upload_from_scene
from MedGenSlicerLib.views import ViewState, show_side_by_side, slice_on_screen

SETTINGS_URL = "MedGenSlicer/EngineURL"
LEGACY_SETTINGS_TOKEN = "MedGenSlicer/EngineToken"  # older versions saved the token here in plain text
SETTINGS_OUTPUT = "MedGenSlicer/OutputDirectory"
TIMER_INTERVAL_MS = 50  # each tick does at most a few tens of milliseconds of work (JobSession.tick)
MODALITY_FROM_DICOM = "From its DICOM files"
MODALITY_CHOICES = ("CT", "MR", "CR", "DX", "MG", "PT", "US")


try:
    from slicer.i18n import tr as _
    from slicer.i18n import translate
except ImportError:  # Slicer before 5.4 has no slicer.i18n: texts stay in English

    def _(text: str) -> str:
        return text

    def translate(context: str, text: str) -> str:
        return text


def findModuleResource(relativePath: str) -> Optional[str]:
    """A resource file of this module: ``Resources/`` beside this file where a build or install put it,
    else the extension's top-level ``Resources/`` when the module is loaded from the source tree; None
    when neither has it."""
    moduleDir = Path(__file__).resolve().parent
    for candidate in (moduleDir / "Resources" / relativePath, moduleDir.parent / "Resources" / relativePath):
        if candidate.is_file():
            return str(candidate)
    return None


def moduleResourcePath(relativePath: str) -> str:
    """As ``findModuleResource``, for resources the module cannot work without (its .ui)."""
    path = findModuleResource(relativePath)
    if path is None:
        moduleDir = Path(__file__).resolve().parent
        raise FileNotFoundError(f"MedGenSlicer resource {relativePath} is in neither {moduleDir}/Resources nor "
                                f"{moduleDir.parent}/Resources")
    return path


#
# Module
#


class MedGenSlicer(ScriptedLoadableModule):
    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = _("MedGenSlicer")
        # the Extensions Index category of the extension (MedGenSlicer.json, EXTENSION_CATEGORY)
        self.parent.categories = [translate("qSlicerAbstractCoreModule", "Image Synthesis")]
        self.parent.dependencies = []
        self.parent.contributors = ["MedGenSlicer developers"]
        self.parent.helpText = _("""
Paint a segment, type a prompt, and a Stable Diffusion model running in the MedGen engine inpaints that
finding into the scan. Every result is marked synthetic, in the volume name and in the DICOM it writes.
Start the engine with <code>medgen serve</code>; for an engine on this computer the panel reads its token
itself. Sample Data offers a phantom CT with a lesion target to try it on.
See <a href="https://github.com/medgenslicer/MedGenSlicer#install-in-slicer">Install in Slicer</a>
for the set-up and the self-test.
""")
        self.parent.acknowledgementText = _("""
Synthetic images are for research, testing and teaching; never for diagnosis.
MedGenSlicer is distributed under the Apache License 2.0.
""")
        # Slicer's base class took Resources/Icons/MedGenSlicer.png beside this file where a build put it;
        # from the source tree it sits one level up. Without it the module keeps Slicer's default icon.
        iconPath = findModuleResource("Icons/MedGenSlicer.png")
        if iconPath:
            self.parent.icon = qt.QIcon(iconPath)

        # The phantom in Sample Data, once Slicer has loaded every module (as Slicer's module template does)
        slicer.app.connect("startupCompleted()", self.registerSampleData)

    @staticmethod
    def registerSampleData():
        """Add "MedGenSlicer phantom CT" to the Sample Data module, where that module is loaded."""
        from MedGenSlicerLib.sampledata import register_phantom_sample_data

        register_phantom_sample_data(thumbnail=findModuleResource("Icons/MedGenSlicer.png"))


#
# Parameter node
#


@parameterNodeWrapper
class MedGenSlicerParameterNode:
    """What the panel sets; the engine URL and token live in QSettings, never in a saved scene. The job
    id (and the region it may change) are kept here so a saved scene re-attaches after a restart."""

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
    sourceModality: str = ""  # "" = the modality of the volume's DICOM files
    forceModality: bool = False
    exportDestination: str = ""
    deidentifyExport: bool = True
    jobId: str = ""
    jobRegion: str = ""  # "k0 k1 j0 j1 i0 i1": the slab sent and the rows and columns the job may change


#
# Widget
#


class MedGenSlicerWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    """Widgets to parameters and buttons to MedGenSlicerLib: a job is a `JobSession`, views are `views`,
    engine calls run in the worker process; the timer only moves them along (`onTimer`)."""

    def __init__(self, parent=None) -> None:
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic: Optional[MedGenSlicerLogic] = None
        self._parameterNode: Optional[MedGenSlicerParameterNode] = None
        self._parameterNodeGuiTag = None
        self._session: Optional[JobSession] = None
        self._variantIndices: List[int] = []  # the variants list's rows, by variant index
        self._exportProcess: Optional[ExportProcess] = None
        self._modelRecommendations: dict = {}
        self._calls: List[tuple] = []  # (ProcessCall, what to do with its result)
        self._accepting = False
        self._plainHttpAgreed: set = set()  # engine URLs the user agreed to send the token to over http
        self._savedView: Optional[ViewState] = None  # the user's views before the compare view
        self._compareWanted = False  # a variant arrived while the module was not shown
        self._reports: Optional[Path] = None  # private folder of downloaded reports, removed on exit
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
        self.ui.modalityComboBox.clear()
        self.ui.modalityComboBox.addItems([MODALITY_FROM_DICOM] + list(MODALITY_CHOICES))

        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndImportEvent, self.onSceneEndImport)

        self.ui.checkConnectionButton.connect("clicked(bool)", self.onCheckConnection)
        self.ui.engineUrlLineEdit.connect("editingFinished()", self.onEngineSettingsChanged)
        self.ui.tokenLineEdit.connect("editingFinished()", self.onEngineSettingsChanged)
        self.ui.segmentSelector.connect("currentNodeChanged(vtkMRMLNode*)", self.onSegmentationChanged)
        self.ui.segmentSelector.connect("currentSegmentChanged(QString)", self.onSegmentChanged)
        self.ui.currentSliceRadioButton.connect("toggled(bool)", self.onScopeChanged)
        self.ui.modelComboBox.connect("currentTextChanged(QString)", self.onModelChanged)
        self.ui.modalityComboBox.connect("currentIndexChanged(int)", self.onModalityChanged)
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
        """Slicer exits (or the module is reloaded): the job goes on in the engine and is re-attached from
        the saved scene; the compare view and every downloaded report (patient images) go."""
        self._timer.stop()
        if self._session is not None:
            self._session.detach()
        self._restoreView()
        if self._reports is not None:
            shutil.rmtree(self._reports, ignore_errors=True)
            self._reports = None
        self.removeObservers()

    def enter(self) -> None:
        self.initializeParameterNode()
        if self._compareWanted:
            self._guarded("compare view", self.onShowVariant)

    def exit(self) -> None:
        """Leaving the module gives the user's views back; the job goes on and shows when they return."""
        self._restoreView()
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self._parameterNodeGuiTag = None
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._updateButtons)

    def onSceneStartClose(self, caller, event) -> None:
        """A closed scene takes its patient with it: the job is cancelled on the engine, the preview and the
        compare view go, and Generate is ready for the next patient."""
        self._restoreView()
        jobId = self._session.job_id if self._session is not None and self._session.running else None
        self._closeSession(cancel=True)
        if self._parameterNode:
            self._parameterNode.jobId = ""
        self.setParameterNode(None)
        self.ui.progressBar.value = 0
        self._showStatus(f"The scene was closed: job {jobId} is cancelled on the engine." if jobId else "")
        self._updateButtons()

    def onSceneEndClose(self, caller, event) -> None:
        if self.parent.isEntered:
            self.initializeParameterNode()

    def onSceneEndImport(self, caller, event) -> None:
        """A loaded scene may hold a job this panel followed before Slicer closed: follow it again."""
        self.initializeParameterNode()

    def initializeParameterNode(self) -> None:
        self.setParameterNode(self.logic.getParameterNode())
        if not self._parameterNode.inputVolume:
            first = slicer.mrmlScene.GetFirstNodeByClass("vtkMRMLScalarVolumeNode")
            if first and first.GetAttribute(SYNTHETIC_ATTRIBUTE) is None:
                self._parameterNode.inputVolume = first
        self._reattach()

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
            modality = self._parameterNode.sourceModality
            self.ui.modalityComboBox.setCurrentIndex(
                1 + MODALITY_CHOICES.index(modality) if modality in MODALITY_CHOICES else 0)
            self._updateButtons()

    # --- panel state ---------------------------------------------------------------------------

    def _updateButtons(self, caller=None, event=None) -> None:
        node = self._parameterNode
        busy = self._session is not None and self._session.running
        ready = bool(node and node.inputVolume and node.segmentation and node.segmentId and node.prompt.strip())
        self.ui.generateButton.enabled = ready and not busy
        self.ui.generateButton.toolTip = (
            "Inpaint the segment with the prompt" if ready else "Choose a volume and a segment, and type a prompt"
        )
        self.ui.cancelButton.enabled = busy
        chosen = self._selectedIndex() is not None
        shown = chosen and self._session is not None and self._session.preview is not None \
            and self._session.preview.shown == self._selectedIndex()
        self.ui.showVariantButton.enabled = chosen
        self.ui.acceptButton.enabled = bool(shown) and not self._accepting
        exporting = self._exportProcess is not None and self._exportProcess.has_pending()
        destinations = self.ui.destinationComboBox.count > 0
        self.ui.sendToPacsButton.enabled = chosen and destinations and not busy and not exporting
        finished = bool(node and node.jobId) and not busy
        self.ui.deleteJobButton.enabled = finished
        self.ui.openReportButton.enabled = finished and bool(self._variantIndices)
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
            self._runInBackground(ProcessCall(client, "check_connection"), self._finishConnectionCheck)

    def _finishConnectionCheck(self, call) -> None:
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
        self._reattach()

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

    def onModalityChanged(self, index: int) -> None:
        """For a volume without DICOM files (NIfTI, NRRD) the user states its modality, so an MR gets the
        model's MR contract and adapter; the first entry keeps the modality of the DICOM files."""
        if self._parameterNode:
            self._parameterNode.sourceModality = MODALITY_CHOICES[index - 1] if 0 < index <= len(MODALITY_CHOICES) else ""

    def onDestinationChanged(self, name: str) -> None:
        if self._parameterNode and name:
            self._parameterNode.exportDestination = name

    def onDice(self) -> None:
        if self._parameterNode:
            self._parameterNode.seed = random_seed()

    # --- generate ----------------------------------------------------------------------------

    def _parameters(self) -> InpaintParameters:
        node = self._parameterNode
        return InpaintParameters(
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
            source_modality=node.sourceModality or None,
            force_modality=node.forceModality,
        )

    def onGenerate(self) -> None:
        with slicer.util.tryWithErrorDisplay("Could not start the generation.", waitCursor=True):
            node = self._parameterNode
            client = self._client()
            parameters = self._parameters()
            parameters.check()
            volume, segmentation, segmentId = node.inputVolume, node.segmentation, node.segmentId
            slices = [self.logic.sliceOnScreen(volume)[1]] if node.currentSliceOnly else None
            # moving on: the last job's unaccepted variants leave the scene, the user's views come back
            self._restoreView()
            self._closeSession()
            node.jobId, node.jobRegion = "", ""

            def makeBuilder(useDicomTemplates: bool, folder: Path) -> UploadBuilder:
                return UploadBuilder(volume, segmentation, segmentId, parameters, slices, folder=folder,
                                     use_dicom_templates=useDicomTemplates)

            self._session = JobSession(client, volume, make_builder=makeBuilder)
            self.ui.progressBar.value = 0
            self._timer.start()
            self._updateButtons()

    def _reattach(self) -> None:
        """Follow the job the parameter node names, when no session follows it yet (a Slicer restart with
        the saved scene, a dropped connection the user fixed)."""
        node = self._parameterNode
        if not node or not node.jobId or not node.inputVolume:
            return
        if self._session is not None and not (self._session.job_id == node.jobId and self._session.final_state == "failed"):
            return  # followed already (a failed follow, a wrong token say, is tried again)
        if not self.ui.tokenLineEdit.text.strip():
            self._showStatus(f"Job {node.jobId} is waiting on the engine: enter its token and Check connection to "
                             f"follow it again.", error=True)
            return
        try:
            client = EngineClient(self.ui.engineUrlLineEdit.text, self.ui.tokenLineEdit.text,
                                  allow_plain_http=normalize_url(self.ui.engineUrlLineEdit.text) in self._plainHttpAgreed)
        except EngineError as error:
            self._showStatus(f"Job {node.jobId} is waiting on the engine; {error}", error=True)
            return
        numbers = [int(v) for v in node.jobRegion.split()]
        slab, region = (numbers[:2], numbers[2:]) if len(numbers) == 6 else (None, None)
        self._session = JobSession(client, node.inputVolume, job_id=node.jobId, slab=slab, region=region)
        self._showStatus(f"Following job {node.jobId} again…")
        self._timer.start()
        self._updateButtons()

    def _closeSession(self, cancel: bool = False) -> None:
        session, self._session = self._session, None
        self._variantIndices = []
        self._compareWanted = False
        self.ui.variantsListWidget.clear()
        if session is None:
            return
        call = session.close(cancel=cancel)
        if call is not None:
            jobId = session.job_id
            self._runInBackground(call, lambda done: self._finishCancelOnClose(done, jobId))

    def _finishCancelOnClose(self, call, jobId: str) -> None:
        try:
            call.result()
        except RequestRefused as error:
            if error.status != 409:  # 409: it had finished; nothing to cancel
                self._showStatus(f"Could not cancel job {jobId} on the engine: {error}", error=True)
        except Exception as error:  # noqa: BLE001 - shown, the timer goes on
            self._showStatus(f"Could not cancel job {jobId} on the engine: {error}", error=True)

    def onCancel(self) -> None:
        with slicer.util.tryWithErrorDisplay("Could not cancel the job."):
            if self._session is not None:
                self._session.cancel()
                self._showStatus("Cancelling: the engine stops at its next step; finished variants still arrive…")
                self.ui.cancelButton.enabled = False

    def onTimer(self) -> None:
        """Moves every piece of work along by one short step; nothing here waits.

        The engine work runs in the worker process (MedGenSlicerLib.worker says why not in threads);
        a job's own steps on the GUI thread (segment export, upload files, the preview copy) each stop
        after a few tens of milliseconds. Every step is guarded: an unexpected error is shown in the
        panel and the other steps still run; the timer goes on until all is done.
        """
        if self._session is not None:
            for update in self._session.tick():
                self._guarded(f"job update '{update.kind}'", lambda u=update: self._applyUpdate(u))
        for call, finish in [entry for entry in self._calls if entry[0].done()]:
            self._calls.remove((call, finish))
            self._guarded("engine call", lambda: finish(call))
        if self._exportProcess is not None:
            deliver(self._exportProcess.drain(), self._handleExportEvent,
                    lambda event, error: self._showUnexpected(f"export event '{event.kind}'", error))
        idle = (
            (self._session is None or not self._session.active)
            and not self._calls
            and (self._exportProcess is None or not self._exportProcess.has_pending())
        )
        if idle:
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

    def _applyUpdate(self, update) -> None:
        if update.kind == "status":
            self._showStatus(update.text, error=update.error)
        elif update.kind == "progress":
            self.ui.progressBar.maximum = update.total
            self.ui.progressBar.value = update.done
        elif update.kind == "job":
            self._parameterNode.jobId = update.text
            # the slab sent and the rows and columns it may change: "k0 k1 j0 j1 i0 i1", for a re-attach
            self._parameterNode.jobRegion = " ".join(str(v) for v in (*self._session.slab, *self._session.region))
        elif update.kind == "variant":
            self._variantIndices.append(update.variant.index)
            self.ui.variantsListWidget.addItem(f"Variant {update.variant.index} (seed {update.variant.seed})")
            if len(self._variantIndices) == 1:
                self.ui.variantsListWidget.setCurrentRow(0)
        elif update.kind == "shown":
            if self.parent.isEntered:
                self._showCompare(update.node)
            else:
                self._compareWanted = True  # the user works elsewhere (Segment Editor): their layout stays
        elif update.kind == "ended":
            state = self._session.final_state if self._session is not None else None
            if state == "succeeded":
                self.ui.progressBar.value = self.ui.progressBar.maximum
            elif state == "gone":  # the engine no longer has it: nothing to re-attach to
                self._parameterNode.jobId, self._parameterNode.jobRegion = "", ""
            self._showStatus(update.text, error=update.error)
        self._updateButtons()

    # --- review and accept -------------------------------------------------------------------

    def _selectedIndex(self) -> Optional[int]:
        row = self.ui.variantsListWidget.currentRow
        return self._variantIndices[row] if 0 <= row < len(self._variantIndices) else None

    def onVariantSelected(self, row: int) -> None:
        index = self._selectedIndex()
        if index is not None and self._session is not None and index in self._session.variants:
            self._session.show(index)
            self._timer.start()
        self._updateButtons()

    def onShowVariant(self) -> None:
        with slicer.util.tryWithErrorDisplay("Could not show the variant beside its source."):
            session = self._session
            if session is None or session.preview is None or session.preview.node is None:
                return
            self._showCompare(session.preview.node)

    def _showCompare(self, previewNode) -> None:
        self._compareWanted = False
        saved = ViewState.capture(slicer.mrmlScene, slicer.app.layoutManager()) if self._savedView is None else None
        if not self.logic.showSideBySide(self._session.source, previewNode):
            self._showStatus("No slice views to compare in (Slicer runs without its main window); "
                             "the variant is in the scene as " + previewNode.GetName())
        elif saved is not None:
            self._savedView = saved  # the user's own views, restored when the compare view closes

    def _restoreView(self) -> None:
        """Back to the user's layout and every slice view as it was (module left, new job, scene closed)."""
        saved, self._savedView = self._savedView, None
        if saved is not None:
            try:
                saved.restore(slicer.mrmlScene, slicer.app.layoutManager())
            except Exception as error:  # noqa: BLE001 - a view that cannot be restored is not worth a crash
                logging.warning("MedGenSlicer: could not restore the views: %s", error)

    def onAccept(self) -> None:
        with slicer.util.tryWithErrorDisplay("Could not accept the variant.", waitCursor=True):
            index, session = self._selectedIndex(), self._session
            if index is None or session is None:
                return
            variant = session.variants[index].variant
            jobId = session.job_id
            folder = Path(self.ui.outputDirectoryButton.directory) / f"{jobId}-variant-{index:02d}"
            name = f"SYNTHETIC {session.source.GetName()} v{index} (job {jobId})"
            self._restoreView()  # the kept volume is the user's now; the compare view was the preview's
            session.accept(index, name)
            self._accepting = True
            self._runInBackground(ProcessCall(self._client(), "accept", url=variant.dicom_zip_url, folder=str(folder)),
                                  lambda call: self._finishAccept(call, folder))
            self._showStatus(f"Writing the synthetic series to {folder}…")

    def _finishAccept(self, call, folder: Path) -> None:
        self._accepting = False
        try:
            files = [Path(path) for path in call.result()]
        except Exception as error:  # noqa: BLE001 - engine, zip and disk errors alike end in the panel
            self._showStatus(f"Accept failed: {error}", error=True)
            self._updateButtons()
            return
        # reported in the panel, not raised: this runs in the timer, which must go on
        try:
            found = self.logic.importIntoDicomDatabase(folder, files)
        except Exception as error:  # noqa: BLE001 - the series is on disk either way
            self._showStatus(f"Wrote {len(files)} synthetic instance(s) to {folder}, but could not add "
                             f"them to the DICOM database: {error}", error=True)
        else:
            self._showStatus(f"Accepted: {len(files)} synthetic instance(s) in {folder}; the DICOM "
                             f"database holds the series with {found} instance(s) (its description starts "
                             f"with SYNTHETIC).")
        self._updateButtons()

    # --- send to PACS ------------------------------------------------------------------------

    def onSendToPacs(self) -> None:
        with slicer.util.tryWithErrorDisplay("Could not send the variant to the PACS."):
            index = self._selectedIndex()
            destination = self.ui.destinationComboBox.currentText
            if index is None or not destination or not self._parameterNode.jobId:
                return
            deidentify = bool(self._parameterNode.deidentifyExport)
            if not deidentify and not slicer.util.confirmYesNoDisplay(
                    f"Send variant {index} to {destination} with the patient's name, ID and dates, not de-identified?"
                    "\n\nThey leave this machine and stay in that PACS.",
                    windowTitle="MedGenSlicer: send identified data"):
                return
            self._exportProcess = ExportProcess(self._client(), self._parameterNode.jobId, destination,
                                                variant=index, deidentify=deidentify)
            self._showExportStatus(f"Sending variant {index} to {destination}"
                                   f"{' (de-identified)' if deidentify else ' with the patient identity'}…")
            self._timer.start()
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

    # --- the job on the engine: report and deletion ------------------------------------------

    def _runInBackground(self, call, finish) -> None:
        self._calls.append((call, finish))
        self._timer.start()
        self._updateButtons()

    def onOpenReport(self) -> None:
        """Download the finished job's HTML report into this session's private reports folder (removed when
        the job is deleted or Slicer exits), and open it."""
        with slicer.util.tryWithErrorDisplay("Could not open the job's report."):
            jobId, client = self._parameterNode.jobId, self._client()
            if not jobId:
                return
            if self._reports is None:
                self._reports = private_folder("medgenslicer-reports-")
            self._showStatus("Downloading the job's report…")
            self._runInBackground(ProcessCall(client, "report", job_id=jobId, folder=str(self._reports)),
                                  self._finishReport)

    def _finishReport(self, call) -> None:
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
        """Remove the job's uploaded scan and results from the engine, its preview and report here; the
        accepted volumes stay in the scene."""
        with slicer.util.tryWithErrorDisplay("Could not delete the job from the engine."):
            jobId, client = self._parameterNode.jobId, self._client()
            if not jobId or not slicer.util.confirmOkCancelDisplay(
                    f"Delete job {jobId} (its uploaded slices and all its results) from the engine?",
                    windowTitle="MedGenSlicer"):
                return
            self._runInBackground(ProcessCall(client, "delete_job", job_id=jobId),
                                  lambda call: self._finishDelete(call, jobId))

    def _finishDelete(self, call, jobId: str) -> None:
        try:
            call.result()
        except RequestRefused as error:
            if error.status != 410:
                self._showStatus(f"Could not delete job {jobId}: {error}", error=True)
                return
            self._showStatus(f"Job {jobId} was already deleted from the engine.")
        except Exception as error:  # noqa: BLE001 - engine errors and bugs alike end in the panel
            self._showStatus(f"Could not delete job {jobId}: {error}", error=True)
            return
        else:
            self._showStatus(f"Deleted job {jobId} from the engine; accepted volumes stay in the scene.")
        remove_private_report(self._reports, jobId)
        self._restoreView()
        if self._session is not None and self._session.job_id == jobId:
            self._closeSession()
        if self._parameterNode and self._parameterNode.jobId == jobId:
            self._parameterNode.jobId, self._parameterNode.jobRegion = "", ""
        self._updateButtons()


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
    def sliceOnScreen(volumeNode) -> tuple:
        """(view name, k): the slice of ``volumeNode`` a slice view on screen shows (not a hidden Red)."""
        shape = tuple(reversed(volumeNode.GetImageData().GetDimensions()))
        return slice_on_screen(volumeNode.GetScene(), ijk_to_ras(volumeNode), shape)

    def buildUpload(self, volumeNode, segmentationNode, segmentId: str, parameters: InpaintParameters,
                    slices: Optional[List[int]] = None, useDicomTemplates: bool = True) -> JobUpload:
        """The job upload in memory (for scripts and the self-test; the panel builds it in steps with
        `UploadBuilder`): the volume's voxels on the slab the segment touches, on ``slices`` when given."""
        return upload_from_scene(volumeNode, segmentationNode, segmentId, parameters, slices,
                                 use_dicom_templates=useDicomTemplates)

    def addVariantVolume(self, sourceNode, image: NrrdImage, result: JobResult, variant: VariantInfo,
                         jobId: str):
        """A new volume like the source, with the variant's slab in place, named and marked synthetic."""
        return load_variant(sourceNode, image, result, variant, job_id=jobId)

    @staticmethod
    def showSideBySide(sourceNode, variantNode) -> bool:
        """Source on the left, variant on the right, on the plane the Red view shows (where the user
        painted), slices linked; False without slice views (Slicer without its main window)."""
        return show_side_by_side(slicer.app.layoutManager(), slicer.mrmlScene, sourceNode, variantNode)

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
    """Runs inside Slicer (CTest runs it as py_MedGenSlicer). The engine round trip uses the engine that
    MEDGEN_TEST_ENGINE_URL and MEDGEN_TEST_ENGINE_TOKEN name, else starts its own where `medgen` is on PATH."""

    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        self.setUp()
        self.test_NrrdGeometryMatchesSlicer()
        self.setUp()
        self.test_UploadFromSegment()
        self.setUp()
        self.test_PhantomSampleData()
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
        upload = logic.buildUpload(volumeNode, segmentationNode, segmentId,
                                   InpaintParameters(prompt="lesion"), slices=[3])
        self.assertEqual((upload.slab_start, upload.slab_stop), (3, 4))
        upload = logic.buildUpload(volumeNode, segmentationNode, segmentId, InpaintParameters(prompt="lesion"))
        self.assertEqual((upload.slab_start, upload.slab_stop), (2, 4))

    def test_PhantomSampleData(self):
        """The phantom registered in Sample Data loads, offline, as a CT and a segmentation with a lesion target."""
        from MedGenSlicerLib.sampledata import (
            PHANTOM_SHAPE,
            SAMPLE_NAME,
            SEGMENTS,
            phantom_ct,
            register_phantom_sample_data,
        )
        from MedGenSlicerLib.scene import ijk_to_ras as sceneIjkToRas

        if not hasattr(slicer.modules, "sampledata"):
            self.delayDisplay("The Sample Data module is not loaded; phantom sample not checked")
            return
        import SampleData

        self.delayDisplay("Phantom CT from Sample Data")
        self.assertTrue(register_phantom_sample_data())
        source = SampleData.SampleDataLogic().sourceForSampleName(SAMPLE_NAME)
        self.assertIsNotNone(source)
        volumeNode, segmentationNode = source.customDownloader(source)
        phantom = phantom_ct()
        self.assertEqual(slicer.util.arrayFromVolume(volumeNode).shape, PHANTOM_SHAPE)
        np.testing.assert_array_equal(slicer.util.arrayFromVolume(volumeNode), phantom.hu)
        np.testing.assert_allclose(sceneIjkToRas(volumeNode), phantom.ijk_to_ras, atol=1e-6)
        segmentation = segmentationNode.GetSegmentation()
        for segment in SEGMENTS:
            segmentId = segmentation.GetSegmentIdBySegmentName(segment.name)
            self.assertTrue(segmentId, f"no segment {segment.name!r}")
            mask = slicer.util.arrayFromSegmentBinaryLabelmap(segmentationNode, segmentId, volumeNode)
            self.assertEqual(int(np.count_nonzero(mask)), int(np.count_nonzero(phantom.labels == segment.label)))

    def test_EngineRoundTrip(self):
        """A job through a real engine: MEDGEN_TEST_ENGINE_URL and MEDGEN_TEST_ENGINE_TOKEN name a running one;
        else, with `medgen` on PATH, the test starts its own `medgen serve --model demo` (private port and data
        folder) and stops that process when done."""
        url, token = os.environ.get("MEDGEN_TEST_ENGINE_URL"), os.environ.get("MEDGEN_TEST_ENGINE_TOKEN")
        if url and token:
            self._engineRoundTrip(url, token)
            return
        from MedGenSlicerLib.selftest_engine import SelfTestEngine, find_engine_command

        environment = slicer.util.startupEnvironment()  # without Slicer's PYTHONHOME/PYTHONPATH
        if find_engine_command(environment) is None:
            self.delayDisplay("No engine given (MEDGEN_TEST_ENGINE_URL/TOKEN) and no `medgen` on PATH; "
                              "engine round trip not run")
            return
        self.delayDisplay("Starting `medgen serve --model demo` for the round trip")
        engine = SelfTestEngine(env=environment)
        try:
            engine.start(wait_callback=slicer.app.processEvents)
            self._engineRoundTrip(engine.url, engine.token)
        finally:
            engine.cleanup()

    def _engineRoundTrip(self, url, token):
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
