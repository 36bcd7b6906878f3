"""The same request writes the same bytes: one clock and one UID rule for everything the engine writes.

- Timestamps (DICOM creation dates, provenance's ``created_utc``) come from :func:`creation_time`:
  the ``SOURCE_DATE_EPOCH`` environment variable (seconds since 1970, the reproducible-builds
  convention) when it is set, else the current time. Set it and two runs of the same request write
  byte-identical files; leave it unset and those timestamps are the only bytes that differ.
- New UIDs are derived from what they identify (:func:`content_uid`), never drawn at random: the same
  source, settings, seed and generated pixels give the same UID, and any difference gives another.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import os

import numpy as np
from pydicom.uid import UID

SOURCE_DATE_EPOCH = "SOURCE_DATE_EPOCH"


def creation_time() -> dt.datetime:
    """Now (UTC), or the moment ``SOURCE_DATE_EPOCH`` names; a malformed value is an error, never ignored."""
    value = os.environ.get(SOURCE_DATE_EPOCH, "").strip()
    if not value:
        return dt.datetime.now(dt.timezone.utc)
    if not value.isdigit():
        raise ValueError(f"{SOURCE_DATE_EPOCH} must be whole seconds since 1970-01-01, got {value!r}")
    return dt.datetime.fromtimestamp(int(value), dt.timezone.utc)


def content_uid(*parts: object) -> UID:
    """A UID (2.25.…) that is a hash of ``parts``: equal parts, equal UID; the parts never leak into it."""
    digest = hashlib.sha256()
    for part in parts:
        data = part if isinstance(part, bytes) else str(part).encode("utf-8")
        digest.update(len(data).to_bytes(8, "big") + data)  # length-prefixed: ("ab","c") != ("a","bc")
    # 128 bits of the hash under the 2.25 root, the form PS3.5 B.2 gives UUID-derived UIDs
    return UID(f"2.25.{int.from_bytes(digest.digest()[:16], 'big')}")


def pixel_digest(frames) -> str:
    """SHA-256 of a sequence of arrays (frames or slices), fed one at a time: a UID part for pixels without
    first copying a whole volume into one bytes object."""
    digest = hashlib.sha256()
    for frame in frames:
        digest.update(str(frame.shape).encode() + str(frame.dtype).encode())
        digest.update(memoryview(np.ascontiguousarray(frame)).cast("B"))
    return digest.hexdigest()


def stamp_creation_time(ds, when: dt.datetime) -> None:
    """Make a dataset a library built with its own clock and random UIDs (highdicom's SEG) reproducible:
    its creation dates, times and contribution date-times become ``when``, and its Dimension
    Organization UID is derived from its SOP Instance UID."""
    for prefix in ("Content", "Series", "InstanceCreation"):
        if f"{prefix}Date" in ds:
            setattr(ds, f"{prefix}Date", when.strftime("%Y%m%d"))
        if f"{prefix}Time" in ds:
            setattr(ds, f"{prefix}Time", when.strftime("%H%M%S.%f"))
    for item in ds.get("ContributingEquipmentSequence", []):
        if "ContributionDateTime" in item:
            item.ContributionDateTime = when.strftime("%Y%m%d%H%M%S.%f%z")
    organization = content_uid("dimension-organization", ds.get("SOPInstanceUID", ""))
    for keyword in ("DimensionOrganizationSequence", "DimensionIndexSequence"):
        for item in ds.get(keyword, []):
            if "DimensionOrganizationUID" in item:
                item.DimensionOrganizationUID = organization
