"""The Python API: one request in, synthetic series out. The CLI and the server both call this."""

from __future__ import annotations

import logging
import os
import secrets
import shutil
import tempfile
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Callable

import numpy as np

from medgen import __version__
from medgen.errors import InputError, OutputError
from medgen.generate.control import CONTROL_KINDS, control_image, load_controlnet, parse_controlnet_spec
from medgen.generate.feature_cache import check_cache_interval
from medgen.generate.prompt_variations import check_prompt_variations, variant_prompts
from medgen.imaging.crop import blend_region, dilate_mask, feather_weights, mask_crop_box
from medgen.imaging.texture import noise_std
from medgen.imaging.crop import resize_image, resize_mask
from medgen.imaging.intensity import IntensityMap, modality_family, resolve_window
from medgen.imaging.masks import read_mask, select_slices
from medgen.imaging.preview import write_preview
from medgen.imaging.read import read_volume
from medgen.imaging.volume import SourceFormat, Volume

logger = logging.getLogger(__name__)

ProgressCallback = Callable[[int, int], None]

DEFAULT_SETTINGS = {"num_inference_steps": 30, "guidance_scale": 7.5, "crop_padding_px": 32}
"""Used where neither the request nor the model's medgen.json says otherwise (SD-sized models)."""


@dataclass
class InpaintRequest:
    """Everything one inpainting run needs; the names follow diffusers where one exists."""

    input: Path
    mask: Path
    prompt: str
    out: Path
    negative_prompt: str | None = None
    segment: str | None = None
    label: int | None = None
    slices: list[int] | None = None
    all_slices: bool = False
    # nearest-neighbour resampling of a mask whose voxels do not map one-to-one onto the source's
    resample_mask: bool = False
    num_variants: int = 1
    seed: int | None = None
    # None: the model's recommendation (medgen.json in its folder), else DEFAULT_SETTINGS
    num_inference_steps: int | None = None
    guidance_scale: float | None = None
    strength: float = 1.0
    mask_dilate_mm: float = 2.0
    mask_blur_px: float = 4.0
    crop_padding_px: int | None = None
    window: str | None = None
    window_center: float | None = None
    window_width: float | None = None
    only_modified: bool = False
    write_dicom: bool = False
    write_seg: bool = False
    # Adapters: "PATH[:WEIGHT]" each (textual inversion, LoRA); token names a textual inversion's token
    adapters: list[str] = field(default_factory=list)
    token: str | None = None
    # ControlNet: "PATH[:SCALE]" (a diffusers ControlNetModel folder); the control image per crop comes
    # from control_from: "mask-edges", "mask" or "source-edges"
    controlnet: str | None = None
    control_from: str = "mask-edges"
    # Variant v is prompted with prompt_variations[v mod n] (see generate.prompt_variations)
    prompt_variations: list[str] | None = None
    # Write the result even when no voxel changed (by default such a run warns and writes nothing)
    allow_unchanged: bool = False
    # Run a source whose modality contradicts the model's medgen.json (the source's own default window)
    force_modality: bool = False
    # The source's modality when its file states none (NIfTI, NRRD, PNG): picks the model's contract
    source_modality: str | None = None
    # Give the generated region the source's noise texture (generate.noise)
    match_noise: bool = True
    # Smooth the generated signal along the slice axis into one 3D object (generate.slice_consistency).
    # Off by default: the slices of a variant already share their starting noise, and without the
    # smoothing a lesion changes from slice to slice as a real one does (bench quality, bench detect)
    slice_consistency: bool = False
    # Make the generated signal meet the source's brightness at the mask's border (generate.seam);
    # part of the noise matching, off with it
    seam_harmonize: bool = True
    # Blur the generated lesion's border to the source's measured edge spread and let it spill past
    # the mask as a real lesion's does (generate.edge_spread)
    edge_match: bool = True
    # Calibrate the lesion's mean to what real lesions of the prompted type measure, where the model's
    # medgen.json states it (generate.calibration)
    calibrate_intensity: bool = True
    # Run the whole UNet every N-th denoising step only and reuse its deep features in the steps between
    # (generate.feature_cache, DeepCache): fewer evaluations at a measured quality cost; 1 = off
    cache_interval: int = 1

    def __post_init__(self) -> None:
        self.input = Path(self.input)
        self.mask = Path(self.mask)
        self.out = Path(self.out)


