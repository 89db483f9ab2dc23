# Augmentations for H&E / IHC tiles (albumentations, run by uniseg's `Albumentations` transform):
# tissue has no orientation, so all flips and right-angle rotations; small affine jitter; stain
# variation between labs and scanners through HED jitter (Tellez et al.) plus mild colour changes;
# focus variation through blur. Masks follow every geometric change and are padded with 255 (ignored).
histology_augmentation = [
    dict(type='HorizontalFlip', p=0.5),
    dict(type='VerticalFlip', p=0.5),
    dict(type='RandomRotate90', p=0.5),
    dict(type='Affine', rotate=(-15, 15), scale=(0.9, 1.1), p=0.3),
    dict(type='HEDJitter', sigma=0.05, bias=0.02, p=0.5),
    dict(type='RandomBrightnessContrast', brightness_limit=0.1, contrast_limit=0.1, p=0.3),
    dict(type='HueSaturationValue', hue_shift_limit=5, sat_shift_limit=10, val_shift_limit=0, p=0.3),
    dict(type='GaussianBlur', blur_limit=(3, 5), p=0.1),
]
