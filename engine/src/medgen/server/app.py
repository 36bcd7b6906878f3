"""The HTTP API: thin FastAPI endpoints over the job store and the worker.

Every response is JSON or a file; every error is ``{"error": {"code", "message"}}`` with a 4xx for
anything the client can fix. All endpoints but ``/v1/health`` need the bearer token.
"""

from __future__ import annotations

import logging
import secrets
import shutil
import sqlite3
import time
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import Depends, FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from medgen import __version__
from medgen.errors import MedgenError
from medgen.generate.settings import read_recommended_settings
from medgen.server.access_log import AccessLog, close_access_log, open_access_log
from medgen.server.auth import BearerTokenAuth, token_matches
from medgen.server.config import ServerConfig
from medgen.server.errors import ApiError
from medgen.server.exports import ExportRunner, ExportStore
from medgen.server.jobs import CancelOutcome, DeleteOutcome, JobRecord, JobStore
from medgen.server.retention import Purger
from medgen.server.storage import data_usage, format_size, is_disk_full, make_private
from medgen.server.results import ARRAY_FILENAME, DICOM_ZIP_FILENAME, PREVIEW_FILENAME, PROVENANCE_FILENAME
from medgen.server.schemas import (
    AdapterInfo,
    DestinationInfo,
    EngineInfo,
    ErrorBody,
    ExportRequest,
    ExportStatus,
    Health,
    JobCreated,
    JobParameters,
    JobState,
    JobStatus,
    QueueInfo,
    ResultManifest,
    Scheduler,
    StorageInfo,
    VariantResult,
)
from medgen.server.uploads import inspect_inputs, receive_upload
from medgen.server.worker import ModelRegistry, Worker, engine_request

logger = logging.getLogger(__name__)

_ERROR_RESPONSES = {
    status: {"model": ErrorBody, "description": text}
    for status, text in {
        400: "the request cannot be used as sent; the message says what to fix",
        401: "missing or wrong token",
        404: "no such job, export or file",
        409: "the job is not in a state that allows this",
        410: "the job was deleted",
        413: "the upload or image is larger than this engine's limits",
        422: "a parameter's value is refused; the message names the field",
        429: "the queue is full",
        507: "the engine's data folder is at its quota, or its disk is full",
    }.items()
}

_JOB_FORM_SCHEMA = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["parameters", "source", "mask"],
                    "properties": {
                        "parameters": {"type": "string", "description": "JSON of JobParameters"},
                        "source": {
                            "type": "array",
                            "items": {"type": "string", "format": "binary"},
                            "description": "the DICOM instances of the slices, or one NRRD/NIfTI/NPY volume",
                        },
                        "source_geometry": {
                            "type": "string",
                            "description": 'NPY source only: JSON {"ijk_to_ras": 4x4} or {"ijk_to_lps": 4x4}',
                        },
                        "mask": {
                            "type": "string",
                            "format": "binary",
                            "description": "labelmap on the source's grid (NRRD, .seg.nrrd, NIfTI, NPY) or DICOM SEG",
                        },
                    },
                }
            }
        },
    }
}


class BodySizeLimit:
    """Refuse request bodies over ``max_bytes`` (413) whether or not they announce a Content-Length.

    The token is checked first: a request without it is answered 401 before one byte of its body is read.
    """

    def __init__(self, app: ASGIApp, max_bytes: int, token: str):
        self.app = app
        self.max_bytes = max_bytes
        self.token = token

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers", []))
        declared = headers.get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            if not token_matches(headers.get(b"authorization", b""), self.token):
                response = _error_response(401, "token_missing", "this endpoint needs the engine's token",
                                           {"WWW-Authenticate": "Bearer", "Connection": "close"})
                await response(scope, receive, send)
                return
            # Read and drop the body first: a client still sending would see a reset, not our 413.
            while True:
                message = await receive()
                if message["type"] != "http.request" or not message.get("more_body", False):
                    break
            await _too_large(self.max_bytes)(scope, receive, send)
            return
        received = 0

        async def counting_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise ApiError(413, "upload_too_large", _too_large_text(self.max_bytes))
            return message

        await self.app(scope, counting_receive, send)