@dataclass
class InpaintResult:
    """Where a run wrote its output and what it did."""

    out: Path
    variant_dirs: list[Path]
    provenance_path: Path
    preview_path: Path
    slices: list[int]
    seeds: list[int]
    files: list[Path] = field(default_factory=list)
    # what the engine decided on its own (modality, window), for the CLI to print
    notes: list[str] = field(default_factory=list)
    # per variant: noise std ratio and seam strength ratio (imaging.texture), also in the provenance
    texture: list[dict] = field(default_factory=list)


def check_request(request: InpaintRequest) -> None:
    """Check every number before any file is read, so a typo fails in milliseconds."""
    check_numbers(request)
    if not request.prompt or not request.prompt.strip():
        raise InputError(None, "--prompt must not be empty")
    if request.num_variants < 1 or request.num_variants > 99:
        raise InputError(None, f"--variants must be in [1, 99], got {request.num_variants}")
    if request.num_inference_steps is not None and request.num_inference_steps < 1:
        raise InputError(None, f"--steps must be at least 1, got {request.num_inference_steps}")
    if not 0.0 < request.strength <= 1.0:
        raise InputError(None, f"--strength must be in (0, 1], got {request.strength}")
    if request.guidance_scale is not None and request.guidance_scale < 0:
        raise InputError(None, f"--guidance must be >= 0, got {request.guidance_scale}")
    if request.mask_dilate_mm < 0:
        raise InputError(None, f"--mask-dilate must be >= 0 mm, got {request.mask_dilate_mm}")
    if request.mask_blur_px < 0:
        raise InputError(None, f"--mask-blur must be >= 0 px, got {request.mask_blur_px}")
    if request.crop_padding_px is not None and request.crop_padding_px < 0:
        raise InputError(None, f"--crop-padding must be >= 0 px, got {request.crop_padding_px}")
    if request.source_modality is not None and not (
        request.source_modality.isascii() and request.source_modality.isalpha() and 2 <= len(request.source_modality) <= 16
    ):
        raise InputError(None, f"--modality must be a DICOM modality such as CT or MR, got {request.source_modality!r}")
    if request.segment is not None and request.label is not None:
        raise InputError(None, "give --segment or --label, not both")
    if request.slices and request.all_slices:
        raise InputError(None, "give --slice or --all-slices, not both")
    if request.seed is not None and not 0 <= request.seed < 2**63:
        raise InputError(None, f"--seed must be in [0, 2**63), got {request.seed}")
    if request.seed is not None and request.seed + request.num_variants - 1 >= 2**63:
        raise InputError(None, f"--seed {request.seed} with {request.num_variants} variants runs past 2**63 - 1 "
                         "(variant v uses seed + v)")
    if request.adapters:
        from medgen.generate.adapters import AdapterSpec

        for spec in request.adapters:
            if not AdapterSpec.parse(spec).path.exists():
                raise InputError(spec, "--adapter: no such file or folder")
    if request.token is not None and not request.adapters:
        raise InputError(None, "--token names the token of an --adapter; no adapter was given")
    if request.control_from not in CONTROL_KINDS:
        raise InputError(None, f"--control-from must be one of {', '.join(CONTROL_KINDS)}, got {request.control_from!r}")
    if request.controlnet is not None and not parse_controlnet_spec(request.controlnet)[0].is_dir():
        raise InputError(request.controlnet, "--controlnet: no such ControlNet folder")
    check_prompt_variations(request.prompt, request.prompt_variations)
    check_cache_interval(request.cache_interval, controlnet=request.controlnet)


# Upper bounds of the numeric options: far beyond any sensible value, small enough that no option
# can ask for unbounded memory or time (a 1e6 mm dilation once asked for 90 TiB).
NUMBER_BOUNDS = {
    "num_inference_steps": ("--steps", 1000),
    "guidance_scale": ("--guidance", 100.0),
    "mask_dilate_mm": ("--mask-dilate", 100.0),
    "mask_blur_px": ("--mask-blur", 256.0),
    "crop_padding_px": ("--crop-padding", 4096),
    "window_center": ("--window-center", 1e7),
    "window_width": ("--window-width", 1e7),
}


