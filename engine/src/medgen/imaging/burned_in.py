"""A simple detector of burned-in text (patient names, dates, probe settings) on US, SC and OT images.

Such images often carry identifying text in their pixels without saying so in Burned In Annotation
(0028,0301). The synthetic copy keeps those pixels, so it must say YES. The detector looks for what
text looks like: many small, thin, bright marks on a dark background, lined up in rows. It is a
screen, not OCR; it errs on the side of finding text.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

# Modalities whose images commonly carry burned-in annotation
SCREENED_MODALITIES = ("US", "SC", "OT", "XC", "ES", "GM", "SM")
_BRIGHT = 0.75  # fraction of the image's range above its floor: a text stroke
_DARK = 0.12  # ...and below: the background around it
_MIN_MARKS = 6  # glyph-sized marks needed, in one band of rows, to call it text


def _luma(image: np.ndarray) -> np.ndarray:
    values = image.astype(np.float64)
    if values.ndim == 3:
        values = values @ np.array([0.299, 0.587, 0.114])[: values.shape[-1]]
    return values


def has_burned_in_text(image: np.ndarray) -> bool:
    """True when one slice (rows, columns[, samples]) shows rows of small bright marks on a dark background."""
    values = _luma(image)
    low, high = float(values.min()), float(values.max())
    if high - low <= 0:
        return False
    scaled = (values - low) / (high - low)
    bright = scaled >= _BRIGHT
    dark_share = ndimage.uniform_filter((scaled <= _DARK).astype(np.float64), size=7)
    strokes = bright & (dark_share >= 0.4)  # bright pixels mostly surrounded by background: thin strokes
    labels, count = ndimage.label(ndimage.binary_dilation(strokes, iterations=1))
    if count < _MIN_MARKS:
        return False
    rows_of_marks = []
    for found in ndimage.find_objects(labels):
        height, width = found[0].stop - found[0].start, found[1].stop - found[1].start
        if 4 <= height <= 48 and 1 <= width <= 48:  # glyph-sized
            rows_of_marks.append((found[0].start + found[0].stop) // 2)
    if len(rows_of_marks) < _MIN_MARKS:
        return False
    # text runs along lines: enough marks whose centres fall within one glyph height of each other
    centres = np.sort(np.array(rows_of_marks))
    window = 12
    best = max(int(np.searchsorted(centres, c + window) - np.searchsorted(centres, c - window)) for c in centres)
    return best >= _MIN_MARKS
