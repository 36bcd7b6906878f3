"""Write a NIfTI, NRRD or PNG result back in the format, header and geometry it came in."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import SimpleITK as sitk
from PIL import Image

from medgen.imaging.volume import SourceFormat, Volume


def write_like_source(volume: Volume, pixels: np.ndarray, out_dir: Path) -> list[Path]:
    """Write ``pixels`` (same shape and dtype as ``volume.pixels``) under the source's own file name."""
    if pixels.shape != volume.pixels.shape or pixels.dtype != volume.pixels.dtype:
        raise ValueError(
            f"pixels {pixels.shape} {pixels.dtype} do not match the source {volume.pixels.shape} {volume.pixels.dtype}"
        )
    out_dir.mkdir(parents=True, exist_ok=False)
    target = out_dir / volume.source_paths[0].name
    if volume.source_format is SourceFormat.PNG:
        Image.fromarray(pixels[0]).save(target)
        return [target]
    if volume.source_format not in (SourceFormat.NIFTI, SourceFormat.NRRD) or volume.itk_image is None:
        raise ValueError(f"write_like_source does not handle {volume.source_format.value} sources")
    source_image = volume.itk_image
    array = pixels[0] if source_image.GetDimension() == 2 else pixels
    image = sitk.GetImageFromArray(array, isVector=source_image.GetNumberOfComponentsPerPixel() > 1)
    image.CopyInformation(source_image)
    for key in source_image.GetMetaDataKeys():
        image.SetMetaData(key, source_image.GetMetaData(key))
    image.SetMetaData("descrip" if volume.source_format is SourceFormat.NIFTI else "MedGenSlicer", "SYNTHETIC")
    sitk.WriteImage(image, str(target), useCompression=target.name.endswith(".gz"))
    return [target]


def drop_nrrd_timestamp(path: Path) -> None:
    """Remove the "# on <date>" comment pynrrd (and so slicerio) writes into every NRRD header.

    The same segmentation must be the same bytes whenever it is written; the comment carries nothing
    a reader uses. Only the header, which ends at the first blank line, is searched.
    """
    data = Path(path).read_bytes()
    end = data.find(b"\n\n")
    header, rest = (data[:end], data[end:]) if end >= 0 else (data, b"")
    lines = header.split(b"\n")
    kept = [line for line in lines if not line.startswith(b"# on ")]
    if len(kept) == len(lines):
        return
    temporary = Path(path).with_name(Path(path).name + ".partial")
    temporary.write_bytes(b"\n".join(kept) + rest)
    temporary.replace(path)
