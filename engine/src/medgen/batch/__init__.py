"""Batch augmentation of whole datasets: a manifest of inpainting requests in, one folder per row and an
index out, on this machine (one process keeps the model loaded) or on a Ray cluster.

Modules, in the order a run uses them: ``manifest`` (read and check every row), ``output`` (the output
folder: lock, what is finished, leftovers), ``worker`` (one row through :class:`medgen.api.Inpainter`),
``local`` and ``ray_runner`` (hand rows to workers, retry), ``index`` (index.jsonl, Parquet,
failed.jsonl), ``progress`` and ``run`` (the whole run). Importing this package loads no torch.
"""
