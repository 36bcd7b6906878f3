"""A model's own ``medgen.json`` beside its model_index.json: recommended settings and the intensity
contract (the modality and the intensity mapping the model was trained with)."""

from __future__ import annotations

import json
from pathlib import Path

from medgen.errors import InputError
from medgen.imaging.intensity import IntensityContract, ModelContracts, modality_family

MODEL_SETTINGS_FILE = "medgen.json"
RECOMMENDABLE = ("num_inference_steps", "guidance_scale", "crop_padding_px")
CONTRACT_KEYS = ("modality", "intensity", "modalities", "lesion_intensity")


def _read_model_settings_file(model_path: str | Path) -> tuple[Path, dict]:
    settings_file = Path(model_path) / MODEL_SETTINGS_FILE
    if not settings_file.is_file():
        return settings_file, {}
    try:
        settings = json.loads(settings_file.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise InputError(settings_file, f"cannot read the model's recommended settings: {exc}") from exc
    if not isinstance(settings, dict):
        raise InputError(settings_file, "must hold a JSON object of settings")
    unknown = sorted(set(settings) - set(RECOMMENDABLE) - set(CONTRACT_KEYS))
    if unknown:
        raise InputError(
            settings_file,
            f"unknown settings {unknown}; a model can recommend {list(RECOMMENDABLE)} and state {list(CONTRACT_KEYS)}",
        )
    return settings_file, settings


def read_model_settings_object(model_path: str | Path) -> tuple[Path, dict]:
    """The medgen.json path and its checked object (empty when the model has none)."""
    return _read_model_settings_file(model_path)


def read_recommended_settings(model_path: str | Path) -> dict:
    """Steps, guidance and crop padding the model's author recommends (a small model trained for
    guidance 1.4, say); empty when the model has no medgen.json or is a single file."""
    _, settings = _read_model_settings_file(model_path)
    return {name: value for name, value in settings.items() if name in RECOMMENDABLE}


def read_intensity_contract(model_path: str | Path) -> IntensityContract | None:
    """The modality and intensity mapping the model was trained with; None when its medgen.json
    states none (then the engine's defaults apply: CT soft tissue, else percentiles)."""
    return _main_contract(*_read_model_settings_file(model_path))


def _main_contract(settings_file: Path, settings: dict) -> IntensityContract | None:
    if "modality" in settings and "intensity" not in settings:
        raise InputError(settings_file, "states a modality but no intensity mapping ('intensity')")
    return IntensityContract.from_json(settings, str(settings_file))


def read_model_contracts(model_path: str | Path) -> ModelContracts | None:
    """Every contract the model's medgen.json states: the main one and, under ``modalities``, one per
    further modality (each with its intensity mapping and, optionally, the adapter folder trained for
    it). Read from the file alone, so a source the model cannot take is refused before any weight loads."""
    settings_file, settings = _read_model_settings_file(model_path)
    main = _main_contract(settings_file, settings)
    others = settings.get("modalities", {})
    if others and main is None:
        raise InputError(settings_file, "states 'modalities' but no main contract ('modality' and 'intensity')")
    if main is None:
        return None
    if not isinstance(others, dict):
        raise InputError(settings_file, "'modalities' must map a modality such as 'MR' to its contract")
    contracts, seen = [], {modality_family(main.modality)}
    for modality, record in others.items():
        if not isinstance(record, dict) or "modality" in record:
            raise InputError(settings_file, f"modalities[{modality!r}] must be an object with 'intensity' "
                             "(and optionally 'adapter')")
        contract = IntensityContract.from_json({**record, "modality": modality}, f"{settings_file} modalities")
        if contract is None:
            raise InputError(settings_file, f"modalities[{modality!r}] states no intensity mapping")
        family = modality_family(contract.modality)
        if family in seen:
            raise InputError(settings_file, f"modalities[{modality!r}]: the {family} family has a contract already")
        seen.add(family)
        if contract.adapter is not None and not (Path(model_path) / contract.adapter).is_dir():
            raise InputError(settings_file, f"modalities[{modality!r}]: adapter folder {contract.adapter!r} is missing")
        contracts.append(contract)
    return ModelContracts(main, tuple(contracts))


def write_model_settings(
    model_dir: str | Path, recommended: dict | None = None, contract: IntensityContract | ModelContracts | None = None,
    lesion_intensity: dict | None = None,
) -> Path:
    """Write medgen.json: recommended settings, the intensity contract and the lesion intensity table
    (`generate.calibration`), checked like a read."""
    recommended = dict(recommended or {})
    unknown = sorted(set(recommended) - set(RECOMMENDABLE))
    if unknown:
        raise ValueError(f"unknown recommended settings {unknown}")
    if isinstance(contract, ModelContracts):
        others = {c.modality: {k: v for k, v in c.to_json().items() if k != "modality"} for c in contract.others}
        record = {**recommended, **contract.main.to_json(), **({"modalities": others} if others else {})}
    else:
        record = {**recommended, **(contract.to_json() if contract is not None else {})}
    if lesion_intensity:
        from medgen.generate.calibration import TABLE_KEY, read_table

        read_table({TABLE_KEY: lesion_intensity}, MODEL_SETTINGS_FILE)
        record[TABLE_KEY] = lesion_intensity
    path = Path(model_dir) / MODEL_SETTINGS_FILE
    path.write_text(json.dumps(record, indent=1) + "\n", encoding="utf-8")
    return path
