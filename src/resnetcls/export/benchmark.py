"""`resnetcls benchmark MODEL [DATA]`: every backend this machine can run, side by side, each checked
against torch fp32 before it is timed.

Per backend: the size of the file it runs, top-1 on DATA's labelled images, the share of images whose top-1
equals torch fp32's (agreement), batch-1 latency (p50, p99) and batch-32 throughput. DATA defaults to the
run's validation split (the split.csv train wrote beside the model, as export's parity check finds it).

Parity: a backend whose agreement falls below its threshold is refused (its row says why, and it is not
timed): fp32 backends must agree on FP32_AGREEMENT of the images and keep their probabilities within
FP32_PROB_LIMIT of torch fp32's; bf16 and int8 backends, which round on purpose, on REDUCED_AGREEMENT.
Agreement means something only for a trained model on real images of its classes: on DATA without labels of
the model's classes, or for a model.json without training metrics, top-1 and agreement are left out (the
report says why), the fp32 backends are held to the probability limit alone and the others are unchecked.
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..data.decode import DecodeError, decode_image, is_image_file
from ..data.sources import read_data
from ..data.transforms import build_eval_transform
from ..errors import UserError
from ..records.envinfo import machine_line
from ..records.modelfile import LoadedModel, load_model_dir
from ..utils.atomic import write_atomic
from .bench_backends import (
    FP32_BACKENDS,
    REFERENCE,
    BackendFiles,
    Refused,
    Runner,
    Unavailable,
    build_runner,
    parse_backends,
)
from .formats import run_split_csv

FP32_AGREEMENT = 0.995  # fp32 backends compute what torch fp32 computes: at most 1 image in 200 may differ
FP32_PROB_LIMIT = 1e-3  # and no calibrated probability may move more than this
REDUCED_AGREEMENT = 0.98  # bf16 and int8 round on purpose; `export --int8` keeps files at 0.99 by default
BATCH = 32  # the throughput batch


@dataclass
class BenchData:
    """The preprocessed images, their labels in the model's classes (None: agreement is left out, `omitted`
    says why) and where they came from."""

    tensors: torch.Tensor
    labels: list[int] | None
    source: str
    omitted: str = ""


def _pick(items: list, count: int) -> list:
    """count items spread evenly over the list (it is ordered by class, so every class keeps its share)."""
    if len(items) <= count:
        return items
    return [items[int(i * len(items) / count)] for i in range(count)]


def _decode(paths: list[str], loaded: LoadedModel) -> tuple[list[torch.Tensor], list[int]]:
    transform, tensors, kept = build_eval_transform(loaded.preprocess), [], []
    for i, path in enumerate(paths):
        try:
            tensors.append(transform(decode_image(path)))
            kept.append(i)
        except DecodeError as e:
            print(f"benchmark: skipped {e}", file=sys.stderr)
    return tensors, kept


def _labelled(data: str, loaded: LoadedModel, default: bool) -> tuple[list[str], list[int] | None, str]:
    """(paths, labels in the model's classes or None, why labels are missing): the val split of the run's
    split.csv (default), else DATA's test, val or whole split as eval picks it; a folder of loose images has
    no labels."""
    try:
        dataset = read_data(data)
    except UserError as e:
        if not Path(data).is_dir():
            raise
        paths = sorted(str(p) for p in Path(data).rglob("*") if p.is_file() and is_image_file(p.name))
        return paths, None, f"{data} has no class labels ({e})"
    which = "val" if default else next(s for s in ("test", "val", "all", "train") if s in dataset.splits)
    if which not in dataset.splits:
        raise UserError(f"{data}: no '{which}' rows to benchmark on")
    samples, index = dataset.splits[which], {c: i for i, c in enumerate(loaded.classes)}
    known = [i for i, label in enumerate(samples.labels) if samples.classes[label] in index]
    if not known:
        shown = ", ".join(dataset.classes[:5]) + (", ..." if len(dataset.classes) > 5 else "")
        return list(samples.paths), None, f"none of {data}'s classes ({shown}) is one of the model's"
    labels = [index[samples.classes[samples.labels[i]]] for i in known]
    return [samples.paths[i] for i in known], labels, ""


def load_bench_data(loaded: LoadedModel, data: str | os.PathLike | None, limit: int) -> BenchData:
    """Up to `limit` real images of DATA (default: the run's validation split), preprocessed as the model
    preprocesses them, with their labels when they have labels of the model's classes."""
    if data is None:
        split_csv = run_split_csv(loaded.path)
        if split_csv is None:
            raise UserError(
                f"{loaded.path}: no split.csv here or in its run folder; give DATA (labelled images)"
            )
        data = split_csv
    elif not Path(data).exists():
        raise UserError(f"{data}: no such file or folder")
    paths, labels, omitted = _labelled(str(data), loaded, default=data == run_split_csv(loaded.path))
    order = _pick(list(range(len(paths))), limit)
    tensors, kept = _decode([paths[i] for i in order], loaded)
    if not tensors:
        raise UserError(f"{data}: no readable images to benchmark on")
    if labels is not None and not loaded.meta.get("metrics"):
        labels, omitted = None, f"{loaded.path}/model.json records no training metrics (an untrained model)"
    if labels is not None:
        labels = [labels[order[i]] for i in kept]
    kind = "labelled " if labels is not None else ""
    return BenchData(torch.stack(tensors), labels, f"{len(tensors)} {kind}images from {data}", omitted)


@dataclass
class Row:
    """One backend's line: measured, refused or not available (status), with the reason."""

    backend: str
    status: str = "ok"  # ok | refused | not available
    reason: str = ""
    precision: str = ""
    file: str = ""
    origin: str = ""
    file_mb: float | None = None
    top1: float | None = None
    agreement: float | None = None
    max_abs_diff: float | None = None
    p50_ms: float | None = None
    p99_ms: float | None = None
    images_per_s: float | None = None  # at batch BATCH
    speedup: float | None = None  # images_per_s over torch fp32's, measured in the same run

    def to_dict(self, labelled: bool) -> dict:
        values = dict(self.__dict__)
        if not labelled:
            values.pop("top1")
            values.pop("agreement")
        return values


@dataclass
class BenchReport:
    machine: str
    model: str
    data: BenchData
    runs: int
    rows: list[Row] = field(default_factory=list)

    @property
    def labelled(self) -> bool:
        return self.data.labels is not None

    def to_dict(self) -> dict:
        """What --json writes and --format json prints."""
        return {
            "machine": self.machine,
            "model": self.model,
            "data": self.data.source,
            "images": len(self.data.tensors),
            "agreement_omitted": self.data.omitted or None,
            "thresholds": {
                "fp32_agreement": FP32_AGREEMENT,
                "fp32_max_abs_prob_diff": FP32_PROB_LIMIT,
                "reduced_agreement": REDUCED_AGREEMENT,
            },
            "latency_runs": self.runs,
            "throughput_batch": BATCH,
            "rows": [row.to_dict(self.labelled) for row in self.rows],
        }


@torch.inference_mode()
def _probabilities(runner: Runner, tensors: torch.Tensor) -> torch.Tensor:
    return torch.cat([runner.run(batch).float().cpu() for batch in tensors.split(BATCH)])


def _refuse(row: Row, reason: str) -> None:
    if row.status == "ok":  # the first reason found is the one shown
        row.status, row.reason = "refused", reason


def _parity(row: Row, data: BenchData, probs: torch.Tensor, reference: torch.Tensor) -> None:
    """Fill the row's top-1, agreement and max |dprob|; refuse it when they miss its thresholds (agreement
    first: the reason a user reads first)."""
    top, fp32 = probs.argmax(1), row.backend in FP32_BACKENDS
    row.max_abs_diff = float((probs - reference).abs().max())
    if data.labels is not None:
        row.agreement = float((top == reference.argmax(1)).float().mean())
        row.top1 = float((top == torch.tensor(data.labels)).float().mean())
        limit = FP32_AGREEMENT if fp32 else REDUCED_AGREEMENT
        if row.agreement < limit:
            count = len(top)
            _refuse(
                row, f"top-1 agrees with torch fp32 on {row.agreement:.1%} of {count} images (< {limit:.1%})"
            )
    elif not fp32:
        row.reason = "parity not checked: no labelled images of the model's classes"
    if fp32 and row.max_abs_diff > FP32_PROB_LIMIT:
        limit = f"{FP32_PROB_LIMIT:.0e}"
        _refuse(row, f"probabilities differ from torch fp32 by up to {row.max_abs_diff:.1e} (> {limit})")


def _percentile(times: list[float], share: float) -> float:
    ordered = sorted(times)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))]


