"""Typed run configuration: dataclasses, YAML presets in configs/, and dotted ``key=value`` overrides."""

from __future__ import annotations

import contextlib
import dataclasses
import math
import reprlib
import types
import typing
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from diamusic.data import card_layout
from diamusic.errors import DiamusicError, did_you_mean
from diamusic.model import MODEL_PRESETS
from diamusic.patterns import AUDIO_CHANNELS, DelayPattern, PatternError, layout_name

CONFIG_DIR = Path(__file__).parent / "configs"
DEFAULT_PRESET = "tiny-cpu"  # the preset a command uses when none is named: small enough for a CPU
OPTIMIZERS = ("adamw", "adamw8bit")


Precision = Literal["auto", "fp32", "bf16"]  # auto: bf16 autocast on a GPU, fp32 on CPU
Init = Literal["scratch", "pretrained"]
Attention = Literal["sdpa", "eager"]  # sdpa: torch's fused kernels (flash / memory-efficient on GPU)
TrackerName = Literal["wandb", "tensorboard"]


class ConfigError(DiamusicError):
    """A config file or override that cannot be used; the message names the key."""


@dataclass
class ModelConfig:
    preset: str = "tiny"  # a name in diamusic.model.MODEL_PRESETS: tiny | small | dia-1.6b
    init: Init = "scratch"
    pretrained: str = "nari-labs/Dia-1.6B-0626"  # hub id or local directory, used with init=pretrained
    freeze_encoder: bool = False
    lora_rank: int = 0  # > 0 trains LoRA adapters (peft) instead of the full decoder
    lora_alpha: float = 16.0
    gradient_checkpointing: bool = False  # recompute activations in the backward: less memory, more time
    attention: Attention = "sdpa"


@dataclass
class DataConfig:
    path: str = ""  # a dataset directory written by `diamusic prepare`
    crop_frames: int = 256  # frames of a clip in one training or evaluation sample (86 frames ~ 1 s)
    eos_crop_share: float = 0.2  # share of crops of a source's last clip that end where the music ends
    num_workers: int = 0  # loader processes; 0 builds batches in the training process
    pin_memory: bool = True  # page-locked batches for faster host-to-GPU copies (GPU only)
    eos_in_loss: bool = True  # the model must learn to stop; turning this off is for ablations only
    # tag-style captions ("piano, calm, 90 bpm"; sentences are left whole), varied per training sample
    # so the model does not learn one order or length of caption: each tag dropped with this
    # probability (one always stays), the order shuffled, at most tag_limit tags kept (0: all)
    tag_dropout: float = 0.0
    tag_shuffle: bool = False
    tag_limit: int = 0
    # the audio channels a preset was made for ("mono" or "stereo"), checked against the dataset's;
    # empty: whatever the dataset holds
    channels: str = ""


@dataclass
class OptimConfig:
    # adamw | adamw8bit: torchao's AdamW with its two moments in 8 bits (2 bytes per trained weight instead of 8;
    # `pip install torchao`, or the optim8bit extra), for a full fine-tune on a smaller GPU
    name: str = "adamw"
    lr: float = 3e-4
    min_lr_ratio: float = 0.1  # cosine decays to lr * min_lr_ratio
    warmup_steps: int = 50
    weight_decay: float = 0.1  # never applied to norms, biases or embeddings
    beta1: float = 0.9
    beta2: float = 0.95
    grad_clip: float = 1.0
    # optimizer steps with a non-finite loss or gradient norm that are skipped (no update) before
    # training stops; 0 stops at the first
    skip_nonfinite_steps: int = 0


@dataclass
class EvalConfig:
    every: int = 100  # optimizer steps between evaluations (and always at the last step)
    # at most this many eval clips, and as many train clips for the train/eval gap, chosen by the
    # dataset alone: every seed, pattern and process count is scored on the same clips (0: none)
    clips: int = 256
    # a CLAP model (hub id or folder, e.g. laion/larger_clap_music) for the CLAP score and FAD ("": none)
    clap_model: str = ""


