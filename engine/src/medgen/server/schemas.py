"""The server's wire format: pydantic models for every request, response and stored job record.

Field names follow `medgen inpaint` and diffusers (`num_inference_steps`, `guidance_scale`, ...), so a
user of either recognizes them. Unknown fields are refused, never silently ignored.
"""

from __future__ import annotations

from enum import Enum
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

ControlFrom = Literal["mask-edges", "mask", "source-edges"]

API_VERSION = 1
MAX_SEED = 2**63  # exclusive; what survives JSON, SQLite and DICOM integer fields unchanged


class JobState(str, Enum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def finished(self) -> bool:
        return self in (JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED)


class Scheduler(str, Enum):
    DDIM = "ddim"
    DPM_PLUS_PLUS = "dpm++"
    EULER = "euler"
    UNIPC = "unipc"


class AdapterChoice(BaseModel):
    """One adapter to apply and its weight (a LoRA scale, a ControlNet conditioning scale, ...)."""

    model_config = ConfigDict(extra="forbid")

    name: str
    weight: float = 1.0


class JobParameters(BaseModel):
    """The parameters of `medgen inpaint` that a job may set; paths and output options are the server's."""

    model_config = ConfigDict(extra="forbid")

    prompt: str = Field(min_length=1, max_length=4000)
    negative_prompt: str | None = Field(default=None, max_length=4000)
    model: str | None = Field(default=None, description="a name from /v1/info; the server's default if omitted")
    adapters: list[AdapterChoice] = Field(default_factory=list)
    scheduler: Scheduler | None = None
    segment: str | None = Field(default=None, description="segment name in a .seg.nrrd mask")
    label: int | None = Field(default=None, description="label value in a labelmap mask")
    slices: list[int] | None = Field(default=None, description="0-based slice indices of the uploaded volume")
    all_slices: bool = Field(default=False, description="every slice the mask touches")
    num_variants: int = Field(default=1, ge=1)
    seed: int | None = Field(default=None, ge=0, lt=MAX_SEED, description="variant v uses seed + v")
    num_inference_steps: int = Field(default=30, ge=1)
    guidance_scale: float = Field(default=7.5, ge=0)
    strength: float = Field(default=1.0, gt=0, le=1)
    mask_dilate_mm: float = Field(default=2.0, ge=0)
    mask_blur_px: float = Field(default=4.0, ge=0)
    crop_padding_px: int = Field(default=32, ge=0)
    window: str | None = None
    window_center: float | None = None
    window_width: float | None = Field(default=None, gt=0)
    control_from: ControlFrom = Field(default="mask-edges", description="a ControlNet's control image source")
    prompt_variations: list[str] | None = Field(
        default=None, max_length=64, description="variant v gets item v mod n in front of the prompt (or for '{}')"
    )


class Progress(BaseModel):
    steps_done: int
    steps_total: int


class JobStatus(BaseModel):
    """What a client polls: where the job is, how far along, and what went wrong if it failed."""

    id: str
    state: JobState
    progress: Progress
    queue_position: int | None = Field(description="1 = next to run; null unless queued")
    num_variants: int
    variants_ready: int = Field(description="variants whose results can be downloaded now")
    cancel_requested: bool
    model: str
    error: str | None = None
    created_at: float
    started_at: float | None = None
    finished_at: float | None = None


class SourceInfo(BaseModel):
    """What the server read from the upload: enough for a client to place the results on its own grid."""

    format: str = Field(description="dicom, nrrd or nifti: how the engine read the source")
    shape: list[int] = Field(description="(slices, rows, columns[, samples])")
    dtype: str
    modality: str
    ijk_to_lps: list[list[float]] = Field(description="4x4: (column i, row j, slice k, 1) to patient LPS mm")
    rescale_slope: list[float] = Field(description="per slice: modality value = stored * slope + intercept")
    rescale_intercept: list[float]
    slices: list[int] = Field(description="the slices that will be inpainted")


class VariantResult(BaseModel):
    index: int = Field(description="1-based")
    seed: int
    array: str = Field(description="URL of the variant as NRRD, stored values, the source's grid")
    dicom_zip: str = Field(description="URL of the synthetic DICOM series as a zip")
    preview: str
    provenance: str


class ResultManifest(BaseModel):
    """The job's results so far; variants appear one by one as each is finished."""

    job_id: str
    state: JobState
    complete: bool
    num_variants: int
    source: SourceInfo
    variants: list[VariantResult]
    preview: str | None = Field(description="URL of all variants' previews stacked; null until complete")
    provenance: str | None = Field(description="URL of the job's provenance; null until complete")


class JobCreated(BaseModel):
    id: str
    state: JobState
    queue_position: int | None
    status_url: str
    result_url: str


class ModelInfo(BaseModel):
    name: str
    path: str
    default: bool
    state: str = Field(description="not loaded, loading, ready or failed")
    error: str | None = None
    resolution: int | None = None
    recommended: dict[str, float] = Field(
        default_factory=dict, description="settings the model recommends (its medgen.json); used for unset job fields"
    )


class AdapterInfo(BaseModel):
    """An adapter jobs may name, with what its manifest says of it."""

    name: str
    kind: str = Field(description="textual_inversion, lora or controlnet")
    token: str | None = Field(default=None, description="a textual inversion's token, to write in the prompt")
    base_model: str | None = Field(default=None, description="the model it was trained on, per its manifest")
    modality: str | None = None


class Limits(BaseModel):
    max_queued_jobs: int
    max_upload_bytes: int
    max_files: int
    max_slice_pixels: int
    max_slices: int
    max_variants: int
    max_inference_steps: int


class QueueInfo(BaseModel):
    queued: int
    running: int


class DestinationInfo(BaseModel):
    """A PACS this engine may export to; configured on the engine, chosen by name (no credentials here)."""

    name: str
    kind: str = Field(description="dicom (C-STORE) or dicomweb (STOW-RS)")
    address: str = Field(description="where it goes, for people: AE title, host and port, or the URL")


class EngineInfo(BaseModel):
    engine: str = "medgen"
    version: str
    api_version: int = API_VERSION
    device: str
    models: list[ModelInfo]
    adapters: list[AdapterInfo]
    schedulers: list[str]
    limits: Limits
    queue: QueueInfo
    destinations: list[DestinationInfo] = Field(default_factory=list)


class ExportState(str, Enum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"  # every instance is at the destination
    FAILED = "failed"  # the destination refused some instances, or could not be reached

    @property
    def finished(self) -> bool:
        return self in (ExportState.SUCCEEDED, ExportState.FAILED)


class ExportRequest(BaseModel):
    """Send one finished variant to a destination the engine was configured with (by name; no hosts)."""

    model_config = ConfigDict(extra="forbid")

    destination: str = Field(min_length=1, description="a name from /v1/info destinations")
    variant: int = Field(default=1, ge=1, description="1-based")
    deidentify: bool = Field(default=False, description="PS3.15 basic profile before sending")


class InstanceExportResult(BaseModel):
    file: str = Field(description="the file's name in the variant's DICOM zip")
    sop_class_uid: str
    sop_instance_uid: str = Field(description="as sent (a pseudonym when de-identified)")
    status: str = Field(description="success, warning, failure, already sent or not sent")
    status_code: int | None = Field(default=None, description="DIMSE status or STOW-RS reason, if any")
    message: str = ""


class ExportStatus(BaseModel):
    """What a client polls: how far the export is, and at the end one result per instance."""

    id: str
    job_id: str
    destination: str
    variant: int
    deidentify: bool
    state: ExportState
    total: int = Field(description="instances in the series; 0 until the export has started")
    delivered: int = Field(description="instances at the destination (sent now or by an earlier export)")
    failed: int
    message: str | None = Field(default=None, description="a sentence for the user, once finished")
    results: list[InstanceExportResult] = Field(description="one per instance, once finished")
    status_url: str
    created_at: float
    started_at: float | None = None
    finished_at: float | None = None


class ErrorDetail(BaseModel):
    code: str
    message: str


class ErrorBody(BaseModel):
    """Every error response: a machine-readable code and a sentence a person can act on."""

    error: ErrorDetail


class Health(BaseModel):
    status: str
    version: str
    api_version: int = API_VERSION
