"""The configuration tree: one dataclass per section, each field with its default and what it means."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from ..utils.redact import mask_tree


@dataclass
class ModelConfig:
    name: str = "resnet50"
    stem: str = "imagenet"  # "imagenet" (7x7/2 + maxpool) or "small" (3x3/1 + maxpool)
    stride_on_1x1: bool = False  # paper/seed bottleneck stride placement instead of torchvision's v1.5
    zero_init_residual: bool = True
    width: int = 64  # channels of the stem and layer1; small values for tiny test models


@dataclass
class DataConfig:
    train: str = ""  # DATA argument
    val: str = ""  # optional separate validation DATA
    image_size: int = 224  # training / model input size
    progressive: float = 0.0  # progressive resizing: epoch 1 trains at this fraction of image_size, growing
    # to image_size at ~75% of the epochs (the rest at it); 0 = off, e.g. 0.5
    resize: str = "crop"  # how a photo becomes the square input: crop (short side, centre crop) |
    # letterbox (whole frame, long side, padded with the mean colour) | squash (whole frame, aspect ignored)
    resize_size: int = 0  # eval resize of the short side; 0 = image_size / 0.875
    augment: str = "crop_flip"  # crop_flip (random-resized-crop + flip) | resize (the seed: none) |
    # trivialaugment | randaugment (crop_flip, then that per-image policy)
    augment_on: str = "auto"  # where crop, flip and the policy run: auto (the GPU on CUDA, else host) |
    # host (DataLoader workers) | device (the training device; uint8 canvases)
    random_erasing: float = 0.0  # probability of erasing one rectangle per training image; 0 = off
    mixup: float = 0.0  # Mixup's Beta alpha (e.g. 0.2); 0 = off
    cutmix: float = 0.0  # CutMix's Beta alpha (e.g. 1.0); 0 = off; with mixup, one per batch
    min_crop_scale: float = 0.25  # lower bound of random-resized-crop's area scale
    interpolation: str = "bilinear"
    mean: list = field(default_factory=lambda: [0.485, 0.456, 0.406])
    std: list = field(default_factory=lambda: [0.229, 0.224, 0.225])
    val_fraction: float = 0.1  # stratified hold-out when DATA has no split
    split_by: str = ""  # CSV column whose groups stay on one side of the hold-out
    multi_label: str = "auto"  # CSV manifests: auto (multi-label when a label holds label_separator, or
    # one 0/1 column per class without a label column) | on | off (each label is one class name)
    label_separator: str = ";"  # joins a multi-label CSV's labels in its label column: cup;spoon
    num_workers: int = -1  # DataLoader workers; -1 = one per core, at most 4
    on_bad: str = "skip"  # bad image during training: "skip" (warn + count) or "fail"
    batches: str = ""  # OpenLORIS layout: batch numbers to use, e.g. "1,2"; "" = all
    color_jitter: float = 0.0  # brightness/contrast/saturation strength for training, e.g. 0.4
    cache: bool = True  # decode each image once into a uint8 memory-mapped cache
    cache_dir: str = ""  # "" = $RESNETCLS_CACHE or ~/.cache/resnetcls
    cache_size: int = 0  # stored short side (long side with letterbox); 0 = the eval resize
    sampler: str = "shuffle"  # shuffle | balanced (each class drawn equally often, with replacement)
    cache_max_gb: float = 50.0  # least-recently-used stores are deleted beyond this total; 0 = no limit
    cache_format: str = "auto"  # auto (decoded; compressed where that would not fit cache_max_gb or the
    # free space) | decoded | compressed (JPEG q90, decoded in the workers)
    worker_start: str = "auto"  # DataLoader workers: auto (fork on Linux, else spawn) | fork | spawn
    leak_check: bool = True  # warn when many val images have a near-duplicate in train (hashes the
    # decoded cache once, data/neardup.py; skipped with data.cache=false)


@dataclass
class TrainConfig:
    epochs: int = 10
    batch_size: int = 32
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    precision: str = (
        "auto"  # auto (bf16 where the device computes it natively, else fp32) | bf16 | fp16 | fp32
    )
    channels_last: bool = True
    compile: bool = False
    seed: int = 0
    deterministic: bool = False
    pretrained: str = ""
    grad_accum_steps: int = 1  # one optimizer step per N batches (effective batch = batch_size x N)
    grad_clip_norm: float = 0.0  # 0 = no clipping
    ema_decay: float = 0.0  # exponential moving average of the weights (e.g. 0.999); 0 = off
    sync_bn: bool = False  # torchrun: BatchNorm statistics over the global batch (SyncBatchNorm, CUDA)
    dist_timeout_s: float = 300.0  # torchrun: a collective waits at most this long for the other ranks
    nonfinite: str = "stop"  # a NaN/Inf loss: stop (exit 2, last good checkpoint kept) | skip (counted)
    time_budget: str = ""  # e.g. 90s, 20m, 1.5h: epochs chosen to fit the whole schedule; ""/0 = off
    patience: int = 0  # stop after N epochs without an improvement of ckpt.metric; 0 = off
    auto_recipe: bool = True  # engine/recipe.py keeps the recipe keys given (flags, --set, --config)
    # and picks the rest (model, size, augmentation, batch, epochs, ...) from the data
    # and this machine's speed; false: the defaults above, as they are
    race_share: float = 0.0  # with --time and the auto recipe: the budget's share raced among a few
    # candidate recipes (engine/race.py), the winner trained for the rest; 0 = no race (default), e.g. 0.2


@dataclass
class OptimConfig:
    name: str = "adamw"  # adamw | adam | sgd
    lr: float = 2e-3
    weight_decay: float = 0.05
    momentum: float = 0.9
    nesterov: bool = True
    decay_norm_and_bias: bool = False  # False: no weight decay on BN parameters and biases


@dataclass
class SchedConfig:
    name: str = "cosine"  # cosine | constant
    interval: str = "step"  # step: lr changes every optimizer step; epoch: once per epoch
    warmup_epochs: float = 1.0
    min_lr_ratio: float = 0.01


@dataclass
class LossConfig:
    name: str = "ce"  # ce (softmax cross-entropy) | bce (sigmoid on one-hot labels)
    label_smoothing: float = 0.1
    class_weights: str = "none"  # none | balanced (weight each class by 1 / its share of the train set)


@dataclass
class CkptConfig:
    keep_last: int = 3
    every_steps: int = 0  # 0 = only at the end of each epoch
    metric: str = "val_top1"  # chooses best/ and the kept best checkpoint: val_top1 | val_top5 | val_loss |
    # val_map (multi-label data: the mean average precision; chosen for it unless val_loss is given)


@dataclass
class LogConfig:
    tensorboard: bool = True
    every_steps: int = 0  # also log train metrics every N steps; 0 = per epoch only
    # Trackers (tracking.py; optional extras resnetcls[mlflow], resnetcls[wandb]); tracking.json keeps the
    # run ids.
    mlflow: bool = False  # log params, epoch metrics, tags and artefacts to MLflow
    mlflow_uri: str = ""  # tracking URI; "" = MLFLOW_TRACKING_URI, else sqlite:///RUN_DIR/mlflow.db
    mlflow_experiment: str = "resnetcls"
    wandb: bool = False  # the same to Weights & Biases
    wandb_project: str = "resnetcls"
    wandb_mode: str = "offline"  # offline (files in RUN_DIR/wandb, `wandb sync` later) | online | disabled
    share_paths: bool = False  # send absolute local paths (data.train, ...) to the trackers; false = names
    on_tracker_error: str = "stop"  # a tracker that cannot be reached at the start: stop (exit 2, before
    # training) | warn (one line, the run goes on without that tracker)


@dataclass
class EvalConfig:
    calibrate: bool = True  # fit a temperature on the val split at the end of train (calibration.py)
    # and ship it in model.json; false = raw softmax (T = 1, recorded as such)
    open_set: str = "auto"  # the open-set score fitted at the end of train (engine/openset.py) and shipped in
    # the model, so predict answers "unknown" below its threshold: auto (utils/openset.py's DEFAULT_SCORE) |
    # msp | energy | mahalanobis | knn | off (none fitted)
    open_set_accept: float = 0.95  # the share of known val images the threshold accepts
    open_set_unknown: str = ""  # a folder of images of none of the classes (train --unknown): the threshold
    # then best separates them from the val images (balanced accuracy) instead of open_set_accept


@dataclass
class DistillConfig:
    """`train --teacher MODEL_DIR`: knowledge distillation from a trained model of the same classes
    (engine/distill.py). loss = (1 - alpha) * task loss + alpha * temperature^2 * KL(teacher || student) of
    the temperature-softened outputs (Hinton et al. 2015)."""

    teacher: str = ""  # the teacher's model directory (or run directory: its best/); "" = no distillation
    temperature: float = 4.0  # softens both outputs; the KL term is scaled by its square
    alpha: float = 0.5  # the KL term's weight; the task loss (loss.*) gets 1 - alpha


@dataclass
class LifelongConfig:
    tasks: str = ""  # CSV column whose values are the tasks, "batches" (OpenLORIS) or "" (one task
    # per DATA argument)
    order: str = ""  # comma-separated task values in training order; "a-b" = numeric range
    bins: int = 0  # numeric column: N equal-count ranges of its values instead of --order
    strategy: str = "naive"  # naive | replay | derpp | ncm | ewc | lwf | joint
    buffer_size: int = 200  # replay, derpp, ncm: images kept (class-balanced reservoir)
    ewc_lambda: float = (
        10000.0  # ewc: weight of the quadratic penalty (the best of bench/lifelong_strategies.py
    )
    # --sweep on COIL-100 classes; 1000 forgot 0.86 there, naive 0.92)
    lwf_alpha: float = 1.0  # lwf: weight of the distillation loss
    lwf_temperature: float = 2.0
    derpp_alpha: float = 0.3  # derpp: weight of the MSE to the stored logits (Buzzega et al. 2020: 0.1-0.5)
    derpp_beta: float = 1.0  # derpp: weight of the buffer images' cross-entropy (1 = replay's; the paper's
    # 0.5 forgot more on COIL-100 classes, see README)
    datasets: list = field(default_factory=list)  # one DATA per task (when `tasks` is "")


@dataclass
class ServeConfig:
    """`resnetcls serve`'s settings, each also its flag (serve.max_batch is --max-batch); explicit flags
    win over the config."""

    host: str = "127.0.0.1"  # address to listen on (0.0.0.0: every interface)
    port: int = 8000
    workers: int = 1  # server processes, each with its own model copy
    backend: str = "auto"  # as predict's --backend
    precision: str = "auto"  # as predict's --precision: auto | bf16 | fp32
    max_body_mb: float = 20.0  # larger request bodies get 413
    max_pixels: int = 40_000_000  # larger images get 422
    max_batch: int = 32  # most images per model call across requests
    batch_wait_ms: float = 0.0  # how long a model call waits for more requests to join its batch
    max_decode_mb: float = 1024.0  # decode memory in flight; beyond it 503 + Retry-After
    max_queue: int = 256  # images waiting for the model; beyond it 503
    max_batch_pixels: int = 100_000_000  # pixels of all images of one /predict/batch request; beyond it 413
    admission_wait_s: float = 2.0  # how long a decode waits for budget
    stall_s: float = 30.0  # /healthz answers 503 once one model call has run longer than this
    keep_alive_s: float = 5.0  # idle keep-alive connections are closed after this
    header_timeout_s: float = 10.0  # time allowed for a request's head
    body_timeout_s: float = 30.0  # time allowed for a request's body (408)
    max_connections: int = 64  # requests being processed at once; beyond it 503 + Retry-After
    max_idle_connections: int = 64  # connections idle or still sending; past it the longest waiting is closed
    max_idle_per_client: int = 16  # the same, from one client address
    open_set: str = "auto"  # as predict's --open-set: auto (on when the model has a threshold) | on | off
    unknown_accept: float = 0.0  # as predict's --unknown-accept; 0: the model's own share
    threshold: float = -1.0  # as predict's --threshold (multi-label models); -1: each class's own


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    sched: SchedConfig = field(default_factory=SchedConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    ckpt: CkptConfig = field(default_factory=CkptConfig)
    log: LogConfig = field(default_factory=LogConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    distill: DistillConfig = field(default_factory=DistillConfig)
    lifelong: LifelongConfig = field(default_factory=LifelongConfig)
    serve: ServeConfig = field(default_factory=ServeConfig)


def flatten(tree: dict, prefix: str = "") -> dict[str, Any]:
    """A nested dict -> {'a.b': value}."""
    flat = {}
    for k, v in tree.items():
        if isinstance(v, dict):
            flat.update(flatten(v, f"{prefix}{k}."))
        else:
            flat[f"{prefix}{k}"] = v
    return flat


def config_to_dict(cfg: Config) -> dict:
    """The config as it is recorded (config.yaml, checkpoints, trackers): passwords in URLs masked
    (redact.py). The live values (the URL a driver connects with) are read from the Config itself."""
    return mask_tree(dataclasses.asdict(cfg))
