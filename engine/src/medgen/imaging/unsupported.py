"""The written list of inputs the engine refuses, each with the reason a user reads.

A refusal carries one of these keys as ``InputError.reason``; anything else that stops a run on a
real file is a bug. The README's table "What the engine refuses" is this list (``markdown_table``).
"""

from __future__ import annotations

UNSUPPORTED: dict[str, str] = {
    "not-dicom": "A file that is neither DICOM (with or without Part-10 meta) nor NIfTI, NRRD or PNG/JPEG.",
    "damaged": "A damaged or truncated file: a header that does not parse, pixel data shorter than its "
    "header says, a compressed stream that does not decode.",
    "not-an-image": "A DICOM object without pixel data: structured reports, RT Plan/Structure Set, "
    "waveforms, DICOMDIR, presentation states and similar.",
    "segmentation-as-input": "A segmentation (DICOM SEG, Label Map, .seg.nrrd) passed as the image; pass it as the mask.",
    "float-pixels": "Float or double pixel data (parametric maps).",
    "palette-colour": "PALETTE COLOR images (convert to grayscale or RGB first).",
    "photometric": "Photometric interpretations other than MONOCHROME1, MONOCHROME2, RGB and YBR "
    "(decoded to RGB).",
    "bits-allocated": "Bits Allocated other than 8, 16 or 32 (for example 1-bit or 64-bit pixels).",
    "codec": "Pixel data in a transfer syntax no installed decoder reads (for example 12-bit JPEG Extended "
    "without a plugin for it).",
    "missing-uid": "A DICOM source without SOP Class, SOP Instance or Study Instance UID (a derived "
    "instance must reference its source).",
    "not-one-volume": "Slices that are not one volume: several series in a folder, slices sharing a position "
    "(multi-echo, dynamic), different orientations, slices of different sizes, multi-frame mixed with "
    "single-frame files.",
    "rescale": "A Rescale Slope of 0 (stored values cannot be mapped to modality values).",
    "too-large": "An image over the stated size limits (side, frames, voxels; see medgen.imaging.limits), "
    "checked from the header before decoding.",
    "dimensions": "NIfTI/NRRD images of other than 2 or 3 dimensions, or other than 1 or 3 components.",
    "seg-source": "--seg on a source that a DICOM SEG cannot reference (non-DICOM input, or images "
    "whose geometry highdicom cannot describe); refused before generation.",
    "special-file": "A FIFO, device or socket given as input or mask (never opened).",
    "unchanged": "A run in which no voxel changed (a blank image, a mask outside the body): nothing is "
    "written unless --allow-unchanged.",
}


def markdown_table() -> str:
    """The list as the README's table."""
    lines = ["| reason | what is refused |", "| --- | --- |"]
    lines += [f"| `{key}` | {text} |" for key, text in UNSUPPORTED.items()]
    return "\n".join(lines)
