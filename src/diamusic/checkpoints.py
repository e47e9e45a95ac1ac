"""Checkpoints: their names, writing one whole or not at all, checking it, and restoring from it.

A checkpoint is written as ``step_XXXXXX.tmp``, flushed, then renamed, so a directory named
``step_XXXXXX`` is a finished write; its ``manifest.json`` holds each file's size and SHA-256,
checked before the checkpoint is loaded, so a file damaged later is caught and named. Beside
accelerate's state (model, optimizer, scheduler, RNG of every process) it holds ``config.json``,
the generation config and processor files (so transformers loads it; not for LoRA, whose
checkpoints hold only the adapters) and ``train_state.json``, the training loop's own state.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import pickle
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from diamusic.errors import DiamusicError, first_line
from diamusic.model import adapter_names

CHECKPOINTS = "checkpoints"
MANIFEST = "manifest.json"
TRAIN_STATE = "train_state.json"


class CheckpointError(DiamusicError):
    """A checkpoint that is damaged (fails its manifest) or could not be written."""


def step_name(step: int) -> str:
    return f"step_{step:06d}"


def checkpoint_dir(run_dir: Path, step: int) -> Path:
    return Path(run_dir) / CHECKPOINTS / step_name(step)


def step_of(checkpoint: Path) -> int:
    return int(checkpoint.name.removeprefix("step_"))


def checkpoints_of(run_dir: Path) -> list[Path]:
    """Finished checkpoints, oldest first (a write in progress is a ``.tmp`` directory)."""
    root = Path(run_dir) / CHECKPOINTS
    return sorted(p for p in root.glob("step_*") if p.is_dir() and p.name[5:].isdigit())


# --- integrity ----------------------------------------------------------------------------------


def _sha256(path: Path) -> str:
    with path.open("rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def fsync_path(path: Path) -> None:
    """Flush a file, or a directory's entries (so a rename inside it survives a power cut)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_manifest(folder: Path) -> None:
    """Checksum every file of a finished checkpoint write into its manifest and flush all to disk."""
    files = sorted(p for p in folder.rglob("*") if p.is_file() and p.name != MANIFEST)
    entries = {p.relative_to(folder).as_posix(): {"bytes": p.stat().st_size, "sha256": _sha256(p)} for p in files}
    (folder / MANIFEST).write_text(json.dumps({"files": entries}, indent=1))
    for path in [*files, folder / MANIFEST, *{p.parent for p in files}, folder]:
        fsync_path(path)


def checkpoint_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def _model_file(name: str) -> bool:
    return name in ("config.json", "generation_config.json") or (name.endswith(".safetensors") and "/" not in name)


def verify_checkpoint(folder: Path, model_only: bool = False) -> None:
    """Refuse a checkpoint whose files differ from its manifest; ``model_only`` checks just the
    files generation reads (config and weights), not the optimizer state."""
    manifest = folder / MANIFEST
    if not manifest.exists():
        raise CheckpointError(
            f"checkpoint {folder} has no {MANIFEST}, so its files cannot be checked "
            "(written by an older diamusic, or copied in part)"
        )
    try:
        entries = json.loads(manifest.read_text())["files"]
    except (ValueError, KeyError, TypeError) as exc:
        raise CheckpointError(f"checkpoint {folder}: {manifest.name} is damaged ({exc})") from exc
    for name, want in entries.items():
        if model_only and not _model_file(name):
            continue
        path = folder / name
        if not path.is_file():
            raise CheckpointError(f"checkpoint {folder}: {name} is missing")
        size = path.stat().st_size
        if size != want["bytes"]:
            raise CheckpointError(
                f"checkpoint {folder}: {name} is truncated or changed ({size} of {want['bytes']} bytes)"
            )
        if _sha256(path) != want["sha256"]:
            raise CheckpointError(f"checkpoint {folder}: {name} is corrupted (its SHA-256 differs from the manifest)")


def newest_intact_checkpoint(run_dir: Path, warn: Callable[[str], None]) -> Path | None:
    """The newest checkpoint that passes its manifest; each damaged newer one is reported to ``warn``."""
    for ckpt in reversed(checkpoints_of(run_dir)):
        try:
            verify_checkpoint(ckpt)
        except CheckpointError as exc:
            warn(f"{exc}; trying an older checkpoint")
            continue
        return ckpt
    return None


