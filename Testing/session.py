"""A clinician's hour in the MedGenSlicer panel, scripted: the module's real widget and logic with real Qt
(the `slicerhost` test host over PySide6; only Slicer's own qMRML/CTK widgets are stand-ins), on a real
MRML scene (slicer-core), against a real `medgen serve` with the demo model and a real Orthanc.

    python Testing/session.py --slices 300 --json session.json

The scan is a 512 x 512 x SLICES CT phantom (int16, HU, with noise) and a painted lesion segment. The
script runs GENERATES jobs with varied prompts, variant counts and scopes (the slice on screen, every
slice the segment touches), and along the way: kills the engine mid-job and starts it again, refuses
the connection for OFFLINE seconds mid-job, closes the panel mid-job and opens a new one on the same
scene (as a Slicer restart with the saved scene: it must re-attach), closes the scene mid-job (the job
must be cancelled on the engine, Generate free for the next patient, who is then loaded), accepts two
variants (saved as synthetic DICOM) and sends one to Orthanc.

It prints, and writes with --json: volume nodes at the end against those allowed (source + accepted +
one preview), process memory growth over one source volume (the accepted volumes the user keeps
are the user's data and are counted apart), the longest GUI-thread stall (a 10 ms Qt timer on the
event loop, while the panel uploads, downloads, converts and shows), and jobs and variants lost.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "Testing"))
sys.path.insert(0, str(REPO / "MedGenSlicer"))
sys.path.insert(0, str(REPO / "engine" / "tests"))

PROMPTS = ("hypodense cyst", "hyperdense enhancing lesion", "calcification", "fat-containing lesion",
           "hypodense liver lesion, 2 cm")
ROWS = COLUMNS = 512
LESION_CENTRE = (300, 210)  # row, column: in the phantom's liver
LESION_RADIUS = 14
LESION_HALF_SLICES = 6
GOALS = {"longest_gui_stall_ms": 100.0, "rss_growth_ratio": 1.5}


def rss_bytes() -> int:
    """This process's resident memory (Linux /proc)."""
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def phantom_ct(slices: int, seed: int = 0) -> np.ndarray:
    """A body in air with a liver and a spine, HU with CT-like noise: (slices, 512, 512) int16."""
    rows, columns = np.mgrid[:ROWS, :COLUMNS]
    body = (rows - 256) ** 2 / 200**2 + (columns - 256) ** 2 / 240**2 < 1
    liver = (rows - 300) ** 2 / 80**2 + (columns - 200) ** 2 / 100**2 < 1
    spine = (rows - 400) ** 2 + (columns - 256) ** 2 < 30**2
    plane = np.where(body, 30, -1000).astype(np.float32)
    plane[liver] = 60
    plane[spine] = 700
    rng = np.random.default_rng(seed)
    volume = np.empty((slices, ROWS, COLUMNS), np.int16)
    for k in range(slices):  # a slice at a time: the float work stays small
        volume[k] = np.clip(plane + rng.normal(0.0, 12.0, plane.shape), -1024, 3071).astype(np.int16)
    return volume