@dataclass
class EarlyStopConfig:
    """Stop before `steps` (a checkpoint is written at that evaluation; the reason goes into run.json)."""

    patience: int = 0  # evaluations without an eval loss below the best by more than min_delta (0: never)
    min_delta: float = 0.0
    max_gap: float = 0.0  # eval loss minus train-subset loss above this: over-fitting (0: never)


@dataclass
class CheckpointConfig:
    every: int = 500  # optimizer steps between checkpoints (and always at the last step)
    keep: int = 3  # the newest N are kept; 0 keeps all


@dataclass
class LoggingConfig:
    every: int = 10  # optimizer steps per logging window (train metrics are window means)


@dataclass
class TrackingConfig:
    backends: list[TrackerName] = field(default_factory=list)  # metrics.jsonl is always written
    project: str = "diamusic"  # wandb project
    group: str | None = None  # wandb group
    run_name: str | None = None  # default: the run directory's name
    tags: list[str] = field(default_factory=list)  # wandb tags (an ablation tags pattern and seed)


@dataclass
class SamplesConfig:
    # audio from fixed prompts every N optimizer steps and at the last one (0: none)
    every: int = 0
    prompts: list[str] = field(default_factory=list)  # empty: the first eval captions
    num_prompts: int = 2
    seconds: float = 4.0
    temperatures: list[float] = field(default_factory=lambda: [1.0])  # one set of clips per temperature


@dataclass
class TrainConfig:
    delay_pattern: str = "musicgen"
    seed: int = 0
    steps: int = 1000  # optimizer steps
    batch_size: int = 8  # per process and micro-batch
    grad_accum: int = 1
    cfg_dropout: float = 0.15  # chance a sample's caption is replaced by the unconditional input
    codebook_weights: list[float] | None = None  # per-codebook loss weights, default all 1
    precision: Precision = "auto"
    compile: bool = False  # torch.compile the model's forward and backward (the first steps compile)
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    early_stop: EarlyStopConfig = field(default_factory=EarlyStopConfig)
    checkpoints: CheckpointConfig = field(default_factory=CheckpointConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    samples: SamplesConfig = field(default_factory=SamplesConfig)


def _coerce(value: Any, annotation: Any, key: str) -> Any:
    """Check a YAML value against a dataclass field's type, converting where it is lossless."""
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin is Literal:
        if value not in args:
            raise ConfigError(f"{key}: expected one of {', '.join(map(str, args))}, got {_show(value)}")
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        others = [a for a in args if a is not type(None)]
        return _coerce(value, others[0], key)
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"{key}: expected a list, got {_show(value)}")
        return [_coerce(v, args[0], f"{key}[{i}]") for i, v in enumerate(value)]
    if dataclasses.is_dataclass(annotation):
        return _build(annotation, value, key + ".")
    if annotation is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key}: expected true or false, got {_show(value)}")
        return value
    if annotation is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key}: expected an integer, got {_show(value)}")
        return value
    if annotation is float:
        if isinstance(value, str):  # YAML 1.1 reads "1e-4" (no dot) as a string
            with contextlib.suppress(ValueError):
                value = float(value)
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"{key}: expected a number, got {_show(value)}")
        return float(value)
    if annotation is str:
        if isinstance(value, bool) or not isinstance(value, str | int | float):
            raise ConfigError(f"{key}: expected a string, got {_show(value)}")
        return str(value)
    return value


def _show(value: Any) -> str:
    """A config value for an error message, cut short (a nested list could be any size)."""
    short = reprlib.Repr()
    short.maxlevel, short.maxlist, short.maxdict, short.maxstring, short.maxother = 2, 4, 4, 40, 40
    return short.repr(value)


MAX_CONFIG_VALUES = 100_000  # values in a config, aliases expanded: far above any real one


def _check_size(tree: Any, source: str) -> None:
    """Refuse a config that expands to more values than any real one holds: YAML aliases can make a
    few hundred bytes stand for billions of values (an alias bomb), and walking them would never end."""
    count, stack = 0, [tree]
    while stack:
        node = stack.pop()
        count += 1
        if count > MAX_CONFIG_VALUES:
            raise ConfigError(f"{source}: expands to more than {MAX_CONFIG_VALUES} values (YAML aliases?)")
        if isinstance(node, dict):
            stack.extend(node.keys())
            stack.extend(node.values())
        elif isinstance(node, list):
            stack.extend(node)


