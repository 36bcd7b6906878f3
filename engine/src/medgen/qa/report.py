"""`medgen report`: one self-contained HTML file that shows what a run did, for a reader to judge.

Every image is embedded as a data: URI and the page's script is inline, so the file opens from disk,
from a mail or a ticket attachment, with no network. Slices hold modality values (HU for CT) packed
losslessly into WebP (PNG where Pillow has no WebP); the script windows them for each preset, so one
image serves every window. What a reader judges, the crop around the mask, is embedded at full
resolution for the source and each variant; the full slice, there for orientation, once per slice at
most 256 pixels wide. So a 300-slice, 4-variant run of 512 x 512 CT makes a report of about 26 MB,
where a full slice per image made 535 (`medgen bench report` measures it).
"""

from __future__ import annotations

import html
import json
import logging
import math
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from medgen.errors import OutputError
from medgen.imaging.crop import mask_crop_box, resize_image, resize_mask
from medgen.imaging.intensity import CT_PRESETS, IntensityMap, modality_gray, recognise_modality
from medgen.imaging.crop_index import COPY_THRESHOLD, CropIndex
from medgen.qa.images import (
    ValueCoding,
    block_mean,
    difference_rgb,
    downscale_factor,
    lossless_data_uri,
    outline_rgba,
    png_data_uri,
    radiological_view,
    square_box,
)
from medgen.qa.metrics import VariantFigures, source_figures, variant_figures
from medgen.qa.run import RunData, load_run

logger = logging.getLogger(__name__)

REPORT_FILENAME = "report.html"
REPORT_PRESETS = ("soft_tissue", "liver", "lung", "bone", "brain")
TEMPLATE = Path(__file__).with_name("report_template.html")
CONTEXT_PIXELS = 256
"""The long side of the full slice shown for orientation, at most (a whole-factor block mean: 512 -> 256).
The crop around the mask, where the lesion is judged, keeps every pixel."""


@dataclass
class MemorizationRow:
    variant: str
    slice: int
    generated_uri: str
    nearest_uri: str
    similarity: float
    record: dict
    index_folder: str

    @property
    def flagged(self) -> bool:
        return self.similarity >= COPY_THRESHOLD


def write_report(run_dir: str | Path, out: str | Path | None = None, *, source: str | Path | None = None,
                 mask: str | Path | None = None, real_manifest: str | Path | None = None,
                 detect_seeds: int = 5) -> Path:
    """Read the run, build the page, write it atomically (``out`` defaults to RUN_DIR/report.html);
    with ``real_manifest``, the page gives the run's detectability against those real lesions."""
    run = load_run(run_dir, source=source, mask=mask)
    detectability = None
    if real_manifest is not None:
        from medgen.qa.detectability import run_detectability

        detectability = run_detectability(run, real_manifest, seeds=detect_seeds)
    page = build_report_html(run, detectability)
    return _write_atomically(Path(out) if out is not None else Path(run_dir) / REPORT_FILENAME, page)


def write_job_report(result_dir: str | Path, *, source: str | Path, mask: str | Path, out: str | Path) -> Path:
    """The report of a finished server job, from its published results and its uploaded inputs."""
    from medgen.qa.run import load_job_results

    with tempfile.TemporaryDirectory(prefix="medgen-report-") as scratch:
        run = load_job_results(result_dir, source=source, mask=mask, scratch=scratch)
        page = build_report_html(run)
    return _write_atomically(Path(out), page)


def _write_atomically(out: Path, page: str) -> Path:
    if out.is_dir():
        raise OutputError(out, "is a folder; give a file name such as report.html")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(page)
        os.replace(tmp, out)
    except OSError as exc:
        raise OutputError(out, f"cannot write the report: {exc.strerror or exc}") from None
    return out


