"""Preparing a run and building its parts, shared by `train` (engine/train.py) and `lifelong`
(lifelong/run.py): the run directory (config.yaml, environment.json, the checkpoint to resume), seeding, the
device and precision, the model, and the data pipeline (decoded cache -> uint8 transforms -> loaders)."""

from __future__ import annotations

import dataclasses
import json
import os
import random
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..config import (
    Config,
    DataConfig,
    ModelConfig,
    TrainConfig,
    dump_yaml,
    load_yaml,
    parse_duration,
    result_affecting_changes,
    validate_config,
)
from ..data.augment import BatchMix, resolve_augment_on
from ..data.cache import DecodedStore, resolve_cache_dir
from ..data.csvlabels import CsvLabels, sampler_labels
from ..data.loader import LoaderOptions, build_loader, known_bad_files
from ..data.neardup import (
    leak_check_from_counts,
    leak_warning,
    near_reference,
    store_signatures,
    threshold_counts,
)
from ..data.sampler import ResumableSampler
from ..data.sources import Samples, Splits, load_splits
from ..data.transforms import build_eval_batch_transform, build_train_transform, make_preprocess
from ..errors import UserError
from ..models import create_model
from ..models.pretrained import load_pretrained
from ..utils.atomic import write_text_atomic
from ..utils.hardware import pick_device, resolve_amp
from . import distributed
from .checkpoint import environment_info, load_latest
from .log import say
from .loop import StepContext


def warn(text: str) -> None:
    """A warning on stderr (and in the train.log of the run under way), once per job (every torchrun rank
    sees the same ones)."""
    if distributed.is_main():
        say(text)


def seed_everything(seed: int, deterministic: bool) -> None:
    """Seed Python, NumPy and torch; switch torch's deterministic algorithms on or off."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # cuBLAS needs it to be deterministic
    torch.use_deterministic_algorithms(deterministic)  # both ways: a later run in this process may differ
    torch.backends.cudnn.benchmark = not deterministic


def arch_args(model_cfg: ModelConfig) -> dict:
    """The ResNet constructor arguments recorded in model.json."""
    return {
        "stem": model_cfg.stem,
        "stride_on_1x1": model_cfg.stride_on_1x1,
        "zero_init_residual": model_cfg.zero_init_residual,
        "width": model_cfg.width,
    }


def saved_run_config(run_dir: str | Path) -> dict:
    """A run directory's resolved config (for `train --resume RUN_DIR` without DATA)."""
    path = Path(run_dir) / "config.yaml"
    if not path.is_file():
        raise UserError(f"{run_dir}: not a run directory (no config.yaml); give DATA to start a new run")
    return load_yaml(path)


def find_resume(resume: str | None, run_dir: Path, cfg: Config, force: bool) -> tuple[dict, dict] | None:
    """The checkpoint to continue from (None: a new run). Refuses a changed result-affecting config."""
    ckpt_dir = run_dir / "checkpoints"
    if resume is None:
        if ckpt_dir.is_dir() and any(ckpt_dir.glob("step-*.json")):
            raise UserError(
                f"{run_dir}: already holds checkpoints of an earlier run; continue it with "
                f"--resume auto, or choose another --out"
            )
        return None
    found = load_latest(ckpt_dir, warn)
    if found is None:
        if resume != "auto":
            raise UserError(f"{run_dir}: no complete checkpoint in {ckpt_dir} to resume from")
        warn(f"no checkpoint in {ckpt_dir}: starting a new run")
        return None
    changes = result_affecting_changes(found[1]["config"], with_saved_total(found[1]["config"], cfg))
    if changes and not force:
        raise UserError(
            f"{run_dir}: refusing to resume with settings that change the result ("
            + "; ".join(changes)
            + "); use the run's settings, or --force to resume anyway"
        )
    for change in changes:
        warn(f"warning: resuming with a changed setting (--force): {change}")
    return found


def with_saved_total(saved: dict, cfg: Config) -> Config:
    """cfg with the saved run's train.epochs when both have a time budget: the number of epochs a budgeted run
    chose when it started is kept by every resumption (nothing is measured again)."""
    saved_train = saved.get("train", {})
    if (
        not parse_duration(cfg.train.time_budget)
        or not parse_duration(saved_train.get("time_budget") or "")
        or "epochs" not in saved_train
    ):
        return cfg
    return dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, epochs=saved_train["epochs"]))