def check_numbers(request: InpaintRequest) -> None:
    """Every numeric option finite and within NUMBER_BOUNDS (NaN passes a check written as x < 0)."""
    for name, (option, bound) in NUMBER_BOUNDS.items():
        value = getattr(request, name)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
            raise InputError(None, f"{option} must be a number, got {value!r}")
        if not np.isfinite(value):
            raise InputError(None, f"{option} must be a finite number, got {value}")
        if abs(value) > bound:
            raise InputError(None, f"{option} must be at most {bound:g} in size, got {value:g}")
    if not isinstance(request.strength, (int, float)) or not np.isfinite(request.strength):
        raise InputError(None, f"--strength must be a finite number, got {request.strength!r}")


def check_output_dir(out: Path) -> None:
    """Fail before generating if the output cannot be created, and never overwrite a result."""
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise OutputError(out, "already exists and is not empty; choose a new --out directory")
    # missing parents are created at write time (like mkdir -p); the nearest existing one must be a
    # writable directory
    ancestor = out.absolute().parent
    while not ancestor.exists():
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise OutputError(out, f"{ancestor} is not a directory")
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise OutputError(out, f"directory {ancestor} is not writable")


@dataclass
class _SliceJob:
    """What paste-back needs to remember about one slice between cropping and generation."""

    index: int
    source_model: np.ndarray
    mask: np.ndarray
    dilated: np.ndarray
    weights: np.ndarray
    box: object
    edge: object = None  # generate.edge_spread.EdgeSpread of the source around the mask, or None


def with_model_defaults(request: InpaintRequest, recommended: dict) -> InpaintRequest:
    """A copy of the request with every unset setting taken from the model, else DEFAULT_SETTINGS."""
    filled = {
        name: recommended.get(name, default)
        for name, default in DEFAULT_SETTINGS.items()
        if getattr(request, name) is None
    }
    request = replace(request, **filled)
    check_request(request)  # a model's recommendation is checked like a user's value
    return request