def build_report_html(run: RunData, detectability: dict | None = None) -> str:
    # 1. The slices as windowable images, in radiological orientation
    view = radiological_view(run.source.ijk_to_lps)
    slice_data, coding, grid = _slice_images(run, view)
    # 2. The numbers per variant, the marks in the written files, the memorization check
    figures = [source_figures(run)] + [variant_figures(run, v) for v in run.variants]
    memorization, indexes = _memorization_rows(run)
    # 3. Fill the template
    modality, _ = recognise_modality(run.source)  # a NIfTI in HU counts as CT
    presets = {"run": [run.window.center, run.window.width]}
    if modality == "CT":
        presets.update({name: [CT_PRESETS[name].center, CT_PRESETS[name].width] for name in REPORT_PRESETS})
    lower = min(float(np.min(modality_gray(run.source, k))) for k in run.slices)
    upper = max(float(np.max(modality_gray(run.source, k))) for k in run.slices)
    presets["full range"] = [(lower + upper) / 2, max(upper - lower, 1e-6)]
    data = {
        "coding": {"offset": coding.offset, "scale": coding.scale},
        "presets": presets,
        "unit": "HU" if modality == "CT" else "",
        "edges": view.edges,
        "panels": ["source"] + [v.name for v in run.variants],
        **grid,
        "slices": slice_data,
    }
    parameters = run.parameters
    replacements = {
        "TITLE": html.escape(f"MedGenSlicer run report: {run.run_dir.name}"),
        "SUMMARY": _summary_html(run, detectability),
        "FIGURES": _figures_html(figures, data["unit"]),
        "MARKS": _marks_html(figures[1:]),
        "MEMORIZATION": _memorization_html(memorization, indexes),
        "PROVENANCE": html.escape(json.dumps(run.provenance, indent=2, sort_keys=True)),
        "DATA": json.dumps(data).replace("</", "<\\/"),
        "PROMPT": html.escape(str(parameters.get("prompt", ""))),
    }
    page = TEMPLATE.read_text(encoding="utf-8")
    for key, value in replacements.items():
        page = page.replace("{{" + key + "}}", value)
    return page


def _modality_images(run: RunData, k: int, view) -> list[np.ndarray]:
    """Slice k of the source and of each variant in modality units, as displayed."""
    return [view.apply(modality_gray(run.source, k))] + [view.apply(v.modality_slice(k, run.source))
                                                        for v in run.variants]


def _slice_images(run: RunData, view) -> tuple[list[dict], ValueCoding, dict]:
    """Per inpainted slice: the source's full slice for orientation (reduced to CONTEXT_PIXELS, shared
    by the variants), the crop around the mask of the source and each variant at full resolution, the
    mask's outline in that crop. A variant that changed anything outside the crop (the engine never
    does; the figures flag it) also gets its own full slice and those changes as a difference map.
    The difference maps in the crop are drawn by the page from the exact values of the crops."""
    # 1. One pass for the coding and each variant's difference scale, a slice at a time: a 300-slice
    #    run never holds more than one slice's images
    lower, upper, integers = math.inf, -math.inf, True
    limits = [1.0] * len(run.variants)
    shape = view.apply(np.zeros(run.source.shape2d, bool)).shape
    for k in run.slices:
        images = _modality_images(run, k, view)
        lower = min([lower] + [float(i.min()) for i in images])
        upper = max([upper] + [float(i.max()) for i in images])
        integers = integers and all(np.array_equal(i, np.round(i)) for i in images)
        allowed = view.apply(run.allowed[k])
        for v, image in enumerate(images[1:]):
            if allowed.any():
                limits[v] = max(limits[v], float(np.abs(image - images[0])[allowed].max()))
    coding = ValueCoding.for_range(lower, upper, integers=integers)
    factor = downscale_factor(shape, CONTEXT_PIXELS)

    # 2. Encode slice by slice
    slice_data = []
    for k in run.slices:
        source, *variants = _modality_images(run, k, view)
        allowed = view.apply(run.allowed[k])
        box = square_box(allowed)
        crop = np.s_[box[0]:box[1], box[2]:box[3]]
        outside_crop = np.ones(source.shape, bool)
        outside_crop[crop] = False
        changed_outside = [bool(np.any((variant != source) & outside_crop)) for variant in variants]
        slice_data.append({
            "k": k,
            "crop": box,
            "images": [lossless_data_uri(coding.encode(block_mean(source, factor)))] + [
                lossless_data_uri(coding.encode(block_mean(variant, factor))) if changed else None
                for variant, changed in zip(variants, changed_outside)
            ],
            "crops": [lossless_data_uri(coding.encode(source[crop]))] + [
                lossless_data_uri(coding.encode_changes(variant[crop], source[crop])) for variant in variants
            ],
            "outline": png_data_uri(outline_rgba(view.apply(run.mask[k]))[crop]),
            "diffs": [
                {"limit": limits[v],
                 "outside": png_data_uri(difference_rgb(np.where(outside_crop, variant - source, 0.0), limits[v]))
                 if changed_outside[v] else None}
                for v, variant in enumerate(variants)
            ],
        })
    return slice_data, coding, {"size": list(shape), "scale": factor}


