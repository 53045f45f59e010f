"""The ONNX form of a model directory and the runtimes that run it (ONNX Runtime, OpenVINO), shared by
export/formats.py (which writes and checks model.onnx) and inference/predictor.py (whose onnxruntime and
openvino backends run it): predict must not import the export command, so what both need lives here.

An exported model takes float32 (N, 3, S, S) RGB images, preprocessed as recorded in `preprocess` (which
travels in the file's metadata with the class names), and gives `logits` (raw) and `probabilities`
(softmax(logits / T), T model.json's calibration temperature, also in the metadata; a multi-label model's:
sigmoid(logits), its thresholds' record in the metadata key "multi_label"); a model with an open-set score
gives a third output, `open_set_score` (utils/openset.py: higher = more like a known class), its record
(threshold, accept, quantiles) in the metadata key "open_set". A file in the model directory is run only
when model.json records its sha256 and the file still has it (modelfile.record_export), and only while it
was exported from the same weights, temperature, multi-label and open-set records.

Both runtimes' telemetry (ONNX Runtime's device id under ~/.cache/Microsoft, OpenVINO's client id under
~/intel and its usage events) is off before either is imported unless RESNETCLS_RUNTIME_TELEMETRY=1.
"""

from __future__ import annotations

import functools
import json
import os
import sys
import threading
import types
import warnings

import numpy as np
import torch
from torch import nn

from ..errors import UserError
from ..records.modelfile import WEIGHTS, LoadedModel, check_export_hash, temperature_of
from ..utils.hardware import cpu_has_fast_bf16
from ..utils.openset import OpenSetScorer
from .multilabel import export_fields, head_probabilities

ONNX_FILE = "model.onnx"  # inside a model directory, where predict and serve look for it
INT8_FILE = "model.int8.onnx"  # the int8 form (export/int8.py), for the -int8 backends
RUNTIMES = ("onnxruntime", "openvino")
RUNTIME_NAMES = {"onnxruntime": "ONNX Runtime", "openvino": "OpenVINO"}
OUTPUTS = ("logits", "probabilities")
OPEN_SET_OUTPUT = "open_set_score"  # the third output, of a model with an open-set score
TELEMETRY_ENV = "RESNETCLS_RUNTIME_TELEMETRY"  # "1": leave the runtimes' telemetry as their makers ship it


def runtime_telemetry_off(openvino: bool = False) -> None:
    """Turn ONNX Runtime's (with openvino=True also OpenVINO's) telemetry off unless
    RESNETCLS_RUNTIME_TELEMETRY=1; call it before importing the runtime. ONNX Runtime reads
    ORT_DISABLE_TELEMETRY at import (a value the user set is kept). OpenVINO's events come from its optional
    openvino_telemetry package: hidden during `import openvino`, OpenVINO binds its own no-op stub, and the
    package stays importable afterwards."""
    if os.environ.get(TELEMETRY_ENV) == "1":
        return
    os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")
    if not openvino or "openvino" in sys.modules:
        return
    previous = sys.modules.get("openvino_telemetry")
    sys.modules["openvino_telemetry"] = None  # `import openvino_telemetry` raises ImportError
    try:
        import openvino  # noqa: F401
    except ImportError:
        pass  # not installed: the caller's own import says so
    finally:
        if previous is None:
            del sys.modules["openvino_telemetry"]
        else:
            sys.modules["openvino_telemetry"] = previous


class ProbabilityHead(nn.Module):
    """The classifier plus its probabilities, so exported files need no extra code: (raw logits,
    softmax(logits / temperature)), or sigmoid(logits) for a multi-label model (sigmoid True). With an
    open-set scorer, a third output: its score of the pooled features and the raw logits (graph constants)."""

    def __init__(
        self, model: nn.Module, temperature: float = 1.0, scorer: OpenSetScorer | None = None, sigmoid=False
    ) -> None:
        super().__init__()
        self.model, self.scorer, self.sigmoid = model, scorer, sigmoid
        self.temperature = float(temperature)  # a constant in the traced graph

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        if self.scorer is None:
            logits = self.model(x)
            return logits, head_probabilities(logits, self.temperature, self.sigmoid)
        features = self.model.forward_head(self.model.forward_features(x), pre_logits=True)
        logits = self.model.get_classifier()(features)
        probabilities = head_probabilities(logits, self.temperature, self.sigmoid)
        return logits, probabilities, self.scorer(features, logits)


