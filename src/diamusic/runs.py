"""A run directory: its files, its checkpoints, the checks before resuming it, and loading it back.

A run directory holds ``run.json`` (resolved config, pattern, dataset fingerprint, codec card,
code version, notes), ``config.yaml``, ``metrics.jsonl``, ``codec/`` (so generation needs only
the run), ``checkpoints/step_XXXXXX/`` and ``samples/step_XXXXXX/``.

How a checkpoint is written and checked is `diamusic.checkpoints`' business.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import yaml

from diamusic import __version__
from diamusic.checkpoints import CheckpointError, checkpoint_dir, checkpoints_of, step_name, step_of, verify_checkpoint
from diamusic.codecs import Codec, load_codec
from diamusic.config import TrainConfig, to_dict
from diamusic.errors import DiamusicError, first_line
from diamusic.model import build_model, load_pretrained, merge_adapters, pattern_of, vocab_of, weights_fingerprint
from diamusic.patterns import DelayPattern
from diamusic.tokens import AudioVocab, describe_layout

if TYPE_CHECKING:
    from transformers import DiaForConditionalGeneration

    from diamusic.data.dataset import CodesDataset

RUN_FILE = "run.json"
EVAL_FILE = "eval.json"  # `diamusic eval`'s metrics of the run, as an ablation keeps them
SAMPLES = "samples"


class RunError(DiamusicError):
    """A run directory or resume request that cannot be honoured; one line for the user."""


def samples_dir(run_dir: Path, step: int) -> Path:
    return Path(run_dir) / SAMPLES / step_name(step)


def resolve_checkpoint(run_dir: Path, which: str | int = "latest") -> Path:
    """``latest`` or a step number (an int or its digits) -> that checkpoint's directory."""
    found = checkpoints_of(run_dir)
    if not found:
        raise RunError(f"{run_dir} has no checkpoints")
    if which == "latest":
        return found[-1]
    if not str(which).isdigit():
        raise RunError(f"checkpoint {which!r}: expected a step number or 'latest'")
    wanted = checkpoint_dir(run_dir, int(which))
    if wanted not in found:
        steps = ", ".join(str(step_of(p)) for p in found)
        raise RunError(f"{run_dir} has no checkpoint at step {int(which)} (have: {steps})")
    return wanted


def code_version() -> str:
    """Package version plus the git commit (and a dirty mark) when run from a checkout."""
    here = Path(__file__).resolve().parent
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=here, capture_output=True, text=True, timeout=5
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=here,
            capture_output=True,
            text=True,
            timeout=5,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        sha, dirty = "", ""
    return f"{__version__}+{sha}{'.dirty' if dirty else ''}" if sha else __version__


def default_device() -> str:
    """Where training and generation run unless told otherwise."""
    return "cuda" if torch.cuda.is_available() else "cpu"


def check_device(name: str | None) -> str:
    """A device asked for by name (None: the default), refused in one line unless it exists here."""
    if name is None:
        return default_device()
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError):
        raise RunError(f"--device {name}: not a device name (e.g. cpu, cuda, cuda:1, mps)") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RunError(f"--device {name}: this machine has no CUDA GPU that torch can use")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise RunError(f"--device {name}: there are {torch.cuda.device_count()} CUDA GPUs here (cuda:0 ...)")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise RunError(f"--device {name}: MPS is not available here")
    if device.type not in ("cpu", "cuda", "mps"):
        raise RunError(f"--device {name}: diamusic runs on cpu, cuda or mps")
    return name


def check_run_dir(
    run_dir: Path, config: TrainConfig, fingerprint: str, codec: dict[str, Any], resume: bool, force: bool
) -> dict[str, Any] | None:
    """A new run needs a directory without a run; a resumed one the same pattern, model and dataset
    (``force`` overrides those) and always a codec of the same shape. Returns the resumed run's
    run.json, or None for a new run."""
    run_file = run_dir / RUN_FILE
    if not resume:
        if run_file.exists():
            raise RunError(f"{run_dir} already holds a run: choose another run directory, or resume it", "resume")
        return None
    if not run_file.exists():
        raise RunError(f"cannot resume: {run_dir} holds no run (no {RUN_FILE})")
    previous = json.loads(run_file.read_text())
    old = previous["config"]
    checks = [
        ("delay pattern", old["delay_pattern"], config.delay_pattern),
        ("model", f"{old['model']['preset']}/{old['model']['init']}", f"{config.model.preset}/{config.model.init}"),
        ("dataset fingerprint", previous["dataset_fingerprint"], fingerprint),
    ]
    for what, was, now in checks:
        if str(was) != str(now) and not force:
            raise RunError(
                f"cannot resume: the run used {what} {was}, not {now}: start a new run, or force it", "force"
            )
    run, data = AudioVocab.of_codec(previous["codec"]), AudioVocab.of_codec(codec)
    if run != data:
        raise RunError(
            f"cannot resume: the run's codes are {describe_layout(run)}, the dataset's {describe_layout(data)}; "
            "the model's vocabulary cannot change (start a new run, with model.init=pretrained from this one)"
        )
    return previous


