"""One job as the panel runs it: the upload built in short steps, the engine followed by the worker
process, each variant kept as its small box, and one preview volume that shows the chosen variant.

Everything here runs on the GUI thread in `tick`, which the panel's QTimer calls; each tick does at
most about ``budget_s`` of work (a chunk of the segment, of the upload files, of the preview copy),
so a 300-slice job never stalls the GUI. `tick` returns what the panel should show as `SessionUpdate`s.
"""

from __future__ import annotations

import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

from .background import JobProcess, ProcessCall, private_folder
from .client import EngineClient, EngineError, RequestRefused
from .jobs import JobGone, VariantSlab
from .results import VariantInfo
from .geometry import crop_slab
from .scene import PreviewVolume, UploadBuilder, ijk_to_ras, remove_previews

TEMPLATE_MISMATCH = "pixels_differ_from_dicom"  # the engine's code for voxels that differ from their DICOM files
TICK_BUDGET_S = 0.03


@dataclass
class SessionUpdate:
    """What the panel should show: kind is status, progress, job, variant, shown or ended."""

    kind: str
    text: str = ""
    error: bool = False
    done: int = 0
    total: int = 0
    variant: Optional[VariantInfo] = None
    node: Any = None


class JobSession:
    """Submit a job whose upload ``make_builder(use_dicom_templates, folder)`` builds (an `UploadBuilder`),
    or re-attach to ``job_id``; then follow it until it ends.

    ``slab``, ``region`` and ``skip_variants`` matter for a re-attach: the slices sent, the rows and
    columns the job may change (as the first session of the job computed them), the variants received.
    """

    def __init__(self, engine: EngineClient, source_node, *, make_builder: Optional[Callable[[bool], UploadBuilder]] = None,
                 job_id: Optional[str] = None, slab=None, region=None, skip_variants: int = 0,
                 poll_interval: float = 0.5,
                 budget_s: float = TICK_BUDGET_S):
        if (make_builder is None) == (job_id is None):
            raise ValueError("give a way to build the upload or the id of a submitted job, not both")
        self.engine = engine
        self.source = source_node
        self.job_id = job_id
        self.region = tuple(region) if region is not None else None
        self.slab = tuple(slab) if slab is not None else None
        self.poll_interval = poll_interval
        self.budget_s = budget_s
        self.variants: Dict[int, VariantSlab] = {}
        self.preview: Optional[PreviewVolume] = None
        self.state = "preparing" if make_builder is not None else "following"
        self.final_state: Optional[str] = None
        self._make_builder = make_builder
        self._templates = True
        self._builder: Optional[UploadBuilder] = None
        self._folder: Optional[Path] = None
        self._process: Optional[JobProcess] = None
        self._wanted: Optional[int] = None  # the variant to show once the preview is filled
        self._skip = skip_variants
        if make_builder is None:
            remove_previews(source_node.GetScene(), job_id)  # an earlier panel's, of the same job
            self._start_process(upload=None)

    # --- what the panel asks -------------------------------------------------------------------

    @property
    def active(self) -> bool:
        """Work is left: building, following, or a preview to fill for a variant to show."""
        return self.state in ("preparing", "following") or self._wanted is not None

    @property
    def running(self) -> bool:
        return self.state in ("preparing", "following")

    @property
    def reconnecting(self) -> bool:
        return self._process is not None and self._process.reconnecting

    def show(self, index: int) -> None:
        """Show variant ``index`` in the preview (at once, or as soon as the preview is filled)."""
        if index not in self.variants:
            raise KeyError(f"variant {index} has not arrived")
        self._wanted = index

    def accept(self, index: int, name: str):
        """Keep variant ``index`` as a volume of its own (the preview turned into it); returns the node."""
        if self.preview is None or self.preview.shown != index or not self.preview.ready:
            raise RuntimeError(f"variant {index} is not the one shown in the preview yet")
        node = self.preview.keep(name)
        self.preview = None
        return node

    def cancel(self) -> None:
        """Stop the job on the engine; variants finished before still arrive."""
        if self.state == "preparing":  # nothing was sent: the files being built go
            self._end("cancelled")
            if self._folder is not None:
                shutil.rmtree(self._folder, ignore_errors=True)
                self._folder, self._builder = None, None
        elif self._process is not None:
            self._process.cancel()

    def detach(self) -> None:
        """Stop following without touching the job on the engine (a re-attach can pick it up)."""
        if self._process is not None:
            self._process.detach()
        if self.running:
            self._end("detached")

    def close(self, cancel: bool = False) -> Optional[ProcessCall]:
        """The user moved on: the preview (unaccepted variants) leaves the scene, the private files go.

        With ``cancel`` (the scene closed: its patient is gone) the job is cancelled on the engine too:
        returns the call that does it, for the panel to report; a job still being submitted is cancelled
        by its worker, which then removes its own folder."""
        call = None
        if cancel and self.running:
            if self.job_id is not None:
                call = ProcessCall(self.engine, "cancel_job", job_id=self.job_id)
            elif self._process is not None:
                self._process.abandon()  # submitting: cancel once it has an id, then tidy up
                self._process, self._folder = None, None
        self.detach()
        if self.preview is not None:
            self.preview.remove()
            self.preview = None
        self.variants.clear()
        self._wanted = None
        if self._process is not None:
            self._process.remove(wait=False)  # told to detach: it exits on its own, the GUI does not wait
            self._process = None
        if self._folder is not None:  # an upload still being built
            shutil.rmtree(self._folder, ignore_errors=True)
            self._folder = None
        return call

    # --- the timer's work ----------------------------------------------------------------------

    def tick(self) -> List[SessionUpdate]:
        deadline = time.monotonic() + self.budget_s
        updates: List[SessionUpdate] = []
        try:
            if self.state == "preparing":
                self._build(deadline, updates)
            if self._process is not None:
                for event in self._process.drain():
                    self._handle(event, updates)
            self._fill_and_show(deadline, updates)
        except (EngineError, ValueError, OSError) as error:  # the engine's word, a segment not on the slice, a full disk
            self._end("failed")
            updates.append(SessionUpdate("ended", str(error), error=True))
        except Exception as error:  # noqa: BLE001 - a bug must end the job visibly, not leave the panel busy
            self._end("failed")
            updates.append(SessionUpdate("ended", f"unexpected error: {type(error).__name__}: {error}", error=True))
        return updates

    def _build(self, deadline: float, updates: List[SessionUpdate]) -> None:
        if self._builder is None:
            self._folder = private_folder()
            self._builder = self._make_builder(self._templates, self._folder)
            updates.append(SessionUpdate("status", "Preparing the slices to send…"))
        while time.monotonic() < deadline:
            if self._builder.step():
                builder, self._builder = self._builder, None
                self.region, self.slab = builder.region, builder.slab
                k0, k1 = builder.slab
                size = sum(Path(part["path"]).stat().st_size for part in builder.spec["files"])
                updates.append(SessionUpdate("status", f"Sending slices {k0}–{k1 - 1} ({size / 1e6:.1f} MB) to the engine…"))
                self._start_process(upload=builder.spec, volume_dtype=builder.volume_dtype)
                return

    def _start_process(self, upload: Optional[dict], volume_dtype=None) -> None:
        import slicer

        voxels = slicer.util.arrayFromVolume(self.source)
        slab_matrix = crop_slab(voxels, ijk_to_ras(self.source), *self.slab)[1] if self.slab else None
        self._process = JobProcess(self.engine, upload=upload, job_id=None if upload else self.job_id,
                                   volume_dtype=volume_dtype or voxels.dtype, region=self.region,
                                   skip_variants=self._skip, poll_interval=self.poll_interval,
                                   folder=self._folder if upload else None, slab_ijk_to_ras=slab_matrix)
        self.state = "following"

    def _handle(self, event, updates: List[SessionUpdate]) -> None:
        if event.kind == "submitted":
            self.job_id = event.status["id"]
            updates.append(SessionUpdate("job", self.job_id))
            position = event.status.get("queue_position")
            updates.append(SessionUpdate("status", "Queued" + (f" (position {position})" if position and position > 1 else "") + "…"))
        elif event.kind == "reconnecting":
            updates.append(SessionUpdate("status", f"Reconnecting to the engine ({event.error}); the job goes on there "
                                                   f"and is followed again as soon as it answers…", error=True))
        elif event.kind == "reconnected":
            updates.append(SessionUpdate("status", "Reconnected to the engine."))
        elif event.kind == "status":
            status, progress = event.status, event.status["progress"]
            if status["state"] == "queued":
                updates.append(SessionUpdate("status", f"Waiting in the engine's queue (position {status['queue_position']})…"))
            elif status["state"] == "running" and progress["steps_total"]:
                updates.append(SessionUpdate("progress", done=progress["steps_done"], total=progress["steps_total"]))
                updates.append(SessionUpdate("status", f"Generating: step {progress['steps_done']} of {progress['steps_total']}, "
                                                       f"{status['variants_ready']} of {status['num_variants']} variant(s) ready"))
        elif event.kind == "variant":
            self.variants[event.variant.index] = event.slab
            updates.append(SessionUpdate("variant", variant=event.variant))
            if self._wanted is None and (self.preview is None or self.preview.shown is None):
                self._wanted = event.variant.index  # the first to arrive is shown
        elif event.kind == "finished":
            state = event.status["state"]
            self._end(state)
            count = len(self.variants)
            if state == "succeeded":
                updates.append(SessionUpdate("ended", f"Done: {count} variant(s). Compare them with the source, then Accept one."))
            else:
                updates.append(SessionUpdate("ended", f"Cancelled; {count} variant(s) finished before the engine stopped."))
        elif event.kind == "error":
            error = event.error
            if isinstance(error, RequestRefused) and error.code == TEMPLATE_MISMATCH and self._templates \
                    and self._make_builder is not None:
                self._templates = False
                self._process.remove()
                self._process = None
                self.state = "preparing"
                updates.append(SessionUpdate("status", "The volume's voxels differ from its DICOM files (edited, or a copy "
                                                       "of the loaded series): sending its voxels alone; the synthetic "
                                                       "series will not join the source's study."))
                return
            self._end("gone" if isinstance(error, JobGone) else "failed")
            updates.append(SessionUpdate("ended", str(error), error=True))

    def _fill_and_show(self, deadline: float, updates: List[SessionUpdate]) -> None:
        if self._wanted is None:
            return
        if self.preview is None or self.preview.node is None or self.preview.node.GetScene() is None:
            self.preview = PreviewVolume(self.source, self.job_id or "job", slab=self.slab)
        while not self.preview.ready and time.monotonic() < deadline:
            self.preview.fill_step()
        if self.preview.ready:
            index, self._wanted = self._wanted, None
            self.preview.show(self.variants[index])
            updates.append(SessionUpdate("shown", variant=self.variants[index].variant, node=self.preview.node))

    def _end(self, state: str) -> None:
        self.state = "ended"
        self.final_state = state
