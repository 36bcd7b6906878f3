"""Procedural CT phantoms with known lesions, the demo model trained on them, and the quality bench.

Modules: `anatomy` (HU slices), `lesions` (types, ground truth, prompt vocabulary, shapes), `cases`
(one case and its healthy twin), `series` (DICOM CT, .seg.nrrd, DICOM SEG), `dataset` and `vocab` and
`train_base` (the demo model's recipe), `model` (where it ships), `quality` (the bench), `commands`
(the `medgen phantom ...`, `medgen bench quality` and `medgen demo` entry points). See engine/PHANTOM.md.
"""
