"""Generated crops back into stored values: the lesion's signal, one 3D object across slices, with the
source's own noise texture; outside the dilated mask the source is kept bit for bit.

Steps per variant:
1. each crop is resized back to its box and reduced to its low-pass signal (`noise.generated_signal`);
2. with ``slice_consistency``, the signals are smoothed along the slice axis (`slice_consistency`);
3. with ``match_noise``, the signal is made to meet the source's brightness at the border
   (`seam.harmonize_border`, unless ``seam_harmonize`` is False), the source's noise std and NPS
   around the mask are measured and the region gets noise of that texture (`noise.retexture`), shared
   between adjacent slices as much as the source's own noise is (an AR(1) chain along the slice
   axis); without it, the crop is blended as is; with ``edge_match`` (between the border and the
   noise), the lesion's border is blurred to the source's measured edge spread (`edge_spread`);
   before step 3, with a ``calibration_target``, the lesion's contrast is scaled, one factor for all
   slices, to the prompted type's measured mean (`calibration`);
4. model space → stored values (`IntensityMap.from_model`), and the outside is re-checked unchanged;
5. the noise and seam figures (`imaging.texture.measure_texture`) of every slice, on the output, and
   the lesion as drawn (`drawn_label`): where the output departs from the source beyond the noise.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from medgen.generate.calibration import calibrate_lesion
from medgen.generate.drawn_label import drawn_lesion_mask, drawn_label_figures
from medgen.generate.edge_spread import has_room, match_edge_spread
from medgen.generate.noise import (
    generated_signal,
    measure_noise_texture,
    retexture,
    slice_noise_correlation,
    synthesize_noise,
)
from medgen.generate.seam import harmonize_border, harmonize_membrane
from medgen.generate.slice_consistency import smooth_along_slices
from medgen.imaging.crop import paste_generated, resize_image
from medgen.imaging.intensity import IntensityMap, modality_gray
from medgen.imaging.texture import NOISE_MEDIAN_PX, TextureFigures, measure_texture, median_figures, surround_ring
from medgen.imaging.volume import Volume


@dataclass
class ComposedVariant:
    """One variant's stored values and its texture figures (per slice and their median)."""

    pixels: np.ndarray
    slice_figures: list[TextureFigures]
    noise: list[dict]
    drawn: dict[int, np.ndarray]  # slice index -> the lesion as drawn (the label of a training pair)
    requested: dict[int, np.ndarray]  # slice index -> the request's mask on that slice

    @property
    def label_figures(self) -> dict:
        """Drawn and requested voxels and their Dice (provenance, batch index)."""
        return drawn_label_figures(self.drawn, self.requested)

    @property
    def figures(self) -> TextureFigures:
        return median_figures(self.slice_figures)

    def to_json(self) -> dict:
        return {
            **self.figures.to_json(),
            "slices": [f.to_json() for f in self.slice_figures],
            "source_noise": self.noise,
        }