# --- writing ------------------------------------------------------------------------------------


def weights_finite(accelerator: Any, model: torch.nn.Module) -> bool:
    """Whether every process's weights (its shards under FSDP) are finite; one sync, not one per tensor."""
    with torch.no_grad():
        local = [p.to_local() if hasattr(p, "to_local") else p for p in model.parameters()]
        bad = (~torch.stack([torch.isfinite(p).all() for p in local]).all()).float()
    return bool(accelerator.reduce(bad, "sum") == 0)  # accelerate reduces by sum, mean or max only


def check_free_space(accelerator: Any, model: torch.nn.Module, run_dir: Path, final: Path) -> None:
    """Refuse to start a checkpoint that cannot fit: the newest one's size, or before the first, the
    weights plus AdamW's two fp32 moments of the trainable ones."""
    done = checkpoints_of(run_dir)
    if done:
        needed = checkpoint_bytes(done[-1])
    else:
        params = list(accelerator.unwrap_model(model).parameters())
        needed = sum(p.numel() * (p.element_size() + (8 if p.requires_grad else 0)) for p in params)
    free = shutil.disk_usage(run_dir).free
    if free < needed:
        raise CheckpointError(
            f"cannot write checkpoint to {final}: no space left on device "
            f"({free / 2**20:.0f} MiB free, about {needed / 2**20:.0f} MiB needed)"
        )


def write_failure(exc: BaseException, where: Path) -> str:
    """Why a write failed, in words: serialisers report a full disk as an I/O error or a bad position."""
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror[0].lower() + exc.strerror[1:]
    with contextlib.suppress(OSError):
        if shutil.disk_usage(where).free < 2**20:
            return "no space left on device"
    return first_line(exc)


def save_checkpoint(
    accelerator: Any,
    model: torch.nn.Module,
    run_dir: Path,
    step: int,
    train_state: dict[str, Any],
    keep: int,
    sharded: bool,
    adapters_only: bool = False,
    model_files: Callable[[Path], None] | None = None,
) -> Path:
    """Model, optimizer, scheduler and RNG of every process (accelerate's state) and the loop's
    ``train_state``, in one directory that appears whole or not at all, with a manifest of
    checksums; keeps the newest ``keep`` (0: all). A failed write removes what it wrote and raises
    CheckpointError, leaving the earlier checkpoints as they were. Every process calls it.

    A whole model's checkpoint also gets its ``config.json`` and what ``model_files(folder)`` writes
    (transformers' generation and processor files), so ``from_pretrained`` loads it as it is; an
    adapters-only one gets neither, so it cannot be mistaken for a whole model (`diamusic export`
    merges it into its base)."""
    from safetensors import SafetensorError
    from safetensors.torch import save_file

    acc = accelerator
    final = checkpoint_dir(run_dir, step)
    tmp = final.with_name(final.name + ".tmp")
    if acc.is_main_process:
        check_free_space(acc, model, run_dir, final)
    try:
        if acc.is_main_process:
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.parent.mkdir(parents=True, exist_ok=True)
        acc.wait_for_everyone()
        acc.save_state(str(tmp))
        # FSDP saves shards; generation wants whole weights, gathered here by every process together
        full = acc.get_state_dict(model) if sharded else None
        if acc.is_main_process:
            if full is not None:  # the same file, with the same keys, that save_state writes without FSDP
                if adapters_only:
                    names = adapter_names(acc.unwrap_model(model))
                    full = {k: v for k, v in full.items() if k in names}
                save_file(full, tmp / "model.safetensors", metadata={"format": "pt"})
            if not adapters_only:
                acc.unwrap_model(model).config.save_pretrained(tmp)
                if model_files is not None:
                    model_files(tmp)
            (tmp / TRAIN_STATE).write_text(json.dumps({"step": step, **train_state}))
            write_manifest(tmp)
            if final.exists():  # a damaged checkpoint of this step, passed over by the resume
                shutil.rmtree(final)
            tmp.rename(final)
            fsync_path(final.parent)
    except (OSError, RuntimeError, SafetensorError) as exc:
        if acc.is_main_process:
            reason = write_failure(exc, tmp.parent)  # before the partial write is removed and frees space
            shutil.rmtree(tmp, ignore_errors=True)
            raise CheckpointError(f"cannot write checkpoint to {final}: {reason}") from exc
        raise
    if acc.is_main_process:
        # every checkpoint older than the newest ``keep`` goes, never the one just written and verified
        for old in checkpoints_of(run_dir)[:-keep] if keep > 0 else []:
            if old != final:
                shutil.rmtree(old, ignore_errors=True)
    acc.wait_for_everyone()
    return final