@dataclass
class Figures:
    slices: int
    generates: int = 0
    jobs: List[dict] = field(default_factory=list)
    events: List[str] = field(default_factory=list)
    volume_nodes_end: int = 0
    volume_nodes_allowed: int = 0
    rss_start: int = 0
    rss_end: int = 0
    accepted_bytes: int = 0
    volume_bytes: int = 0
    longest_gui_stall_ms: float = 0.0
    jobs_lost: int = 0
    variants_lost: int = 0
    accepted_files: List[int] = field(default_factory=list)
    exported_instances: int = 0
    seconds: float = 0.0
    slowest_slots: List[str] = field(default_factory=list)
    scene_close_ms: float = 0.0

    @property
    def rss_growth_ratio(self) -> float:
        """Growth of this process's memory beyond the accepted volumes the user keeps, over one source volume."""
        return (self.rss_end - self.rss_start - self.accepted_bytes) / self.volume_bytes

    @property
    def raw_rss_growth_ratio(self) -> float:
        return (self.rss_end - self.rss_start) / self.volume_bytes

    def as_json(self) -> dict:
        return {
            "slices": self.slices, "generates": self.generates, "seconds": round(self.seconds, 1),
            "volume_nodes_end": self.volume_nodes_end, "volume_nodes_allowed": self.volume_nodes_allowed,
            "rss_growth_ratio": round(self.rss_growth_ratio, 3),
            "rss_growth_ratio_with_accepted": round(self.raw_rss_growth_ratio, 3),
            "volume_mb": round(self.volume_bytes / 1e6, 1), "accepted_mb": round(self.accepted_bytes / 1e6, 1),
            "longest_gui_stall_ms": round(self.longest_gui_stall_ms, 1),
            "scene_close_ms": round(self.scene_close_ms, 1),
            "jobs_lost": self.jobs_lost, "variants_lost": self.variants_lost,
            "accepted_instances": self.accepted_files, "exported_instances": self.exported_instances,
            "events": self.events, "jobs": self.jobs, "slowest_gui_calls": self.slowest_slots,
        }

    def report(self) -> str:
        lines = [
            f"session of {self.generates} generates on a 512x512x{self.slices} CT in {self.seconds:.0f} s",
            f"  volume nodes at the end: {self.volume_nodes_end} (allowed: {self.volume_nodes_allowed}: "
            f"source + accepted + one preview)",
            f"  memory growth: {self.rss_growth_ratio:.2f} x one source volume ({self.volume_bytes / 1e6:.0f} MB) "
            f"beyond the {len(self.accepted_files)} accepted volume(s) kept ({self.raw_rss_growth_ratio:.2f} x with "
            f"them; goal {GOALS['rss_growth_ratio']})",
            f"  longest GUI stall: {self.longest_gui_stall_ms:.0f} ms (goal {GOALS['longest_gui_stall_ms']:.0f}); "
            f"closing the scene (Slicer's clear with the panel's handler): {self.scene_close_ms:.0f} ms",
            f"  jobs lost: {self.jobs_lost}, variants lost: {self.variants_lost} (goal 0 and 0)",
            f"  accepted series written: {self.accepted_files} instance(s); sent to Orthanc: {self.exported_instances}",
        ]
        lines.append("  slowest calls on the GUI thread: " + "; ".join(self.slowest_slots[:5]))
        return "\n".join(lines + [f"  - {event}" for event in self.events])


