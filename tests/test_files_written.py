"""Nothing is written outside the folders docs/reference/files.md names: export, eval (figures), predict
(auto with --explain, ONNX Runtime, OpenVINO) and serve (a request through the app) run with HOME pointing at
an empty folder and XDG_* unset, and leave nothing there, and nothing beside the model directory but what was
asked for."""

import json
import os
import subprocess
import sys

from PIL import Image

from resnetcls.inference.sessions import TELEMETRY_ENV
from tests.export.test_formats import CLASSES, make_tiny_model_dir

# In a fresh interpreter: the runtimes' telemetry acts when they are first imported, which in the suite's own
# process may already have happened (and HOME is read once per process by some libraries).
SCRIPT = r"""
import json, sys
from pathlib import Path
from fastapi.testclient import TestClient
from resnetcls.cli import main
from resnetcls.serve.app import create_app
from resnetcls.serve.schema import ServeSettings
work = Path(sys.argv[1])
model, image = work / "model", work / "a.png"
codes = [main(["export", str(model), "--to", "onnx"]),
         main(["export", str(model), "--to", "torchscript"]),
         main(["eval", str(model), str(work / "data"), "--out", str(work / "eval")])]  # (draws figures)
codes.append(main(["predict", str(model), str(image), "--explain", str(work / "cams")]))  # auto
for backend in ("onnxruntime", "openvino"):
    codes.append(main(["predict", str(model), str(image), "--backend", backend]))
with TestClient(create_app(ServeSettings(str(model), backend="openvino"))) as client:
    upload = {"file": ("a.png", image.read_bytes(), "image/png")}
    codes.append(client.post("/predict", files=upload).status_code)
print(json.dumps(codes))
"""


def test_export_predict_and_serve_write_nothing_into_home_and_only_what_was_asked_beside_the_model(tmp_path):
    home, work = tmp_path / "home", tmp_path / "work"
    home.mkdir()
    make_tiny_model_dir(work / "model")
    Image.new("RGB", (48, 40), (200, 30, 30)).save(work / "a.png")
    for name in CLASSES:  # a labelled folder for eval, whose figures are matplotlib's
        (work / "data" / name).mkdir(parents=True)
        Image.new("RGB", (40, 40), (30, 200, 30)).save(work / "data" / name / "1.png")
    chosen = (
        "RESNETCLS_CACHE",
        "MPLCONFIGDIR",
        "ORT_DISABLE_TELEMETRY",
        TELEMETRY_ENV,
    )  # a user's own settings
    env = {k: v for k, v in os.environ.items() if not k.startswith("XDG_") and k not in chosen}
    result = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(work)],
        cwd=work,
        env={**env, "HOME": str(home)},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert json.loads(result.stdout.splitlines()[-1]) == [0] * 6 + [200]
    # The documented cache (~/.cache/resnetcls, the default without RESNETCLS_CACHE) is the one thing allowed
    # there: matplotlib's font list (eval's figures) goes into it.
    cache = home / ".cache" / "resnetcls"
    stray = [
        str(p.relative_to(home))
        for p in home.rglob("*")
        if p not in (home / ".cache", cache) and cache not in p.parents
    ]
    assert stray == [] and any((cache / "matplotlib").iterdir())
    written = sorted(
        str(p.relative_to(work))
        for p in work.rglob("*")
        if p.is_file() and p.parts[len(work.parts)] not in ("cams", "data", "eval")
    )
    assert written == [
        "a.png",
        "model/model.json",
        "model/model.onnx",
        "model/model.safetensors",
        "model/model.torchscript.pt",
    ]
    assert [p.name.endswith(".gradcam.png") for p in (work / "cams").iterdir()] == [True]  # the one overlay
    assert (work / "eval" / "metrics.json").is_file() and (work / "eval" / "confusion_matrix.png").is_file()
