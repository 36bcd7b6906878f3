"""The server's wire format: pydantic models for every request, response and stored job record.

Field names follow `medgen inpaint` and diffusers (`num_inference_steps`, `guidance_scale`, ...), so a
user of either recognizes them. Unknown fields are refused, never silently ignored.
"""

from __future__ import annotations

from enum import Enum
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

ControlFrom = Literal["mask-edges", "mask", "source-edges"]

API_VERSION = 1
MAX_SEED = 2**63  # exclusive; what survives JSON, SQLite and DICOM integer fields unchanged
# Bounds far beyond any sensible setting, so a typo or a hostile number fails at the door, not in a run.
MAX_GUIDANCE_SCALE = 100.0
MAX_MASK_DILATE_MM = 100.0  # grows the mask by at most 10 cm
MAX_MASK_BLUR_PX = 256.0
MAX_CROP_PADDING_PX = 4096
MAX_WINDOW_VALUE = 1e7  # modality units (HU and the like); windows beyond this describe no image
MAX_SLICE_INDEX = 1 << 16
MAX_CACHE_INTERVAL = 10  # generate.feature_cache.MAX_CACHE_INTERVAL (not imported: it brings torch)


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

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    name: str = Field(min_length=1, max_length=256)
    weight: float = Field(default=1.0, ge=-10, le=10)


class JobParameters(BaseModel):
    """The parameters of `medgen inpaint` that a job may set; paths and output options are the server's.

    Every number is finite and bounded here, at the door: JSON's ``1e400`` parses as infinity, and a
    value that only fails deep inside a run would cost a queue slot and a model call first.
    """

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    prompt: str = Field(min_length=1, max_length=4000)
    negative_prompt: str | None = Field(default=None, max_length=4000)
    model: str | None = Field(default=None, max_length=256,
                              description="a name from /v1/info; the server's default if omitted")
    adapters: list[AdapterChoice] = Field(default_factory=list, max_length=16)
    scheduler: Scheduler | None = None
    segment: str | None = Field(default=None, max_length=256, description="segment name in a .seg.nrrd mask")
    label: int | None = Field(default=None, ge=0, lt=2**31, description="label value in a labelmap mask")
    slices: list[Annotated[int, Field(ge=0, lt=MAX_SLICE_INDEX)]] | None = Field(
        default=None, max_length=MAX_SLICE_INDEX, description="0-based slice indices of the uploaded volume")
    all_slices: bool = Field(default=False, description="every slice the mask touches")
    num_variants: int = Field(default=1, ge=1, le=1024)
    seed: int | None = Field(default=None, ge=0, lt=MAX_SEED, description="variant v uses seed + v")
    num_inference_steps: int = Field(default=30, ge=1, le=10_000)
    guidance_scale: float = Field(default=7.5, ge=0, le=MAX_GUIDANCE_SCALE)
    strength: float = Field(default=1.0, gt=0, le=1)
    cache_interval: int = Field(default=1, ge=1, le=MAX_CACHE_INTERVAL,
                                description="run the whole UNet every N-th step only, reusing its deep features "
                                            "in between, as `medgen inpaint --cache-interval` (1: off)")
    mask_dilate_mm: float = Field(default=2.0, ge=0, le=MAX_MASK_DILATE_MM)
    mask_blur_px: float = Field(default=4.0, ge=0, le=MAX_MASK_BLUR_PX)
    crop_padding_px: int = Field(default=32, ge=0, le=MAX_CROP_PADDING_PX)
    window: str | None = Field(default=None, max_length=64)
    window_center: float | None = Field(default=None, ge=-MAX_WINDOW_VALUE, le=MAX_WINDOW_VALUE)
    window_width: float | None = Field(default=None, gt=0, le=2 * MAX_WINDOW_VALUE)
    control_from: ControlFrom = Field(default="mask-edges", description="a ControlNet's control image source")
    allow_unchanged: bool = Field(default=False, description="keep a result in which no voxel changed (else the "
                                                             "job fails saying so)")
    resample_mask: bool = Field(default=False, description="resample a mask on another plane or spacing onto the "
                                                           "source (nearest neighbour), as `medgen inpaint --resample-mask`")
    source_modality: str | None = Field(default=None, max_length=16, pattern=r"^[A-Za-z]{2,16}$",
                                        description="the source's modality when its file states none (NIfTI, "
                                                    "NRRD), as `medgen inpaint --modality`")
    force_modality: bool = Field(default=False, description="run a source whose modality the model's medgen.json "
                                                            "does not cover, as `medgen inpaint --force-modality`")
    prompt_variations: list[Annotated[str, Field(max_length=4000)]] | None = Field(
        default=None, max_length=64, description="variant v gets item v mod n in front of the prompt (or for '{}')"
    )

    @model_validator(mode="after")
    def _every_variant_seed_fits(self) -> "JobParameters":
        """Variant v uses seed + v - 1; the last one must still be a valid seed, not fail at variant 2."""
        if self.seed is not None and self.seed + self.num_variants - 1 >= MAX_SEED:
            raise ValueError(
                f"seed {self.seed} with {self.num_variants} variants needs seeds up to "
                f"{self.seed + self.num_variants - 1}; the largest is {MAX_SEED - 1}: choose seed <= "
                f"{MAX_SEED - self.num_variants}"
            )
        return self


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
    delete_requested: bool = Field(default=False, description="deleted as soon as the running job stops")
    model: str
    error: str | None = None
    created_at: float
    started_at: float | None = None
    finished_at: float | None = None
    deleted_at: float | None = Field(default=None, description="set in the answer to the DELETE that deleted it")
    deleted_by: str | None = Field(default=None, description="the client address that asked, or 'retention'")


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
    max_data_bytes: int | None = Field(default=None, description="quota of the data folder; null = none")


class StorageInfo(BaseModel):
    """What the engine keeps on disk and for how long."""

    used_bytes: int = Field(description="size of the data folder now (database, uploads, results)")
    max_data_bytes: int | None = Field(description="submissions that would pass this answer 507; null = no quota")
    keep_results_s: float | None = Field(description="finished jobs are deleted this long after; null = kept")
    keep_inputs_s: float | None = Field(description="uploads are removed this long after the job finished; "
                                                    "0 = as it finishes, null = kept with the results")


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
    storage: StorageInfo | None = None


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