@torch.inference_mode()
def _time(row: Row, runner: Runner, tensors: torch.Tensor, runs: int) -> None:
    """Batch-1 latency (3 warm-up passes, then `runs`) and batch-32 throughput (1 warm-up, then a tenth of
    `runs`, at least 1), each backend timed in one block."""
    single = tensors[:1]
    batch = tensors[:BATCH].repeat((BATCH + len(tensors) - 1) // len(tensors), 1, 1, 1)[:BATCH]
    for shape, passes, warmup in ((single, runs, 3), (batch, max(1, runs // 10), 1)):
        times = []
        for i in range(warmup + passes):
            start = time.perf_counter()
            runner.run(shape)
            if i >= warmup:
                times.append(time.perf_counter() - start)
        if shape is single:
            row.p50_ms, row.p99_ms = statistics.median(times) * 1e3, _percentile(times, 0.99) * 1e3
        else:
            row.images_per_s = BATCH / statistics.median(times)


def _measure(files: BackendFiles, backend: str, data: BenchData, reference, runs: int) -> tuple[Row, object]:
    """The backend's row (and its probabilities, for torch fp32 the reference of the others); runs 0: not
    timed."""
    row = Row(backend)
    try:
        runner = build_runner(files, backend)
    except Unavailable as e:
        row.status, row.reason = "not available", str(e)
        return row, None
    except Refused as e:
        row.status, row.reason = "refused", str(e)
        return row, None
    row.precision, row.origin = runner.precision, runner.origin
    # a file exported for the benchmark is gone with the work folder: its name says which it was
    row.file = str(runner.file) if runner.origin == "model folder" else runner.file.name
    row.file_mb = runner.file.stat().st_size / 1e6
    probs = _probabilities(runner, data.tensors)
    _parity(row, data, probs, probs if reference is None else reference)
    if row.status == "ok" and runs:
        _time(row, runner, data.tensors, runs)
    return row, probs


def run_benchmark(
    model: str | os.PathLike,
    data: str | os.PathLike | None = None,
    backends: str | None = None,
    images: int = 200,
    runs: int = 50,
    device: str = "auto",
    threads: int = 0,
) -> BenchReport:
    """Benchmark MODEL's backends (--backends, default all) on up to `images` images of DATA, each on
    `threads` CPU threads (0: torch's default, every usable core)."""
    if images < 1 or runs < 1 or threads < 0:
        raise UserError(f"--images {images} / --runs {runs}: expected whole numbers of at least 1")
    if threads:
        torch.set_num_threads(threads)  # the runtimes' sessions take torch's thread count
    names = parse_backends(backends)
    loaded = load_model_dir(model, "cpu")
    bench_data = load_bench_data(loaded, data, images)
    report = BenchReport(machine_line(), str(loaded.path), bench_data, runs)  # names the thread count
    with tempfile.TemporaryDirectory(prefix="resnetcls-benchmark-") as work:
        files = BackendFiles(loaded, Path(work), device)
        timed = runs if REFERENCE in names else 0
        reference_row, reference = _measure(files, REFERENCE, bench_data, None, timed)
        for name in names:
            if name == REFERENCE:
                report.rows.append(reference_row)
            elif reference is None:
                why = f"no torch fp32 reference to check it against ({reference_row.reason})"
                report.rows.append(Row(name, "not available", why))
            else:
                report.rows.append(_measure(files, name, bench_data, reference, runs)[0])
    if reference_row.images_per_s:
        for row in report.rows:
            row.speedup = row.images_per_s and row.images_per_s / reference_row.images_per_s
    return report


def _cell(value: float | None, pattern: str) -> str:
    return "-" if value is None else format(value, pattern)


def format_table(report: BenchReport) -> str:
    """The console table: the machine line on top, one row per backend, then what the columns mean."""
    labelled = report.labelled
    head = ["backend", "precision", "file MB", *(["top-1", "agrees"] if labelled else []), "p50 ms", "p99 ms"]
    head += [f"img/s b{BATCH}", "x", "status"]
    lines = [f"machine: {report.machine}", f"model: {report.model}", f"data: {report.data.source}", ""]
    rows = [head]
    for row in report.rows:
        cells = [row.backend, row.precision or "-", _cell(row.file_mb, ".1f")]
        if labelled:
            cells += [
                _cell(row.top1 and row.top1 * 100, ".1f"),
                _cell(row.agreement and row.agreement * 100, ".1f"),
            ]
        cells += [_cell(row.p50_ms, ".2f"), _cell(row.p99_ms, ".2f"), _cell(row.images_per_s, ".1f")]
        cells.append(_cell(row.speedup, ".2f"))
        cells.append(f"{row.status}: {row.reason}" if row.reason else row.status)
        rows.append(cells)
    widths = [max(len(r[i]) for r in rows) for i in range(len(head) - 1)]
    for cells in rows:  # names left-aligned, numbers right-aligned, the status as it comes
        aligned = [c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths))]
        lines.append("  ".join([*aligned, cells[-1]]))
    lines.append("")
    if labelled:
        lines.append(
            f"top-1 and agrees (top-1 equal to torch fp32's) in %; refused below {FP32_AGREEMENT:.1%} for "
            f"fp32 backends (which must also keep probabilities within {FP32_PROB_LIMIT:.0e}), "
            f"{REDUCED_AGREEMENT:.1%} for bf16 and int8"
        )
    else:
        lines.append(f"top-1 and agreement omitted: {report.data.omitted}")
    lines.append(
        f"latency: batch 1, median and p99 of {report.runs} passes; throughput: batch {BATCH}, median of "
        f"{max(1, report.runs // 10)} passes; x: its throughput over torch fp32's; file MB: the file the "
        "backend runs (torch: model.safetensors)"
    )
    return "\n".join(lines)


def report_output(report: BenchReport, fmt: str = "table", json_path: str | os.PathLike | None = None) -> str:
    """What `benchmark` prints (the table, or with fmt "json" the JSON record), after writing the JSON
    record to json_path when given."""
    record = json.dumps(report.to_dict(), indent=2)
    if json_path:
        write_atomic(json_path, (record + "\n").encode())
    return record if fmt == "json" else format_table(report)