class Session:
    """The host, the engine, Orthanc, the panel and the patient, and the steps of the hour."""

    def __init__(self, slices: int, folder: Path, steps: int, offline_s: float, screenshots: Optional[Path] = None):
        import slicerhost

        self.slices, self.folder, self.steps, self.offline_s = slices, folder, steps, offline_s
        self.screenshots = screenshots
        self.host = slicerhost.install()
        self.figures = Figures(slices=slices)
        self.orthanc = None
        self.engine = None
        self.panel = None
        self.volume = self.segmentation = self.segment_id = None

    # --- the things around the panel ---------------------------------------------------------

    def start_services(self) -> None:
        from medgen.server.process import ServerProcess
        from orthanc_fixture import CALLING_AET, OrthancServer, orthanc_executable

        options = ["--cpu-threads", "1", "--max-steps", "200"]
        if orthanc_executable():
            self.orthanc = OrthancServer(self.folder / "orthanc").start()
            options += ["--destination", f"pacs={self.orthanc.dicom_destination}?calling_aet={CALLING_AET}"]
        self.engine = ServerProcess(self.folder / "engine", Path("demo"), *options)
        self.engine.start(timeout=300)
        os.environ["MEDGEN_DATA_DIR"] = str(self.folder / "engine")  # where the panel finds a local engine's token

    def stop_services(self) -> None:
        if self.engine is not None:
            self.engine.stop()
        if self.orthanc is not None:
            self.orthanc.stop()

    def load_patient(self) -> None:
        """The CT, shown in the Red view at the lesion, and the painted lesion segment."""
        import slicer
        import vtk

        voxels = phantom_ct(self.slices)
        self.volume = slicer.util.addVolumeFromArray(voxels, name="CT phantom")
        del voxels
        self.volume.SetSpacing(0.7, 0.7, 1.5)
        self.volume.SetOrigin(-180.0, -180.0, -200.0)
        self.volume.CreateDefaultDisplayNodes()
        centre = self.slices // 2
        k0, k1 = centre - LESION_HALF_SLICES, centre + LESION_HALF_SLICES
        size = 2 * LESION_RADIUS + 4
        rows, columns = np.mgrid[:size, :size]
        disc = ((rows - size // 2) ** 2 + (columns - size // 2) ** 2 <= LESION_RADIUS**2).astype(np.uint8)
        labels = np.repeat(disc[None], k1 - k0, axis=0)
        label_node = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", "painted")
        matrix = vtk.vtkMatrix4x4()
        self.volume.GetIJKToRASMatrix(matrix)
        corner = [LESION_CENTRE[1] - size // 2, LESION_CENTRE[0] - size // 2, k0, 1]
        origin = [sum(matrix.GetElement(r, c) * corner[c] for c in range(4)) for r in range(3)]
        for r in range(3):
            matrix.SetElement(r, 3, origin[r])
        label_node.SetIJKToRASMatrix(matrix)
        image = vtk.vtkImageData()
        image.SetDimensions(size, size, k1 - k0)
        image.AllocateScalars(vtk.VTK_UNSIGNED_CHAR, 1)
        label_node.SetAndObserveImageData(image)
        slicer.util.arrayFromVolume(label_node)[:] = labels
        self.segmentation = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLSegmentationNode", "lesion")
        self.segmentation.SetReferenceImageGeometryParameterFromVolumeNode(self.volume)
        slicer.vtkSlicerSegmentationsModuleLogic.ImportLabelmapToSegmentationNode(label_node, self.segmentation)
        slicer.mrmlScene.RemoveNode(label_node)
        self.segment_id = self.segmentation.GetSegmentation().GetNthSegmentID(0)
        layout = slicer.app.layoutManager()
        red = layout.sliceWidget("Red")
        red.mrmlSliceCompositeNode().SetBackgroundVolumeID(self.volume.GetID())
        red.mrmlSliceNode().SetSliceOffset(float((self.ras_of(0, 0, centre))[2]))

    def ras_of(self, i, j, k) -> np.ndarray:
        import vtk

        matrix = vtk.vtkMatrix4x4()
        self.volume.GetIJKToRASMatrix(matrix)
        return np.array([sum(matrix.GetElement(r, c) * v for c, v in enumerate((i, j, k, 1))) for r in range(3)])

    # --- the panel -----------------------------------------------------------------------------

    def open_panel(self) -> None:
        self.panel = self.host.load_module(REPO / "MedGenSlicer" / "MedGenSlicer.py")
        ui = self.panel.ui
        ui.engineUrlLineEdit.text = self.engine.url
        ui.tokenLineEdit.text = self.engine.token
        ui.outputDirectoryButton.directory = str(self.folder / "accepted")
        self.host.run_until(lambda: ui.connectionStatusLabel.text.startswith(("Connected", "Not connected")),
                            timeout=60, action=ui.checkConnectionButton.click)
        if not ui.connectionStatusLabel.text.startswith("Connected"):
            raise RuntimeError(f"the panel did not connect: {ui.connectionStatusLabel.text}")
        self.choose_inputs()

    def choose_inputs(self) -> None:
        node = self.panel.widget._parameterNode
        node.inputVolume = self.volume
        node.segmentation = self.segmentation
        node.segmentId = self.segment_id
        self.panel.ui.segmentSelector.setCurrentNode(self.segmentation)
        self.panel.ui.segmentSelector.setCurrentSegmentID(self.segment_id)

    @property
    def node(self):
        return self.panel.widget._parameterNode

    @property
    def session(self):
        return self.panel.widget._session

    def generate(self, number: int, prompt: str, variants: int, all_slices: bool) -> dict:
        ui = self.panel.ui
        self.node.prompt = prompt
        self.node.numVariants = variants
        self.node.steps = self.steps
        self.node.seed = 100 + number
        self.node.currentSliceOnly = not all_slices
        ui.currentSliceRadioButton.checked = not all_slices
        ui.allSlicesRadioButton.checked = all_slices
        job = {"number": number, "prompt": prompt, "variants": variants, "scope": "all" if all_slices else "slice"}
        if not ui.generateButton.enabled:
            raise RuntimeError(f"Generate is not enabled before job {number}: {ui.statusLabel.text}")
        self.host.run_until(lambda: self.session is not None and self.session.job_id is not None, timeout=120,
                            action=ui.generateButton.click)
        if self.session is None or self.session.job_id is None:
            raise RuntimeError(f"job {number} was not submitted: {ui.statusLabel.text}")
        job["id"] = self.session.job_id
        self.figures.jobs.append(job)
        self.figures.generates += 1
        return job

    def wait_job(self, job: dict, timeout: float = 900) -> None:
        """Until the panel's job ended and its preview shows; then what arrived against what the engine made."""
        done = self.host.run_until(lambda: self.session is not None and not self.session.active, timeout=timeout)
        status = self.engine_status(job["id"])
        job["engine_state"] = status["state"]
        job["engine_variants"] = status["variants_ready"]
        job["panel_variants"] = self.panel.ui.variantsListWidget.count
        job["panel_state"] = self.session.final_state if self.session is not None else None
        job["ended"] = bool(done)

    def engine_status(self, job_id: str) -> dict:
        return self.engine.get_json(f"/v1/jobs/{job_id}")

    def wait_running(self, job: dict, timeout: float = 300) -> None:
        def running():
            status = self.engine_status(job["id"])
            return status["state"] == "running" and status["progress"]["steps_done"] >= 1 or status["state"] in (
                "succeeded", "failed", "cancelled")

        self.host.run_until(running, timeout=timeout)

    def screenshot(self, name: str) -> None:
        """The panel as the user sees it now (real Qt widgets; Slicer's own selectors drawn by their stand-ins)."""
        if self.screenshots is None:
            return
        self.screenshots.mkdir(parents=True, exist_ok=True)
        self.host.process_events()
        self.panel.panel.grab().save(str(self.screenshots / f"{name}.png"))

    # --- the hour ------------------------------------------------------------------------------

    def run(self, generates: int) -> Figures:
        import slicer

        started = time.monotonic()
        self.start_services()
        try:
            self.load_patient()
            self.open_panel()
            self.screenshot("tutorial-1-connected")
            gc.collect()
            self.host.meter.reset()
            self.host.diagnostics.clear()
            self.figures.rss_start = rss_bytes()
            self.figures.volume_bytes = slicer.util.arrayFromVolume(self.volume).nbytes
            plan = schedule(generates)
            for number in range(generates):
                prompt = PROMPTS[number % len(PROMPTS)]
                variants = 1 + number % 4
                all_slices = number % 2 == 1
                job = self.generate(number, prompt, variants, all_slices)
                action = plan.get(number)
                if action == "kill":
                    self.wait_running(job)
                    self.engine.kill()
                    self.host.run_until(lambda: self.session.reconnecting, timeout=60)
                    self.engine.start(timeout=300)
                    self.figures.events.append(f"job {number}: engine killed mid-job and started again")
                elif action == "offline":
                    self.wait_running(job)
                    self.engine.kill()
                    offline_until = time.monotonic() + self.offline_s
                    self.host.run_until(lambda: time.monotonic() >= offline_until, timeout=self.offline_s + 5)
                    self.engine.start(timeout=300)
                    self.figures.events.append(f"job {number}: connection refused for {self.offline_s:.0f} s mid-job")
                elif action == "restart":
                    self.wait_running(job)
                    self.check_saved_scene(job)
                    self.panel.unload()  # Slicer closes with the scene saved; the job goes on in the engine
                    self.open_panel()  # and opens again on that scene: the parameter node names the job
                    if self.session is None or self.session.job_id != job["id"]:
                        raise RuntimeError(f"the new panel did not re-attach to job {job['id']}")
                    self.figures.events.append(f"job {number}: panel closed mid-job (the saved scene names the job, "
                                               f"not its preview) and opened again, re-attached")
                elif action == "close-scene":
                    self.wait_running(job)
                    closing = time.perf_counter()  # Slicer's own clear and the panel's handler, timed apart
                    self.host.close_scene()
                    self.figures.scene_close_ms = (time.perf_counter() - closing) * 1000.0
                    cancelled = self.host.run_until(
                        lambda: self.engine_status(job["id"])["state"] in ("cancelled", "succeeded"), timeout=120)
                    job["engine_state"] = self.engine_status(job["id"])["state"]
                    job["closed_scene"] = True
                    if not cancelled:
                        raise RuntimeError(f"job {job['id']} still runs after the scene closed")
                    self.load_patient()  # the next patient
                    self.panel.widget.initializeParameterNode()
                    self.choose_inputs()
                    self.figures.events.append(f"job {number}: scene closed mid-job; the engine's job ended "
                                               f"{job['engine_state']}; next patient loaded")
                    continue
                self.wait_job(job)
                if number == 0:
                    self.screenshot("tutorial-2-variants")
                if action == "accept":
                    self.accept(job)
                elif action == "accept-export":
                    self.accept(job)
                    self.export(job)
                    self.screenshot("tutorial-3-accepted-and-sent")
            gc.collect()
            self.host.process_events()
            self.figures.rss_end = rss_bytes()
            self.measure_end()
        finally:
            self.figures.seconds = time.monotonic() - started
            self.stop_services()
        return self.figures

    def check_saved_scene(self, job: dict) -> None:
        """What a saved scene holds of the job: its id in the parameter node (to re-attach), no preview."""
        import slicer

        scene = slicer.mrmlScene
        scene.SetSaveToXMLString(1)
        try:
            scene.Commit()
            xml = scene.GetSceneXMLString()
        finally:
            scene.SetSaveToXMLString(0)
        if job["id"] not in xml:
            raise RuntimeError(f"a saved scene would not name job {job['id']}: nothing to re-attach to")
        if "SYNTHETIC preview" in xml:
            raise RuntimeError("a saved scene would hold the unaccepted preview volume")

    def accept(self, job: dict) -> None:
        import slicer

        ui = self.panel.ui
        row = ui.variantsListWidget.count - 1  # the last variant: selecting it shows it in the preview
        self.host.run_until(lambda: ui.acceptButton.enabled, timeout=60,
                            action=lambda: ui.variantsListWidget.setCurrentRow(row))
        before = set(os.listdir(self.folder / "accepted")) if (self.folder / "accepted").exists() else set()
        self.host.run_until(lambda: not self.panel.widget._accepting and not self.panel.widget._calls, timeout=300,
                            action=ui.acceptButton.click)
        written = sorted(set(os.listdir(self.folder / "accepted")) - before)
        files = [p for name in written for p in (self.folder / "accepted" / name).rglob("*") if p.is_file()]
        self.figures.accepted_files.append(len(files))
        kept = [n for n in slicer.util.getNodesByClass("vtkMRMLScalarVolumeNode")
                if n.GetAttribute("MedGenSlicer.Accepted") == "true"]
        self.figures.accepted_bytes = sum(slicer.util.arrayFromVolume(n).nbytes for n in kept)
        self.figures.events.append(f"job {job['number']}: variant {row + 1} accepted: {len(files)} instance(s) in "
                                   f"{written}; status: {ui.statusLabel.text}")

    def export(self, job: dict) -> None:
        ui = self.panel.ui
        if self.orthanc is None:
            self.figures.events.append("export skipped: Orthanc is not installed")
            return
        before = len(self.orthanc.instance_ids())
        self.host.run_until(lambda: self.panel.widget._exportProcess is not None
                            and not self.panel.widget._exportProcess.has_pending(), timeout=300,
                            action=ui.sendToPacsButton.click)
        self.figures.exported_instances = len(self.orthanc.instance_ids()) - before
        self.figures.events.append(f"job {job['number']}: sent to Orthanc: {ui.pacsStatusLabel.text}")

    def measure_end(self) -> None:
        import slicer

        nodes = slicer.util.getNodesByClass("vtkMRMLScalarVolumeNode")
        self.figures.volume_nodes_end = len(nodes)
        accepted = [n for n in nodes if n.GetAttribute("MedGenSlicer.Accepted") == "true"]
        self.figures.volume_nodes_allowed = 1 + len(accepted) + 1
        self.figures.longest_gui_stall_ms = self.host.meter.longest_stall * 1000.0
        self.figures.slowest_slots = [f"{timing.what} {timing.seconds * 1000:.0f} ms"
                                      for timing in self.host.diagnostics.slowest_slots]
        for job in self.figures.jobs:
            if job.get("closed_scene"):
                job["lost"] = job["engine_state"] not in ("cancelled", "succeeded")
                continue
            job["lost"] = not job.get("ended") or job.get("panel_state") != "succeeded" or \
                job.get("engine_state") != "succeeded"
            self.figures.variants_lost += max(0, job.get("engine_variants", 0) - job.get("panel_variants", 0))
        self.figures.jobs_lost = sum(1 for job in self.figures.jobs if job["lost"])


def schedule(generates: int) -> Dict[int, str]:
    """Which job meets which event, spread over the session as in a real hour (job 0 meets none)."""
    events = ["kill", "offline", "restart", "close-scene", "accept", "accept-export"]
    if generates <= len(events):
        raise ValueError(f"the session needs at least {len(events) + 1} generates, got {generates}")
    plan, previous = {}, 0
    for number, (event, fraction) in enumerate(zip(events, (0.2, 0.35, 0.5, 0.65, 0.8, 0.9))):
        latest = generates - len(events) + number  # leaves a job for each event still to come
        previous = min(max(previous + 1, round(generates * fraction)), latest)
        plan[previous] = event
    return plan


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--slices", type=int, default=300)
    parser.add_argument("--generates", type=int, default=20)
    parser.add_argument("--steps", type=int, default=8, help="inference steps per job (the demo model's own: 20)")
    parser.add_argument("--offline", type=float, default=30.0, help="seconds the connection is refused mid-job")
    parser.add_argument("--json", type=Path, help="write the figures here")
    parser.add_argument("--screenshots", type=Path, help="save the panel at three moments of the session here")
    args = parser.parse_args(argv)
    folder = Path(tempfile.mkdtemp(prefix="medgenslicer-session-"))
    figures = Session(args.slices, folder, args.steps, args.offline, args.screenshots).run(args.generates)
    print(figures.report())
    if args.json:
        args.json.write_text(json.dumps(figures.as_json(), indent=2))
    met = (figures.longest_gui_stall_ms <= GOALS["longest_gui_stall_ms"]
           and figures.rss_growth_ratio <= GOALS["rss_growth_ratio"]
           and figures.volume_nodes_end <= figures.volume_nodes_allowed
           and figures.jobs_lost == 0 and figures.variants_lost == 0)
    print("goals met" if met else "goals NOT met")
    return 0 if met else 1


if __name__ == "__main__":
    code = main()
    sys.stdout.flush()
    sys.stderr.flush()
    # Past this point only the interpreter's teardown remains, where Qt's and VTK's C++ objects are
    # destroyed in an order neither library promises (it can crash after the figures are written):
    # leave with the session's own verdict instead.
    os._exit(code)
