"""Everything of the MedGenSlicer module that runs without Slicer: standard library and numpy only.

- `client`: the engine's HTTP API, with timeouts and errors worded for the user;
- `payload`: the job upload (parameters, source slices, mask) built from numpy arrays;
- `results`: the result manifest, variants back on the source grid, the DICOM zip;
- `geometry`: slices, slabs and grids from IJK-to-RAS matrices;
- `nrrd`: a small exact NRRD reader and writer;
- `tasks`: following a PACS export on a background thread, and handing events to the GUI one by one;
- `background`, `worker`: the panel's engine work in a child process, polled by the GUI's timer;
- `job_session`: one job as the panel runs it (upload in steps, the worker, variants, the preview);
- `views`: the slice view on screen, the compare view and the user's view state;
- `jobs`: following one job through dropped connections and restarts, variants cut and converted off the GUI thread;
- `scene`: Slicer's MRML nodes ⇄ uploads and variant volumes (needs Slicer or slicer-core when called,
  not when imported).
"""

from .client import (
    DEFAULT_URL,
    EngineAuthError,
    EngineBusy,
    EngineClient,
    EngineError,
    EngineFailure,
    EngineTimeout,
    EngineUnreachable,
    InsecureTransport,
    JobFailed,
    NotAnEngine,
    RequestRefused,
    engine_data_dir,
    is_loopback,
    local_engine_token,
    normalize_url,
)
from .geometry import GeometryError, paste_on_grid, slice_in_view, touched_slices
from .nrrd import NrrdImage, nrrd_bytes, read_nrrd, write_nrrd
from .payload import InpaintParameters, JobUpload, array_upload, dicom_upload, parse_prompt_variations, random_seed
from .results import JobResult, extract_zip, variant_on_source, write_private_report
from .jobs import JobGone, JobMonitor, VariantSlab
from .tasks import ExportEvent, ExportMonitor, JobEvent, deliver, export_summary

__all__ = [
    "DEFAULT_URL",
    "EngineAuthError",
    "EngineBusy",
    "EngineClient",
    "EngineError",
    "EngineFailure",
    "EngineTimeout",
    "EngineUnreachable",
    "ExportEvent",
    "ExportMonitor",
    "InsecureTransport",
    "GeometryError",
    "InpaintParameters",
    "JobEvent",
    "JobFailed",
    "JobGone",
    "JobMonitor",
    "JobResult",
    "JobUpload",
    "NotAnEngine",
    "NrrdImage",
    "RequestRefused",
    "array_upload",
    "deliver",
    "engine_data_dir",
    "is_loopback",
    "local_engine_token",
    "dicom_upload",
    "export_summary",
    "extract_zip",
    "normalize_url",
    "nrrd_bytes",
    "paste_on_grid",
    "random_seed",
    "read_nrrd",
    "slice_in_view",
    "touched_slices",
    "VariantSlab",
    "variant_on_source",
    "write_nrrd",
    "write_private_report",
]