@dataclass
class PreparedRun:
    """A run directory ready to train into: the resolved config, where, what to resume, the provenance."""

    cfg: Config
    run_dir: Path
    resumed: tuple[dict, dict] | None
    env: dict
    started: float = dataclasses.field(default_factory=time.perf_counter)  # when preparing began


def find_run(cfg: Config, out_dir: str | Path, resume: str | None, force: bool) -> PreparedRun:
    """Validate cfg (ranges, choices), make its data paths absolute (so `--resume RUN_DIR` without DATA works
    from any working directory) and find the checkpoint to resume, refusing a changed result-affecting
    setting; writes nothing (the returned config is a copy, cfg is left as it was). A resumed run with a time
    budget keeps the epochs it chose (with_saved_total)."""
    started = time.perf_counter()
    validate_config(cfg)  # before anything is written
    cfg = with_absolute_data(cfg)
    run_dir = Path(out_dir if resume in (None, "auto") else resume)
    resumed = find_resume(resume, run_dir, cfg, force)
    cfg = with_saved_total(resumed[1]["config"], cfg) if resumed else cfg
    return PreparedRun(cfg, run_dir, resumed, environment_info(), started)


def with_absolute_data(cfg: Config) -> Config:
    """cfg with data.train, data.val, eval.open_set_unknown and distill.teacher as absolute paths."""

    def absolute(path: str) -> str:
        return str(Path(path).absolute()) if path else path

    data_cfg, eval_cfg = cfg.data, cfg.eval
    return dataclasses.replace(
        cfg,
        data=dataclasses.replace(data_cfg, train=absolute(data_cfg.train), val=absolute(data_cfg.val)),
        eval=dataclasses.replace(eval_cfg, open_set_unknown=absolute(eval_cfg.open_set_unknown)),
        distill=dataclasses.replace(cfg.distill, teacher=absolute(cfg.distill.teacher)),
    )


def open_run(run: PreparedRun, writes: bool = True) -> None:
    """Write the run directory's config.yaml (run.cfg, once) and environment.json (when writes: rank 0), then
    seed every RNG."""
    if writes:
        run.run_dir.mkdir(parents=True, exist_ok=True)
        write_text_atomic(run.run_dir / "config.yaml", dump_yaml(run.cfg))
        write_text_atomic(run.run_dir / "environment.json", json.dumps(run.env, indent=2) + "\n")
    seed_everything(run.cfg.train.seed, run.cfg.train.deterministic)


def prepare_run(
    cfg: Config, out_dir: str | Path, resume: str | None, force: bool, writes: bool = True
) -> PreparedRun:
    """find_run, then open_run: validated, the checkpoint to resume found, config.yaml and environment.json
    written (when writes), every RNG seeded."""
    run = find_run(cfg, out_dir, resume, force)
    open_run(run, writes)
    return run


def resolve_splits(data_cfg: DataConfig, seed: int) -> Splits:
    """The train/val splits of the data (the file list only: nothing is decoded); one class is refused."""
    labels = CsvLabels(data_cfg.label_separator, data_cfg.multi_label, data_cfg.split_by)
    splits = load_splits(
        data_cfg.train, data_cfg.val, data_cfg.val_fraction, seed, data_cfg.split_by, data_cfg.batches, labels
    )
    if len(splits.classes) < 2:  # one class would train to a meaningless 100%
        raise UserError(
            f"{data_cfg.train}: only one class ({splits.classes[0]!r}); a classifier needs at least two"
        )
    return splits


@dataclass
class TrainData:
    """The data of a run: its splits, the pipeline that built the loaders, the resumable training order."""

    splits: Splits
    pipeline: DataPipeline
    sampler: ResumableSampler
    train_loader: object
    val_loader: object


