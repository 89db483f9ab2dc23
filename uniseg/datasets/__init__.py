"""Datasets: the generic histology layout (:class:`HistologySegDataset`) and its converters.

Importing this package registers ``HistologySegDataset`` in ``mmseg.registry.DATASETS``.
"""
from . import transforms  # noqa: F401  (registers the pipeline transforms)
from .histology import HistologySegDataset, read_meta_json
# cells as objects: registered in mmdet.registry.DATASETS, for mmdet-scoped instance configs
from .instances import HistologyInstanceDataset, read_instance_annotation

__all__ = ["HistologySegDataset", "read_meta_json"]
__all__ += ["HistologyInstanceDataset", "read_instance_annotation"]
