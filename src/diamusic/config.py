"""Typed run configuration: dataclasses, YAML presets in configs/, and `--set key=value` overrides."""

from __future__ import annotations

import contextlib
import dataclasses
import types
import typing
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml

CONFIG_DIR = Path(__file__).parent / "configs"


class ConfigError(ValueError):
    """A config file or override that cannot be used; the message names the key."""


@dataclass
class ModelConfig:
    preset: str = "tiny"  # tiny | small | dia-1.6b
    init: str = "scratch"  # scratch | pretrained
    pretrained: str = "nari-labs/Dia-1.6B-0626"  # hub id or local directory, used with init=pretrained
    freeze_encoder: bool = False
    lora_rank: int = 0  # > 0 trains LoRA adapters (peft) instead of the full decoder
    lora_alpha: float = 16.0
    gradient_checkpointing: bool = False


@dataclass
class DataConfig:
    path: str = ""  # a dataset directory written by `diamusic prepare`
    max_frames: int = 256  # random crop length in codec frames (86 frames ~ 1 s)
    num_workers: int = 0
    eos_in_loss: bool = True  # the model must learn to stop; turning this off is for ablations only


@dataclass
class OptimConfig:
    lr: float = 3e-4
    min_lr_ratio: float = 0.1  # cosine decays to lr * min_lr_ratio
    warmup_steps: int = 50
    weight_decay: float = 0.1  # never applied to norms, biases or embeddings
    beta1: float = 0.9
    beta2: float = 0.95
    grad_clip: float = 1.0


@dataclass
class TrainConfig:
    delay_pattern: str = "musicgen"
    seed: int = 0
    steps: int = 1000
    batch_size: int = 8  # per process and micro-batch
    grad_accum: int = 1
    cfg_dropout: float = 0.15  # chance a sample's caption is replaced by the unconditional input
    codebook_weights: list[float] | None = None  # per-codebook loss weights, default all 1
    precision: str = "auto"  # auto (bf16 on GPU, fp32 on CPU) | fp32 | bf16
    log_every: int = 10
    eval_every: int = 100
    eval_batches: int = 8  # batches of the eval split (and of the fixed train subset) per evaluation
    checkpoint_every: int = 500
    keep_checkpoints: int = 3
    tracker: list[str] = field(default_factory=list)  # any of: wandb, tensorboard (metrics.jsonl always)
    wandb_project: str = "diamusic"
    wandb_group: str | None = None
    run_name: str | None = None
    demo_every: int = 0  # generate demo audio every N steps (0 = only at the end when demo_prompts set)
    demo_prompts: list[str] = field(default_factory=list)  # empty: the first eval captions
    demo_num_prompts: int = 2
    demo_seconds: float = 4.0
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)


def _coerce(value: Any, annotation: Any, key: str) -> Any:
    """Check a YAML value against a dataclass field's type, converting where it is lossless."""
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        others = [a for a in args if a is not type(None)]
        return _coerce(value, others[0], key)
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        return [_coerce(v, args[0], f"{key}[{i}]") for i, v in enumerate(value)]
    if dataclasses.is_dataclass(annotation):
        return _build(annotation, value, key + ".")
    if annotation is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key}: expected true or false, got {value!r}")
        return value
    if annotation is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key}: expected an integer, got {value!r}")
        return value
    if annotation is float:
        if isinstance(value, str):  # YAML 1.1 reads "1e-4" (no dot) as a string
            with contextlib.suppress(ValueError):
                value = float(value)
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"{key}: expected a number, got {value!r}")
        return float(value)
    if annotation is str:
        if isinstance(value, bool) or value is None:
            raise ConfigError(f"{key}: expected a string, got {value!r}")
        return str(value)
    return value


def _build(cls: type, values: Any, prefix: str = "") -> Any:
    if not isinstance(values, dict):
        raise ConfigError(f"{prefix or 'config'}: expected a mapping, got {values!r}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - names)
    if unknown:
        raise ConfigError(f"unknown config key {prefix + unknown[0]!r} (known: {', '.join(sorted(names))})")
    kwargs = {k: _coerce(v, hints[k], prefix + k) for k, v in values.items()}
    return cls(**kwargs)


def _set_dotted(tree: dict, key: str, value: Any) -> None:
    parts = key.split(".")
    node = tree
    for part in parts[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"--set {key}: {part!r} is not a section")
    node[parts[-1]] = value


def resolve_preset(name_or_path: str) -> Path:
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml") and path.exists():
        return path
    preset = CONFIG_DIR / f"{name_or_path}.yaml"
    if preset.exists():
        return preset
    known = ", ".join(sorted(p.stem for p in CONFIG_DIR.glob("*.yaml")))
    raise ConfigError(f"no config file or preset named {name_or_path!r} (presets: {known})")


def load_config(
    preset: str | None = None, overrides: dict[str, Any] | None = None, sets: list[str] | None = None
) -> TrainConfig:
    """Defaults <- YAML preset/file <- explicit overrides (dotted keys) <- `--set key=value` strings."""
    tree: dict[str, Any] = {}
    if preset:
        path = resolve_preset(preset)
        try:
            tree = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path}: not valid YAML ({exc.__class__.__name__})") from exc
    for key, value in (overrides or {}).items():
        if value is not None:
            _set_dotted(tree, key, value)
    for item in sets or []:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"--set {item!r}: expected key=value, e.g. optim.lr=1e-4")
        try:
            value = yaml.safe_load(raw) if raw else ""
        except yaml.YAMLError:
            value = raw
        _set_dotted(tree, key.strip(), value)
    config = _build(TrainConfig, tree)
    validate(config)
    return config


def validate(config: TrainConfig) -> None:
    checks = [
        (config.steps > 0, "steps must be > 0"),
        (config.batch_size > 0, "batch_size must be > 0"),
        (config.grad_accum > 0, "grad_accum must be > 0"),
        (config.log_every > 0, "log_every must be > 0"),
        (config.eval_every > 0, "eval_every must be > 0 (set it to steps to evaluate only at the end)"),
        (config.checkpoint_every > 0, "checkpoint_every must be > 0 (set it to steps to save only at the end)"),
        (config.demo_every >= 0, "demo_every must be >= 0 (0 = off)"),
        (0.0 <= config.cfg_dropout <= 1.0, "cfg_dropout must be in [0, 1]"),
        (config.data.max_frames > 0, "data.max_frames must be > 0"),
        (config.optim.lr > 0, "optim.lr must be > 0"),
        (config.model.init in ("scratch", "pretrained"), "model.init must be scratch or pretrained"),
        (config.precision in ("auto", "fp32", "bf16"), "precision must be auto, fp32 or bf16"),
        (all(t in ("wandb", "tensorboard") for t in config.tracker), "tracker entries: wandb, tensorboard"),
    ]
    for ok, message in checks:
        if not ok:
            raise ConfigError(message)


def to_dict(config: TrainConfig) -> dict[str, Any]:
    return asdict(config)


def from_dict(values: dict[str, Any]) -> TrainConfig:
    return _build(TrainConfig, values)
