"""A file that takes camera frames (`export --input uint8`) against the Predictor on validation images.

The file is exported into a temporary folder (nothing is written into the model folder), then fed each
validation image as uint8 S x S frames made two ways by a program without resnetcls: the export guide's
resize and crop (Pillow, the shorter side to the model's `resize`, then the centre S x S, as its eval does),
and a plain squash of the whole image to S x S. Each is run in ONNX Runtime and OpenVINO (fp32 and bf16),
and compared image by image with the Predictor (torch fp32): top-1 agreement and the largest |dprob|.

    python bench/uint8_input.py RUN_DIR        # a run folder with its split.csv (train writes it)
"""

from __future__ import annotations

import argparse
import csv
import json
import tempfile
from pathlib import Path

import numpy as np
import onnxruntime as ort
from PIL import Image, ImageOps

from resnetcls.export.rawinput import export_frame_model
from resnetcls.inference.predictor import Predictor
from resnetcls.inference.sessions import OpenVinoSession


def guide_frame(path: str, pre: dict) -> np.ndarray:
    """The export guide's resize and crop: the shorter side to pre["resize"], then the centre S x S."""
    size, resample = pre["image_size"], getattr(Image.Resampling, pre["interpolation"].upper())
    image = ImageOps.exif_transpose(Image.open(path)).convert("RGB")
    (w, h), short = image.size, pre["resize"]
    w, h = (short, int(short * h / w)) if w <= h else (int(short * w / h), short)
    image = image.resize((w, h), resample)
    left, top = round((w - size) / 2), round((h - size) / 2)
    return np.asarray(image.crop((left, top, left + size, top + size)), np.uint8)


def squash_frame(path: str, pre: dict) -> np.ndarray:
    """The whole image squashed to S x S (Pillow's default resampling): what a caller guessing does."""
    size = pre["image_size"]
    return np.asarray(Image.open(path).convert("RGB").resize((size, size)), np.uint8)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path, help="a run folder: best/ and split.csv")
    args = parser.parse_args()
    with open(args.run / "split.csv", newline="") as f:
        paths = [str(args.run / r["path"]) for r in csv.DictReader(f) if r["split"] == "val"]
    predictor = Predictor(args.run, backend="torch", precision="fp32", open_set="off")
    topk = len(predictor.classes)
    reference = np.array(
        [[dict(p.top)[c] for c in predictor.classes] for p in predictor.predict(paths, topk=topk)]
    )
    with tempfile.TemporaryDirectory() as tmp:
        result = export_frame_model(args.run, "onnx", Path(tmp) / "model.uint8in.onnx")
        print(result.parity.summary())
        session = ort.InferenceSession(str(result.path), providers=["CPUExecutionProvider"])
        pre = json.loads(session.get_modelmeta().custom_metadata_map["preprocess"])
        runtimes = {
            "ONNX Runtime": session,
            "OpenVINO fp32": OpenVinoSession(result.path, precision="fp32"),
            "OpenVINO bf16": OpenVinoSession(result.path, precision="bf16"),
        }
        print(f"{len(paths)} val images; frames made by | runtime | top-1 as the Predictor | max |dprob|")
        for made_by, make in (("guide resize+crop", guide_frame), ("squash", squash_frame)):
            frames = np.stack([make(p, pre) for p in paths])
            for name, runtime in runtimes.items():
                probs = runtime.run(["probabilities"], {"input": frames})[0]
                agree = int((probs.argmax(1) == reference.argmax(1)).sum())
                print(f"{made_by} | {name} | {agree}/{len(paths)} | {np.abs(probs - reference).max():.1e}")


if __name__ == "__main__":
    main()