class Inpainter:
    """Holds a loaded model so several requests (a batch job, the server) share one load."""

    def __init__(
        self,
        model_path: str | Path | None = None,
        *,
        device: str = "auto",
        dtype: str | None = None,
        scheduler: str | None = None,
        config: str | Path | None = None,
    ):
        from medgen.phantom.model import resolve_model_path

        self.model_path = resolve_model_path(model_path)  # None or "demo": the shipped demo model
        self._load_options = {"device": device, "dtype": dtype, "scheduler": scheduler, "config": config}
        self._model = None
        self._model_sha256: str | None = None
        self._adapter_key: tuple | None = None
        self._adapter_records: list[dict] = []

    @property
    def model(self):
        """The loaded model; loaded on first use so bad input fails before a slow load."""
        if self._model is None:
            from medgen.generate.models import load_model

            self._model = load_model(self.model_path, **self._load_options)
        return self._model

    @property
    def model_sha256(self) -> str:
        """The SHA-256 of the model's weights for provenance, hashed once per Inpainter (seconds for an
        SD-sized model), not per request; a new Inpainter hashes the files on disk again."""
        if self._model_sha256 is None:
            from medgen.dicom.provenance import sha256_model

            self._model_sha256 = sha256_model(self.model_path)
        return self._model_sha256

    @property
    def adapter_key(self) -> tuple | None:
        """Which adapters the loaded model carries now (preparing a request may change them): a batch
        runner shares one model call only between requests prepared with the same set."""
        return self._adapter_key

    def _contracts(self):
        """The model's intensity contracts from its medgen.json (None for a single-file checkpoint)."""
        from medgen.generate.settings import read_model_contracts

        return read_model_contracts(self.model_path) if self.model_path.is_dir() else None

    def _apply_adapters(self, request: InpaintRequest, modality_adapter: str | None = None) -> list[dict]:
        """Load the modality's adapter (a folder inside the model folder) and the request's adapters once
        per adapter set. Another set after LoRAs alone takes them off the loaded model (its base weights
        were never changed), so CT and MR requests can alternate without a load; after a textual
        inversion or a ControlNet the model is loaded again (a token cannot be taken out of the
        tokenizer)."""
        specs = ([str(self.model_path / modality_adapter)] if modality_adapter else []) + list(request.adapters)
        key = (tuple(specs), request.token, request.controlnet, request.control_from, modality_adapter)
        return self.use_adapter_key(key)

    def use_adapter_key(self, key: tuple) -> list[dict]:
        """Make the model carry the adapter set ``key`` (an ``adapter_key``): a batch runner that prepared
        requests under several sets returns to each set for its requests' shared model call."""
        if key == self._adapter_key:
            return self._adapter_records
        specs, token, controlnet, control_from, modality_adapter = key
        if self._adapter_records and all(record["kind"] == "lora" for record in self._adapter_records):
            self._model.pipe.unload_lora_weights()
            self._model._fast_runner = None  # rebuilt without adapter layers (QKV fused again)
        elif self._adapter_records:  # this model carries another set: start again from a clean load
            self._model = None
        records = []
        if specs:
            from medgen.generate.adapters import load_adapters

            records = load_adapters(self.model, list(specs), token=token)
            if modality_adapter:
                records[0]["from_model_contract"] = modality_adapter
        if controlnet is not None:
            from medgen.dicom.provenance import sha256_model

            path, scale = parse_controlnet_spec(controlnet)
            load_controlnet(self.model, path, scale, control_from)
            records.append(
                {
                    "kind": "controlnet",
                    "path": str(path),
                    "sha256": sha256_model(path),
                    "scale": scale,
                    "control_from": control_from,
                }
            )
        self._adapter_key, self._adapter_records = key, records
        return records

    def __call__(self, request: InpaintRequest, progress: ProgressCallback | None = None) -> InpaintResult:
        return self.run(request, lambda work: self.generate(work, progress))

    def run(self, request: InpaintRequest, generate: Callable) -> InpaintResult:
        """One request, its model work (a Generation) done by ``generate``, which returns the crops."""
        steps = self.steps(request)
        work = next(steps)
        try:
            steps.send(generate(work))
        except StopIteration as finished:
            return finished.value
        raise RuntimeError("Inpainter.steps yielded more than once")

    def steps(self, request: InpaintRequest):
        """The request as a generator: it yields the model work (a Generation) once, takes the
        generated crops back by send() and returns the InpaintResult. Split so that a batch runner can
        read and crop several requests, generate them in shared model calls, then write each."""
        from medgen.generate.batched import Generation

        # 1. Check inputs and the output location before any heavy work
        check_request(request)
        check_output_dir(request.out)

        # 2. Read the source and the mask on the same grid; pick the slices
        volume = read_volume(request.input)
        mask = read_mask(
            request.mask, volume, segment=request.segment, label=request.label, resample=request.resample_mask
        )
        slice_indices = select_slices(mask, request.slices, request.all_slices, volume)
        # every output asked for is built on the source pixels now, so nothing fails after generation
        from medgen.dicom.preflight import preflight

        checked = preflight(volume, {k: mask[k] for k in slice_indices}, write_seg=request.write_seg,
                            write_dicom=request.write_dicom, only_modified=request.only_modified)

        # 3. Map stored values to model space with one window for the whole request: the user's, else
        #    the model's intensity contract for the source's modality (its medgen.json, read before any
        #    weight loads, so a source the model cannot take is refused first), else the modality's default
        choice = resolve_window(
            volume,
            slice_indices,
            self._contracts(),
            preset=request.window,
            center=request.window_center,
            width=request.window_width,
            force_modality=request.force_modality,
            source=str(request.input),
            stated_modality=request.source_modality,
        )
        logger.info("%s", choice.describe())
        window = choice.window
        intensity = IntensityMap(volume, window)

        # 4. Fill unset settings from the model's own recommendation, then the engine's defaults;
        #    load the adapter trained for the source's modality, the request's adapters and ControlNet
        model = self.model  # a folder that fails to load is its own error, not a medgen.json one
        try:
            request = with_model_defaults(request, model.recommended_settings)
        except InputError as error:
            raise InputError(self.model_path / "medgen.json", f"recommended setting refused: {error.problem}") from None
        adapters = self._apply_adapters(request, choice.adapter)

        # 5. Crop a box around each slice's dilated mask and resize it to the model's resolution
        jobs = [self._prepare_slice(volume, intensity, mask[k], k, request) for k in slice_indices]
        resolution = self.model.resolution
        # bicubic resampling overshoots slightly at sharp edges; the model takes [-1, 1] only
        crops = np.stack(
            [np.clip(resize_image(job.source_model[job.box.slices], (resolution,) * 2), -1, 1) for job in jobs]
        )
        crop_masks = np.stack([resize_mask(job.dilated[job.box.slices], (resolution,) * 2) for job in jobs])
        control_images = self._control_images(request, crops, jobs)

        # 6. Generate every variant of every slice (see generate)
        seed = request.seed if request.seed is not None else secrets.randbelow(2**31)
        seeds = [seed + v for v in range(request.num_variants)]
        prompts = variant_prompts(request.prompt, request.prompt_variations, request.num_variants)
        work = Generation(
            crops=crops.astype(np.float32),
            masks=crop_masks.astype(np.float32),
            control_images=control_images,
            prompts=prompts,
            seeds=seeds,
            negative_prompt=request.negative_prompt,
            num_inference_steps=request.num_inference_steps,
            guidance_scale=request.guidance_scale,
            strength=request.strength,
            cache_interval=request.cache_interval,  # generate.feature_cache; one call shares one interval
        )
        generated = yield work

        # 7. Paste back into stored values with the source's noise texture, one 3D object across slices;
        #    outside the dilated mask the source is kept as is
        from medgen.generate.compose import compose_variant

        targets = self._calibration_targets(request, intensity, choice, prompts, seeds)
        composed = [
            compose_variant(
                volume, intensity, jobs, generated[:, v], seed=seeds[v], calibration_target=targets[v],
                match_noise=request.match_noise, slice_consistency=request.slice_consistency,
                seam_harmonize=request.seam_harmonize, edge_match=request.edge_match,
                trust_model_texture=not choice.forced and choice.adapter is None,
            )
            for v in range(request.num_variants)
        ]
        variant_pixels = [c.pixels for c in composed]
        unchanged = unchanged_warning(volume, variant_pixels)
        if unchanged and not request.allow_unchanged:
            raise InputError(request.input, f"{unchanged}; nothing was written (pass --allow-unchanged to write it "
                             "anyway)", reason="unchanged")

        # 8. Write everything into a staging folder, then move it into place in one rename
        provenance = self._provenance(request, volume, window, slice_indices, seeds, adapters, prompts)
        provenance["parameters"]["intensity"] = choice.to_json()
        provenance["texture"] = [c.to_json() for c in composed]
        provenance["label"] = [c.label_figures for c in composed]
        provenance["source_repairs"] = checked.repairs
        if unchanged:
            logger.warning("%s: %s", request.input, unchanged)
            provenance["warnings"] = [unchanged]
        result = self._write_outputs(request, volume, intensity, jobs, variant_pixels, provenance, seeds, prompts,
                                     drawn=[c.drawn for c in composed])
        result.notes.append(choice.describe())
        result.texture = provenance["texture"]
        return result

    def generate(self, work, progress: ProgressCallback | None = None) -> np.ndarray:
        """Every variant of every crop of one request, one batched model call per distinct prompt:
        float32 (slices, variants, resolution, resolution) in model space."""
        from medgen.generate.inpaint import inpaint as inpaint_crops

        resolution = self.model.resolution
        num_slices, num_variants = len(work.crops), len(work.seeds)
        prompts, seeds = work.prompts, work.seeds
        generated = np.empty((num_slices, num_variants, resolution, resolution), np.float32)
        groups = [[v for v, p in enumerate(prompts) if p == prompt] for prompt in dict.fromkeys(prompts)]
        done_variants = 0
        for group in groups:
            group_progress = progress
            if progress is not None and len(groups) > 1:
                # counted in slice-steps over all variants, so the count only grows from group to group
                unit = num_slices * work.num_inference_steps

                def group_progress(done: int, total: int, before: int = done_variants, size: int = len(group)) -> None:
                    progress(round((before + size * done / total) * unit), num_variants * unit)

            generated[:, group] = inpaint_crops(
                self.model,
                work.crops,
                work.masks,
                prompt=prompts[group[0]],
                negative_prompt=work.negative_prompt,
                num_variants=len(group),
                seeds=[seeds[v] for v in group],
                num_inference_steps=work.num_inference_steps,
                guidance_scale=work.guidance_scale,
                strength=work.strength,
                callback=group_progress,
                control_images=work.control_images,
                cache_interval=work.cache_interval,
            )
            done_variants += len(group)
        return generated

    def _control_images(self, request: InpaintRequest, crops: np.ndarray, jobs: list[_SliceJob]) -> np.ndarray | None:
        """The ControlNet's image per crop, from the segment's own mask, not the dilated region: the
        dilation is room to blend, the segment's outline is the structure the ControlNet keeps."""
        if request.controlnet is None:
            return None
        size = (self.model.resolution,) * 2
        return np.stack(
            [control_image(c, resize_mask(job.mask[job.box.slices], size), request.control_from) for c, job in zip(crops, jobs)]
        )

    def _calibration_targets(self, request, intensity, choice, prompts, seeds) -> list[float | None]:
        """Per variant, the model-space mean its lesion is calibrated to (None: not calibrated)."""
        from medgen.generate.calibration import match_prompt, read_model_table, variant_target

        if not request.calibrate_intensity or not self.model_path.is_dir():
            return [None] * len(seeds)
        table = read_model_table(self.model_path)
        modality = choice.source_modality
        window = intensity.window
        targets = []
        for prompt, seed in zip(prompts, seeds):
            entry = match_prompt(prompt, table, modality)
            targets.append(None if entry is None else
                           (variant_target(entry, seed) - window.lower) / window.width * 2.0 - 1.0)
        return targets

    def _prepare_slice(
        self, volume: Volume, intensity: IntensityMap, mask2d: np.ndarray, k: int, request: InpaintRequest
    ) -> _SliceJob:
        from medgen.generate.edge_spread import SIGMA_RANGE_PX, EdgeSpread, has_room, measure_edge_spread

        pixel_spacing = (volume.spacing[1], volume.spacing[2])
        dilated = blend_region(mask2d, request.mask_dilate_mm, pixel_spacing)
        weights = feather_weights(mask2d, dilated, request.mask_blur_px)
        box = mask_crop_box(dilated, request.crop_padding_px)
        edge = None
        # measured only where the region leaves the thinnest blur room to spill (the fits cost time)
        if request.edge_match and has_room(mask2d, dilated, EdgeSpread(SIGMA_RANGE_PX[0], 0)):
            unclipped = intensity.to_model_array(volume.pixels[k], k, clip=False)
            ring = dilate_mask(mask2d, 12.0 * min(pixel_spacing), pixel_spacing) & ~dilated
            edge = measure_edge_spread(unclipped, mask2d, noise_std(unclipped, ring))
        return _SliceJob(k, intensity.to_model(k), mask2d, dilated, weights, box, edge)

    def _provenance(self, request, volume, window, slice_indices, seeds, adapters=(), prompts=None) -> dict:
        from medgen.dicom.provenance import build_provenance

        # Where the run is written is no part of how to reproduce it: left out, the same request written
        # elsewhere (a batch row on another node) carries the same provenance, bytes and UIDs.
        parameters = {
            key: (str(value) if isinstance(value, Path) else value)
            for key, value in asdict(request).items() if key != "out"
        }
        parameters.update(
            {
                "window_center": window.center,
                "window_width": window.width,
                "slices_inpainted": slice_indices,
                "seeds": seeds,
                "variant_prompts": prompts or [request.prompt] * len(seeds),
                "scheduler": self.model.scheduler_name,
                "resolution": self.model.resolution,
            }
        )
        return build_provenance(
            input_paths=volume.source_paths + [request.mask],
            model_path=self.model_path,
            parameters=parameters,
            seeds=seeds,
            device=str(self.model.device),
            dtype=str(self.model.dtype),
            adapters=adapters,
            model_sha256=self.model_sha256,
        )

    def _write_outputs(
        self, request, volume, intensity, jobs, variant_pixels, provenance, seeds, prompts, drawn=None
    ) -> InpaintResult:
        from medgen.dicom.provenance import write_provenance_json
        from medgen.dicom.writer import default_series_number

        out = request.out
        out.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))
        try:
            files: list[Path] = []
            variant_dirs = []
            for v, pixels in enumerate(variant_pixels):
                name = f"variant-{v + 1:02d}"
                series_number = default_series_number(volume, v)
                files += self._write_variant(
                    request, volume, pixels, staging / name, provenance, seeds[v], prompts[v], jobs, series_number,
                    drawn=drawn[v] if drawn else None,
                )
                variant_dirs.append(out / name)
            write_provenance_json(staging / "provenance.json", provenance)
            write_preview(
                staging / "preview.png",
                slice_indices=[job.index for job in jobs],
                sources=[job.source_model for job in jobs],
                masks=[job.mask for job in jobs],
                variants=[[intensity.to_model_array(p[job.index], job.index) for job in jobs] for p in variant_pixels],
                # a radiograph is a projection: no axial plane to orient, it is shown as stored
                ijk_to_lps=None if modality_family(volume.modality) == "XR" else volume.ijk_to_lps,
                prompt=request.prompt,
                window=(intensity.window.center, intensity.window.width),
                unit="HU" if provenance["parameters"].get("intensity", {}).get("source_modality") == "CT" else "",
            )
            if out.exists():
                out.rmdir()  # checked empty above
            os.replace(staging, out)
        except OutputError as error:
            shutil.rmtree(staging, ignore_errors=True)
            # the staging folder is gone: name the output the user asked for instead
            raise OutputError(out, str(error).replace(str(staging), str(out))) from error
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        return InpaintResult(
            out=out,
            variant_dirs=variant_dirs,
            provenance_path=out / "provenance.json",
            preview_path=out / "preview.png",
            slices=[job.index for job in jobs],
            seeds=seeds,
            files=[out / f.relative_to(staging) for f in files],
        )

    def _write_variant(
        self, request, volume, pixels, variant_dir, provenance, seed, prompt, jobs, series_number, drawn=None
    ) -> list[Path]:
        from medgen.dicom.provenance import format_derivation_description
        from medgen.dicom.writer import SyntheticSeriesWriter, write_secondary_capture
        from medgen.imaging.write import write_like_source

        modified = [job.index for job in jobs]
        description = format_derivation_description(
            prompt=prompt,
            model_name=self.model_path.name,
            seed=seed,
            negative_prompt=request.negative_prompt,
            adapters=[
                f"{Path(a['path']).name}:{a.get('weight', a.get('scale', 1.0)):g}" for a in provenance.get("adapters", [])
            ],
        )
        if volume.source_format is SourceFormat.DICOM:
            writer = SyntheticSeriesWriter(
                volume,
                series_description=f"SYNTHETIC {prompt}",
                derivation_description=description,
                provenance={**provenance, "variant_seed": seed, "variant_prompt": prompt},
                software_version=__version__,
                model_name=self.model_path.name,
                series_number=series_number,
            )
            files = writer.write(pixels, variant_dir, modified_slices=modified, only_modified=request.only_modified)
            if request.write_seg:
                from medgen.dicom.seg import write_inpaint_seg

                files.append(
                    write_inpaint_seg(
                        [f for f in files if f.suffix == ".dcm"],
                        {job.index: job.mask for job in jobs},
                        variant_dir.parent / f"{variant_dir.name}-seg" / "SEG.dcm",
                        prompt,
                        drawn_per_slice=drawn,
                        source_volume=volume,
                        software_version=__version__,
                        model_name=self.model_path.name,
                        series_number=series_number + 500,
                    )
                )
            return files
        written = write_like_source(volume, pixels, variant_dir)
        if request.write_dicom:
            written += write_secondary_capture(
                volume,
                pixels,
                variant_dir / "dicom",
                series_description=f"SYNTHETIC {prompt}",
                derivation_description=description,
                provenance={**provenance, "variant_seed": seed, "variant_prompt": prompt},
                software_version=__version__,
                model_name=self.model_path.name,
            )
        return written