def _build(cls: type, values: Any, prefix: str = "") -> Any:
    if not isinstance(values, dict):
        raise ConfigError(f"{prefix or 'config'}: expected a mapping, got {_show(values)}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(str(key) for key in values if key not in names)  # YAML keys may be numbers too
    if unknown:
        hint = did_you_mean(prefix + unknown[0], [prefix + n for n in names])
        raise ConfigError(f"unknown config key {prefix + unknown[0]!r}{hint} (known: {', '.join(sorted(names))})")
    kwargs = {k: _coerce(v, hints[k], prefix + k) for k, v in values.items()}
    return cls(**kwargs)


def _set_dotted(tree: dict, key: str, value: Any) -> None:
    parts = key.split(".")
    node = tree
    for part in parts[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"setting {key}: {part!r} is not a section")
    node[parts[-1]] = value


def resolve_preset(name_or_path: str) -> Path:
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml") and path.exists():
        return path
    preset = CONFIG_DIR / f"{name_or_path}.yaml"
    if preset.exists():
        return preset
    known = sorted(p.stem for p in CONFIG_DIR.glob("*.yaml"))
    hint = did_you_mean(name_or_path, known)
    raise ConfigError(f"no config file or preset named {name_or_path!r}{hint} (presets: {', '.join(known)})")


def load_config(
    preset: str | None = None, overrides: dict[str, Any] | None = None, sets: list[str] | None = None
) -> TrainConfig:
    """Defaults <- YAML preset/file <- explicit overrides (dotted keys) <- ``key=value`` strings."""
    tree: dict[str, Any] = {}
    if preset:
        path = resolve_preset(preset)
        try:
            tree = yaml.safe_load(path.read_text()) or {}
        except (yaml.YAMLError, UnicodeDecodeError) as exc:
            raise ConfigError(f"{path}: not valid YAML ({exc.__class__.__name__})") from exc
        if not isinstance(tree, dict):
            raise ConfigError(f"{path}: expected a mapping of config keys, got a YAML {type(tree).__name__}")
        _check_size(tree, str(path))
    for key, value in (overrides or {}).items():
        if value is not None:
            _set_dotted(tree, key, value)
    for item in sets or []:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"setting {item!r}: expected key=value, e.g. optim.lr=1e-4")
        try:
            value = yaml.safe_load(raw) if raw else ""
        except yaml.YAMLError:
            value = raw
        _check_size(value, f"setting {key.strip()}")
        _set_dotted(tree, key.strip(), value)
    config = _build(TrainConfig, tree)
    validate(config)
    return config


