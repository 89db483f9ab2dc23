"""Datasets: the generic histology layout (:class:`HistologySegDataset`) and its converters.

Importing this package registers ``HistologySegDataset`` in ``mmseg.registry.DATASETS``.
"""
from . import transforms  # noqa: F401  (registers the pipeline transforms)
from .histology import HistologySegDataset, read_meta_json

__all__ = ["HistologySegDataset", "read_meta_json"]
