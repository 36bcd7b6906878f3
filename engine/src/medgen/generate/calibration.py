"""Lesion intensity calibration: a prompted lesion type gets the attenuation real lesions of that type have.

A model trained in a display window learns a lesion's brightness only as well as its training let it,
and nothing above or below the window at all: the demo model's cysts came out some 17 HU darker than
real ones, and its calcifications, which sit far above the soft-tissue window, at the window's top
(about 200 HU instead of 700). Where the model's folder states what its lesion types measure, the
generated lesion is calibrated to it.

The table lives in the model's medgen.json under ``lesion_intensity``: one entry per type, with the
phrases that prompt it, the modality, and the mean and spread of real lesions of the type in modality
units (HU for CT). `medgen phantom train-base` writes it for the demo model from the lesions it was
trained on; for other weights it can be written by hand or measured from real lesions.

The lesion's contrast (generated signal less the source's low-pass) is scaled, by one factor for all
its slices, so that its mean over the masks' cores reaches the target: the type's mean plus a per-variant draw of its spread,
so synthetic lesions vary as real ones do. Scaling (not shifting) keeps the lesion's shape and
border profile; a contrast of the wrong sign or too weak to scale is shifted instead.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import ndimage

from medgen.errors import InputError

TABLE_KEY = "lesion_intensity"
MAX_SPREAD_SIGMAS = 2.0
"""A variant's draw from the type's spread is cut at this many standard deviations."""
MIN_SCALABLE_CONTRAST = 0.02
"""Model-space contrast below which the lesion is shifted rather than scaled."""


@dataclass(frozen=True)
class LesionIntensity:
    """What real lesions of one type measure: mean and standard deviation in modality units."""

    name: str
    phrases: tuple[str, ...]
    modality: str
    mean: float
    std: float

    def to_json(self) -> dict:
        return {"phrases": list(self.phrases), "modality": self.modality, "mean": self.mean, "std": self.std}


def read_table(settings: dict, settings_file: str | Path) -> dict[str, LesionIntensity]:
    """The ``lesion_intensity`` entries of a medgen.json object, checked (an empty table without one)."""
    raw = settings.get(TABLE_KEY, {})
    if not isinstance(raw, dict):
        raise InputError(settings_file, f"{TABLE_KEY} must be an object of lesion types")
    table = {}
    for name, entry in raw.items():
        where = f"{TABLE_KEY}[{name!r}]"
        if not isinstance(entry, dict):
            raise InputError(settings_file, f"{where} must be an object")
        phrases = entry.get("phrases")
        if not isinstance(phrases, list) or not phrases or not all(isinstance(p, str) and p.strip() for p in phrases):
            raise InputError(settings_file, f"{where}.phrases must be a non-empty list of words")
        try:
            mean, std = float(entry["mean"]), float(entry.get("std", 0.0))
        except (KeyError, TypeError, ValueError):
            raise InputError(settings_file, f"{where} needs a numeric mean (and std)") from None
        if not np.isfinite(mean) or not np.isfinite(std) or std < 0:
            raise InputError(settings_file, f"{where}: mean must be finite and std >= 0")
        modality = entry.get("modality")
        if not isinstance(modality, str) or not modality:
            raise InputError(settings_file, f"{where}.modality must name a modality such as CT")
        table[name] = LesionIntensity(name, tuple(p.lower() for p in phrases), modality.upper(), mean, std)
    return table


def read_model_table(model_path: str | Path) -> dict[str, LesionIntensity]:
    """The model folder's calibration table (empty for a model without one)."""
    from medgen.generate.settings import read_model_settings_object

    settings_file, settings = read_model_settings_object(model_path)
    return read_table(settings, settings_file)


MAX_INSERTED_WORDS = 2
"""Words a prompt may put inside a phrase ("hypodense liver lesion" for "hypodense lesion")."""


def match_prompt(prompt: str, table: dict[str, LesionIntensity], modality: str | None) -> LesionIntensity | None:
    """The entry with the longest phrase whose words occur in order in ``prompt``, at most
    ``MAX_INSERTED_WORDS`` others between two of them (for the source's modality), or None."""
    words = str(prompt).lower().replace(",", " ").replace("-", " ").split()
    best, best_length = None, 0
    for entry in table.values():
        if modality is not None and entry.modality != str(modality).upper():
            continue
        for phrase in entry.phrases:
            if _occurs(phrase.replace("-", " ").split(), words) and len(phrase) > best_length:
                best, best_length = entry, len(phrase)
    return best


def _occurs(phrase: list[str], words: list[str]) -> bool:
    for start, word in enumerate(words):
        if word != phrase[0]:
            continue
        position = start
        for wanted in phrase[1:]:
            window = words[position + 1: position + 2 + MAX_INSERTED_WORDS]
            if wanted not in window:
                break
            position += 1 + window.index(wanted)
        else:
            return True
    return False


def variant_target(entry: LesionIntensity, seed: int) -> float:
    """The mean this variant's lesion is calibrated to: the type's mean plus a seeded draw of its spread."""
    draw = float(np.clip(np.random.default_rng([int(seed), 7]).standard_normal(), -MAX_SPREAD_SIGMAS,
                         MAX_SPREAD_SIGMAS))
    return entry.mean + entry.std * draw


def calibrate_lesion(signals: list[np.ndarray], backgrounds: list[np.ndarray], masks: list[np.ndarray],
                     allowed: list[np.ndarray], target_model: float) -> list[np.ndarray]:
    """``signals`` (one per slice) whose lesion contrast reaches ``target_model`` (model space) over the
    masks' cores of all slices together: one lesion, one attenuation, so its change from slice to slice
    (a fainter tip where it ends) is kept."""
    cores = []
    for mask in masks:
        mask = np.asarray(mask, dtype=bool)
        core = ndimage.binary_erosion(mask)
        cores.append(core if core.any() else mask)
    contrasts = [np.where(a, np.asarray(s, dtype=np.float64) - b, 0.0) for s, b, a in zip(signals, backgrounds, allowed)]
    voxels = sum(int(c.sum()) for c in cores)
    have = sum(float(c[core].sum()) for c, core in zip(contrasts, cores)) / voxels
    want = target_model - sum(float(b[core].sum()) for b, core in zip(backgrounds, cores)) / voxels
    if np.sign(have) == np.sign(want) and abs(have) >= MIN_SCALABLE_CONTRAST:
        contrasts = [c * (want / have) for c in contrasts]
    else:
        contrasts = [c + (want - have) * np.asarray(m, dtype=bool) for c, m in zip(contrasts, masks)]
    return [np.where(a, b + c, s) for s, b, c, a in zip(signals, backgrounds, contrasts, allowed)]
