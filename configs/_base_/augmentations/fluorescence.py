# Augmentations for fluorescence nuclei (data/nuclei: grey stain intensity copied to R, G, B): the geometric
# part of histology.py (no orientation, small affine jitter) and intensity changes; no stain or hue jitter,
# which would invent colours a fluorescence channel does not have. Label maps follow every geometric change
# and are padded with 255 (ignored; never an object).
fluorescence_augmentation = [
    dict(type='HorizontalFlip', p=0.5),
    dict(type='VerticalFlip', p=0.5),
    dict(type='RandomRotate90', p=0.5),
    dict(type='Affine', rotate=(-15, 15), scale=(0.9, 1.1), p=0.3),
    dict(type='RandomBrightnessContrast', brightness_limit=0.1, contrast_limit=0.1, p=0.3),
    dict(type='GaussianBlur', blur_limit=(3, 5), p=0.1),
]
