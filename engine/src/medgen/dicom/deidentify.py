"""De-identify synthetic instances for export: PS3.15 basic profile, with the synthetic marks kept.

The per-attribute actions of the Basic Application Level Confidentiality Profile (PS3.15 Table
E.1-1) come from the maintained `dicom-anonymizer` package. On top of it this module adds what an
export needs:

- pseudonyms derived from one secret per export (keyed HMAC-SHA256), so every series of a patient
  gets the same pseudonym, and a resumed export produces the very same UIDs (a PACS then sees a
  re-sent instance as the same instance, never a duplicate);
- UIDs replaced at every depth, each exactly once, so references (Source Image Sequence, a SEG's
  referenced instances) still point at the right de-identified instances;
- the marks that say the pixels are synthetic kept: Synthetic Data, Image Type, the Contributing
  Equipment items (stripped to non-identifying fields) and a "SYNTHETIC" Series Description.

Free text that a user typed (the prompt in Series/Derivation Description) is removed, as the
profile asks; private attributes (our provenance block included) are removed too.
"""

from __future__ import annotations

import copy
import hashlib
import hmac
import importlib.metadata
import logging
import secrets
from pathlib import Path

import pydicom
from pydicom.datadict import dictionary_VR
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.uid import UID

from medgen.dicom import codes

logger = logging.getLogger(__name__)

# The dicom-anonymizer table of PS3.15 E.1-1 actions that we apply (the newest it ships).
RULES_VERSION = "dicomfields_2026c"
# PS3.16 CID 7050 "De-identification Method"
BASIC_PROFILE_CODE = ("113100", "DCM", "Basic Application Confidentiality Profile")
DEIDENTIFIED_SERIES_DESCRIPTION = f"{codes.SERIES_DESCRIPTION_PREFIX} (de-identified)"
DEIDENTIFIED_DERIVATION_DESCRIPTION = (
    "SYNTHETIC: pathology inpainted by a generative model; details removed by de-identification"
)
PSEUDONYM_PREFIX = "MEDGEN"
# Fields of a Contributing Equipment item that describe software, never a person or a place.
_EQUIPMENT_FIELDS = (
    "PurposeOfReferenceCodeSequence", "Manufacturer", "ManufacturerModelName", "SoftwareVersions",
    "ContributionDescription",
)
_SECRET_BYTES = 32


def _profile_tables() -> tuple[dict, set]:
    """The dicom-anonymizer action table, and the set of tags whose UIDs must be replaced (U)."""
    from dicomanonymizer.dicomfields_selector import dicom_anonymization_database_selector
    from dicomanonymizer.simpledicomanonymizer import initialize_actions

    actions = initialize_actions(RULES_VERSION)
    tables = dicom_anonymization_database_selector(RULES_VERSION)
    uid_tags = {tuple(t) for t in tables["U_TAGS"]}
    for tag in list(actions):
        if len(tag) != 2:
            continue
        try:
            vr = dictionary_VR(tag)
        except KeyError:
            continue
        if vr == "UI":  # replaced by our one remapping pass, never by the package's random table
            uid_tags.add(tuple(tag))
    return actions, uid_tags


def _keep(dataset: Dataset, tag) -> None:
    """Leave the element to a later step (UIDs: the remapping pass; sequences: the recursive pass)."""