def compose_variant(
    volume: Volume,
    intensity: IntensityMap,
    jobs: list,
    generated: np.ndarray,
    *,
    seed: int,
    match_noise: bool = True,
    slice_consistency: bool = False,
    seam_harmonize: bool = True,
    edge_match: bool = True,
    calibration_target: float | None = None,
    trust_model_texture: bool = True,
) -> ComposedVariant:
    """Stored values of one variant; ``jobs`` carry index, source_model, mask, dilated, weights, box;
    ``generated`` holds one model-space crop per job at the model's resolution. ``trust_model_texture``
    False trusts the generated image less: all of its fine texture is dropped and its border is made to
    meet the source by `seam.harmonize_membrane`. That is for a model forced onto another modality, and
    for a modality reached through an adapter on weights trained on another (the demo model's MR and CR
    adapters teach those images' contrast; their fine texture is still the phantom's).
    """
    # 1. Back to each box; the generated signal in full-slice arrays
    crops_back = [resize_image(crop, job.box.shape) for job, crop in zip(jobs, generated)]
    signals = []
    for job, crop_back in zip(jobs, crops_back):
        full = np.asarray(job.source_model, dtype=np.float64).copy()
        full[job.box.slices] = (
            generated_signal(crop_back, median_px=3 if trust_model_texture else NOISE_MEDIAN_PX) if match_noise else crop_back
        )
        signals.append(full)

    # 2. One 3D object: smooth the signal along the slice axis
    if slice_consistency and len(jobs) > 1:
        signals = smooth_along_slices(
            [job.index for job in jobs], signals, [job.weights for job in jobs], float(volume.spacing[0])
        )

    # 2b. One attenuation for the lesion: its contrast scaled to the prompted type's measured mean
    needs_background = edge_match or calibration_target is not None
    backgrounds = [generated_signal(job.source_model) for job in jobs] if needs_background else None
    if calibration_target is not None:
        signals = calibrate_lesion(signals, backgrounds, [job.mask for job in jobs],
                                   [job.weights > 0 for job in jobs], calibration_target)

    # 3. Blend, with the source's noise texture; the noise of adjacent slices correlated like the source's
    pixels = volume.pixels.copy()
    slice_figures, noise_records, drawn = [], [], {}
    union = _union_box(jobs)
    rho = _slice_correlation(volume, intensity, jobs) if match_noise else 0.0
    previous_index, previous_noise = None, None
    for n, (job, signal) in enumerate(zip(jobs, signals)):
        if match_noise:
            if seam_harmonize and trust_model_texture:
                signal = harmonize_border(job.source_model, signal, job.mask, job.dilated, job.box.slices)
            elif seam_harmonize:
                signal = harmonize_membrane(job.source_model, signal, job.mask, job.dilated)
        if edge_match and job.edge is not None:
            signal = match_edge_spread(signal, backgrounds[n], job.mask, job.edge, job.weights > 0)
        if match_noise:
            unclipped = intensity.to_model_array(volume.pixels[job.index], job.index, clip=False)
            texture = measure_noise_texture(unclipped, job.mask, job.dilated)
            rng = np.random.default_rng([int(seed), int(job.index)])
            fresh = synthesize_noise(texture, (union[0].stop - union[0].start, union[1].stop - union[1].start), rng)
            shared = previous_noise is not None and previous_index == job.index - 1
            field = rho * previous_noise + np.sqrt(1.0 - rho**2) * fresh if shared else fresh
            previous_index, previous_noise = job.index, field
            inner = (
                slice(job.box.row0 - union[0].start, job.box.row1 - union[0].start),
                slice(job.box.col0 - union[1].start, job.box.col1 - union[1].start),
            )
            # a lesion calibrated beyond the window (a calcification above soft tissue) keeps its values
            reach = np.where(np.abs(signal) > 1.0, signal + np.sign(signal) * 6.0 * texture.std, unclipped)
            blended = retexture(
                job.source_model, signal[job.box.slices], job.weights, texture, rng, job.box.slices, reach,
                noise=field[inner],
            )
            noise_records.append({"slice": job.index, **texture.describe(), "slice_correlation": round(rho, 4),
                                  **(job.edge.describe() if job.edge is not None else {}),
                                  "edge_matched": bool(edge_match and has_room(job.mask, job.weights > 0, job.edge))})
        else:
            blended = paste_generated(job.source_model, signal[job.box.slices], job.box, job.weights)

        # 4. Stored values; the outside must not have moved
        source_stored = volume.pixels[job.index]
        converted = intensity.from_model(blended, job.index, source_stored, clip=not match_noise)
        keep = job.weights > 0
        if converted.ndim == 3:  # colour: one decision per pixel for all samples
            keep = keep[..., None]
        pixels[job.index] = np.where(keep, converted, source_stored)
        outside = ~job.dilated
        if not np.array_equal(pixels[job.index][outside], source_stored[outside]):
            raise RuntimeError(f"slice {job.index}: paste-back changed pixels outside the dilated mask")

        # 5. The figures a reader's eye would judge, in modality units
        output = modality_gray(volume, job.index, pixels[job.index])
        slice_figures.append(measure_texture(output, job.mask, job.dilated))
        drawn[job.index] = drawn_lesion_mask(modality_gray(volume, job.index), output, job.mask, job.dilated)
    return ComposedVariant(pixels, slice_figures, noise_records, drawn, {job.index: job.mask for job in jobs})


def _union_box(jobs: list) -> tuple[slice, slice]:
    """The smallest box holding every job's crop box: one noise field covers all slices."""
    return (
        slice(min(j.box.row0 for j in jobs), max(j.box.row1 for j in jobs)),
        slice(min(j.box.col0 for j in jobs), max(j.box.col1 for j in jobs)),
    )


def _slice_correlation(volume: Volume, intensity: IntensityMap, jobs: list) -> float:
    """Median correlation of the source's noise between each inpainted slice and the next one, in the
    tissue ring around the mask (0 for a single slice)."""
    values = []
    for job in jobs:
        neighbour = job.index + 1 if job.index + 1 < volume.num_slices else job.index - 1
        if neighbour < 0 or neighbour == job.index:
            continue
        ring = surround_ring(job.mask, job.dilated)
        values.append(
            slice_noise_correlation(
                intensity.to_model_array(volume.pixels[job.index], job.index, clip=False),
                intensity.to_model_array(volume.pixels[neighbour], neighbour, clip=False),
                ring,
            )
        )
    return float(np.median(values)) if values else 0.0