def validate(config: TrainConfig) -> None:
    """Every check that needs no model: a config that loads is one a run can start with."""
    o, d = config.optim, config.data
    checks = [
        (config.steps > 0, "steps must be > 0"),
        (config.batch_size > 0, "batch_size must be > 0"),
        (config.grad_accum > 0, "grad_accum must be > 0"),
        (0.0 <= config.cfg_dropout <= 1.0, "cfg_dropout must be in [0, 1]"),
        (d.crop_frames > 0, "data.crop_frames must be > 0"),
        (0.0 <= d.eos_crop_share <= 1.0, "data.eos_crop_share must be in [0, 1]"),
        (d.num_workers >= 0, "data.num_workers must be >= 0"),
        (0.0 <= d.tag_dropout < 1.0, "data.tag_dropout must be in [0, 1)"),
        (d.tag_limit >= 0, "data.tag_limit must be >= 0 (0 = no limit)"),
        (d.channels in ("", *AUDIO_CHANNELS), f"data.channels must be {' or '.join(AUDIO_CHANNELS)} (or empty)"),
        (
            o.name in OPTIMIZERS,
            f"optim.name {o.name!r}{did_you_mean(o.name, OPTIMIZERS)} must be one of {', '.join(OPTIMIZERS)}",
        ),
        (0 < o.lr < math.inf, "optim.lr must be a finite number > 0"),
        (0.0 <= o.min_lr_ratio <= 1.0, "optim.min_lr_ratio must be in [0, 1]"),
        (o.warmup_steps >= 0, "optim.warmup_steps must be >= 0"),
        (0.0 <= o.weight_decay < math.inf, "optim.weight_decay must be >= 0"),
        (0.0 <= o.beta1 < 1.0 and 0.0 <= o.beta2 < 1.0, "optim.beta1 and optim.beta2 must be in [0, 1)"),
        (0.0 < o.grad_clip < math.inf, "optim.grad_clip must be a finite number > 0"),
        (o.skip_nonfinite_steps >= 0, "optim.skip_nonfinite_steps must be >= 0"),
        (
            config.model.preset in MODEL_PRESETS,
            f"model.preset {config.model.preset!r}{did_you_mean(config.model.preset, MODEL_PRESETS)} must be one of "
            f"{', '.join(MODEL_PRESETS)}",
        ),
        (config.model.lora_rank >= 0, "model.lora_rank must be >= 0 (0 = full fine-tuning)"),
        (config.eval.every > 0, "eval.every must be > 0 (set it to steps to evaluate only at the end)"),
        (config.eval.clips >= 0, "eval.clips must be >= 0"),
        (config.early_stop.patience >= 0, "early_stop.patience must be >= 0 (0 = off)"),
        (0.0 <= config.early_stop.min_delta < math.inf, "early_stop.min_delta must be a finite number >= 0"),
        (0.0 <= config.early_stop.max_gap < math.inf, "early_stop.max_gap must be a finite number >= 0 (0 = off)"),
        (
            config.eval.clips > 0 or not (config.early_stop.patience or config.early_stop.max_gap),
            "early_stop needs eval losses: eval.clips must be > 0",
        ),
        (config.checkpoints.every > 0, "checkpoints.every must be > 0 (set it to steps to save only at the end)"),
        (config.checkpoints.keep >= 0, "checkpoints.keep must be >= 0 (0 = keep all)"),
        (config.logging.every > 0, "logging.every must be > 0"),
        (config.samples.every >= 0, "samples.every must be >= 0 (0 = off)"),
        (config.samples.num_prompts > 0, "samples.num_prompts must be > 0"),
        (0.0 < config.samples.seconds < math.inf, "samples.seconds must be a finite number > 0"),
        (
            bool(config.samples.temperatures) and all(0.0 <= t < math.inf for t in config.samples.temperatures),
            "samples.temperatures must be one or more finite numbers >= 0",
        ),
    ]
    for ok, message in checks:
        if not ok:
            raise ConfigError(message)
    pattern = pattern_of_config(config)
    weights = config.codebook_weights
    if weights is not None and len(weights) not in (pattern.num_codebooks, pattern.num_streams):
        sides = f" (or {pattern.num_streams}, per side)" if pattern.audio_channels > 1 else ""
        raise ConfigError(f"codebook_weights has {len(weights)} entries for {pattern.num_codebooks} codebooks{sides}")
    if weights is not None and not all(0.0 <= w < math.inf for w in weights):
        raise ConfigError("codebook_weights must be finite numbers >= 0")
    if weights is not None and not any(weights):  # the loss would be 0/0: NaN from the first step
        raise ConfigError("codebook_weights are all 0: at least one codebook must count in the loss")


def pattern_of_config(config: TrainConfig) -> DelayPattern:
    """The config's delay pattern, checked against the dataset's codebook count and audio channels
    when the dataset exists."""
    codebooks, channels = (card_layout(config.data.path) if config.data.path else None) or (None, 1)
    wanted = config.data.channels
    if wanted and codebooks is not None and AUDIO_CHANNELS.get(wanted) != channels:
        found = layout_name(channels)
        raise ConfigError(f"data.channels: the config is for {wanted} data, {config.data.path} is {found}")
    try:
        return DelayPattern.parse(config.delay_pattern, num_codebooks=codebooks, audio_channels=channels)
    except PatternError as exc:
        raise ConfigError(f"delay_pattern: {exc}") from exc


def to_dict(config: TrainConfig) -> dict[str, Any]:
    return asdict(config)


def from_dict(values: dict[str, Any]) -> TrainConfig:
    return _build(TrainConfig, values)
