"""The Python API for notebooks and scripts: the CLI's train and eval as functions, through the same code.

    import resnetcls
    run = resnetcls.train("photos/", model="resnet18", epochs=5, image_size=64, out="runs/nb",
                          set={"model.width": 16})
    print(run.summary["best_val_top1"], run.best_model)
    metrics = resnetcls.evaluate(run.best_model, "photos-test/")
    top = resnetcls.Predictor(run.best_model).predict(["a.jpg", pil_image, numpy_array])

Keywords are train's flags (`--batch-size` is batch_size=; the one table of config/flags.py lists them for
both); `set` takes any config key, as `--set` does.
Bad input raises resnetcls.errors.UserError (a DecodeError, a subclass, for an image) with the message the
CLI prints after "resnetcls: error:". `resnetcls train` calls train() below: one path for both.
"""

from __future__ import annotations

import json
import os
import typing
from dataclasses import dataclass, field
from pathlib import Path

from .analysis.evaluate import evaluate_model
from .analysis.openeval import OpenSetOptions
from .analysis.report import write_training_report
from .config import build_config, environment_overrides, explicit_settings
from .config.flags import check_names, flag_doc, flag_settings
from .engine.distributed import world_from_env
from .engine.prepare import warn
from .engine.rundir import where_to_train
from .engine.train import saved_run_config
from .engine.train import train as train_engine
from .errors import UserError
from .inference import addclass
from .inference import embed as embedding
from .inference import similar as search
from .records.tracking import log_run_artifacts

__all__ = ["Run", "add_class", "embed", "evaluate", "load_run", "remove_class", "similar", "train"]

# train()'s own keywords; the others are the train flags of config/flags.py.
API_KEYWORDS = ("data", "out", "resume", "force", "config", "set", "report")
Settings = typing.Mapping[str, typing.Any] | typing.Sequence[str] | None


@dataclass(repr=False)
class Run:
    """A training run directory, read back: what `resnetcls train` wrote.

    metrics: every record of metrics.jsonl in order (each with its "kind": "epoch", "summary", ...);
    summary: the end-of-run summary (best_val_top1, best_epoch, seconds, ...); best_model / final_model: the
    model directories (give them to Predictor, evaluate, `resnetcls predict`); config: the resolved config."""

    run_dir: Path
    best_model: Path
    final_model: Path
    config: dict
    metrics: list[dict] = field(default_factory=list)
    summary: dict = field(default_factory=dict)

    @property
    def epochs(self) -> list[dict]:
        """The per-epoch records of metrics.jsonl (epoch, train/loss, val/loss, val/top1, val/top5, ...)."""
        return [m for m in self.metrics if m.get("kind") == "epoch"]

    def __repr__(self) -> str:
        """One line: the run directory, its number of epochs, its best val top-1 (when it has one) and the
        best model, e.g. Run('runs/x', epochs=10, best_val_top1=0.93, best_model='runs/x/best')."""
        best = self.summary.get("best_val_top1")
        top1 = f", best_val_top1={best:.4g}" if isinstance(best, (int, float)) else ""
        epochs = len(self.epochs)
        return f"Run({str(self.run_dir)!r}, epochs={epochs}{top1}, best_model={str(self.best_model)!r})"


def load_run(run_dir: str | os.PathLike) -> Run:
    """A finished (or interrupted) run directory as a Run."""
    run_dir = Path(run_dir)
    config = saved_run_config(run_dir)  # UserError naming the folder when it is not a run directory
    path = run_dir / "metrics.jsonl"
    records = []
    if path.is_file():
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if not line.strip():
                continue
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError as e:  # a line cut short by a kill: say so, do not drop it silently
                raise UserError(f"{path}:{n}: not a JSON record ({e.msg})") from None
    summary = next((r for r in reversed(records) if r.get("kind") == "summary"), {})
    return Run(run_dir, run_dir / "best", run_dir / "final", config, records, summary)