def unchanged_warning(volume: Volume, variant_pixels: list[np.ndarray]) -> str | None:
    """A sentence when no variant changed a single stored value (a blank image, a mask outside the body)."""
    if any(not np.array_equal(pixels, volume.pixels) for pixels in variant_pixels):
        return None
    return "no voxel changed in any variant (a blank image, or a mask outside the body?)"


# --- several requests through one Inpainter ---------------------------------------------------------
# The model work itself (stacking crops into shared UNet calls, batch_invariant) is generate.batched's;
# reading, cropping and writing each request is the Inpainter's. These drive the two together.
# ``batch_invariant``: False (the default) runs the layers batched, so a request's images equal its
# images alone within float rounding; True gives the same bytes however requests were batched.


def generate_alone(inpainter: Inpainter, work, *, batch_invariant: bool = False) -> np.ndarray:
    """One request's crops (a generate.batched.Generation) through Inpainter.generate, under
    generate.batched.batch_invariant when asked, as in a shared call."""
    from medgen.generate.batched import model_calls

    with model_calls(inpainter.model, guided=work.guidance_scale > 1.0, invariant=batch_invariant):
        return inpainter.generate(work)


def run_alone(inpainter: Inpainter, request: InpaintRequest, *, batch_invariant: bool = False) -> InpaintResult:
    """One request through an Inpainter, its crops generated as run_together would (with
    ``batch_invariant``, the same files)."""
    return inpainter.run(request, lambda work: generate_alone(inpainter, work, batch_invariant=batch_invariant))


