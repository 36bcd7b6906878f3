"""Named DICOM constants for synthetic output: coded concepts, our equipment identity, private block.

Every code, UID rule and private tag the writer uses lives here, so a reviewer can check them in
one place against PS3.16 and a reader of the written files can find them again.
"""

from __future__ import annotations

from enum import Enum

from pydicom.dataset import Dataset
from pydicom.sr.coding import Code
from pydicom.uid import UID, generate_uid

import medgen

# Our private coding scheme, described in Coding Scheme Identification Sequence (0008,0110) of every
# instance that uses it (Type 1C in SOP Common for designators not defined in PS3.16).
PRIVATE_CODING_SCHEME = "99MEDGEN"
PRIVATE_CODING_SCHEME_NAME = "MedGenSlicer synthetic image codes"
PRIVATE_CODING_SCHEME_ORGANIZATION = "MedGenSlicer project"


def coding_scheme_identification_item() -> Dataset:
    """The Coding Scheme Identification Sequence item that defines PRIVATE_CODING_SCHEME."""
    item = Dataset()
    item.CodingSchemeDesignator = PRIVATE_CODING_SCHEME
    item.CodingSchemeName = PRIVATE_CODING_SCHEME_NAME
    item.CodingSchemeResponsibleOrganization = PRIVATE_CODING_SCHEME_ORGANIZATION
    return item


class MedgenCode(Enum):
    """The coded concepts our written instances carry."""

    # PS3.16 CID 7005 "Contributing Equipment Purposes of Reference"
    SYNTHESIZING_EQUIPMENT = Code("109100", "DCM", "Synthesizing Equipment")
    # PS3.16 CID 7202 "Source Image Purposes of Reference"
    SOURCE_IMAGE_FOR_PROCESSING = Code("121322", "DCM", "Source image for image processing operation")
    # CID 7203 "Image Derivation" is extensible and has no code for generative inpainting, so we
    # define one in a private coding scheme (designators beginning "99" are reserved for that).
    # It is needed because the Derivation Image functional group of enhanced multi-frame images
    # makes Derivation Code Sequence Type 1; classic images carry it too, so both kinds read alike.
    GENERATIVE_INPAINTING = Code("INPAINT", PRIVATE_CODING_SCHEME, "Generative model inpainting")

    @property
    def code(self) -> Code:
        return self.value

    def to_item(self) -> Dataset:
        """One item of a code sequence (Code Value, Coding Scheme Designator, Code Meaning)."""
        item = Dataset()
        item.CodeValue = self.value.value
        item.CodingSchemeDesignator = self.value.scheme_designator
        item.CodeMeaning = self.value.meaning
        return item


# Identity of the equipment that synthesized the pixels (Contributing Equipment Sequence item).
MANUFACTURER = "MedGenSlicer"
CONTRIBUTION_DESCRIPTION = "Pathology inpainted by a generative diffusion model; image content is synthetic"

# Synthetic Data (0008,001C) value for every instance we write.
SYNTHETIC_DATA = "YES"
# Series Description always starts with this, so a human scanning a PACS list sees it first.
SERIES_DESCRIPTION_PREFIX = "SYNTHETIC"
BURNED_IN_LABEL = "SYNTHETIC"
IMAGE_TYPE_PREFIX = ("DERIVED", "SECONDARY")

# Private block holding the full provenance JSON (one UT element). The group is odd as PS3.5 7.8
# requires; pydicom's private_block() picks a free block, so sharing the group with a vendor is safe.
PRIVATE_GROUP = 0x0077
PRIVATE_CREATOR = "MEDGENSLICER 1.0"
PRIVATE_PROVENANCE_OFFSET = 0x01  # element (0077,xx01), VR UT, provenance as JSON

# Secondary Capture Equipment: Conversion Type "SYN" = Synthetic Image (PS3.3 C.8.6.1).
CONVERSION_TYPE_SYNTHETIC = "SYN"

# UIDs: we have no registered root, so every new UID is the UUID-derived form "2.25.<int>"
# (PS3.5 B.2), which needs no registration and cannot collide with the source's UIDs.
UID_PREFIX = None
# Fixed once, UUID-derived, identifies this implementation in the file meta (0002,0012).
IMPLEMENTATION_CLASS_UID = UID("2.25.214993026980731769711845205810312497803")
IMPLEMENTATION_VERSION_NAME = f"MEDGEN_{medgen.__version__}"[:16]


def new_uid() -> UID:
    """A fresh UUID-derived UID (2.25.…) for a series or instance."""
    return generate_uid(prefix=UID_PREFIX)
