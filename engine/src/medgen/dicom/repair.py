"""Safe repairs of a source's legal-but-old or malformed values in a derived instance, each with a note.

Real files carry values older readers accepted and today's libraries refuse: ACR-NEMA times
"14:04:38", dates "1990.01.01", a birth date "1990/01/", ISO 2022 character sets, private elements
whose VR was never written down (implicit VR). Left alone they stop the SEG step (highdicom parses
every DA/TM) or make the written instance invalid. Each repair is one that loses no information a
reader could use, and every note goes into the run's provenance ("source_repairs").
"""

from __future__ import annotations

import re

from pydicom.dataelem import DataElement, RawDataElement
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue

_PATTERNS = {
    "DA": re.compile(r"\d{8}"),
    "TM": re.compile(r"\d{2}(\d{2}(\d{2}(\.\d{1,6})?)?)?"),
    "DT": re.compile(r"\d{4}(\d{2}(\d{2}(\d{2}(\d{2}(\d{2}(\.\d{1,6})?)?)?)?)?)?([+-]\d{4})?"),
}
# Separators of the ACR-NEMA forms: "1990.01.01", "1990/01/01", "14:04:38"
_OLD_SEPARATORS = {"DA": ".:/-", "TM": ":", "DT": ":"}


def _fix_value(vr: str, value: str) -> str | None:
    """The value in today's form, "" where it cannot be read, or None when it is fine as it is."""
    text = str(value).strip()
    if text == "" or _PATTERNS[vr].fullmatch(text):
        return None
    modern = text.translate({ord(c): None for c in _OLD_SEPARATORS[vr]}) if vr != "DT" else text.replace(":", "")
    if _PATTERNS[vr].fullmatch(modern):
        return modern
    return ""


def repair_dates_and_times(ds: Dataset) -> list[str]:
    """Normalise old DA/TM/DT forms in ``ds`` (nested sequences too); empty what cannot be read."""
    notes = []
    for element in ds.iterall():
        if element.VR not in _PATTERNS or element.value is None:
            continue
        values = list(element.value) if isinstance(element.value, MultiValue) else [element.value]
        fixed = [_fix_value(element.VR, v) for v in values]
        if all(f is None for f in fixed):
            continue
        new_values = [str(v) if f is None else f for v, f in zip(values, fixed)]
        name = element.keyword or str(element.tag)
        element.value = new_values if len(new_values) > 1 else new_values[0]
        old = "\\".join(str(v) for v in values)
        if any(f == "" for f in fixed):
            notes.append(f"{name} {old!r} is not a valid {element.VR}; written empty (unknown)")
        else:
            notes.append(f"{name} {old!r} written in today's {element.VR} form {element.value!r}")
    return notes


def uses_iso_2022(ds: Dataset) -> bool:
    """True when Specific Character Set names ISO 2022 code extensions (escape sequences)."""
    charsets = ds.get("SpecificCharacterSet")
    values = list(charsets) if isinstance(charsets, MultiValue) else [charsets]
    return any(v and "2022" in str(v) for v in values)


def private_elements_as_unknown(ds: Dataset, source: Dataset) -> list[str]:
    """Private elements of an implicit-VR source keep their bytes as UN: their VR was never written,
    and a VR guessed from a dictionary may not hold the value (an SH of 21 characters)."""
    implicit = getattr(source, "original_encoding", (False, True))[0]
    if not implicit:
        return []
    kept = dropped = 0
    for tag in [t for t in ds.keys() if t.is_private and t.element > 0x00FF]:
        raw = source.get_item(tag)
        if isinstance(raw, RawDataElement) and isinstance(raw.value, (bytes, bytearray)):
            ds[tag] = DataElement(tag, "UN", bytes(raw.value))
            kept += 1
        elif ds[tag].VR not in ("UN", "SQ"):
            del ds[tag]  # already parsed with a guessed VR and its bytes are gone: drop it, with a note
            dropped += 1
    notes = []
    if kept:
        notes.append(f"{kept} private element(s) of the implicit-VR source kept as UN (their VR is unknown)")
    if dropped:
        notes.append(f"{dropped} private element(s) of the implicit-VR source dropped (VR unknown, bytes not kept)")
    return notes


# Enumerated values the SEG step checks (highdicom reads Patient's Sex as PS3.3 C.7.1.1 defines it)
_PATIENT_SEX = ("M", "F", "O")


def repair_enumerated_values(ds: Dataset) -> list[str]:
    """Empty a Patient's Sex outside its enumerated values ("N/A", "U"): Type 2, so empty means unknown,
    which is what such a value says."""
    value = ds.get("PatientSex")
    if value is None or str(value).strip() in ("", *_PATIENT_SEX):
        return []
    ds.PatientSex = ""
    return [f"PatientSex {str(value)!r} is not one of M, F, O; written empty (unknown)"]