def record_dataset_switch(run_dir: Path, data: CodesDataset, step: int) -> str | None:
    """After a forced resume onto another dataset: run.json names the new one (and keeps the old in
    its history) and, where the codec changed, the run's ``codec/`` becomes the dataset's, so
    generation decodes with the codec the model is now trained on. Returns a note, or None."""
    run_file = run_dir / RUN_FILE
    info = json.loads(run_file.read_text())
    if info["dataset_fingerprint"] == data.fingerprint:
        return None
    switch = {k: info[k] for k in ("dataset", "dataset_fingerprint", "codec")}
    info.setdefault("switches", []).append({"until_step": step, **switch})
    info.update(dataset=str(data.path.resolve()), dataset_fingerprint=data.fingerprint, codec=data.card["codec"])
    note = f"dataset switched at step {step}: {switch['dataset']} -> {info['dataset']}"
    if switch["codec"].get("fingerprint") != data.card["codec"].get("fingerprint"):
        staged = run_dir / "codec.new"
        shutil.rmtree(staged, ignore_errors=True)
        shutil.copytree(data.path / "codec", staged)
        shutil.rmtree(run_dir / "codec", ignore_errors=True)  # gone already if a kill came between these two
        staged.rename(run_dir / "codec")
        note += (
            f" (codec {switch['codec'].get('fingerprint')} -> {data.card['codec'].get('fingerprint')}, codec/ replaced)"
        )
    info["notes"] = [*info.get("notes", []), note]
    write_run_info(run_dir, info)
    return note


def record_early_stop(run_dir: Path, step: int, reason: str) -> bool:
    """run.json says where and why config.early_stop ended the run; False where it said so already."""
    info = json.loads((run_dir / RUN_FILE).read_text())
    if info.get("early_stop", {}).get("step") == step:
        return False
    info["early_stop"] = {"step": step, "reason": reason}
    write_run_info(run_dir, info)
    return True


def final_step(run_dir: Path, steps: int) -> int:
    """The step a run ends at: where config.early_stop stopped it, else its config's ``steps``."""
    path = run_dir / RUN_FILE
    stop = json.loads(path.read_text()).get("early_stop") if path.exists() else None
    return stop["step"] if stop else steps


def write_run_info(run_dir: Path, info: dict[str, Any]) -> None:
    """run.json, replaced whole: a kill leaves the old file or the new one."""
    tmp = run_dir / (RUN_FILE + ".tmp")
    tmp.write_text(json.dumps(info, indent=2))
    os.replace(tmp, run_dir / RUN_FILE)


def write_run_files(
    run_dir: Path,
    config: TrainConfig,
    data: CodesDataset,
    pattern: DelayPattern,
    notes: list[str],
    parameters: dict[str, int],
    base: str | None = None,
) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.yaml").write_text(yaml.safe_dump(to_dict(config), sort_keys=False))
    info = {
        "config": to_dict(config),
        "pattern": {"name": pattern.name, "delays": pattern.to_list()},
        "dataset": str(data.path.resolve()),
        "dataset_fingerprint": data.fingerprint,
        "codec": data.card["codec"],
        "code_version": code_version(),
        "notes": notes,
        "parameters": parameters,  # total and trainable (fewer with LoRA or a frozen encoder)
        "base_fingerprint": base,  # LoRA: the base weights the adapters go onto (checked when loaded)
        "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }
    write_run_info(run_dir, info)
    # generation must work from the run dir alone, so the codec travels with it
    if not (run_dir / "codec").exists():
        shutil.copytree(data.path / "codec", run_dir / "codec")


@dataclass
class LoadedRun:
    model: DiaForConditionalGeneration
    pattern: DelayPattern
    vocab: AudioVocab
    codec: Codec
    checkpoint: Path
    info: dict[str, Any]  # run.json


def lora_model(ckpt: Path, info: dict[str, Any]) -> torch.nn.Module:
    """A LoRA checkpoint's adapters merged into the base its run names (loaded or built again, never a
    random full model loaded over), checked against the base fingerprint recorded when it trained."""
    from safetensors.torch import load_file

    config, model = info["config"], info["config"]["model"]
    vocab = AudioVocab.of_codec(info["codec"])
    pattern = DelayPattern.parse(info["pattern"]["delays"], audio_channels=vocab.audio_channels)
    if model["init"] == "pretrained":
        base, _ = load_pretrained(model["pretrained"], pattern, vocab)
    else:
        base = build_model(model["preset"], pattern, vocab, seed=config["seed"])
    expected = info.get("base_fingerprint")
    if expected is not None and weights_fingerprint(base) != expected:
        source = model["pretrained"] if model["init"] == "pretrained" else f"the {model['preset']} preset"
        raise CheckpointError(f"{ckpt}: its adapters were trained on other base weights than {source} holds now")
    return merge_adapters(base, load_file(str(ckpt / "model.safetensors")), model["lora_rank"], model["lora_alpha"])


def load_run(run_dir: str | Path, checkpoint: str | int = "latest", device: str | None = None) -> LoadedRun:
    """The model of one checkpoint, with the pattern and codec the run was trained with."""
    from safetensors import SafetensorError
    from transformers import DiaForConditionalGeneration
    from transformers.utils import logging as hf_logging

    run_dir = Path(run_dir)
    device = check_device(device)
    if not (run_dir / RUN_FILE).exists():
        raise RunError(f"{run_dir} is not a run directory (no {RUN_FILE})")
    info = json.loads((run_dir / RUN_FILE).read_text())
    ckpt = resolve_checkpoint(run_dir, checkpoint)
    verify_checkpoint(ckpt, model_only=True)
    model_config = info["config"]["model"]
    hf_logging.disable_progress_bar()  # a local checkpoint loads in a blink; keep stderr for errors
    try:
        if model_config["lora_rank"] > 0:
            model = lora_model(ckpt, info)
        else:
            model = DiaForConditionalGeneration.from_pretrained(ckpt)
    except (OSError, ValueError, RuntimeError, SafetensorError) as exc:  # deserialisers, on a file they cannot read
        raise CheckpointError(f"cannot load checkpoint {ckpt}: {first_line(exc)}") from exc
    finally:
        hf_logging.enable_progress_bar()
    model = model.to(device).eval()
    return LoadedRun(model, pattern_of(model), vocab_of(model), load_codec(run_dir / "codec"), ckpt, info)