def _too_large_text(max_bytes: int) -> str:
    return (
        f"the upload is larger than this engine's limit of {max_bytes // (1 << 20)} MiB; "
        f"send only the slices the mask touches"
    )


def _too_large(max_bytes: int) -> JSONResponse:
    return _error_response(413, "upload_too_large", _too_large_text(max_bytes))


def _error_response(status: int, code: str, message: str, headers: dict | None = None) -> JSONResponse:
    return JSONResponse(status_code=status, content={"error": {"code": code, "message": message}}, headers=headers)


def create_app(config: ServerConfig, token: str) -> FastAPI:
    """The app of one server: its store, worker and routes; the worker starts and stops with the app."""
    make_private(config.data_dir)
    store = JobStore(config.data_dir, max_queued_jobs=config.limits.max_queued_jobs)
    registry = ModelRegistry(config)
    worker = Worker(store, config, registry)
    exports = ExportStore(config.data_dir)
    exporter = ExportRunner(exports, store, config)
    purger = Purger(store, config.retention)
    access_logger = open_access_log(config.access_log_path)
    limits = config.limits

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        unreadable = store.fail_unreadable()
        if unreadable:
            logger.warning("failed %d stored job(s) this version cannot read: %s", len(unreadable), ", ".join(unreadable))
        requeued = store.recover_after_restart()
        if requeued:
            logger.info("put %d interrupted job(s) back in the queue", len(requeued))
        interrupted = exports.fail_interrupted()
        if interrupted:
            logger.info("marked %d export(s) interrupted by the last stop as failed", interrupted)
        purger.run_once()
        purger.start()
        worker.start()
        try:
            yield
        finally:
            await run_in_threadpool(exporter.stop)
            await run_in_threadpool(worker.stop)
            await run_in_threadpool(purger.stop)
            exports.close()
            store.close()
            close_access_log(access_logger)

    app = FastAPI(
        title="MedGenSlicer engine",
        version=__version__,
        description="Inpaint synthetic pathology into real scans; results are clearly marked synthetic DICOM.",
        lifespan=lifespan,
        docs_url=None,  # the interactive docs pull scripts from a CDN; the schema is at /openapi.json
        redoc_url=None,
        responses=_ERROR_RESPONSES,
    )
    app.add_middleware(BodySizeLimit, max_bytes=limits.max_upload_bytes, token=token)
    app.add_middleware(AccessLog, logger=access_logger)  # outermost: it sees every answer, 401 and 413 too
    app.state.store = store
    app.state.worker = worker
    authorized = [Depends(BearerTokenAuth(token))]

    # --- errors: one JSON shape ---------------------------------------------------------------

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError) -> JSONResponse:
        headers = {"WWW-Authenticate": "Bearer"} if exc.status == 401 else None
        return _error_response(exc.status, exc.code, exc.message, headers)

    @app.exception_handler(MedgenError)
    async def _input_error(request: Request, exc: MedgenError) -> JSONResponse:
        return _error_response(400, "bad_input", str(exc))

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        return _error_response(400, "bad_request", problems)

    @app.exception_handler(sqlite3.OperationalError)
    @app.exception_handler(OSError)
    async def _storage_error(request: Request, exc: Exception) -> JSONResponse:
        if is_disk_full(exc):
            return _error_response(507, "disk_full", "the engine's disk is full; free space on it (or delete "
                                                     "finished jobs) and try again")
        logger.error("%s %s: %s", request.method, request.url.path, exc)
        return _error_response(500, "storage_error", f"the engine could not read or write its data: {exc}")

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        message = {404: f"no such endpoint: {request.method} {request.url.path}",
                   405: f"{request.method} is not allowed on {request.url.path}"}.get(exc.status_code, str(exc.detail))
        return _error_response(exc.status_code, "http_error", message)

    # --- routes -------------------------------------------------------------------------------

    @app.get("/v1/health", response_model=Health, tags=["engine"])
    def health() -> Health:
        """Whether the engine answers; the only endpoint without a token."""
        return Health(status="ok", version=__version__)

    @app.get("/v1/info", response_model=EngineInfo, dependencies=authorized, tags=["engine"])
    def info() -> EngineInfo:
        """Version, device, models, adapters and limits: what a client may ask for."""
        return EngineInfo(
            version=__version__,
            device=registry.device(),
            models=registry.info(),
            adapters=[AdapterInfo(name=a.name, kind=a.kind, token=a.token, base_model=a.base_model,
                                  modality=a.modality) for a in config.adapters],
            schedulers=[s.value for s in Scheduler],
            limits=limits,
            queue=QueueInfo(queued=store.count(JobState.QUEUED), running=store.count(JobState.RUNNING)),
            destinations=[DestinationInfo(name=d.name, kind=d.kind.value, address=d.address)
                          for d in config.destinations],
            storage=StorageInfo(used_bytes=data_usage(config.data_dir), max_data_bytes=limits.max_data_bytes,
                                keep_results_s=config.retention.keep_results_s,
                                keep_inputs_s=config.retention.keep_inputs_s),
        )

    @app.post(
        "/v1/jobs",
        status_code=202,
        response_model=JobCreated,
        dependencies=authorized,
        openapi_extra=_JOB_FORM_SCHEMA,
        tags=["jobs"],
    )
    async def create_job(request: Request) -> JobCreated:
        """Queue an inpainting job; answers at once with its id (the work happens on the worker)."""
        try:
            store.check_room()
            declared = request.headers.get("content-length", "")
            await run_in_threadpool(_quota_check, config, int(declared) if declared.isdigit() else 0)
        except ApiError:
            await _drain(request)  # a client still sending would see a reset instead of our 429 or 507
            raise
        job_id = store.new_id()
        files = store.files(job_id)
        try:
            upload = await receive_upload(request, limits, files.input_dir)
            parameters = _fixed_parameters(upload.parameters, config)
            source_info, _ = await run_in_threadpool(
                inspect_inputs, upload.source_path, upload.mask_path, parameters, limits,
                Path(config.model(parameters.model).path),
            )
            await run_in_threadpool(_quota_check, config, 0)
            record = store.create(job_id, model=_model_name(parameters, config), parameters=parameters,
                                  source=source_info)
        except (OSError, sqlite3.OperationalError) as exc:
            shutil.rmtree(files.root, ignore_errors=True)
            if is_disk_full(exc):
                raise ApiError(507, "disk_full", "the engine's disk is full; delete finished jobs "
                                                 "(DELETE /v1/jobs/{id}) or free space on its disk, then send again") from None
            raise
        except BaseException:
            shutil.rmtree(files.root, ignore_errors=True)
            raise
        worker.notify()
        return JobCreated(
            id=record.id,
            state=record.state,
            queue_position=store.queue_position(record),
            status_url=f"/v1/jobs/{record.id}",
            result_url=f"/v1/jobs/{record.id}/result",
        )

    @app.get("/v1/jobs/{job_id}", response_model=JobStatus, dependencies=authorized, tags=["jobs"])
    def job_status(job_id: str) -> JobStatus:
        """State, progress in denoising steps, place in the queue, and variants ready so far."""
        return store.status(_job(store, job_id))

    @app.post("/v1/jobs/{job_id}/cancel", response_model=JobStatus, dependencies=authorized, tags=["jobs"])
    def cancel_job(job_id: str) -> JobStatus:
        """Cancel and keep: a queued job ends now, a running one at its next denoising step. 200 means
        the job will not succeed; 409 that it had already finished (its results stay)."""
        _job(store, job_id)
        outcome = store.request_cancel(job_id)
        record = _job(store, job_id)
        if outcome is CancelOutcome.FINISHED:
            raise ApiError(409, "job_finished", f"job {job_id} has already {record.state.value}; nothing to cancel")
        if outcome is CancelOutcome.CANCELLED and config.retention.keep_inputs_s == 0:
            store.remove_inputs(job_id)
        worker.notify()
        return store.status(record)

    @app.delete("/v1/jobs/{job_id}", response_model=JobStatus, dependencies=authorized, tags=["jobs"])
    def delete_job(job_id: str, request: Request) -> JobStatus:
        """Delete the job: its upload, results, export copies and database contents (a tombstone of id,
        times, state and who deleted it stays; later requests answer 410). A running job is cancelled
        first and deleted when it stops (``delete_requested``); either way it will not succeed."""
        record = _job(store, job_id)
        if store.has_active_export(job_id):
            raise ApiError(409, "export_running", f"an export of job {job_id} is running; delete the job once "
                                                  f"it has finished")
        client = request.client.host if request.client else "unknown"
        outcome = store.request_delete(job_id, deleted_by=f"client {client}")
        record = store.get(job_id) or record
        if outcome is DeleteOutcome.GONE:
            raise _gone(record)
        worker.notify()
        return store.status(record)

    @app.get("/v1/jobs/{job_id}/result", response_model=ResultManifest, dependencies=authorized, tags=["results"])
    def job_result(job_id: str) -> ResultManifest:
        """The results so far: each finished variant's NRRD, DICOM zip, preview and provenance."""
        record = _job(store, job_id)
        if record.variants_ready == 0:
            raise _no_result_yet(record)
        base = f"/v1/jobs/{job_id}/result"
        complete = record.state is JobState.SUCCEEDED
        return ResultManifest(
            job_id=job_id,
            state=record.state,
            complete=complete,
            num_variants=record.parameters.num_variants,
            source=record.source,
            variants=[
                VariantResult(
                    index=v,
                    seed=record.seed + v - 1,
                    array=f"{base}/variants/{v}/{ARRAY_FILENAME}",
                    dicom_zip=f"{base}/variants/{v}/{DICOM_ZIP_FILENAME}",
                    preview=f"{base}/variants/{v}/{PREVIEW_FILENAME}",
                    provenance=f"{base}/variants/{v}/{PROVENANCE_FILENAME}",
                )
                for v in range(1, record.variants_ready + 1)
            ],
            preview=f"{base}/{PREVIEW_FILENAME}" if complete else None,
            provenance=f"{base}/{PROVENANCE_FILENAME}" if complete else None,
        )

    _media_types = {
        ARRAY_FILENAME: "application/octet-stream",
        DICOM_ZIP_FILENAME: "application/zip",
        PREVIEW_FILENAME: "image/png",
        PROVENANCE_FILENAME: "application/json",
    }

    @app.get("/v1/jobs/{job_id}/result/variants/{index}/{name}", dependencies=authorized, tags=["results"],
             response_class=FileResponse)
    def variant_file(job_id: str, index: int, name: str) -> FileResponse:
        """One file of a finished variant: array.nrrd, dicom.zip, preview.png or provenance.json."""
        record = _job(store, job_id)
        if name not in _media_types:
            raise ApiError(404, "no_such_file", f"variants have {', '.join(_media_types)}; not {name!r}")
        if not 1 <= index <= record.parameters.num_variants:
            raise ApiError(404, "no_such_variant",
                           f"job {job_id} has variants 1..{record.parameters.num_variants}, not {index}")
        if index > record.variants_ready:
            raise _no_result_yet(record, f"variant {index} is not ready yet")
        path = store.files(job_id).variant_dir(index) / name
        return FileResponse(path, media_type=_media_types[name], filename=f"{job_id}-variant-{index:02d}-{name}")

    @app.get("/v1/jobs/{job_id}/result/{name}", dependencies=authorized, tags=["results"],
             response_class=FileResponse)
    def job_file(job_id: str, name: str) -> FileResponse:
        """The job's stacked preview.png or its provenance.json, once every variant is done."""
        record = _job(store, job_id)
        if name not in (PREVIEW_FILENAME, PROVENANCE_FILENAME):
            raise ApiError(404, "no_such_file", f"a job has {PREVIEW_FILENAME} and {PROVENANCE_FILENAME}; not {name!r}")
        if record.state is not JobState.SUCCEEDED:
            raise _no_result_yet(record, f"{name} is written when every variant is done")
        path = store.files(job_id).result_dir / name
        return FileResponse(path, media_type=_media_types[name], filename=f"{job_id}-{name}")

    @app.get("/v1/jobs/{job_id}/report", dependencies=authorized, tags=["results"], response_class=FileResponse)
    def job_report(job_id: str) -> FileResponse:
        """The self-contained visual QA report (HTML, `medgen report`) of a finished job."""
        from medgen.qa.report import cached_job_report

        record = _job(store, job_id)
        if record.state is not JobState.SUCCEEDED:
            raise _no_result_yet(record, "the report is made when every variant is done")
        files = store.files(job_id)
        try:
            inputs = files.engine_inputs()
        except FileNotFoundError:
            inputs = None
        path = cached_job_report(files.result_dir, inputs)
        if path is None:
            raise ApiError(409, "no_report", "the job's upload was removed as it finished and no report was made "
                           "before; start the server with --keep-inputs to get reports of new jobs")
        return FileResponse(path, media_type="text/html", filename=f"{job_id}-report.html",
                            content_disposition_type="inline")

    @app.post("/v1/jobs/{job_id}/export", status_code=202, response_model=ExportStatus, dependencies=authorized,
              tags=["exports"])
    def start_export(job_id: str, request: ExportRequest) -> ExportStatus:
        """Send a finished variant's synthetic series to a destination configured on this engine.

        Answers at once; poll the export's status_url. Sending the same variant again delivers only
        what the destination does not have yet.
        """
        record = _job(store, job_id)
        destination = config.destination(request.destination)
        if destination is None:
            offered = ", ".join(d.name for d in config.destinations)
            raise ApiError(400, "unknown_destination",
                           f"no destination named {request.destination!r}; this engine offers: {offered}"
                           if offered else "this engine has no export destinations; start it with "
                           "--destination NAME=dicom://CALLED_AET@HOST:PORT (or --destinations FILE)")
        count = record.parameters.num_variants
        if request.variant > count:
            raise ApiError(400, "no_such_variant", f"job {job_id} has variants 1..{count}, not {request.variant}")
        if not record.state.finished:
            raise ApiError(409, "job_not_finished", f"job {job_id} is {record.state.value}; export a variant once "
                                                    f"the job has finished")
        if request.variant > record.variants_ready:
            raise _no_result_yet(record, f"variant {request.variant} cannot be exported")
        export = exports.create(job_id, destination.name, request.variant, request.deidentify)
        exporter.start(export)
        return export

    @app.get("/v1/jobs/{job_id}/exports/{export_id}", response_model=ExportStatus, dependencies=authorized,
             tags=["exports"])
    def export_status(job_id: str, export_id: str) -> ExportStatus:
        """State and counts while sending; when finished, one result per instance and a sentence."""
        _job(store, job_id)
        export = exports.get(job_id, export_id)
        if export is None:
            raise ApiError(404, "no_such_export", f"job {job_id} has no export {export_id!r}")
        return export

    return app


