"""MedGenSlicer engine: inpaint pathology into real scans and write it back as clearly synthetic DICOM."""

__version__ = "0.1.0"

from medgen.errors import InputError, MedgenError  # noqa: E402

__all__ = ["__version__", "InputError", "MedgenError", "inpaint", "Inpainter"]


def __getattr__(name):
    # The inpainting API imports torch and diffusers; load it only when asked for so that
    # `import medgen.imaging` stays light.
    if name in ("inpaint", "Inpainter", "InpaintRequest", "InpaintResult"):
        from medgen import api

        return getattr(api, name)
    raise AttributeError(f"module 'medgen' has no attribute {name!r}")
