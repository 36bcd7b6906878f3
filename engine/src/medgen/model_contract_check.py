"""Check a source against the model's intensity contract before the model loads.

The contract (the modality a model was trained on and its intensity mapping) lives in the model
folder's medgen.json, so a source it does not cover (an MR given to a CT model) is refused from that
file alone, in well under a second, instead of after a load of many seconds. The contract's own rules
stay in ``medgen.imaging.intensity``; this module only reads the contract from the folder and applies
them. A model with several modalities changes those rules there, not here.
"""

from __future__ import annotations

from pathlib import Path

from medgen.imaging.intensity import IntensityContract, WindowChoice, resolve_window
from medgen.imaging.volume import Volume


def model_contract(model_path: str | Path) -> IntensityContract | None:
    """The contract in the model folder's medgen.json, read as the loaded model reads it; None for a
    single-file model or a folder that states none. An unreadable medgen.json is an InputError naming it."""
    from medgen.generate.settings import read_intensity_contract

    path = Path(model_path)
    return read_intensity_contract(path) if path.is_dir() else None


def contract_refusal(
    model_path: str | Path,
    volume: Volume,
    slices: list[int],
    *,
    force_modality: bool = False,
    preset: str | None = None,
    center: float | None = None,
    width: float | None = None,
    source: str | None = None,
) -> WindowChoice:
    """The request's window under the model folder's contract; raises InputError (naming the source and
    both modalities, and --force-modality) when the source's modality contradicts the contract and the
    user did not force it. Needs no loaded model."""
    return resolve_window(
        volume,
        slices,
        model_contract(model_path),
        preset=preset,
        center=center,
        width=width,
        force_modality=force_modality,
        source=source,
    )