def build_data(
    data_cfg: DataConfig, train_cfg: TrainConfig, ctx: StepContext, splits: Splits, leak_check: bool = True
) -> TrainData:
    """The splits' decoded cache -> uint8 transforms -> loaders. The training order depends only on
    (seed, epoch) via the sampler. Bad files: skipped and counted, or (data.on_bad=fail) all named here,
    before training starts. leak_check=False (the time budget's measurement): no near-duplicate check."""
    pipeline = DataPipeline(
        data_cfg,
        train_cfg.batch_size,
        uint8_batches=ctx.device.type == "cuda",
        device_augment=resolve_augment_on(data_cfg.augment_on, ctx.device),
    )
    world = distributed.world_from_env()  # under torchrun each rank reads its own share, batch_size each
    labels = sampler_labels(splits.train)  # multi-label: each image's rarest class
    sampler = ResumableSampler(labels, data_cfg.sampler, train_cfg.seed, world.rank, world.size)
    train_loader = pipeline.train_loader(splits.train, sampler, train_cfg.seed)
    # Validation: indices rank, rank + world, ...: every image on exactly one rank, no padding repeats.
    val_loader = pipeline.eval_loader(splits.val, range(world.rank, len(splits.val), world.size))
    known_bad_files(data_cfg.on_bad, train_loader, val_loader)
    distributed.wait_for_data()  # cache builds may outlast train.dist_timeout_s
    if data_cfg.leak_check and leak_check:  # after that wait: its collectives wait only for an equal share
        warn_near_duplicates(train_loader, val_loader, len(splits.val), world)
    return TrainData(splits, pipeline, sampler, train_loader, val_loader)


def warn_near_duplicates(train_loader, val_loader, val_images: int, world: distributed.World) -> None:
    """One warning line when many val images have a near-duplicate in train (data/neardup.py). Hashes the
    decoded uint8 cache the loaders already built (no second decode); without a cache (data.cache=false) it
    would decode everything again, so it is skipped.

    Under torchrun the check is sharded, so no rank waits on another for longer than their shares differ: each
    rank hashes every world-th train and val image, the train signatures (16 bytes an image) are gathered on
    every rank, each rank searches its own val share against all of train, and the counts are summed. Every
    rank thus does 1/world of the hashing and searching; had rank 0 done it all, the others would wait at
    their next collective (the DDP handshake) for the whole check and die there once it outlasted
    train.dist_timeout_s."""
    stores = [getattr(loader.dataset, "store", None) for loader in (train_loader, val_loader)]
    if not all(isinstance(store, DecodedStore) for store in stores):
        return
    train_store, val_store = stores
    shares = distributed.gather_objects(
        store_signatures(train_store, range(world.rank, len(train_store), world.size))
    )
    train = tuple(np.concatenate([share[k] for share in shares]) for k in (0, 1))
    val = store_signatures(val_store, range(world.rank, len(val_store), world.size), flipped=True)
    counts = threshold_counts(near_reference(val[:2], train), near_reference(val[2:], train))
    summed = distributed.all_reduce_sum(torch.from_numpy(np.concatenate([counts.ravel(), [len(val[0])]])))
    *counts, searched = summed.tolist()
    check = leak_check_from_counts(np.reshape(counts, (2, -1)), searched, len(train[0]))
    text = leak_warning(check, val_images, len(train[0]))
    if text and world.is_main:
        warn(text)


def build_context(train_cfg: TrainConfig, device_name: str | None = None) -> StepContext:
    """Device and precision (one code path: autocast and GradScaler with enabled=). device_name overrides
    train.device (torchrun: this rank's cuda:LOCAL_RANK)."""
    device = pick_device(device_name or train_cfg.device)
    return StepContext(device, resolve_amp(train_cfg.precision, device), train_cfg.channels_last)


def build_model(
    model_cfg: ModelConfig, train_cfg: TrainConfig, num_classes: int, ctx: StepContext
) -> torch.nn.Module:
    """The ResNet on ctx's device (pretrained weights, SyncBatchNorm under torchrun, channels_last)."""
    model = create_model(model_cfg.name, num_classes, **arch_args(model_cfg))
    if train_cfg.pretrained:
        load_pretrained(model, train_cfg.pretrained, model_cfg.name)  # logs what it loaded to stderr
    if sync_bn_applies(train_cfg, ctx):
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)  # before the EMA copy and the optimizer
    model = model.to(ctx.device)
    return model.to(memory_format=torch.channels_last) if train_cfg.channels_last else model


def sync_bn_applies(train_cfg: TrainConfig, ctx: StepContext) -> bool:
    """Whether train.sync_bn converts the model (under torchrun only); refused off CUDA."""
    if not (train_cfg.sync_bn and distributed.world_from_env().distributed):
        return False
    if ctx.device.type != "cuda":
        raise UserError(
            "train.sync_bn=true: PyTorch's SyncBatchNorm runs on CUDA only; "
            "use --set train.sync_bn=false on CPU"
        )
    return True


