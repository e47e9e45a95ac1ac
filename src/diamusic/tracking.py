"""Metrics and audio logging: metrics.jsonl always, wandb and TensorBoard behind the same calls."""

from __future__ import annotations

import json
import os
import uuid
from pathlib import Path
from typing import Any

import numpy as np

from diamusic.errors import DiamusicError

OFFLINE_WANDB_MODES = ("offline", "disabled", "dryrun")


def check_trackers(backends: list[str]) -> None:
    """Refuse, before a run writes anything, a tracker that could not start: a missing package, or
    wandb online without credentials (which wandb reports deep inside `init`, after the run's files
    exist). Credentials are WANDB_API_KEY or the ~/.netrc entry `wandb login` writes."""
    if "wandb" in backends:
        try:
            import wandb  # noqa: F401
        except ImportError as exc:
            raise DiamusicError("the wandb tracker needs the wandb package: pip install wandb") from exc
        if os.environ.get("WANDB_MODE", "online") not in OFFLINE_WANDB_MODES and not _wandb_key():
            raise DiamusicError(
                "the wandb tracker has no API key: run `wandb login`, set WANDB_API_KEY or WANDB_MODE=offline, "
                "or track with tensorboard (--tracker tensorboard)"
            )
    if "tensorboard" in backends:
        try:
            from torch.utils.tensorboard import SummaryWriter  # noqa: F401
        except ImportError as exc:
            raise DiamusicError("the tensorboard tracker needs the tensorboard package") from exc


def _wandb_key() -> bool:
    import netrc
    from urllib.parse import urlparse

    if os.environ.get("WANDB_API_KEY"):
        return True
    host = urlparse(os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai")).hostname
    try:
        return netrc.netrc().authenticators(host) is not None
    except (OSError, netrc.NetrcParseError):
        return False


class Tracker:
    def __init__(
        self,
        run_dir: Path,
        backends: list[str],
        config: dict[str, Any],
        project: str = "diamusic",
        group: str | None = None,
        name: str | None = None,
        enabled: bool = True,
        tags: list[str] | None = None,
    ) -> None:
        self.enabled = enabled  # only the main process writes
        self.path = run_dir / "metrics.jsonl"
        self._wandb = self._tb = None
        if not enabled:
            return
        check_trackers(backends)
        if "wandb" in backends:
            import wandb

            # a resumed run continues the same wandb run instead of starting a second one
            id_file = run_dir / "wandb_id"
            run_id = id_file.read_text().strip() if id_file.exists() else uuid.uuid4().hex[:8]
            self._wandb = wandb.init(
                project=project,
                group=group,
                name=name or run_dir.name,
                dir=str(run_dir),
                config=config,
                id=run_id,
                resume="allow",
                tags=tags or None,
            )
            id_file.write_text(run_id)
        if "tensorboard" in backends:
            from torch.utils.tensorboard import SummaryWriter

            self._tb = SummaryWriter(log_dir=str(run_dir / "tensorboard"))

    def truncate_after(self, step: int) -> None:
        """On resume, drop rows logged after the checkpoint so the file reads like one run."""
        if not self.enabled or not self.path.exists():
            return
        keep = []
        for line in self.path.read_text().splitlines():
            try:
                if json.loads(line)["step"] <= step:
                    keep.append(line)
            except (json.JSONDecodeError, KeyError):
                pass  # a line cut short when the run was killed
        tmp = self.path.with_suffix(".jsonl.tmp")
        tmp.write_text("".join(line + "\n" for line in keep))
        os.replace(tmp, self.path)

    def log(self, metrics: dict[str, Any], step: int) -> None:
        if not self.enabled:
            return
        with self.path.open("a") as f:
            f.write(json.dumps({"step": step, **metrics}) + "\n")
        numbers = {k: v for k, v in metrics.items() if isinstance(v, int | float) and not isinstance(v, bool)}
        if self._wandb is not None:
            self._wandb.log(numbers, step=step)
        if self._tb is not None:
            for key, value in numbers.items():
                self._tb.add_scalar(key, value, step)

    def log_audio(self, key: str, wave: np.ndarray, sample_rate: int, step: int, caption: str = "") -> None:
        if not self.enabled:
            return
        if self._wandb is not None:
            import wandb

            self._wandb.log({key: wandb.Audio(wave, sample_rate=sample_rate, caption=caption)}, step=step)
        if self._tb is not None:
            mono = wave if wave.ndim == 1 else wave.mean(axis=1)  # TensorBoard plays one audio channel
            self._tb.add_audio(key, mono[None, :], step, sample_rate=sample_rate)

    def close(self) -> None:
        if self._wandb is not None:
            self._wandb.finish()
        if self._tb is not None:
            self._tb.close()


def read_metrics(run_dir: str | Path) -> list[dict[str, Any]]:
    path = Path(run_dir) / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []
