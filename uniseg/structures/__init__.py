"""Data structures shared by datasets, metrics, inference and export (numpy only, no registries)."""
from .instances import (InstanceMap, classes_from_semantic, instance_properties, keep_objects, paint_instances,
                        relabel_dense)

__all__ = ["InstanceMap", "classes_from_semantic", "instance_properties", "keep_objects", "paint_instances", "relabel_dense"]
