"""Preparing a run and building its parts, shared by `train` (engine/train.py) and `lifelong`
(lifelong/run.py): the run directory (config.yaml, environment.json, the checkpoint to resume), seeding, the
device and precision, the model, and the data pipeline (decoded cache -> uint8 transforms -> loaders)."""

from __future__ import annotations

import dataclasses
import json
import os
import random
import sys
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
from ..data.augment import BatchMix
from ..data.cache import resolve_cache_dir
from ..data.loader import LoaderOptions, build_loader
from ..data.sampler import ResumableSampler
from ..data.sources import Samples
from ..data.transforms import build_eval_batch_transform, build_train_transform, make_preprocess
from ..errors import UserError
from ..models import create_model
from ..models.pretrained import load_pretrained
from ..utils.atomic import write_text_atomic
from ..utils.hardware import pick_device, resolve_amp
from . import distributed
from .checkpoint import environment_info, load_latest
from .loop import StepContext


def warn(text: str) -> None:
    """A warning on stderr, once per job (every torchrun rank sees the same ones)."""
    if distributed.is_main():
        print(text, file=sys.stderr, flush=True)


def seed_everything(seed: int, deterministic: bool) -> None:
    """Seed Python, NumPy and torch; switch torch's deterministic algorithms on or off."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # cuBLAS needs it to be deterministic
    torch.use_deterministic_algorithms(deterministic)  # both ways: a later run in this process may differ
    torch.backends.cudnn.benchmark = not deterministic


def arch_args(m: ModelConfig) -> dict:
    """The ResNet constructor arguments recorded in model.json."""
    return {
        "stem": m.stem,
        "stride_on_1x1": m.stride_on_1x1,
        "zero_init_residual": m.zero_init_residual,
        "width": m.width,
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


def prepare_run(
    cfg: Config, out_dir: str | Path, resume: str | None, force: bool, writes: bool = True
) -> PreparedRun:
    """Validate cfg (ranges, choices), find the checkpoint to resume, write config.yaml and environment.json
    (when writes: rank 0), seed every RNG. Data paths are recorded absolute, so `--resume RUN_DIR` without
    DATA works from any working directory; the returned config is a copy, cfg is left as it was."""
    started = time.perf_counter()
    validate_config(cfg)  # before anything is written
    absolute = lambda p: str(Path(p).absolute()) if p else p
    cfg = dataclasses.replace(
        cfg, data=dataclasses.replace(cfg.data, train=absolute(cfg.data.train), val=absolute(cfg.data.val))
    )
    run_dir = Path(out_dir if resume in (None, "auto") else resume)
    resumed = find_resume(resume, run_dir, cfg, force)
    cfg = with_saved_total(resumed[1]["config"], cfg) if resumed else cfg
    env = environment_info()
    if writes:
        run_dir.mkdir(parents=True, exist_ok=True)
        write_text_atomic(run_dir / "config.yaml", dump_yaml(cfg))
        write_text_atomic(run_dir / "environment.json", json.dumps(env, indent=2) + "\n")
    seed_everything(cfg.train.seed, cfg.train.deterministic)
    return PreparedRun(cfg, run_dir, resumed, env, started)


def build_context(t: TrainConfig, device_name: str | None = None) -> StepContext:
    """Device and precision (one code path: autocast and GradScaler with enabled=). device_name overrides
    train.device (torchrun: this rank's cuda:LOCAL_RANK)."""
    device = pick_device(device_name or t.device)
    return StepContext(device, resolve_amp(t.amp, device), t.channels_last)


def build_model(m: ModelConfig, t: TrainConfig, num_classes: int, ctx: StepContext) -> torch.nn.Module:
    """The ResNet on ctx's device (pretrained weights, SyncBatchNorm under torchrun, channels_last)."""
    model = create_model(m.name, num_classes, **arch_args(m))
    if t.pretrained:
        load_pretrained(model, t.pretrained, m.name)  # logs what it loaded to stderr
    if t.sync_bn and distributed.world_from_env().distributed:
        if ctx.device.type != "cuda":
            raise UserError(
                "train.sync_bn=true: PyTorch's SyncBatchNorm runs on CUDA only; "
                "use --set train.sync_bn=false on CPU"
            )
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)  # before the EMA copy and the optimizer
    model = model.to(ctx.device)
    return model.to(memory_format=torch.channels_last) if t.channels_last else model


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
    """module torch.compile'd; where compiling fails (no C++ compiler, an op Inductor cannot lower) one line on
    stderr says why and training goes on eagerly: a run asked to be faster must not fail for it. Compiling is
    off by default: the compiled ResNet-50 step was no faster on the 2-core Zen 4 (128 px) and 0.96x / 1.06x of
    eager on the 2-core Xeon-AMX (128 / 224 px, batch 32), after a compile of 70-84 s."""

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
                    f"train.compile=true: torch.compile failed ({type(e).__name__}: {reason}); training eagerly"
                )
        return self.eager(*args, **kwargs)


class DataPipeline:
    """Loaders over the decoded cache with the uint8 transforms of data: DataConfig, batch_size each.

    uint8_batches is fixed here for every loader built: on a GPU the loaders ship uint8 batches and the
    normalisation runs on the device (measured 2672 vs 1659 images/s for ResNet-50 on an H100,
    bench/gpu_train_throughput.py --quick); lifelong always asks for them (replayed uint8 images join each
    batch before it is normalised)."""

    def __init__(
        self, d: DataConfig, batch_size: int, uint8_batches: bool, device_augment: bool = False
    ) -> None:
        # device_augment (data.augment_on, data/augment.py's resolve_augment_on): training batches arrive as
        # uint8 canvases and each carries the crops, flips and policy to run on the training device
        self.d, self.batch_size, self.uint8_batches = d, batch_size, uint8_batches or device_augment
        self.preprocess = make_preprocess(
            d.image_size, d.resize_size, d.augment, d.interpolation, d.mean, d.std
        )
        self.train_tf = build_train_transform(
            self.preprocess,
            d.augment,
            d.min_crop_scale,
            d.color_jitter,
            d.cache_size,
            d.random_erasing,
            on_device=device_augment,
        )
        self.eval_tf = build_eval_batch_transform(self.preprocess, d.cache_size)
        self.cache_dir = resolve_cache_dir(d.cache_dir) if d.cache else None

    def train_loader(self, samples: Samples, sampler: ResumableSampler, seed: int):
        """Augmented batches in sampler's order (which depends only on its seed and epoch)."""
        mix = BatchMix(self.d.mixup, self.d.cutmix, len(samples.classes))
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