def wrap_model(model: torch.nn.Module, ctx: StepContext, ddp: bool, compile_model: bool) -> torch.nn.Module:
    """The module the step loop calls: DistributedDataParallel under torchrun (gradients averaged in backward,
    rank 0's initial weights broadcast), torch.compile'd when asked. Checkpoints, EMA and model directories
    keep the unwrapped module (no "module." prefixes)."""
    step_model = model
    if ddp:
        step_model = torch.nn.parallel.DistributedDataParallel(
            model,
            device_ids=[ctx.device.index] if ctx.device.type == "cuda" else None,
            find_unused_parameters=False,
        )
    return CompiledOrEager(step_model) if compile_model else step_model


class CompiledOrEager(torch.nn.Module):
    """module torch.compile'd; where compiling fails (no C++ compiler, an op Inductor cannot lower) one line
    on stderr says why and training goes on eagerly: a run asked to be faster must not fail for it. Compiling
    is off by default: the compiled ResNet-50 step was no faster on the 2-core Zen 4 (128 px) and 0.96x /
    1.06x of eager on the 2-core Xeon-AMX (128 / 224 px, batch 32), after a compile of 70-84 s."""

    def __init__(self, module: torch.nn.Module) -> None:
        super().__init__()
        self.eager, self.compiled, self.failed = module, torch.compile(module), False  # the same parameters

    def forward(self, *args, **kwargs):
        if not self.failed:
            try:
                return self.compiled(*args, **kwargs)
            except Exception as e:  # any compiler failure; a real error in the model re-raises eagerly below
                self.failed = True
                reason = (str(e).strip().splitlines() or [""])[0][:200]
                warn(
                    f"train.compile=true: torch.compile failed ({type(e).__name__}: {reason}); "
                    "training eagerly"
                )
        return self.eager(*args, **kwargs)


class DataPipeline:
    """Loaders over the decoded cache with the uint8 transforms of data: DataConfig, batch_size each.

    uint8_batches is fixed here for every loader built: on a GPU the loaders ship uint8 batches and the
    normalisation runs on the device (measured 2672 vs 1659 images/s for ResNet-50 on an H100,
    bench/gpu_train_throughput.py --quick); lifelong always asks for them (replayed uint8 images join each
    batch before it is normalised)."""

    def __init__(
        self, data_cfg: DataConfig, batch_size: int, uint8_batches: bool, device_augment: bool = False
    ) -> None:
        # device_augment (data.augment_on): uint8 canvases, each with the crops, flips and policy to run
        self.data_cfg, self.batch_size = data_cfg, batch_size
        self.uint8_batches = uint8_batches or device_augment
        self.preprocess = make_preprocess(
            data_cfg.image_size,
            data_cfg.resize_size,
            data_cfg.augment,
            data_cfg.interpolation,
            data_cfg.mean,
            data_cfg.std,
            data_cfg.resize,
        )
        self.train_tf = build_train_transform(
            self.preprocess,
            data_cfg.augment,
            data_cfg.min_crop_scale,
            data_cfg.color_jitter,
            data_cfg.cache_size,
            data_cfg.random_erasing,
            on_device=device_augment,
        )
        self.eval_tf = build_eval_batch_transform(self.preprocess, data_cfg.cache_size)
        self.cache_dir = resolve_cache_dir(data_cfg.cache_dir) if data_cfg.cache else None

    def train_loader(self, samples: Samples, sampler: ResumableSampler, seed: int):
        """Augmented batches in sampler's order (which depends only on its seed and epoch)."""
        mix = BatchMix(self.data_cfg.mixup, self.data_cfg.cutmix, len(samples.classes))
        return self._loader(
            samples, self.train_tf, sampler, seed, drop_last=len(sampler) > self.batch_size, mix=mix
        )

    def eval_loader(self, samples: Samples, indices=None):
        """Centre-cropped batches of samples in order (indices: this rank's share)."""
        return self._loader(samples, self.eval_tf, indices, 0, drop_last=False)

    def _loader(self, samples: Samples, transform, sampler, seed: int, drop_last: bool, mix=None):
        data_cfg = self.data_cfg
        options = LoaderOptions(
            sampler=sampler,
            drop_last=drop_last,
            on_bad=data_cfg.on_bad,
            start_method=data_cfg.worker_start,
            cache_max_gb=data_cfg.cache_max_gb,
            cache_format=data_cfg.cache_format,
            uint8_batches=self.uint8_batches,
            mix=mix,
            pin_memory=self.uint8_batches,
        )
        return build_loader(
            samples, transform, self.batch_size, False, data_cfg.num_workers, seed, self.cache_dir, options
        )