def remove_unfinished(run_dir: Path) -> None:
    """Writes cut short by a kill (``.tmp`` directories); main process only."""
    for unfinished in (Path(run_dir) / CHECKPOINTS).glob("*.tmp"):
        shutil.rmtree(unfinished, ignore_errors=True)


# --- restoring ----------------------------------------------------------------------------------


def save_adapters_only(accelerator: Any) -> None:
    """Make a LoRA run's checkpoints hold its adapters, not the frozen base they sit on (6.4 GB for
    Dia-1.6B): `save_state` keeps only the trainable weights, and `load_state` loads those onto the
    base the run built again from its config. (Under FSDP the shards still hold everything; the
    gathered model.safetensors is filtered by `save_checkpoint`.)"""
    from safetensors.torch import load_file

    def keep_adapters(models: list[Any], weights: list[dict[str, Any]], output_dir: str) -> None:
        for model, state in zip(models, weights, strict=True):
            names = adapter_names(model)
            for key in [k for k in state if k not in names]:
                del state[key]

    def load_adapters(models: list[Any], input_dir: str) -> None:
        for i, model in enumerate(models):
            path = Path(input_dir) / ("model.safetensors" if i == 0 else f"model_{i}.safetensors")
            state = load_file(str(path))
            missing = adapter_names(model) - set(state)
            if missing:
                raise CheckpointError(f"{path} lacks {len(missing)} adapter weights, e.g. {sorted(missing)[0]}")
            model.load_state_dict(state, strict=False)
        models.clear()  # loaded here: accelerate's own strict load would miss the base

    accelerator.register_save_state_pre_hook(keep_adapters)
    accelerator.register_load_state_pre_hook(load_adapters)


def restore(accelerator: Any, run_dir: Path, warn: Callable[[str], None]) -> dict[str, Any]:
    """Load the newest intact checkpoint into accelerate's prepared objects (a damaged newer one is
    named to ``warn`` and passed over) and return its ``train_state`` (with ``step``)."""
    from accelerate.utils import broadcast_object_list
    from safetensors import SafetensorError

    found = [newest_intact_checkpoint(run_dir, warn) if accelerator.is_main_process else None]
    ckpt = broadcast_object_list(found)[0]  # one process reads the checksums, all load the same step
    if ckpt is None:
        raise CheckpointError(
            f"cannot resume: no checkpoint in {run_dir} is intact; remove its {CHECKPOINTS}/ to start the run over"
        )
    _check_random_states(ckpt, accelerator.process_index)
    try:
        accelerator.load_state(str(ckpt))
    except (OSError, RuntimeError, ValueError, EOFError, pickle.UnpicklingError, SafetensorError) as exc:
        raise CheckpointError(f"cannot load checkpoint {ckpt}: {first_line(exc)}") from exc
    return json.loads((ckpt / TRAIN_STATE).read_text())


RANDOM_STATE_KEYS = ("random_state", "numpy_random_seed", "torch_manual_seed")


def _check_random_states(ckpt: Path, process: int) -> None:
    """This process's random states load (accelerate passes over ones it cannot read, and the resume
    would then not be exact). Read as accelerate reads them: weights only, so nothing in them runs."""
    from accelerate.utils import RNG_STATE_NAME
    from accelerate.utils import load as load_state_file

    path = ckpt / f"{RNG_STATE_NAME}_{process}.pkl"
    try:
        states = load_state_file(path)
    except Exception as exc:  # any failure to read it means it is damaged
        raise CheckpointError(f"checkpoint {ckpt}: {path.name} cannot be read ({first_line(exc)})") from exc
    if not isinstance(states, dict) or any(k not in states for k in RANDOM_STATE_KEYS):
        raise CheckpointError(f"checkpoint {ckpt}: {path.name} does not hold the random states")
