"""Codebook delay patterns: presets, parsing, validation, apply/revert.

A delay pattern shifts codebook c right by ``delays[c]`` frames so a decoder that emits one
column of all codebooks per step sees coarse codebooks before the finer ones of the same frame.

Layout (identical to transformers' ``DiaProcessor`` for the same pattern): for codes of T frames,
``apply`` returns ``T + max_delay`` steps where step s of codebook c holds frame ``s - delays[c]``,
BOS before that codebook starts and PAD after it ends. ``revert`` is its exact inverse.

Stereo: the decoder has one stream per codebook per audio channel, left's K then right's K, and a
K-codebook pattern is repeated per side (``[0,8..15]`` becomes ``[0,8..15, 0,8..15]``): both sides
of a frame are emitted at the same decode steps, so stereo costs no extra decode steps, only wider
ones. A full 2K list may give each side its own delays.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from diamusic.errors import DiamusicError, did_you_mean

PRESETS: dict[str, tuple[int, ...]] = {
    "dia": (0, 8, 9, 10, 11, 12, 13, 14, 15),
    "musicgen": (0, 1, 2, 3, 4, 5, 6, 7, 8),
    "compressed": (0, 0, 1, 1, 2, 2, 3, 3, 4),
    "flat": (0, 0, 0, 0, 0, 0, 0, 0, 0),
    "parallel": (0, 0, 0, 0, 0, 0, 0, 0, 0),  # flat's older name
    "reverse": (8, 7, 6, 5, 4, 3, 2, 1, 0),
    "middle-out": (4, 3, 2, 1, 0, 1, 2, 3, 4),
}


class PatternError(DiamusicError):
    """A delay pattern that cannot be used; the message is a one-line explanation for the user."""


AUDIO_CHANNELS = {"mono": 1, "stereo": 2}


def layout_name(audio_channels: int) -> str:
    """'mono' or 'stereo'."""
    return next(name for name, n in AUDIO_CHANNELS.items() if n == audio_channels)


@dataclass(frozen=True)
class DelayPattern:
    """One delay per decoder stream: per codebook, for each audio channel in turn (left, then right)."""

    delays: tuple[int, ...]
    name: str = "custom"
    audio_channels: int = 1

    def __post_init__(self) -> None:
        if len(self.delays) == 0:
            raise PatternError("delay pattern is empty: give one delay per codebook")
        if self.audio_channels not in AUDIO_CHANNELS.values() or len(self.delays) % self.audio_channels:
            raise PatternError(f"delay pattern {list(self.delays)}: cannot split into {self.audio_channels} sides")
        for d in self.delays:
            # bool is an int subclass; True as a delay is almost certainly a bug upstream
            if isinstance(d, bool) or not isinstance(d, int):
                raise PatternError(f"delay pattern {list(self.delays)}: delays must be integers, got {d!r}")
            if d < 0:
                raise PatternError(f"delay pattern {list(self.delays)}: delays must be >= 0, got {d}")
        if min(self.delays) != 0:
            # the undelayed codebook is the reference for a clip's length and EOS; a pattern without
            # one only adds decode steps in which no codebook holds a frame
            raise PatternError(
                f"delay pattern {list(self.delays)}: needs a codebook with delay 0 (the reference for "
                f"length and EOS), the smallest delay is {min(self.delays)}"
            )

    # --- construction -------------------------------------------------------------------------

    @classmethod
    def parse(
        cls, spec: str | Sequence[int] | DelayPattern, num_codebooks: int | None = None, audio_channels: int = 1
    ) -> DelayPattern:
        """A preset name, a string like ``0,1,2`` or ``[0, 1, 2]``, a sequence of ints, or a pattern.

        With ``audio_channels=2`` a pattern of ``num_codebooks`` delays is repeated per side, and one
        of twice as many is taken as it is (left's delays, then right's).
        """
        if isinstance(spec, DelayPattern):
            if spec.audio_channels == audio_channels and num_codebooks in (None, spec.num_codebooks):
                return spec
            delays, name = spec.delays, spec.name
        elif isinstance(spec, str):
            text = spec.strip()
            if text.lower() in PRESETS:
                delays, name = PRESETS[text.lower()], text.lower()
            else:
                body = text.strip("[]() ")
                parts = [p for p in re.split(r"[,\s]+", body) if p]
                if not parts or not all(re.fullmatch(r"[+-]?\d+", p) for p in parts):
                    raise PatternError(
                        f"unknown delay pattern {spec!r}{did_you_mean(text, PRESETS)}: use a preset "
                        f"({', '.join(PRESETS)}) or comma-separated integers like 0,1,2,3,4,5,6,7,8"
                    )
                delays, name = tuple(int(p) for p in parts), None
        else:
            values = list(spec)
            if not all(isinstance(v, int) and not isinstance(v, bool) for v in values):
                raise PatternError(f"delay pattern {values}: delays must be integers")
            delays, name = tuple(values), None
        if num_codebooks is None:  # a preset holds one side; a list, every side
            num_codebooks = len(delays) if name in PRESETS else len(delays) // audio_channels
        streams = num_codebooks * audio_channels
        if len(delays) == num_codebooks and audio_channels > 1:
            delays = delays * audio_channels
        if len(delays) != streams:
            per_side = f" ({num_codebooks} repeated per side, or {streams})" if audio_channels > 1 else ""
            raise PatternError(
                f"delay pattern {list(delays)} has {len(delays)} delays but the codec has "
                f"{num_codebooks} codebooks{per_side}"
            )
        return cls(delays, name or cls._name_of(delays, audio_channels), audio_channels)

    @staticmethod
    def _name_of(delays: tuple[int, ...], audio_channels: int) -> str:
        # a custom list equal to a preset (on every side) gets the preset's name, so runs group by
        # pattern in tables
        k = len(delays) // audio_channels
        if delays != delays[:k] * audio_channels:
            return "custom"
        return next((n for n, d in PRESETS.items() if d == delays[:k]), "custom")

    # --- derived facts ------------------------------------------------------------------------

    @property
    def num_streams(self) -> int:
        """Decoder token columns: codebooks x audio channels."""
        return len(self.delays)

    @property
    def num_codebooks(self) -> int:
        """Codebooks per audio channel."""
        return len(self.delays) // self.audio_channels

    @property
    def sides(self) -> list[tuple[int, ...]]:
        """Each audio channel's delays (one entry for mono)."""
        k = self.num_codebooks
        return [self.delays[i * k : (i + 1) * k] for i in range(self.audio_channels)]

    @property
    def reference(self) -> int:
        """The codebook whose EOS ends a clip: the first with delay 0, so its frame t is at step t."""
        return self.delays.index(0)

    @property
    def max_delay(self) -> int:
        return max(self.delays)

    @property
    def extra_steps(self) -> int:
        """Decode steps this pattern adds over ``parallel`` for any clip length."""
        return self.max_delay

    def decode_steps(self, num_frames: int) -> int:
        """Decoder steps to emit ``num_frames`` frames on every codebook, each codebook's EOS included."""
        return num_frames + self.max_delay + 1

    def __str__(self) -> str:
        sides = self.sides
        if len(sides) == 1:
            return f"{self.name} [{','.join(map(str, self.delays))}]"
        if all(side == sides[0] for side in sides):
            return f"{self.name} [{','.join(map(str, sides[0]))}] per side"
        return f"{self.name} [{' | '.join(','.join(map(str, side)) for side in sides)}]"

    def to_list(self) -> list[int]:
        return list(self.delays)

    # --- apply / revert -----------------------------------------------------------------------

    def _check(self, x: torch.Tensor) -> None:
        if x.ndim != 3 or x.shape[-1] != self.num_streams:
            raise PatternError(f"expected codes shaped (batch, time, {self.num_streams}), got {tuple(x.shape)}")

    def apply(self, codes: torch.Tensor, bos: int, pad: int) -> torch.Tensor:
        """(B, T, C) frames -> (B, T + max_delay, C) steps, BOS before and PAD after each codebook."""
        self._check(codes)
        batch, frames, codebooks = codes.shape
        steps = frames + self.max_delay
        delays = torch.tensor(self.delays, device=codes.device)
        source = torch.arange(steps, device=codes.device)[:, None] - delays[None, :]  # (S, C)
        index = source.clamp(0, max(frames - 1, 0)).expand(batch, steps, codebooks)
        if frames == 0:
            gathered = torch.full((batch, steps, codebooks), pad, dtype=codes.dtype, device=codes.device)
        else:
            gathered = codes.gather(1, index)
        out = torch.where(source < 0, torch.as_tensor(bos, dtype=codes.dtype, device=codes.device), gathered)
        return torch.where(source >= frames, torch.as_tensor(pad, dtype=codes.dtype, device=codes.device), out)

    def revert(self, delayed: torch.Tensor) -> torch.Tensor:
        """(B, S, C) steps -> (B, S - max_delay, C) frames; the exact inverse of ``apply``."""
        self._check(delayed)
        batch, steps, codebooks = delayed.shape
        frames = steps - self.max_delay
        if frames < 0:
            raise PatternError(f"{steps} steps are fewer than the pattern's max delay {self.max_delay}")
        delays = torch.tensor(self.delays, device=delayed.device)
        index = torch.arange(frames, device=delayed.device)[:, None] + delays[None, :]
        return delayed.gather(1, index.expand(batch, frames, codebooks))

    # --- description --------------------------------------------------------------------------

    def grid(self, steps: int) -> list[list[int | None]]:
        """For each codebook, the frame it holds at decode steps 0..steps-1 (None before it starts)."""
        return [[s - d if s >= d else None for s in range(steps)] for d in self.delays]

    def describe(self, steps: int = 20, frame_rate: float | None = None) -> str:
        width = max(2, len(str(steps)))
        lines = [
            f"pattern   {self}",
            f"max delay {self.max_delay}",
            f"extra decode steps vs parallel: {self.extra_steps}",
        ]
        if frame_rate:
            seconds = 10.0
            n = round(seconds * frame_rate)
            lines.append(
                f"{seconds:.0f} s at {frame_rate:.2f} frames/s: {self.decode_steps(n)} decode steps "
                f"(parallel: {n + 1}, +{100 * self.extra_steps / (n + 1):.1f}%)"
            )
        lines.append("")
        lines.append(f"frame held by each codebook at decode step (first {steps} steps, '.' = not started):")
        side = "" if self.audio_channels == 1 else "  "
        lines.append(f"{side}step " + " ".join(f"{s:>{width}}" for s in range(steps)))
        for n, row in enumerate(self.grid(steps)):
            cells = " ".join(f"{'.' if f is None else f:>{width}}" for f in row)
            lines.append(f"{self._row_label(n)} {cells}")
        return "\n".join(lines)

    def _row_label(self, stream: int) -> str:
        """``cb3`` for mono; ``L cb3`` / ``R cb3`` for stereo."""
        side, codebook = divmod(stream, self.num_codebooks)
        return f"cb{codebook:<2}" if self.audio_channels == 1 else f"{'LR'[side]} cb{codebook:<2}"

    def plot(self, path: str, steps: int = 24) -> None:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        import numpy as np

        grid = np.array([[-1 if f is None else f for f in row] for row in self.grid(steps)], dtype=float)
        masked = np.ma.masked_less(grid, 0)
        fig, ax = plt.subplots(figsize=(max(6, steps * 0.35), 0.4 * self.num_streams + 1.5))
        ax.imshow(masked, aspect="auto", cmap="viridis", interpolation="nearest")
        for c in range(self.num_streams):
            for s in range(steps):
                if grid[c, s] >= 0:
                    ax.text(s, c, int(grid[c, s]), ha="center", va="center", fontsize=7, color="white")
        ax.set_xticks(range(0, steps, max(1, steps // 12)))
        ax.set_xlabel("decode step")
        ax.set_ylabel("codebook")
        ax.set_yticks(range(self.num_streams), [self._row_label(n).strip() for n in range(self.num_streams)])
        ax.set_title(f"delay pattern {self} — max delay {self.max_delay}")
        fig.tight_layout()
        fig.savefig(path, dpi=120)
        plt.close(fig)
