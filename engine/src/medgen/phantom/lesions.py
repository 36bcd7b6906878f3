"""Lesion types of the phantom world: their true HU, their shapes and the words that prompt them.

Every type has a known attenuation and a known footprint, so a benchmark can tell whether a model
put the prompted lesion under the mask. "spiculated mass" is held out: the base model never sees it
in training (it is kept for adapter training), so its words are not in the base vocabulary either.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

import numpy as np
from scipy import ndimage
from scipy.spatial import ConvexHull, QhullError


class LesionType(str, Enum):
    CYST = "cyst"
    HYPERDENSE = "hyperdense"
    CALCIFICATION = "calcification"
    FAT = "fat"
    SPICULATED = "spiculated"


BASE_TYPES = (LesionType.CYST, LesionType.HYPERDENSE, LesionType.CALCIFICATION, LesionType.FAT)
HELD_OUT_TYPES = (LesionType.SPICULATED,)


@dataclass(frozen=True)
class LesionSpec:
    """What one type looks like: attenuation, size range, border, and how it is prompted."""

    hu: float  # nominal attenuation, the ground truth the bench compares against
    hu_spread: float  # each lesion draws its own value from hu ± hu_spread
    radius_mm: tuple[float, float]  # in-plane radius range
    border_wobble: float  # relative amplitude of the smooth border harmonics
    spikes: tuple[int, int]  # number of spicules (0, 0) for a smooth lesion
    label: str  # the segment name in .seg.nrrd and DICOM SEG
    prompt: str  # the canonical prompt (benchmark rows, demo)
    phrases: tuple[str, ...]  # prompt vocabulary: any of these names the type


LESION_SPECS: dict[LesionType, LesionSpec] = {
    LesionType.CYST: LesionSpec(
        hu=5.0,
        hu_spread=5.0,
        radius_mm=(8.0, 18.0),
        border_wobble=0.04,
        spikes=(0, 0),
        label="hypodense cyst",
        prompt="hypodense cyst",
        phrases=(
            "hypodense cyst",
            "simple cyst",
            "fluid filled cyst",
            "water density cyst",
            "hypodense lesion",
            "low attenuation cyst",
            "hypoattenuating cystic lesion",
            "cyst",
        ),
    ),
    LesionType.HYPERDENSE: LesionSpec(
        hu=140.0,
        hu_spread=15.0,
        radius_mm=(8.0, 18.0),
        border_wobble=0.06,
        spikes=(0, 0),
        label="hyperdense enhancing lesion",
        prompt="hyperdense enhancing lesion",
        phrases=(
            "hyperdense enhancing lesion",
            "enhancing lesion",
            "hypervascular lesion",
            "arterially enhancing mass",
            "hyperdense lesion",
            "hyperattenuating enhancing nodule",
            "bright enhancing tumor",
        ),
    ),
    LesionType.CALCIFICATION: LesionSpec(
        hu=700.0,
        hu_spread=150.0,
        radius_mm=(6.0, 11.0),
        border_wobble=0.08,
        spikes=(0, 0),
        label="calcification",
        prompt="calcification",
        phrases=(
            "calcification",
            "calcified granuloma",
            "dense calcification",
            "calcified lesion",
            "coarse calcification",
            "calcified nodule",
        ),
    ),
    LesionType.FAT: LesionSpec(
        hu=-80.0,
        hu_spread=12.0,
        radius_mm=(8.0, 16.0),
        border_wobble=0.05,
        spikes=(0, 0),
        label="fat-containing lesion",
        prompt="fat-containing lesion",
        phrases=(
            "fat-containing lesion",
            "fatty lesion",
            "lipoma",
            "fat density lesion",
            "angiomyolipoma",
            "fat containing mass",
            "hypodense fatty nodule",
        ),
    ),
    LesionType.SPICULATED: LesionSpec(
        hu=40.0,
        hu_spread=5.0,
        radius_mm=(9.0, 15.0),
        border_wobble=0.10,
        spikes=(6, 11),
        label="spiculated mass",
        prompt="spiculated mass",
        phrases=(
            "spiculated mass",
            "irregular spiculated mass",
            "spiculated lesion with spiky margins",
            "stellate mass",
        ),
    ),
}

HEALTHY_PHRASES = ("", "healthy", "normal tissue", "no lesion", "healthy liver", "normal parenchyma")
"""Prompts that mean "fill with healthy tissue"; the empty prompt is one of them (the bench baseline)."""

ORGAN_WORDS = {"liver": ("liver", "hepatic"), "spleen": ("spleen", "splenic")}
SIZE_WORDS = ("1 cm", "1.5 cm", "2 cm", "2.5 cm", "3 cm", "small", "large")


def sample_prompt(lesion_type: LesionType | None, organ: str, radius_mm: float, rng: np.random.Generator) -> str:
    """A prompt from the vocabulary: a type phrase, sometimes with the organ and the size.

    ``lesion_type`` None gives a healthy prompt (the empty string included).
    """
    if lesion_type is None:
        return str(rng.choice(HEALTHY_PHRASES))
    phrase = str(rng.choice(LESION_SPECS[LesionType(lesion_type)].phrases))
    words = phrase.split()
    if rng.random() < 0.5:
        organ_word = str(rng.choice(ORGAN_WORDS[organ]))
        # "hypodense liver lesion" as often as "hypodense lesion in the liver"
        if len(words) > 1 and rng.random() < 0.5:
            words.insert(len(words) - 1, organ_word)
        else:
            words += ["in", "the", organ_word]
    text = " ".join(words)
    if rng.random() < 0.4:
        text += ", " + _size_words(radius_mm)
    return text


def _size_words(radius_mm: float) -> str:
    diameter_cm = round(2 * radius_mm / 5.0) * 0.5  # nearest half centimetre
    return f"{diameter_cm:g} cm" if diameter_cm >= 1 else "small"


def prompt_words() -> list[str]:
    """Every word of the base vocabulary (held-out types excluded), for building the tokenizer."""
    texts = [*HEALTHY_PHRASES, *SIZE_WORDS, "in the", *(w for pair in ORGAN_WORDS.values() for w in pair)]
    for lesion_type in BASE_TYPES:
        texts += LESION_SPECS[lesion_type].phrases
    words: list[str] = []
    for text in texts:
        for word in text.replace(",", " ").replace("-", " ").split():
            if word.isalpha() and word not in words:
                words.append(word)
    return words


@dataclass(frozen=True)
class Lesion:
    """One lesion in patient millimetres: a wobbly ellipsoid, optionally with spicules."""

    lesion_type: LesionType
    center_mm: tuple[float, float, float]  # (x, y, z) in the phantom's body frame
    radius_mm: float  # in-plane mean radius
    radius_z_mm: float  # half extent along z
    aspect: float  # in-plane ellipse ratio (y radius / x radius)
    angle: float  # in-plane rotation (radians)
    hu: float  # this lesion's attenuation
    harmonics: tuple[tuple[float, float], ...]  # (amplitude, phase) of border harmonics 2, 3, 4...
    spikes: tuple[tuple[float, float, float], ...] = ()  # (angle, length mm, base width mm) per spicule

    @property
    def spec(self) -> LesionSpec:
        return LESION_SPECS[self.lesion_type]

    def footprint(self, x_mm: np.ndarray, y_mm: np.ndarray, z_mm: float) -> np.ndarray:
        """Boolean footprint in one slice at height z (pixel-centre sampling)."""
        dz = (z_mm - self.center_mm[2]) / self.radius_z_mm
        if abs(dz) >= 1.0:
            return np.zeros(np.broadcast(x_mm, y_mm).shape, dtype=bool)
        scale = np.sqrt(1.0 - dz * dz)
        dx = x_mm - self.center_mm[0]
        dy = y_mm - self.center_mm[1]
        cos_a, sin_a = np.cos(self.angle), np.sin(self.angle)
        u = cos_a * dx + sin_a * dy
        v = (-sin_a * dx + cos_a * dy) / self.aspect
        rho = np.hypot(u, v)
        theta = np.arctan2(v, u)
        border = np.ones_like(theta)
        for order, (amplitude, phase) in enumerate(self.harmonics, start=2):
            border += amplitude * np.cos(order * theta + phase)
        core = rho <= self.radius_mm * scale * border
        if not self.spikes:
            return core
        inside = core.copy()
        for spike_angle, length, width in self.spikes:
            # A thin tapering spoke from inside the core out to radius * scale + length.
            along = np.cos(spike_angle) * dx + np.sin(spike_angle) * dy
            across = np.abs(-np.sin(spike_angle) * dx + np.cos(spike_angle) * dy)
            reach = self.radius_mm * scale + length * scale
            taper = np.clip(1.0 - along / reach, 0.0, 1.0)
            inside |= (along > 0) & (along <= reach) & (across <= 0.5 * width * taper + 0.8)
        # Pixel sampling can cut a thin spoke; keep only what still touches the core.
        pieces, _ = ndimage.label(inside)
        keep = np.unique(pieces[core])
        return np.isin(pieces, keep[keep > 0])


def random_lesion(
    lesion_type: LesionType, center_mm: tuple[float, float, float], rng: np.random.Generator, radius_mm=None
) -> Lesion:
    """Draw one lesion of a type around a centre; everything random comes from ``rng``."""
    lesion_type = LesionType(lesion_type)
    spec = LESION_SPECS[lesion_type]
    radius = float(radius_mm if radius_mm is not None else rng.uniform(*spec.radius_mm))
    harmonics = tuple((float(rng.uniform(0, spec.border_wobble)), float(rng.uniform(0, 2 * np.pi))) for _ in range(3))
    n_spikes = int(rng.integers(spec.spikes[0], spec.spikes[1] + 1)) if spec.spikes[1] else 0
    spike_angles = np.sort(rng.uniform(0, 2 * np.pi, n_spikes))
    spikes = tuple(
        (float(a), float(rng.uniform(0.6, 1.2) * radius), float(rng.uniform(2.0, 3.5))) for a in spike_angles
    )
    return Lesion(
        lesion_type=lesion_type,
        center_mm=tuple(float(c) for c in center_mm),
        radius_mm=radius,
        radius_z_mm=float(radius * rng.uniform(0.8, 1.2)),
        aspect=float(rng.uniform(0.75, 1.0)),
        angle=float(rng.uniform(0, np.pi)),
        hu=float(spec.hu + rng.uniform(-spec.hu_spread, spec.hu_spread)),
        harmonics=harmonics,
        spikes=spikes,
    )


def border_irregularity(mask: np.ndarray) -> float:
    """1 - solidity (area / convex-hull area) of a 2D footprint: ~0.05 for round lesions, more for spiky ones.

    Solidity is chosen because spicules add little area but much hull, so it separates the held-out
    spiculated type from the smooth base types without depending on the lesion's size.
    """
    mask = np.asarray(mask, dtype=bool)
    if mask.sum() < 3:
        return 0.0
    rows, cols = np.nonzero(mask)
    # Hull of the pixel squares' corners, so a filled square has solidity exactly 1.
    corners = np.concatenate(
        [np.stack([rows + dr, cols + dc], axis=1) for dr in (0, 1) for dc in (0, 1)], axis=0
    ).astype(float)
    try:
        hull_area = ConvexHull(corners).volume  # in 2D, "volume" is the area
    except QhullError:
        return 0.0
    return float(max(0.0, 1.0 - mask.sum() / hull_area))


def largest_slice(mask3d: np.ndarray) -> int:
    """Index of the slice where a 3D mask has the most voxels."""
    areas = np.asarray(mask3d).reshape(len(mask3d), -1).sum(axis=1)
    return int(np.argmax(areas))