def _index_folders(run: RunData) -> list[Path]:
    folders = []
    for adapter in run.engine_record.get("adapters", []):
        path = Path(adapter.get("path", ""))
        folders.append(path if path.is_dir() else path.parent)
    model = Path(run.engine_record.get("model", {}).get("path", ""))
    folders.append(model if model.is_dir() else model.parent)
    return folders


def _memorization_rows(run: RunData) -> tuple[list[MemorizationRow], list[CropIndex]]:
    """Each generated lesion (variant x slice) against the nearest crop of every training-crop index."""
    indexes = [i for i in (CropIndex.find(f) for f in _index_folders(run)) if i is not None and len(i.records)]
    rows: list[MemorizationRow] = []
    if not indexes:
        return rows, indexes
    from medgen.imaging.crop_index import crop_thumbnail

    resolution = int(run.parameters.get("resolution") or 64)
    padding = int(run.parameters.get("crop_padding_px") or 16)
    for variant in run.variants:
        intensity = IntensityMap(variant.volume, run.window)
        for k in run.slices:
            if not run.mask[k].any() or k not in variant.slice_of_source:
                continue
            box = mask_crop_box(run.mask[k], padding)
            model_space = intensity.to_model(variant.slice_of_source[k])
            crop = np.clip(resize_image(model_space[box.slices], (resolution, resolution)), -1, 1)
            lesion = resize_mask(run.mask[k][box.slices], (resolution, resolution))
            best = max(((index, *index.nearest(crop, lesion)) for index in indexes), key=lambda t: t[2])
            index, position, similarity = best
            rows.append(MemorizationRow(
                variant=variant.name, slice=k,
                generated_uri=png_data_uri(crop_thumbnail(crop)),
                nearest_uri=png_data_uri(index.thumbnails[position]),
                similarity=similarity, record=index.records[position], index_folder=str(index.folder),
            ))
    return rows, indexes


def _number(value: float, digits: int = 1) -> str:
    return "n/a" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.{digits}f}"


def _summary_html(run: RunData, detectability: dict | None = None) -> str:
    p, model = run.parameters, run.engine_record.get("model", {})
    rows = [
        ("prompt", p.get("prompt")),
        ("negative prompt", p.get("negative_prompt") or "none"),
        ("model", f"{model.get('name')} (sha256 {str(model.get('sha256', ''))[:16]}...)"),
        ("adapters", ", ".join(f"{Path(a['path']).name} ({a.get('kind', 'adapter')})"
                               for a in run.engine_record.get("adapters", [])) or "none"),
        ("source", f"{run.source_path} ({recognise_modality(run.source)[0]}, {run.source.num_slices} slice(s), "
                   f"{run.source.shape2d[0]} x {run.source.shape2d[1]})"),
        ("mask", str(run.mask_path)),
        ("inpainted slices", ", ".join(str(k) for k in run.slices)),
        ("variants", ", ".join(f"{v.name} (seed {v.seed})" for v in run.variants)),
        ("steps / guidance / strength", f"{p.get('num_inference_steps')} / {p.get('guidance_scale')} / "
                                        f"{p.get('strength')}"),
        ("window of the run", f"center {run.window.center:g}, width {run.window.width:g}"),
        ("written", run.engine_record.get("created_utc", "")),
    ]
    if detectability is not None:
        d = detectability
        rows.append(("detectability", f"classifier AUC {_number(d['auc'], 3)} [{_number(d['low'], 3)}, "
                     f"{_number(d['high'], 3)}], real vs these variants ({d['synthetic_crops']} crops) against "
                     f"{d['real_crops']} real crops of {Path(d['manifest']).name}, {d['seeds']} seeds; 0.5: no "
                     "learnable cue, 1.0: every lesion obvious"))
    return "\n".join(f"<tr><th>{html.escape(a)}</th><td>{html.escape(str(b))}</td></tr>" for a, b in rows)


