"""Fixtures of the data tests: a handful of awkward real image files."""

import numpy as np
import pytest
from PIL import Image

from resnetcls.data.sources import Samples


@pytest.fixture
def photos(tmp_path):
    """Smooth random images of different sizes and aspect ratios, one broken file, one 1x1 image."""
    rng = np.random.default_rng(0)
    paths = []
    for i, (w, h) in enumerate([(97, 61), (50, 80), (64, 64), (300, 200), (41, 41), (1, 1)]):
        paths.append(str(tmp_path / f"{i}.png"))
        blobs = Image.fromarray(rng.integers(0, 256, (4, 4, 3), dtype=np.uint8))
        blobs.resize((w, h), Image.Resampling.BICUBIC).save(paths[-1])
    (tmp_path / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really")
    paths.insert(2, str(tmp_path / "broken.jpg"))
    return Samples(paths, [i % 2 for i in range(len(paths))], ["a", "b"])