def override_strings(settings: Settings) -> list[str]:
    """set={...} (or --set's "KEY=VALUE" strings) -> "KEY=VALUE" strings, read back exactly as --set reads
    them (values written as JSON, which is YAML: numbers, booleans, lists and None keep their type)."""
    if settings is None:
        return []
    if isinstance(settings, str):
        raise UserError(f"set={settings!r}: expected a dict of config keys, e.g. set={{'optim.lr': 0.01}}")
    if isinstance(settings, typing.Mapping):
        return [
            f"{key}={value if isinstance(value, str) else json.dumps(value)}"
            for key, value in settings.items()
        ]
    return [str(text) for text in settings]


def train(
    data: str | os.PathLike | None = None,
    *,
    out: str | os.PathLike | None = None,
    resume: str | os.PathLike | None = None,
    force: bool = False,
    config: str | os.PathLike | None = None,
    set: Settings = None,
    report: bool = True,
    **flags: typing.Any,
) -> Run:
    """Train a ResNet on DATA into the run directory `out`, as `resnetcls train` does (it calls this), and
    return the Run. out None: a new folder each call, runs/train, runs/train-2, ... (the first free name),
    with runs/latest a symlink to it. resume: auto, latest or a run directory, as --resume; force: as
    --force; config: a YAML recipe, as --config; set: {config key: value}, as --set; report: write
    report.html at the end (as the CLI does). The environment variable RESNETCLS_SET ("KEY=VALUE ...")
    is applied over all of them, with a note on stderr, as for `resnetcls train`.

    Every other keyword is the train flag of the same name (config/flags.py; None: the flag not given, so
    the auto recipe or the config decides; batch_size="auto" and lr="auto" as on the command line); an
    unknown one is a UserError naming it. They are `resnetcls train`'s options; help(resnetcls.train) lists
    them after this paragraph, as "keyword: help [config key]".
    """
    check_names(flags, "train", API_KEYWORDS)
    settings = flag_settings(flags, "train")
    settings["data.train"] = _text(data)
    overrides, config = override_strings(set), _text(config)
    out, resume = where_to_train(_text(out), _text(resume), warn)  # --resume latest: the run it points to
    # Resuming without DATA: the run's own saved config is the starting point instead of the defaults.
    run_dir = out if resume in (None, "auto") else resume
    base = saved_run_config(run_dir) if resume and data is None and run_dir else None
    environment = environment_overrides()  # RESNETCLS_SET, over the keywords and set=
    cfg = build_config(config, overrides, settings, base=base, environment=environment)
    result = train_engine(
        cfg,
        out,
        resume,
        force,
        lr_auto=flags.get("lr") == "auto",
        batch_auto=flags.get("batch_size") == "auto",
        explicit=explicit_settings(config, overrides, settings, environment),
    )
    if report and world_from_env().is_main:  # under torchrun one report, by the rank that wrote the run
        write_training_report(result.run_dir, result.val_samples, cfg.data.num_workers, result.train_samples)
        log_run_artifacts(result.run_dir)  # the MLflow/W&B runs of tracking.json get best/ and the report
    run = load_run(result.run_dir)
    run.summary = run.summary or dict(result.summary)  # the metrics.jsonl record, as load_run reads it
    return run


if train.__doc__:  # None under python -OO
    train.__doc__ += "\n    " + flag_doc("train").lstrip(" ") + "\n"


def evaluate(
    model: str | os.PathLike,
    data: str | os.PathLike,
    *,
    out: str | os.PathLike | None = None,
    batch_size: int = 32,
    precision: str = "auto",
    backend: str = "auto",
    include_train: bool = False,
    unknown: str | os.PathLike | None = None,
) -> dict:
    """`resnetcls eval MODEL DATA` as a function: the metrics dict (top1, top5, balanced_accuracy, macro_f1,
    ece, per_class, confusion_matrix (None above 100 classes: out/confusion_matrix.csv has it), ...), also
    written with tables and figures to `out` (default: eval/ next to the model). MODEL: a model directory or
    a run directory (its best model). batch_size, precision and backend: as eval's --batch-size,
    --precision and --backend (backend onnxruntime runs the model's exported model.onnx).

    DATA's images the model was trained on (by its run's split.csv) are left out, said in one line on stderr
    and counted in metrics["overlap"]; when every image is one, UserError. include_train=True (eval's
    --include-train) scores them too: the headline numbers stay the held-out images', the training images'
    are in metrics["train_images"]. unknown (eval's --unknown FOLDER): images of objects that are none of
    the model's classes; metrics["open_set"] then says how well the model's open-set score tells them from
    DATA's (auroc, fpr_at_95_tpr, unknown_rejected, known_rejected, accuracy_with_rejection, ...); a model
    with an open-set threshold has metrics["open_set"] without it too."""
    return evaluate_model(
        model,
        _text(data),
        out,
        batch_size,
        precision=precision,
        backend=backend,
        include_train=include_train,
        open_set=OpenSetOptions(_text(unknown)),
    )


