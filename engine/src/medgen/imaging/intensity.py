"""Stored values ⇄ model space [-1, 1], exact both ways wherever nothing was generated.

The forward map is: stored → modality value (rescale; RGB → BT.601 luma) → window → [-1, 1],
inverted for MONOCHROME1 so that model space always means "higher is brighter on screen".
The inverse map rounds to the stored grid and clips to the stored range, and it gives back the
source value itself wherever the model value says "unchanged" (see :meth:`IntensityMap.from_model`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from medgen.errors import InputError
from medgen.imaging.volume import Volume

# ITU-R BT.601 luma weights, the ones DICOM and Pillow use for RGB → gray.
LUMA_WEIGHTS = np.array([0.299, 0.587, 0.114], dtype=np.float64)

# A model value this close to ±1 sits at the clip bound.
SATURATION_TOLERANCE = 1e-6

PERCENTILE_RANGE = (0.5, 99.5)
# Percentiles over more values than this use an evenly strided sample (same result to a voxel).
_PERCENTILE_SAMPLE = 4_000_000


@dataclass(frozen=True)
class Window:
    """A display window in modality units (HU for CT): values in [lower, upper] span model [-1, 1]."""

    center: float
    width: float

    def __post_init__(self):
        if not np.isfinite(self.center) or not np.isfinite(self.width) or self.width <= 0:
            raise InputError(
                "window", f"width must be > 0 and both values finite, got center {self.center}, width {self.width}"
            )

    @property
    def lower(self) -> float:
        return self.center - self.width / 2.0

    @property
    def upper(self) -> float:
        return self.center + self.width / 2.0


CT_PRESETS: dict[str, Window] = {
    "soft_tissue": Window(40, 400),
    "lung": Window(-600, 1500),
    "bone": Window(400, 1800),
    "brain": Window(40, 80),
    "liver": Window(60, 160),
    "mediastinum": Window(50, 350),
}
DEFAULT_CT_PRESET = "soft_tissue"


def choose_window(
    volume: Volume,
    slices: list[int],
    *,
    preset: str | None = None,
    center: float | None = None,
    width: float | None = None,
    modality: str | None = None,
    contract: IntensityContract | None = None,
) -> Window:
    """Explicit center/width first, then a CT preset, then the model's contract, then the CT default
    window for a CT (``modality``, default ``volume.modality``), else the 0.5–99.5 percentiles of the
    chosen slices."""
    if center is not None or width is not None:
        if center is None or width is None:
            raise InputError("window", f"give both center and width, got center {center}, width {width}")
        return Window(float(center), float(width))
    if preset is not None:
        preset = preset.strip().lower().replace("-", "_")  # "Soft-Tissue" reads as soft_tissue
        if preset not in CT_PRESETS:
            raise InputError("window", f"unknown preset {preset!r}; choose one of {', '.join(CT_PRESETS)}")
        return CT_PRESETS[preset]
    if contract is not None:
        if contract.window is not None:
            return contract.window
        return _percentile_window(volume, slices, contract.percentiles)
    if (modality or volume.modality) == "CT":
        return CT_PRESETS[DEFAULT_CT_PRESET]
    return _percentile_window(volume, slices)


def _percentile_window(
    volume: Volume, slices: list[int], percentiles: tuple[float, float] = PERCENTILE_RANGE
) -> Window:
    """Robust range of modality values; MONOCHROME1 needs nothing special since the range is symmetric."""
    if not slices:
        raise InputError("window", "no slices to choose a window from")
    return percentile_window(np.concatenate([modality_gray(volume, k).ravel() for k in slices]), percentiles)


def percentile_window(values: np.ndarray, percentiles: tuple[float, float] = PERCENTILE_RANGE) -> Window:
    """The window spanning the given percentiles of modality values (the phantom renderings use it too,
    so their training crops are mapped as inference maps a source)."""
    values = np.asarray(values).ravel()
    if values.size > _PERCENTILE_SAMPLE:
        values = values[:: values.size // _PERCENTILE_SAMPLE + 1]
    lower, upper = np.percentile(values, percentiles)
    if upper <= lower:  # a flat image: any width keeps it exact; centre it
        return Window(float(lower), 1.0)
    return Window(float((lower + upper) / 2.0), float(upper - lower))


# --- the model's intensity contract ----------------------------------------------------------

X_RAY_MODALITIES = frozenset({"CR", "DX", "RG", "MG", "IO", "PX", "RF", "XA"})
"""Projection radiography: one family for the contract (a model trained on CR takes DX as well)."""

HU_AIR_RANGE = (-1100.0, -900.0)
HU_SOFT_TISSUE_RANGE = (-200.0, 300.0)
HU_LOWEST_PADDING = -3100.0
HU_MIN_AIR_SHARE = 0.01
HU_MIN_SOFT_TISSUE_SHARE = 0.10
HU_LIKE_RULE = (
    f"values are HU-like: >= {HU_MIN_AIR_SHARE:.0%} of voxels in air's range {HU_AIR_RANGE[0]:g}..{HU_AIR_RANGE[1]:g}, "
    f">= {HU_MIN_SOFT_TISSUE_SHARE:.0%} in soft tissue's {HU_SOFT_TISSUE_RANGE[0]:g}..{HU_SOFT_TISSUE_RANGE[1]:g}, "
    f"none below {HU_LOWEST_PADDING:g}"
)
"""When a NIfTI/NRRD/PNG states no modality, it is taken as CT under this rule: air and soft tissue at
their Hounsfield values and nothing below the lowest padding value scanners write (-3024). An MR has
no mass of voxels near -1000; a z-scored or 0..1 image has no values in both ranges."""


def modality_family(modality: str | None) -> str | None:
    """CT, MR, XR (projection radiography) or the modality itself; None stays None."""
    if modality is None:
        return None
    modality = modality.strip().upper()
    return "XR" if modality in X_RAY_MODALITIES else modality


def recognise_modality(volume: Volume, stated: str | None = None) -> tuple[str, str]:
    """(modality, how it was decided): the user's statement (``--modality``), else the source's own
    Modality, else CT when the values are HU-like (``HU_LIKE_RULE``), else OT."""
    if stated is not None and stated.strip():
        return stated.strip().upper(), "given by the user"
    if volume.modality and volume.modality != "OT":
        return volume.modality, f"stated by the source ({volume.source_format.value})"
    if volume.is_color:
        return "OT", "no modality stated; colour image"
    values = np.concatenate([modality_gray(volume, k).ravel() for k in range(volume.num_slices)])
    if values.size > _PERCENTILE_SAMPLE:
        values = values[:: values.size // _PERCENTILE_SAMPLE + 1]
    if is_hu_like(values):
        return "CT", f"no modality stated; recognised as CT because {HU_LIKE_RULE}"
    return "OT", f"no modality stated and the values are not HU-like ({HU_LIKE_RULE} does not hold)"


def is_hu_like(values: np.ndarray) -> bool:
    """``HU_LIKE_RULE`` on modality values."""
    values = np.asarray(values, dtype=np.float64).ravel()
    if values.size == 0 or not np.isfinite(values).all() or values.min() < HU_LOWEST_PADDING:
        return False
    air = np.mean((values >= HU_AIR_RANGE[0]) & (values <= HU_AIR_RANGE[1]))
    soft = np.mean((values >= HU_SOFT_TISSUE_RANGE[0]) & (values <= HU_SOFT_TISSUE_RANGE[1]))
    return bool(air >= HU_MIN_AIR_SHARE and soft >= HU_MIN_SOFT_TISSUE_SHARE)


@dataclass(frozen=True)
class IntensityContract:
    """What a model was trained on: the modality and how its values were mapped to [-1, 1], either a
    fixed window in modality units or a percentile rule over the slices. Lives in the model's medgen.json
    as ``"modality"`` and ``"intensity": {"window": {"center": C, "width": W}}`` or
    ``"intensity": {"percentiles": [LOW, HIGH]}``."""

    modality: str | None = None
    window: Window | None = None
    percentiles: tuple[float, float] | None = None
    # a LoRA folder inside the model folder, trained for this modality on top of the base weights
    adapter: str | None = None

    def __post_init__(self):
        if (self.window is None) == (self.percentiles is None):
            raise InputError("intensity", "state exactly one of a window or a percentile rule")
        if self.percentiles is not None:
            low, high = self.percentiles
            if not 0.0 <= low < high <= 100.0:
                raise InputError("intensity", f"percentiles must satisfy 0 <= low < high <= 100, got {self.percentiles}")

    def describe(self) -> str:
        mapping = (
            f"window centre {self.window.center:g}, width {self.window.width:g}"
            if self.window is not None
            else f"percentiles {self.percentiles[0]:g}-{self.percentiles[1]:g}"
        )
        return f"{self.modality or 'any modality'}, {mapping}"

    def to_json(self) -> dict:
        intensity = (
            {"window": {"center": self.window.center, "width": self.window.width}}
            if self.window is not None
            else {"percentiles": list(self.percentiles)}
        )
        record = {**({"modality": self.modality} if self.modality else {}), "intensity": intensity}
        return {**record, "adapter": self.adapter} if self.adapter else record

    @classmethod
    def from_json(cls, record: dict, source: str = "medgen.json") -> IntensityContract | None:
        """The contract in a medgen.json object; None when it states no intensity mapping."""
        intensity = record.get("intensity")
        if intensity is None:
            return None
        modality = record.get("modality")
        if modality is not None and (not isinstance(modality, str) or not modality.strip()):
            raise InputError(source, f"modality must be a DICOM modality such as 'CT', got {modality!r}")
        adapter = record.get("adapter")
        if adapter is not None and (not isinstance(adapter, str) or not adapter.strip()
                                    or adapter.startswith("/") or ".." in adapter.split("/")):
            raise InputError(source, f"adapter must be a folder inside the model folder, got {adapter!r}")
        try:
            if not isinstance(intensity, dict) or len(intensity) != 1:
                raise ValueError("intensity must hold one of 'window' or 'percentiles'")
            if "window" in intensity:
                window = Window(float(intensity["window"]["center"]), float(intensity["window"]["width"]))
                return cls(modality=modality and modality.strip().upper(), window=window, adapter=adapter)
            if "percentiles" in intensity:
                low, high = (float(v) for v in intensity["percentiles"])
                return cls(modality=modality and modality.strip().upper(), percentiles=(low, high), adapter=adapter)
            raise ValueError(f"unknown intensity mapping {sorted(intensity)}")
        except (TypeError, KeyError, ValueError) as exc:
            raise InputError(source, f"bad intensity contract {intensity!r}: {exc}") from None
        except InputError as exc:
            raise InputError(source, f"bad intensity contract: {exc.problem}") from None

    def contradicts(self, modality: str) -> bool:
        """True when the model states a modality and the source's is another (OT never contradicts:
        it says nothing)."""
        if self.modality is None or modality in (None, "", "OT"):
            return False
        return modality_family(self.modality) != modality_family(modality)


@dataclass(frozen=True)
class ModelContracts:
    """Every contract a model states: its main one (medgen.json's ``modality`` and ``intensity``) and one
    per further modality it was trained for (``"modalities": {"MR": {"intensity": ..., "adapter": ...}}``).
    A source takes the contract of its own modality family; a model that states modalities and has none
    for the source's is contradicted by it."""

    main: IntensityContract
    others: tuple[IntensityContract, ...] = ()

    @property
    def all(self) -> tuple[IntensityContract, ...]:
        return (self.main, *self.others)

    def for_modality(self, modality: str | None) -> IntensityContract | None:
        """The contract for a source of this modality, None when none covers it. A source of unknown
        modality (OT) gets the main contract only when that is a percentile rule: a fixed window is in
        its modality's units (HU for CT), which mean nothing for values that are not of that modality."""
        if modality in (None, "", "OT"):
            return self.main if self.main.percentiles is not None else None
        for contract in self.all:
            if not contract.contradicts(modality):
                return contract
        return None

    def contradicts(self, modality: str) -> bool:
        """True when the source states a modality no contract covers (OT states none: never)."""
        return modality not in (None, "", "OT") and self.for_modality(modality) is None

    @property
    def modality(self) -> str:
        return "/".join(c.modality or "any modality" for c in self.all)

    def describe(self) -> str:
        return "; ".join(c.describe() for c in self.all)


def as_model_contracts(contract: IntensityContract | ModelContracts | None) -> ModelContracts | None:
    """A single contract reads as a model with one modality."""
    if contract is None or isinstance(contract, ModelContracts):
        return contract
    return ModelContracts(contract)


def modality_gray(volume: Volume, k: int, stored: np.ndarray | None = None) -> np.ndarray:
    """Slice k (or ``stored`` values of that slice) in modality units, colour reduced to luma (float64)."""
    stored = volume.pixels[k] if stored is None else stored
    values = stored.astype(np.float64)
    if volume.is_color:
        values = values @ LUMA_WEIGHTS
    return values * float(volume.rescale_slope[k]) + float(volume.rescale_intercept[k])


def model_channels(gray: np.ndarray) -> np.ndarray:
    """(R, C) model-space gray → (3, R, C), the three channels a Stable Diffusion VAE expects."""
    return np.repeat(np.asarray(gray, dtype=np.float32)[np.newaxis], 3, axis=0)


class IntensityMap:
    """The window-based map between one volume's stored values and model space."""

    def __init__(self, volume: Volume, window: Window):
        self.volume = volume
        self.window = window
        photometric = volume.pixel_format.photometric if volume.pixel_format else None
        self.inverted = photometric == "MONOCHROME1"
        self.stored_range = _stored_range(volume)

    # stored → model -------------------------------------------------------------------------

    def to_model(self, k: int) -> np.ndarray:
        """Slice k as float32 (R, C) in [-1, 1]."""
        return self.to_model_array(self.volume.pixels[k], k)

    def to_model_array(self, stored: np.ndarray, k: int, *, clip: bool = True) -> np.ndarray:
        """Any stored values of slice k's encoding (e.g. a crop) as float32 model values, clipped to
        [-1, 1] unless ``clip`` is False (noise measurement wants tissue just outside the window too)."""
        values = self._unclipped_model(stored, k)
        return (np.clip(values, -1.0, 1.0) if clip else values).astype(np.float32)

    def _unclipped_model(self, stored: np.ndarray, k: int) -> np.ndarray:
        scaled = (modality_gray(self.volume, k, stored) - self.window.lower) / self.window.width * 2.0 - 1.0
        return -scaled if self.inverted else scaled

    # model → stored -------------------------------------------------------------------------

    def from_model(
        self, model: np.ndarray, k: int, reference_stored: np.ndarray | None = None, *, clip: bool = True
    ) -> np.ndarray:
        """Model values (R, C) → stored values in slice k's dtype and shape.

        ``reference_stored`` (default: the source slice) decides where nothing changed: a pixel
        keeps its reference value when (1) the model value equals the reference's own model value,
        or (2) both sit at the same clip bound (saturation keeps the source, even outside the
        window), or (3) for RGB, the rounded gray equals the reference's rounded luma. So a round
        trip with no generation changes no value, and an RGB pixel keeps its colour. ``clip=False``
        writes model values beyond [-1, 1] as they are (noise that follows a source already outside the
        window); the stored range still bounds them.
        """
        slice_shape = self.volume.pixels.shape[1:]
        reference = self.volume.pixels[k] if reference_stored is None else np.asarray(reference_stored)
        if reference.shape != slice_shape:
            raise ValueError(f"reference_stored must have shape {slice_shape}, got {reference.shape}")
        model = np.asarray(model)
        if model.shape != slice_shape[:2]:
            raise ValueError(f"model must have shape {slice_shape[:2]}, got {model.shape}")

        # 1. Invert the window and the rescale in float64.
        m = model.astype(np.float64)
        if clip:
            m = np.clip(m, -1.0, 1.0)
        if self.inverted:
            m = -m
        modality = self.window.lower + (m + 1.0) / 2.0 * self.window.width
        gray = (modality - float(self.volume.rescale_intercept[k])) / float(self.volume.rescale_slope[k])

        # 2. Quantise to the stored grid and range.
        dtype = self.volume.pixels.dtype
        if np.issubdtype(dtype, np.integer):
            gray = np.rint(gray)
        if self.stored_range is not None:
            gray = np.clip(gray, *self.stored_range)

        # 3. Where nothing changed, keep the reference value.
        reference_model = self._unclipped_model(reference, k)
        unchanged = model.astype(np.float32) == np.clip(reference_model, -1.0, 1.0).astype(np.float32)
        bound = 1.0 - SATURATION_TOLERANCE
        unchanged |= (model >= bound) & (reference_model >= bound)
        unchanged |= (model <= -bound) & (reference_model <= -bound)

        if self.volume.is_color:
            reference_gray = modality_gray(self.volume, k, reference)
            if np.issubdtype(dtype, np.integer):
                reference_gray = np.rint(reference_gray)
            unchanged |= gray == reference_gray
            written = np.repeat(gray[..., np.newaxis], 3, axis=-1).astype(dtype)
            return np.where(unchanged[..., np.newaxis], reference, written).astype(dtype, copy=False)
        return np.where(unchanged, reference, gray.astype(dtype)).astype(dtype, copy=False)


def _stored_range(volume: Volume) -> tuple[float, float] | None:
    """BitsStored/PixelRepresentation range for DICOM, the dtype's range otherwise (None for floats)."""
    if volume.pixel_format is not None:
        return float(volume.pixel_format.stored_min), float(volume.pixel_format.stored_max)
    dtype = volume.pixels.dtype
    if np.issubdtype(dtype, np.integer):
        info = np.iinfo(dtype)
        return float(info.min), float(info.max)
    if dtype == np.float32:
        info = np.finfo(dtype)
        return float(info.min), float(info.max)
    return None


@dataclass(frozen=True)
class WindowChoice:
    """The window one request uses, and why: what the CLI prints and the provenance records."""

    window: Window
    source_modality: str
    modality_rule: str
    window_rule: str
    contract: IntensityContract | None = None
    forced: bool = False

    @property
    def adapter(self) -> str | None:
        """The folder (inside the model folder) of the adapter trained for this source's modality."""
        return None if self.forced or self.contract is None else self.contract.adapter

    def describe(self) -> str:
        return (
            f"source modality {self.source_modality} ({self.modality_rule}); "
            f"window centre {self.window.center:g}, width {self.window.width:g} ({self.window_rule})"
        )

    def to_json(self) -> dict:
        return {
            "source_modality": self.source_modality,
            "modality_rule": self.modality_rule,
            "window_rule": self.window_rule,
            "model_contract": self.contract.to_json() if self.contract is not None else None,
            "modality_forced": self.forced,
        }


def resolve_window(
    volume: Volume,
    slices: list[int],
    contract: IntensityContract | ModelContracts | None,
    *,
    preset: str | None = None,
    center: float | None = None,
    width: float | None = None,
    force_modality: bool = False,
    source: str | None = None,
    force_option: str = "--force-modality",
    stated_modality: str | None = None,
) -> WindowChoice:
    """The request's window: the user's (center/width or preset) first, then the model's contract,
    then the engine's default for the recognised modality.

    A model with several modalities gives the source the contract of its own modality (and with it, the
    adapter trained for that modality). A source whose modality no contract covers is refused unless
    ``force_modality``. Forced, the contract is set aside (a window in the model's units means nothing for
    this source) and the source's own default is used: CT soft tissue, else percentiles; the record says
    so. A source of unknown modality (OT: no Modality, values not HU-like, none stated with
    ``stated_modality``) does not contradict; it gets the main contract if that is a percentile rule,
    else the engine's default, and the rule says how to state its modality.
    """
    modality, modality_rule = recognise_modality(volume, stated_modality)
    contracts = as_model_contracts(contract)
    contract = contracts.for_modality(modality) if contracts is not None else None
    contradicts = contracts is not None and contracts.contradicts(modality)
    if contradicts and not force_modality:
        raise InputError(
            source,
            f"the model was trained on {contracts.modality} ({contracts.describe()}, its medgen.json) but this "
            f"source is {modality} ({modality_rule}); give {force_option} to run it anyway",
        )
    if contradicts:
        contract = contracts.main  # recorded as the contract that was set aside
    user_window = center is not None or width is not None or preset is not None
    usable_contract = None if (contradicts or user_window) else contract
    window = choose_window(
        volume, slices, preset=preset, center=center, width=width, modality=modality, contract=usable_contract
    )
    if center is not None or width is not None:
        rule = "given by the user"
    elif preset is not None:
        rule = f"CT preset {preset} given by the user"
    elif usable_contract is not None:
        rule = f"the model's medgen.json: {usable_contract.describe()}"
    elif modality == "CT":
        rule = f"engine default for CT: {DEFAULT_CT_PRESET}"
    else:
        rule = f"engine default: percentiles {PERCENTILE_RANGE[0]:g}-{PERCENTILE_RANGE[1]:g} of the inpainted slices"
        if contracts is not None and not contradicts and contract is None and not user_window:
            rule += (f"; the model's contracts ({contracts.describe()}) need the source's modality: "
                     "state it with --modality")
    # forcing a source the model covers changes nothing; a forced one runs outside every contract
    if contradicts and not user_window:
        rule += f"; --force-modality set the model's {contract.describe()} aside"
    return WindowChoice(window, modality, modality_rule, rule, contract, forced=contradicts)
