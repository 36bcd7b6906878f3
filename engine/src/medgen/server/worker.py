"""The one worker thread that owns the GPU: it takes queued jobs in order and runs them through the engine.

A job of N variants runs as N engine calls of one variant each (seed + v, as one call would use), so
each variant is published the moment it is done and a restarted server resumes at the first missing one.
Cancelling works through the engine's progress callback: it raises, and the run stops at the next step.

The worker survives any one job and a failing job store (a full disk): a job that raises ends failed
with its reason; a final state that cannot be written is kept and written again before the next job.
"""

from __future__ import annotations

import logging
import shutil
import threading
from pathlib import Path

from medgen.errors import MedgenError
from medgen.generate.settings import read_recommended_settings
from medgen.server.config import ModelEntry, ServerConfig
from medgen.server.errors import JobCancelled, ServerStopping
from medgen.server.jobs import JobFiles, JobRecord, JobStore
from medgen.server.results import discard_unfinished, publish_summary, publish_variant
from medgen.server.schemas import JobParameters, JobState, ModelInfo
from medgen.server.storage import is_disk_full

logger = logging.getLogger(__name__)

_IDLE_POLL_S = 1.0
_STORE_RETRY_S = 2.0


class ModelUnavailable(Exception):
    """A model could not be loaded; the message says which and why."""


class ModelRegistry:
    """Loads each model once, on the worker thread, and reports its state for /v1/info."""

    def __init__(self, config: ServerConfig):
        self._config = config
        self._lock = threading.Lock()
        self._inpainters: dict[str, object] = {}
        self._states: dict[str, ModelInfo] = {
            entry.name: ModelInfo(
                name=entry.name,
                path=str(entry.path),
                default=entry is config.default_model,
                state="not loaded",
                recommended=read_recommended_settings(entry.path) if Path(entry.path).is_dir() else {},
            )
            for entry in config.models
        }
        self._device: str | None = None

    def info(self) -> list[ModelInfo]:
        with self._lock:
            return [state.model_copy() for state in self._states.values()]

    def device(self) -> str:
        """The device models run on (resolved once: 'auto' becomes cuda or cpu)."""
        if self._device is None:
            from medgen.generate.models import resolve_device

            self._device = str(resolve_device(self._config.device))
        return self._device

    def get(self, entry: ModelEntry):
        """The loaded Inpainter of ``entry``, loading it now if needed (call from the worker thread only)."""
        if entry.name in self._inpainters:
            return self._inpainters[entry.name]
        from medgen.api import Inpainter

        self._set_state(entry.name, state="loading", error=None)
        try:
            inpainter = Inpainter(entry.path, device=self._config.device, dtype=self._config.dtype)
        except Exception as exc:  # noqa: BLE001 - any load failure is reported to clients, then the next job tries again
            message = f"model {entry.name!r} could not be loaded from {entry.path}: {exc}"
            self._set_state(entry.name, state="failed", error=str(exc))
            raise ModelUnavailable(message) from exc
        self._inpainters[entry.name] = inpainter
        self._device = str(inpainter.model.device)
        self._set_state(entry.name, state="ready", error=None, resolution=inpainter.model.resolution)
        return inpainter

    def warm(self, entry: ModelEntry) -> dict[int, float]:
        """On CUDA, compile and capture the fast path's batch-1 shape now, so the first job does not pay
        for it (tens of seconds); elsewhere there is nothing to warm. Returns seconds per batch size."""
        model = self.get(entry).model
        if model.device.type != "cuda" or model.fast_runner is None:
            return {}
        guidance = read_recommended_settings(entry.path).get("guidance_scale", 7.5) if Path(entry.path).is_dir() else 7.5
        try:
            seconds = model.fast_runner.warmup([1], model.resolution, guidance_scale=guidance)
        except Exception as exc:  # noqa: BLE001 - a cold start is slower, not broken: the first job compiles
            logger.warning("model %s: warm-up failed (%s); the first job will compile instead", entry.name, exc)
            return {}
        logger.info("model %s warmed for batch 1 in %.1f s", entry.name, seconds[1])
        return seconds

    def _set_state(self, name: str, **changes) -> None:
        with self._lock:
            self._states[name] = self._states[name].model_copy(update=changes)