def _quota_check(config: ServerConfig, incoming: int) -> None:
    """507 with the sizes when the data folder plus ``incoming`` bytes would pass ``--max-data-size``."""
    quota = config.limits.max_data_bytes
    if quota is None:
        return
    used = data_usage(config.data_dir)
    if used + incoming > quota:
        raise ApiError(507, "quota_exceeded",
                       f"the engine's data folder holds {format_size(used)} of its {format_size(quota)} quota"
                       + (f" and this upload of {format_size(incoming)} would pass it" if incoming else "")
                       + "; delete finished jobs (DELETE /v1/jobs/{id}) or wait for the retention purge")


async def _drain(request: Request) -> None:
    async for _ in request.stream():
        pass


def _fixed_parameters(parameters: JobParameters, config: ServerConfig) -> JobParameters:
    """Check the parameters against this server, and fix the seed so a restarted job makes the same images."""
    limits = config.limits
    if parameters.num_variants > limits.max_variants:
        raise ApiError(422, "over_limit", f"num_variants must be at most {limits.max_variants} on this engine, "
                                          f"got {parameters.num_variants}")
    if parameters.num_inference_steps > limits.max_inference_steps:
        raise ApiError(422, "over_limit", f"num_inference_steps must be at most {limits.max_inference_steps} on "
                                          f"this engine, got {parameters.num_inference_steps}")
    model = config.model(parameters.model)
    if model is None:
        offered = ", ".join(model.name for model in config.models)
        raise ApiError(400, "unknown_model", f"no model named {parameters.model!r}; this engine offers: {offered}")
    # fields the client left out take the model's recommendation (its medgen.json) over the schema default
    recommended = read_recommended_settings(model.path) if Path(model.path).is_dir() else {}
    unset = {name: value for name, value in recommended.items() if name not in parameters.model_fields_set}
    if unset:
        parameters = parameters.model_copy(update=unset)
    unknown = [adapter.name for adapter in parameters.adapters if config.adapter(adapter.name) is None]
    if unknown:
        offered = ", ".join(adapter.name for adapter in config.adapters) or "none"
        raise ApiError(400, "unknown_adapter", f"no adapter named {', '.join(map(repr, unknown))}; "
                                               f"this engine offers: {offered}")
    controlnets = [a.name for a in parameters.adapters if config.adapter(a.name).kind == "controlnet"]
    if len(controlnets) > 1:
        raise ApiError(400, "bad_adapters", f"one ControlNet per job, got {', '.join(controlnets)}")
    if parameters.seed is None:
        parameters = parameters.model_copy(update={"seed": secrets.randbelow(2**31)})
    from medgen.api import check_request
    from medgen.generate.prompt_variations import check_prompt_variations

    check_prompt_variations(parameters.prompt, parameters.prompt_variations)
    check_request(engine_request(parameters, config, source=Path("-"), mask=Path("-"), out=Path("-"),
                                 seed=parameters.seed))
    return parameters


def _model_name(parameters: JobParameters, config: ServerConfig) -> str:
    entry = config.model(parameters.model)
    assert entry is not None
    return entry.name


def _job(store: JobStore, job_id: str) -> JobRecord:
    record = store.get(job_id)
    if record is None:
        raise ApiError(404, "no_such_job", f"no job {job_id!r} on this engine (it may have been started on another)")
    if record.deleted:
        raise _gone(record)
    return record


def _gone(record: JobRecord) -> ApiError:
    when = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(record.deleted_at or 0))
    return ApiError(410, "job_deleted", f"job {record.id} was deleted at {when} by {record.deleted_by}; "
                                        f"its files and parameters are gone")


def _no_result_yet(record: JobRecord, what: str | None = None) -> ApiError:
    reason = {
        JobState.QUEUED: "the job is still queued",
        JobState.RUNNING: "the job is running; poll its status",
        JobState.FAILED: f"the job failed: {record.error}",
        JobState.CANCELLED: "the job was cancelled before any variant was done",
        JobState.SUCCEEDED: "the job has no results",
    }[record.state]
    return ApiError(409, "no_result", f"{what}: {reason}" if what else f"no result yet: {reason}")