class Deidentifier:
    """Applies the basic profile with pseudonyms keyed by one export's secret.

    Stricter than the package's default in one place: a UID is never left as it was, at any depth,
    unless it names a standard class (SOP Class, Transfer Syntax), which identifies no one.
    """

    def __init__(self, secret: bytes):
        if not isinstance(secret, (bytes, bytearray)) or len(secret) < 16:
            raise ValueError(f"secret must be at least 16 bytes, got {len(secret) if secret else 0}")
        self._secret = bytes(secret)
        actions, self._uid_tags = _profile_tables()
        self._rules = {
            tag: (_keep if tuple(tag) in self._uid_tags or action.__name__ == "delete_or_empty_or_replace_UID"
                  else action)
            for tag, action in actions.items()
        }

    @classmethod
    def new(cls) -> "Deidentifier":
        return cls(secrets.token_bytes(_SECRET_BYTES))

    @classmethod
    def from_hex(cls, secret_hex: str) -> "Deidentifier":
        return cls(bytes.fromhex(secret_hex))

    @property
    def secret_hex(self) -> str:
        return self._secret.hex()

    # ---- pseudonyms --------------------------------------------------------------------------

    def _digest(self, kind: str, value: str) -> bytes:
        return hmac.new(self._secret, f"{kind}\x00{value}".encode("utf-8"), hashlib.sha256).digest()

    def pseudonym(self, patient_key: str) -> str:
        return f"{PSEUDONYM_PREFIX}-{self._digest('patient', patient_key).hex()[:12].upper()}"

    def uid(self, original: str) -> UID:
        """The replacement of one UID: '2.25.' + 128 bits of the keyed hash (PS3.5 B.2)."""
        return UID(f"2.25.{int.from_bytes(self._digest('uid', str(original))[:16], 'big')}")

    def _patient_key(self, ds: Dataset) -> str:
        # PatientID is what a PACS groups by; the name is the fallback for sources without one
        return str(ds.get("PatientID", "") or "") or f"name:{ds.get('PatientName', '') or ''}"

    def _rules_for(self, pseudonym: str) -> dict:
        """The table with Patient ID and Patient's Name set to this patient's pseudonym."""

        def set_value(value: str):
            def action(ds: Dataset, tag) -> None:
                if tag in ds:
                    ds[tag].value = value
            return action

        rules = dict(self._rules)
        rules[(0x0010, 0x0020)] = set_value(pseudonym)
        rules[(0x0010, 0x0010)] = set_value(f"{PSEUDONYM_PREFIX}^{pseudonym.split('-', 1)[1]}")
        return rules

    # ---- the profile -------------------------------------------------------------------------

    def deidentify(self, dataset: Dataset) -> Dataset:
        """A de-identified copy of ``dataset`` (with file meta when it has one)."""
        from dicomanonymizer.simpledicomanonymizer import anonymize_dataset

        ds = copy.deepcopy(dataset)
        # 1. Remember what must survive: the synthetic marks and who the patient is (for the pseudonym)
        synthetic = ds.get("SyntheticData")
        image_type = list(ds.ImageType) if "ImageType" in ds else None
        equipment = _clean_equipment(ds.get("ContributingEquipmentSequence"))
        rules = self._rules_for(self.pseudonym(self._patient_key(ds)))

        # 2. The PS3.15 table, at the top level and inside every sequence item
        _apply_at_every_depth(ds, lambda item: anonymize_dataset(
            item, extra_anonymization_rules=None, delete_private_tags=True, base_rules_gen=lambda: rules
        ))

        # 3. Replace every instance-identifying UID once, wherever it is
        self._remap_uids(ds)

        # 4. Put the marks back and record what was done (PS3.15 E.1.1, PS3.3 C.12.1)
        if synthetic is not None:
            ds.SyntheticData = synthetic
        if image_type is not None:
            ds.ImageType = image_type
        if equipment is not None:
            ds.ContributingEquipmentSequence = equipment
        if synthetic == codes.SYNTHETIC_DATA:
            ds.SeriesDescription = DEIDENTIFIED_SERIES_DESCRIPTION
            if "DerivationDescription" in dataset:
                ds.DerivationDescription = DEIDENTIFIED_DERIVATION_DESCRIPTION
        ds.PatientIdentityRemoved = "YES"
        ds.DeidentificationMethod = (
            f"PS3.15 Basic Application Level Confidentiality Profile (dicom-anonymizer "
            f"{_package_version()} {RULES_VERSION}); keyed pseudonyms; synthetic marks kept"
        )[:64]
        method = Dataset()
        method.CodeValue, method.CodingSchemeDesignator, method.CodeMeaning = BASIC_PROFILE_CODE
        ds.DeidentificationMethodCodeSequence = [method]
        ds.LongitudinalTemporalInformationModified = "REMOVED"
        if hasattr(ds, "file_meta"):
            ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
            if "SourceApplicationEntityTitle" in ds.file_meta:
                del ds.file_meta.SourceApplicationEntityTitle
        return ds

    def deidentify_file(self, source: str | Path, target: str | Path) -> Path:
        """Read, de-identify and write one file, keeping its transfer syntax."""
        ds = pydicom.dcmread(source)
        out = self.deidentify(ds)
        target = Path(target)
        target.parent.mkdir(parents=True, exist_ok=True)
        out.save_as(target, enforce_file_format=True)
        return target

    def _remap_uids(self, ds: Dataset) -> None:
        for element in list(ds):
            if element.VR == "SQ":
                for item in element.value:
                    self._remap_uids(item)
            elif (element.tag.group, element.tag.element) in self._uid_tags and element.value:
                values = element.value if element.VM > 1 else [element.value]
                mapped = [self.uid(v) for v in values]
                element.value = mapped if element.VM > 1 else mapped[0]


def _apply_at_every_depth(ds: Dataset, apply) -> None:
    """The package acts on one dataset level; PHI inside sequence items needs the same actions."""
    apply(ds)
    for element in list(ds):
        if element.VR == "SQ" and element.tag in ds:
            for item in element.value:
                _apply_at_every_depth(item, apply)


def _clean_equipment(sequence) -> DicomSequence | None:
    """Contributing Equipment items reduced to fields that name software, never people or sites."""
    if sequence is None:
        return None
    items = []
    for item in sequence:
        kept = Dataset()
        for keyword in _EQUIPMENT_FIELDS:
            if keyword in item:
                setattr(kept, keyword, copy.deepcopy(item.get(keyword)))
        items.append(kept)
    return DicomSequence(items)


def _package_version() -> str:
    try:
        return importlib.metadata.version("dicom-anonymizer")
    except importlib.metadata.PackageNotFoundError:
        return "?"