def run_together(
    inpainter: Inpainter, requests: list[InpaintRequest], *, batch_invariant: bool = False
) -> list[InpaintResult | Exception]:
    """Several requests through one Inpainter: each read and cropped, their crops generated in shared
    model calls, each written; run_alone of each within float rounding (with ``batch_invariant``, the
    same files). One result or exception per request, in order; an exception raised by a shared model
    call itself propagates."""
    from medgen.generate.batched import can_generate_together, generate_together

    results: list = [None] * len(requests)
    started = []  # (index, the request's steps, its Generation, the adapters it was prepared with)
    for i, request in enumerate(requests):
        steps = inpainter.steps(request)
        try:
            started.append((i, steps, next(steps), inpainter.adapter_key))
        except Exception as error:  # bad input: this request's failure only
            results[i] = error

    # requests prepared under different adapter sets (a CT row and an MR row: the MR adapter) share a
    # call with their own set only: the set the model carries now first, then each other one in turn
    groups: dict[tuple, list] = {}
    for item in sorted(started, key=lambda item: item[3] != inpainter.adapter_key):
        groups.setdefault(item[3], []).append(item)
    for key, members in groups.items():
        inpainter.use_adapter_key(key)
        model = inpainter.model
        works = [work for _, _, work, _ in members]
        if can_generate_together(model):
            generated = generate_together(model, works, invariant=batch_invariant)
        else:
            generated = [generate_alone(inpainter, work, batch_invariant=batch_invariant) for work in works]
        for (i, steps, _, _), crops in zip(members, generated):
            results[i] = _finish(steps, crops)
    return results


def _finish(steps, crops: np.ndarray):
    """Paste back and write one request: its result, or the exception that stopped it."""
    try:
        steps.send(crops)
    except StopIteration as finished:
        return finished.value
    except Exception as error:
        return error
    return RuntimeError("Inpainter.steps yielded more than once")


def inpaint(
    input: str | Path,
    mask: str | Path,
    *,
    prompt: str,
    out: str | Path,
    model: str | Path | None = None,
    device: str = "auto",
    dtype: str | None = None,
    scheduler: str | None = None,
    progress: ProgressCallback | None = None,
    **options,
) -> InpaintResult:
    """One call for batch scripts: load the model, run one request, return where it wrote.

    ``options`` are the fields of :class:`InpaintRequest`; an unknown name is an error.
    """
    request = InpaintRequest(input=Path(input), mask=Path(mask), prompt=prompt, out=Path(out), **options)
    return Inpainter(model, device=device, dtype=dtype, scheduler=scheduler)(request, progress)