def export_head(loaded: LoadedModel) -> ProbabilityHead:
    """What the exporters trace: the model's classifier, probabilities and open-set score (if any)."""
    sigmoid = loaded.multi_label is not None
    return ProbabilityHead(loaded.model, loaded.temperature, loaded.scorer, sigmoid).eval()


def output_names(loaded: LoadedModel) -> list[str]:
    """The exported file's outputs: logits and probabilities, and open_set_score for a model with a scorer."""
    return [*OUTPUTS, OPEN_SET_OUTPUT] if loaded.scorer is not None else list(OUTPUTS)


def export_metadata(meta: dict) -> dict[str, str]:
    """String key/values stored in the exported file: class names, preprocessing and provenance, and the
    open-set record (score, threshold, accept, quantiles: what --unknown-accept moves) when there is one."""
    record = meta.get("open_set")
    extra = {"open_set": json.dumps(record)} if record is not None else {}
    third = ", open_set_score (higher = more like a known class; below open_set.threshold: unknown)"
    return {
        "resnetcls.format": meta["format"],
        "arch": meta["arch"],
        "arch_args": json.dumps(meta["arch_args"]),
        "classes": json.dumps(meta["classes"]),
        "preprocess": json.dumps(meta["preprocess"]),
        "weights_sha256": meta["sha256"][WEIGHTS],
        "temperature": repr(temperature_of(meta)),
        "calibration": json.dumps(meta.get("calibration")),
        "input": "float32 (N,3,S,S) RGB, preprocessed as in 'preprocess'; outputs: logits (raw), "
        f"probabilities (softmax(logits / temperature)){third if extra else ''}",
        **extra,
        **export_fields(meta),  # a multi-label model: its thresholds' record, sigmoid probabilities
    }


def example_input(loaded: LoadedModel, batch: int = 2) -> torch.Tensor:
    """A random (batch, 3, S, S) input at the model's image size (what the exporters trace with)."""
    size = loaded.preprocess["image_size"]
    return torch.randn(batch, 3, size, size)


