"""Running trained or pretrained models outside the training loop: large-ROI segmentation, features."""
from .features import embed_batch, extract_features, preprocess_image, resized_shape
from .inferencer import ArraySource, ImageSource, InferenceStats, SlidingWindowInferencer

__all__ = [
    "embed_batch", "extract_features", "preprocess_image", "resized_shape",
    "ArraySource", "ImageSource", "InferenceStats", "SlidingWindowInferencer",
]