def add_class(
    model: str | os.PathLike,
    name: str,
    photos: addclass.Photos,
    out: str | os.PathLike,
    *,
    seed: int = 0,
    steps: int = addclass.DEFAULT_STEPS,
    seconds: float | None = addclass.DEFAULT_SECONDS,
    force: bool = False,
) -> Path:
    """`resnetcls add-class MODEL NAME PHOTOS... --out OUT` as a function: writes to `out` a copy of the model
    (a model or run directory) that also knows class `name`, taught from `photos` (image files, folders,
    globs or CSV lists, as predict takes them) in seconds without retraining the network, and returns the
    new model directory. The head row is imprinted from the photos' features, then the head alone is tuned
    for `steps` Adam steps (stopping sooner past `seconds`; None: no cap) against features drawn from the
    old classes' stored statistics, so they are not forgotten; `seed` makes it reproducible. The open-set
    score grows by the new class; its threshold and the calibration are kept. UserError for a name already a
    class or "unknown", no readable photo, an existing non-empty `out` (unless force=True), or a model
    trained by an older resnetcls (no per-class feature statistics: retrain it)."""
    settings = addclass.TuneSettings(steps=steps, seconds=seconds, seed=seed)
    return addclass.add_class(model, name, photos, out, settings=settings, force=force)


def remove_class(model: str | os.PathLike, name: str, out: str | os.PathLike, *, force: bool = False) -> Path:
    """`resnetcls remove-class MODEL NAME --out OUT` as a function: writes to `out` a copy of the model
    without class `name` (its head row and open-set rows dropped) and returns it. UserError for a name that
    is not a class (naming the closest one), or when fewer than two classes would remain."""
    return addclass.remove_class(model, name, out, force=force)


def embed(
    model: str | os.PathLike,
    inputs: str | os.PathLike | typing.Sequence[str | os.PathLike],
    *,
    out: str | os.PathLike,
    batch_size: int = 32,
    precision: str = "auto",
) -> embedding.EmbedSummary:
    """`resnetcls embed MODEL PATH... --out FILE` as a function: the model's L2-normalised pooled features of
    the images of `inputs` (image files, folders searched recursively, globs, CSV lists) written to `out`,
    streaming: emb.npy (an (N, D) float32 array) with emb.csv (row, path, label, confidence) and emb.json
    beside it, or emb.parquet (one table, the vector in an `embedding` column; needs resnetcls[embed]).
    Returns an EmbedSummary: out, files, rows, dim and skipped (the (input, reason) pairs not embedded)."""
    if isinstance(inputs, (str, os.PathLike)):
        inputs = [inputs]
    return embedding.embed(model, [os.fspath(p) for p in inputs], out, batch_size, precision)


def similar(
    model: str | os.PathLike,
    query: typing.Any,
    *,
    index: str | os.PathLike,
    topk: int = 10,
    batch_size: int = 32,
    precision: str = "auto",
) -> list[search.Match] | list[list[search.Match]]:
    """`resnetcls similar MODEL QUERY --index FILE` as a function: the `topk` images of the index (what
    embed() wrote with the same model) nearest to `query` by cosine similarity, nearest first, each a Match
    (rank, similarity, path, label, confidence, row). query: one image (a path, PIL image or array) -> its
    list of matches; a list or batch of images -> one list per image. UserError for an index that is
    missing, unreadable or built by another model."""
    return search.similar(model, query, index, topk, batch_size, precision)


def _text(path: str | os.PathLike | None) -> str | None:
    """Paths given as pathlib.Path become the strings the config holds."""
    return None if path is None else os.fspath(path)