def onnx_bytes(loaded: LoadedModel, head=None, example=None, metadata=None, doc: str = "") -> bytes:
    """Export head (default export_head's) through torch.export with a dynamic batch dimension; a uint8-frame
    head (export/rawinput.py) comes with its example input, metadata and a note for the doc string."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the exporter's chatter is not the user's concern
        program = torch.onnx.export(
            export_head(loaded) if head is None else head,
            (example_input(loaded) if example is None else example,),
            dynamo=True,
            external_data=False,
            input_names=["input"],
            output_names=output_names(loaded),
            dynamic_shapes=({0: torch.export.Dim("batch", min=1)},),
            verbose=False,
        )
    proto = program.model_proto
    for key, value in (export_metadata(loaded.meta) if metadata is None else metadata).items():
        proto.metadata_props.add(key=key, value=value)
    proto.doc_string = f"resnetcls {loaded.meta['arch']} classifier, {len(loaded.classes)} classes{doc}"
    return proto.SerializeToString()


def read_onnx_metadata(path: str | os.PathLike) -> dict[str, str]:
    """The metadata_props of an ONNX file as strings (the export_metadata keys).

    Reading them parses the whole file (0.8 s for ResNet-50's model.onnx on Xeon-AMX), and a Predictor asks
    twice (auto's check, then the session's), so the answer is kept per file version: path, inode, size and
    mtime (export's atomic rewrite gives a new inode; an in-place rewrite changes the size or the mtime)."""
    stat = os.stat(path)
    return dict(_metadata_of(os.fspath(path), stat.st_ino, stat.st_size, stat.st_mtime_ns))


@functools.lru_cache(maxsize=16)
def _metadata_of(path: str, inode: int, size: int, mtime_ns: int) -> tuple[tuple[str, str], ...]:
    import onnx  # heavy, and needed only when a model.onnx is read

    proto = onnx.load(path, load_external_data=False)
    return tuple((p.key, p.value) for p in proto.metadata_props)


@functools.cache
def openvino_core():
    """The process's one OpenVINO Core: a new Core per session segfaulted a process that compiled many models
    (a test suite; ultralytics#25864 saw the same), and the CPU plugin loads once."""
    runtime_telemetry_off(openvino=True)
    import openvino as ov

    return ov.Core()


class OpenVinoSession:
    """An ONNX file compiled by OpenVINO for this CPU, answering ONNX Runtime's `run(names, feeds)`.

    precision "auto" is bf16 where the CPU computes it natively (hardware.cpu_has_fast_bf16, as training
    decides), else fp32 ("fp32": within 1e-4 of ONNX Runtime; "bf16" asks for it). Left to itself OpenVINO
    picks bf16 from the CPU's flags even where oneDNN is capped below it (ONEDNN_MAX_CPU_ISA=AVX2) and then
    fails to compile a max-pool. On Xeon-AMX it ran the int8 file 2.3-3x and the fp32 file (in bf16)
    4.4-5.4x faster than ONNX Runtime (docs/benchmarks.md). One synchronous infer request, which two threads
    may not run at once: calls from several threads take turns (each uses every thread it was given).
    """

    def __init__(self, model: str | os.PathLike | bytes, threads: int = 0, precision: str = "auto") -> None:
        core = openvino_core()  # first: it turns telemetry off before openvino is imported
        import openvino as ov

        graph = (
            core.read_model(model, ov.Tensor(np.empty(0, np.uint8)))
            if isinstance(model, bytes)
            else core.read_model(str(model))
        )
        bf16 = precision == "bf16" or (precision == "auto" and cpu_has_fast_bf16())
        config = {
            "PERFORMANCE_HINT": "LATENCY",
            "INFERENCE_NUM_THREADS": threads or torch.get_num_threads(),
            "INFERENCE_PRECISION_HINT": "bf16" if bf16 else "f32",
        }
        try:
            self.compiled = core.compile_model(graph, "CPU", config)
        except RuntimeError as e:  # OpenVINO's message is a multi-line trace; its last line says what failed
            reason = next((line for line in reversed(str(e).splitlines()) if line.strip()), "unknown error")
            name = "the in-memory export" if isinstance(model, bytes) else str(model)
            raise UserError(
                f"{name}: OpenVINO cannot compile it for this CPU in {'bf16' if bf16 else 'fp32'} "
                f"({reason.strip()}); use --backend onnxruntime or another --precision"
            ) from None
        self.request = self.compiled.create_infer_request()
        self.lock = threading.Lock()
        # What the float parts run in (an int8 file's quantized convolutions run in int8 whatever this says).
        self.precision = (
            "bf16" if self.compiled.get_property("INFERENCE_PRECISION_HINT") == ov.Type.bf16 else "fp32"
        )

    def get_outputs(self) -> list[types.SimpleNamespace]:
        """ONNX Runtime's: the graph's outputs, each with its .name."""
        return [types.SimpleNamespace(name=output.get_any_name()) for output in self.compiled.outputs]

    def run(self, names: list[str], feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        """ONNX Runtime's signature: the named outputs for the named inputs, as numpy arrays (copies)."""
        with self.lock:
            results = self.request.infer(feeds)
            return [np.array(results[self.compiled.output(name)]) for name in names]


def onnx_session(
    model: str | os.PathLike | bytes, threads: int = 0, runtime: str = "onnxruntime", precision: str = "auto"
):
    """A CPU session on an ONNX file: ONNX Runtime with all graph optimisations (conv+BN+ReLU fusion, constant
    folding; always fp32), or with runtime "openvino" an OpenVinoSession at `precision`."""
    if runtime == "openvino":
        return OpenVinoSession(model, threads, precision)
    runtime_telemetry_off()
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = threads or torch.get_num_threads()
    options.log_severity_level = 3
    source = model if isinstance(model, bytes) else str(model)
    return ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])


def onnx_outputs(session, batch: torch.Tensor, names: list[str]) -> list[torch.Tensor]:
    """(N, 3, S, S) float tensor -> the outputs `names` of a session, from one run."""
    feed = np.ascontiguousarray(batch.detach().to("cpu", torch.float32).numpy())
    return [torch.from_numpy(out) for out in session.run(list(names), {"input": feed})]


def onnx_output(session, batch: torch.Tensor, name: str) -> torch.Tensor:
    """(N, 3, S, S) float tensor -> the output `name` of a session ((N, classes); (N,) for open_set_score)."""
    return onnx_outputs(session, batch, [name])[0]


def has_open_set_output(session) -> bool:
    """Whether the session's file gives open_set_score (exported from a model with an open-set score)."""
    return OPEN_SET_OUTPUT in {output.name for output in session.get_outputs()}


def onnx_scored_probabilities(session, batch: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(N, 3, S, S) float tensor -> calibrated probabilities (N, classes) and open-set scores (N,) from one
    run; the scores are None when the file has no open_set_score output."""
    if not has_open_set_output(session):
        return onnx_probabilities(session, batch), None
    return tuple(onnx_outputs(session, batch, ["probabilities", OPEN_SET_OUTPUT]))


def onnx_probabilities(session, batch: torch.Tensor) -> torch.Tensor:
    """(N, 3, S, S) float tensor -> (N, classes) calibrated probabilities from an ONNX Runtime session."""
    return onnx_output(session, batch, "probabilities")


def onnx_logits(session, batch: torch.Tensor) -> torch.Tensor:
    """(N, 3, S, S) float tensor -> (N, classes) raw logits from an ONNX Runtime session."""
    return onnx_output(session, batch, "logits")


def exported_temperature(meta: dict[str, str]) -> float | None:
    """The temperature an exported file was built with (1 for one exported before calibration existed);
    None when its metadata says something that is not a number."""
    try:
        return float(meta.get("temperature", "1.0"))
    except ValueError:
        return None


def export_command(loaded: LoadedModel, int8: bool = False) -> str:
    """The command that (re-)exports the model directory's model.onnx (int8: model.int8.onnx)."""
    return f"resnetcls export {loaded.path} --to onnx" + (" --int8" if int8 else "")


def _unrecorded(path, loaded: LoadedModel, instead: str, int8: bool = False) -> str:
    return (
        f"{path}: not run, its sha256 is not recorded in model.json (exported by an older resnetcls, "
        f"or copied in); {instead}re-export it with `{export_command(loaded, int8)}`"
    )


def _staleness(meta: dict[str, str], loaded: LoadedModel) -> str | None:
    """How an exported file differs from the model directory (None: exported from it as it is now). A file
    exported before the model's open-set score was fitted has no open_set_score output, so it cannot reject
    unknown images: it is stale like one from other weights."""
    if meta.get("weights_sha256") != loaded.meta["sha256"][WEIGHTS]:
        return "from other weights"
    if exported_temperature(meta) != loaded.temperature:
        return f"with temperature {meta.get('temperature', '1.0')}, model.json has {loaded.temperature:g}"
    if meta.get("multi_label") != export_metadata(loaded.meta).get("multi_label"):
        return "with other multi-label thresholds (or without them)"
    if meta.get("open_set") == export_metadata(loaded.meta).get("open_set"):
        return None
    if "open_set" not in meta:
        return "without the model's open-set score"
    if loaded.open_set is None:
        return "with an open-set score model.json does not have"
    return "with another open-set score"


def onnx_session_for(
    loaded: LoadedModel, threads: int = 0, runtime: str = "onnxruntime", precision: str = "auto"
):
    """A session (onnx_session) for a loaded model directory: its model.onnx when model.json records its
    sha256 and it was exported from these exact weights and calibration temperature, else an in-memory export
    (slower to start; nothing is written). A file whose sha256 differs from the record is refused (UserError).
    A file exported before calibration existed has no temperature: it is current only for T = 1."""
    path, command = loaded.path / ONNX_FILE, export_command(loaded)
    if not path.is_file():
        print(
            f"{loaded.path}: no model.onnx; exporting in memory (run `{command}` once to skip this)",
            file=sys.stderr,
        )
    elif not check_export_hash(loaded, ONNX_FILE, command):
        print(_unrecorded(path, loaded, "exporting in memory meanwhile; "), file=sys.stderr)
    else:
        changed = _staleness(read_onnx_metadata(path), loaded)
        if changed is None:
            return onnx_session(path, threads, runtime, precision)
        print(
            f"{path}: exported {changed}; exporting again in memory (run `{command}` to refresh it)",
            file=sys.stderr,
        )
    return onnx_session(onnx_bytes(loaded), threads, runtime, precision)


def int8_session_for(loaded: LoadedModel, threads: int = 0, runtime: str = "onnxruntime"):
    """A session on the model directory's model.int8.onnx, which must be the file `export --int8` recorded in
    model.json (its sha256) and quantized from these exact weights and temperature (it cannot be made in
    memory: quantizing needs calibration images). OpenVINO runs the same QDQ file with its own int8 kernels;
    `export --int8` checks the file's agreement in both."""
    path, command = loaded.path / INT8_FILE, export_command(loaded, int8=True)
    if not path.is_file():
        raise UserError(f"{path}: not found; run `{command}` first")
    if not check_export_hash(loaded, INT8_FILE, command):
        raise UserError(_unrecorded(path, loaded, "", int8=True))
    changed = _staleness(read_onnx_metadata(path), loaded)
    if changed is not None:
        raise UserError(f"{path}: quantized {changed}; run `{command}` again")
    return onnx_session(path, threads, runtime)


def onnx_file_current(loaded: LoadedModel) -> bool:
    """Whether the model directory has a model.onnx recorded in model.json (its sha256) and exported (and so
    parity-checked) from these exact weights, temperature and open-set record: the condition for --backend
    auto to choose OpenVINO or ONNX Runtime. A file without a record is passed over with a note; one that
    differs from its record is refused. One exported before the model's open-set score was fitted is passed
    over with a note: torch rejects unknown images, which that file cannot."""
    path = loaded.path / ONNX_FILE
    if not path.is_file():
        return False
    if not check_export_hash(loaded, ONNX_FILE, export_command(loaded)):
        print(_unrecorded(path, loaded, "--backend auto runs torch meanwhile; "), file=sys.stderr)
        return False
    changed = _staleness(read_onnx_metadata(path), loaded)
    if changed is not None and "open-set" in changed:
        print(
            f"{path}: exported {changed}; --backend auto runs torch meanwhile (re-export it with "
            f"`{export_command(loaded)}`)",
            file=sys.stderr,
        )
    return changed is None


def require_open_set_output(session, loaded, int8: bool = False) -> None:
    """UserError (one line) when rejection is asked of a session whose file has no open_set_score output
    (exported before the model's open-set score was fitted, or from a model without one)."""
    if has_open_set_output(session):
        return
    bare = loaded.path.suffix.lower() == ".onnx"
    command = "resnetcls export MODEL_DIR --to onnx" if bare else export_command(loaded, int8)
    raise UserError(
        f"{loaded.path}: the exported file has no open_set_score output; re-export with `{command}`"
    )
