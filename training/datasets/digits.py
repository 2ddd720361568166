"""The embedded default dataset: scikit-learn's handwritten digits at 28x28.

scikit-learn ships the 1,797 8x8 images (values 0..16) inside its package, so
this works with no download and no data folder. Images are resized with
bilinear interpolation to MNIST's 28x28 and scaled to 0..255.
"""

from __future__ import annotations

import numpy as np

from training.datasets.base import ImageArrays, RawDataset

IMAGE_SIZE = 28


def load_digits_28() -> RawDataset:
    """All digits images as uint8 (N, 1, 28, 28) with their labels."""
    # imported here: the dataset registry (and the schemas beside it) load without torch
    import torch
    import torch.nn.functional as F
    from sklearn.datasets import load_digits

    bunch = load_digits()
    small = torch.from_numpy(bunch.images.astype(np.float32) / 16.0).unsqueeze(1)
    large = F.interpolate(
        small, size=(IMAGE_SIZE, IMAGE_SIZE), mode="bilinear", align_corners=False
    )
    images = (large.clamp(0.0, 1.0) * 255.0).round().to(torch.uint8).numpy()
    labels = bunch.target.astype(np.int64)
    return RawDataset(
        name="digits",
        classes=tuple(str(d) for d in range(10)),
        data=ImageArrays(images, labels),
    )