def engine_request(
    parameters: JobParameters, config: ServerConfig, *, source: Path, mask: Path, out: Path, seed: int, variant: int = 0
):
    """The `InpaintRequest` of variant ``variant`` of a job (the server always writes DICOM, even for NRRD
    input): its own prompt (prompt variations), its seed, and the named adapters as paths."""
    from medgen.api import InpaintRequest
    from medgen.generate.prompt_variations import variant_prompts

    adapters, controlnet = [], None
    for choice in parameters.adapters:
        entry = config.adapter(choice.name)
        if entry is None:
            raise ModelUnavailable(f"adapter {choice.name!r} is no longer offered by this server")
        if entry.kind == "controlnet":
            controlnet = f"{entry.path}:{float(choice.weight)!r}"
        else:
            adapters.append(f"{entry.path}:{float(choice.weight)!r}")
    return InpaintRequest(
        input=source,
        mask=mask,
        out=out,
        prompt=variant_prompts(parameters.prompt, parameters.prompt_variations, variant + 1)[variant],
        negative_prompt=parameters.negative_prompt,
        segment=parameters.segment,
        label=parameters.label,
        slices=parameters.slices,
        all_slices=parameters.all_slices,
        num_variants=1,
        seed=seed,
        num_inference_steps=parameters.num_inference_steps,
        guidance_scale=parameters.guidance_scale,
        strength=parameters.strength,
        cache_interval=parameters.cache_interval,
        mask_dilate_mm=parameters.mask_dilate_mm,
        mask_blur_px=parameters.mask_blur_px,
        crop_padding_px=parameters.crop_padding_px,
        window=parameters.window,
        window_center=parameters.window_center,
        window_width=parameters.window_width,
        only_modified=False,
        write_dicom=True,
        adapters=adapters,
        controlnet=controlnet,
        control_from=parameters.control_from,
        allow_unchanged=parameters.allow_unchanged,
        resample_mask=parameters.resample_mask,
        force_modality=parameters.force_modality,
        source_modality=parameters.source_modality,
    )