def _figures_html(figures: list[VariantFigures], unit: str) -> str:
    extra_names = sorted({name for f in figures for name in f.extra})
    head = ["", f"inside mask mean {unit}", "std", f"surrounding mean {unit}", "std", "contrast",
            "outside-mask identity"] + extra_names
    lines = ["<tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in head) + "</tr>"]
    for f in figures:
        identity = "—" if f.name == "source" else (
            f"{f.outside_identity:.4%} ({f.outside_total - f.outside_identical} changed of {f.outside_total})")
        cells = [f.name, _number(f.inside.mean), _number(f.inside.std), _number(f.surrounding.mean),
                 _number(f.surrounding.std), _number(f.contrast), identity]
        cells += [_number(f.extra.get(name), 3) for name in extra_names]
        css = ' class="bad"' if f.name != "source" and f.outside_identity < 1.0 else ""
        lines.append(f"<tr{css}>" + "".join(f"<td>{html.escape(c)}</td>" for c in cells) + "</tr>")
    if not extra_names:
        lines.append(f'<tr><td colspan="{len(head)}" class="note">noise and seam figures: not available in this '
                     "engine version (metrics.noise_and_seam_figures)</td></tr>")
    else:
        lines.append(f'<tr><td colspan="{len(head)}" class="note">noise std ratio: high-pass noise inside the mask '
                     "over the surrounding tissue's; seam strength ratio: gradient across the pasted border over the "
                     "next band out; 1 = same texture (median over slices)</td></tr>")
    return "\n".join(lines)


def _marks_html(figures: list[VariantFigures]) -> str:
    parts = []
    for f in figures:
        if not f.marks:
            parts.append(f"<p><b>{html.escape(f.name)}</b>: {html.escape(f.marks_note)}</p>")
            continue
        rows = "".join(
            f'<tr class="{"ok" if m.passed == m.files else "bad"}"><td>{html.escape(m.check)}</td>'
            f"<td>{m.passed} / {m.files}</td><td>{html.escape(m.problem)}</td></tr>"
            for m in f.marks
        )
        parts.append(f"<h3>{html.escape(f.name)}: {html.escape(f.marks_note)}</h3>"
                     f"<table><tr><th>check</th><th>files passing</th><th>first problem</th></tr>{rows}</table>")
    return "\n".join(parts)


def _memorization_html(rows: list[MemorizationRow], indexes: list[CropIndex]) -> str:
    if not indexes:
        return ("<p>No training-crop index (training-crops.json) in the model or adapter folders: memorization "
                "was not checked. Adapters trained with <code>medgen train</code> write one.</p>")
    total = sum(len(i.records) for i in indexes)
    flagged = sum(r.flagged for r in rows)
    lines = [f"<p>{total} training crop(s) in {len(indexes)} index(es). Similarity is the cosine of 32 x 32 "
             f"embeddings of the lesion's content (the crop under the mask, mean-centred); at or above <b>{COPY_THRESHOLD}</b> a lesion is flagged as a possible "
             f"copy. <b>{flagged}</b> of {len(rows)} generated lesion(s) flagged.</p>",
             "<table><tr><th>variant</th><th>slice</th><th>generated</th><th>nearest training crop</th>"
             "<th>similarity</th><th>training file, slice, crop box</th></tr>"]
    for r in rows:
        record = f"{r.record.get('file')}, slice {r.record.get('slice')}, box {r.record.get('crop_box')}"
        verdict = "possible copy" if r.flagged else "distinct"
        lines.append(
            f'<tr class="{"bad" if r.flagged else "ok"}"><td>{html.escape(r.variant)}</td><td>{r.slice}</td>'
            f'<td><img class="thumb" src="{r.generated_uri}" alt="generated lesion"></td>'
            f'<td><img class="thumb" src="{r.nearest_uri}" alt="nearest training crop"></td>'
            f"<td>{r.similarity:.3f} ({verdict})</td><td>{html.escape(record)}</td></tr>")
    lines.append("</table>")
    return "\n".join(lines)


def cached_job_report(result_dir: str | Path, inputs: tuple[Path, Path] | None) -> Path | None:
    """RESULT_DIR/report.html of a finished server job: built on the first request while the job's
    uploaded (source, mask) are kept, then served as is; None when it was never built and the inputs
    are gone."""
    path = Path(result_dir) / REPORT_FILENAME
    if path.is_file():
        return path
    if inputs is None:
        return None
    return write_job_report(result_dir, source=inputs[0], mask=inputs[1], out=path)
