"""Rows whose source the model does not cover (an ultrasound with a CT/MR model), found before any work.

`medgen inpaint` refuses such a source before any weight loads (``imaging.intensity.resolve_window``);
a batch run refuses such rows with the other bad rows, as ``MANIFEST:LINE: reason``, instead of letting
them fail after the other rows ran. A row with ``force-modality`` set, or a model without a
medgen.json, is never refused here.
"""

from __future__ import annotations

from pathlib import Path

import pydicom
from pydicom.errors import InvalidDicomError

from medgen.batch.manifest import BatchRow, RowProblem
from medgen.errors import MedgenError


def modality_problems(rows: list[BatchRow], model_path: Path) -> list[RowProblem]:
    """One problem per row whose source's modality no contract of the model covers."""
    from medgen.generate.settings import read_model_contracts

    contracts = read_model_contracts(model_path) if Path(model_path).is_dir() else None
    if contracts is None:
        return []
    found: dict[Path, tuple[str, str] | None] = {}  # rows often share a source: each is read once
    problems = []
    for row in rows:
        if row.options.get("force_modality"):
            continue
        stated = row.options.get("source_modality")
        if stated is not None and stated.strip():
            modality, rule = stated.strip().upper(), "given in the row's modality column"
        else:
            source = Path(row.options["input"])
            if source not in found:
                found[source] = source_modality(source)
            if found[source] is None:  # unreadable: the row fails at work time with the reader's message
                continue
            modality, rule = found[source]
        if contracts.contradicts(modality):
            problems.append(RowProblem(
                row.line,
                f"{row.options['input']}: the model was trained on {contracts.modality} ({contracts.describe()}, "
                f"its medgen.json) but this source is {modality} ({rule}); set the row's force-modality column "
                "to run it anyway",
                row.id,
            ))
    return problems


def source_modality(path: Path) -> tuple[str, str] | None:
    """(modality, how it was decided) as ``recognise_modality`` decides it, from a DICOM header alone
    where the source states one; else from the read volume; None when the source cannot be read."""
    stated = _dicom_modality(path)
    if stated is not None:
        return stated, "stated by the source (DICOM)"
    from medgen.imaging.intensity import recognise_modality
    from medgen.imaging.read import read_volume

    try:
        return recognise_modality(read_volume(path))
    except (MedgenError, OSError, ValueError):
        return None


def _dicom_modality(path: Path) -> str | None:
    """The Modality of a DICOM file, or of the first DICOM file of a folder; None when none states one."""
    files = sorted(p for p in path.iterdir() if p.is_file()) if path.is_dir() else [path]
    for file in files:
        try:
            header = pydicom.dcmread(file, stop_before_pixels=True, specific_tags=["Modality"])
        except (InvalidDicomError, OSError, EOFError, ValueError, TypeError):
            continue
        modality = str(header.get("Modality", "") or "").strip().upper()
        return modality if modality and modality != "OT" else None
    return None