class Worker:
    """Runs queued jobs one at a time on a daemon thread until `stop` is called."""

    def __init__(self, store: JobStore, config: ServerConfig, registry: ModelRegistry):
        self._store = store
        self._config = config
        self._registry = registry
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="medgen-worker", daemon=True)
        self._unrecorded: dict[str, tuple[JobState, str | None]] = {}
        """Final states the store could not write yet (a full disk), by job id."""

    def start(self) -> None:
        self._thread.start()

    def notify(self) -> None:
        """A job was queued or a cancel was asked: look now rather than at the next idle poll."""
        self._wake.set()

    def stop(self, timeout: float = 30.0) -> None:
        """Stop at the next denoising step; the running job goes back to the queue for the next start."""
        self._stopping.set()
        self._wake.set()
        self._thread.join(timeout)

    def _loop(self) -> None:
        if self._config.preload:
            try:
                self._registry.warm(self._config.default_model)
            except ModelUnavailable as exc:
                logger.error("%s", exc)
        while not self._stopping.is_set():
            try:
                self._record_unrecorded()
                job = self._store.claim_next()
            except Exception as exc:  # noqa: BLE001 - a full disk or a locked database passes; the worker stays
                logger.error("job store unavailable (%s); trying again in %.0f s", exc, _STORE_RETRY_S)
                self._stopping.wait(_STORE_RETRY_S)
                continue
            if job is None:
                self._wake.wait(_IDLE_POLL_S)
                self._wake.clear()
                continue
            try:
                self._run(job)
            except Exception:  # noqa: BLE001 - the worker must survive any one job
                logger.exception("job %s: the worker's own bookkeeping failed", job.id)

    def _run(self, job: JobRecord) -> None:
        files = self._store.files(job.id)
        logger.info("job %s: running (%d variant(s))", job.id, job.parameters.num_variants)
        try:
            entry = self._config.model(job.model)
            if entry is None:
                raise ModelUnavailable(f"model {job.model!r} is no longer offered by this server")
            inpainter = self._registry.get(entry)
            self._run_variants(job, files, inpainter)
        except JobCancelled:
            logger.info("job %s: cancelled", job.id)
            self._end(job.id, JobState.CANCELLED)
        except ServerStopping:
            logger.info("job %s: server stopping; back to the queue", job.id)
            self._store.requeue(job.id)
            return
        except (MedgenError, ModelUnavailable) as exc:
            logger.info("job %s: failed: %s", job.id, exc)
            self._end(job.id, JobState.FAILED, str(exc))
        except Exception as exc:  # noqa: BLE001 - the worker must survive any one job
            if is_disk_full(exc):
                logger.error("job %s: failed: the disk is full (%s)", job.id, exc)
                self._end(job.id, JobState.FAILED, "the engine's disk is full; free space on it and submit again")
            else:
                logger.exception("job %s: internal error", job.id)
                self._end(job.id, JobState.FAILED,
                          f"internal error ({type(exc).__name__}: {exc}); see the engine's log")
        else:
            self._end(job.id, JobState.SUCCEEDED)
        finally:
            self._store.remove_scratch(job.id)

    def _end(self, job_id: str, state: JobState, error: str | None = None) -> None:
        """Remove the upload when inputs are not kept (a success's report is made from it first), record
        the final state, then apply a deletion asked while the job ran. A state the store cannot write
        is kept and written before the next job."""
        if self._config.retention.keep_inputs_s == 0:
            if state is JobState.SUCCEEDED:
                self._make_report(job_id)
            self._store.remove_inputs(job_id)  # before the final state shows: a finished job has no upload
        try:
            final = self._store.finish(job_id, state, error)
        except Exception as exc:  # noqa: BLE001 - written again before the next job (see _record_unrecorded)
            logger.error("job %s: could not record %s (%s); will try again", job_id, state.value, exc)
            self._unrecorded[job_id] = (state, error)
            return
        if final is not state:
            logger.info("job %s: cancel asked during its last step; recorded as %s", job_id, final.value)
        self._after_finish(job_id)

    def _after_finish(self, job_id: str) -> None:
        if self._store.complete_requested_delete(job_id):
            logger.info("job %s: deleted as asked", job_id)

    def _make_report(self, job_id: str) -> None:
        """The job's QA report reads the upload: build it now, before the upload goes (a failure loses
        only the report, never the job)."""
        files = self._store.files(job_id)
        try:
            from medgen.qa.report import cached_job_report

            cached_job_report(files.result_dir, files.engine_inputs())
        except Exception as exc:  # noqa: BLE001 - the results stand without their report
            logger.warning("job %s: no report made (%s)", job_id, exc)

    def _record_unrecorded(self) -> None:
        for job_id, (state, error) in list(self._unrecorded.items()):
            self._store.finish(job_id, state, error)
            del self._unrecorded[job_id]
            self._after_finish(job_id)

    def _run_variants(self, job: JobRecord, files: JobFiles, inpainter) -> None:
        parameters = job.parameters
        count = parameters.num_variants
        source, mask = files.engine_inputs()
        discard_unfinished(files, job.variants_ready)
        inpainter.model.set_scheduler(parameters.scheduler.value if parameters.scheduler else None)

        for v in range(job.variants_ready, count):
            self._check_interrupt(job.id)
            out = files.work_dir / f"run-{v + 1:02d}"
            shutil.rmtree(out, ignore_errors=True)
            files.work_dir.mkdir(parents=True, exist_ok=True)
            request = engine_request(parameters, self._config, source=source, mask=mask, out=out,
                                     seed=job.seed + v, variant=v)

            def progress(done: int, total: int, v: int = v) -> None:
                self._check_interrupt(job.id)
                self._store.set_progress(job.id, v * total + done, count * total)

            result = inpainter(request, progress=progress)
            publish_variant(files, v + 1, result.out, result.variant_dirs[0])
            self._store.set_variants_ready(job.id, v + 1)
            shutil.rmtree(out, ignore_errors=True)
            logger.info("job %s: variant %d of %d ready", job.id, v + 1, count)

        publish_summary(files, job.id, parameters.model_dump(mode="json"), count)
        record = self._store.get(job.id)
        if record is not None:
            self._store.set_progress(job.id, record.steps_total, record.steps_total)

    def _check_interrupt(self, job_id: str) -> None:
        if self._stopping.is_set():
            raise ServerStopping()
        if self._store.is_cancel_requested(job_id):
            raise JobCancelled()
