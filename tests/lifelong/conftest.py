"""A tiny two-task manifest shared by the lifelong end-to-end tests."""

import csv
import random

import pytest
from PIL import Image

ARGS = [
    "--model",
    "resnet18",
    "--image-size",
    "32",
    "--batch-size",
    "8",
    "--epochs",
    "1",
    "--set",
    "model.width=8",
    "--set",
    "data.num_workers=0",
    "--set",
    "train.deterministic=true",
    "--set",
    "optim.lr=0.01",
    "--tasks",
    "light",
    "--order",
    "bright,dark",
]


@pytest.fixture(scope="module")
def manifest(tmp_path_factory):
    """Two conditions (bright, dark); red and green in both, blue only in the dark task (a new class)."""
    root = tmp_path_factory.mktemp("lifelong")
    colours = {"red": (220, 30, 30), "green": (30, 200, 40), "blue": (20, 40, 220)}
    rng = random.Random(0)
    rows = [["path", "label", "split", "light"]]
    for light, scale in (("bright", 1.0), ("dark", 0.4)):
        for name, rgb in colours.items():
            if name == "blue" and light == "bright":
                continue
            for i in range(8):
                c = tuple(int(max(0, min(255, v * scale + rng.randint(-15, 15)))) for v in rgb)
                rel = f"{light}_{name}_{i}.png"
                Image.new("RGB", (36, 36), c).save(root / rel)
                rows.append([rel, name, "test" if i < 2 else "train", light])
    with open(root / "manifest.csv", "w", newline="") as f:
        csv.writer(f).writerows(rows)
    return root / "manifest.csv"
