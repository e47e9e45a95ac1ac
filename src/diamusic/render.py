"""Turn a built-in melody into a captioned piece of audio: `render_piece`.

One call goes through four stages, each in its own module:

1. **Choices** (`diamusic.seeding`): every random choice (texture, instruments, transposition, tempo,
   tuning, dynamics, mix levels, reverb, caption wording, humanisation) comes from its own generator
   seeded by (piece id, seed, what). The same (piece, seed) therefore gives byte-identical audio in every
   process, and a choice does not move when another is added or changed: ``texture="mixed"`` renders
   exactly what naming its drawn texture would.
2. **Arrangement** (`diamusic.arrangement`, with `diamusic.instruments` and `diamusic.harmony`): the melody
   transposed into its instrument's range, over the chorale's own voices or a harmonised accompaniment
   (and drums), stretched to a drawn tempo and humanised.
3. **Playback** (`diamusic.playback`): each part rendered alone with the General MIDI SoundFont inside
   `pretty_midi` or with the additive synth (`diamusic.synth`), mixed by loudness with the melody in
   front, an optional seeded reverb, peak-normalised to -1 dBFS.
4. **Caption** (`diamusic.captions`): the facts of the arrangement's tags a listener could tell, in one
   of three sentence templates.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from diamusic.arrangement import arrange
from diamusic.captions import describe
from diamusic.corpus import Melody
from diamusic.errors import DiamusicError, did_you_mean
from diamusic.playback import SAMPLE_RATE, render_arrangement, stage_pans
from diamusic.seeding import piece_rng

RENDERERS = ("soundfont", "synth")
TEXTURES = ("solo", "accompanied", "mixed")


class RenderOptionError(DiamusicError):
    """An unknown renderer or texture."""


@dataclass(frozen=True)
class Rendering:
    """One arranged, rendered and captioned piece."""

    wave: np.ndarray  # float32 at sample_rate, peak <= 1: (samples,) mono or (samples, 2) stereo
    sample_rate: int
    caption: str
    # the melody as it sounds: (MIDI pitch including the tuning offset, start s, duration s) after
    # transposition, tempo change and humanised timing; duration is note-on to note-off (the release follows)
    melody: tuple[tuple[float, float, float], ...]
    # JSON-serialisable facts: form, key, meter, tempo_bpm, texture, melody_instrument, accompaniment,
    # drums, reverb, renderer, transpose, collection, and more (mood, figure, ensemble, tuning_cents, ...)
    tags: dict[str, Any]


def check_options(renderer: str, texture: str) -> None:
    """Refuse an unknown renderer or texture, before any work."""
    if renderer not in RENDERERS:
        hint = did_you_mean(renderer, RENDERERS)
        raise RenderOptionError(f"unknown renderer {renderer!r}{hint}; choose one of {', '.join(RENDERERS)}")
    if texture not in TEXTURES:
        hint = did_you_mean(texture, TEXTURES)
        raise RenderOptionError(f"unknown texture {texture!r}{hint}; choose one of {', '.join(TEXTURES)}")


def render_piece(
    melody: Melody, seed: int, renderer: str = "soundfont", texture: str = "mixed", audio_channels: int = 1
) -> Rendering:
    """Arrange `melody` (solo, or over an accompaniment), render it at SAMPLE_RATE and caption it.

    Deterministic: the same (melody, seed, renderer, texture) gives byte-identical audio. texture="mixed"
    draws solo or accompanied per (melody, seed) and then renders exactly what that texture would.
    Stereo places the parts on a seeded stage (their pans are in the tags); mono is today's downmix.
    """
    check_options(renderer, texture)
    arrangement = arrange(melody, seed, texture, renderer)
    wave = render_arrangement(arrangement, renderer, melody, seed, SAMPLE_RATE, audio_channels)
    tags = arrangement.tags
    if audio_channels > 1:
        tags = {**tags, "stage": stage_pans(arrangement, melody, seed)}
    caption = describe(arrangement.tags, piece_rng(melody.id, seed, "caption"))
    tune = arrangement.tuning_cents / 100.0
    played = tuple((round(k + tune, 4), round(s, 6), round(d, 6)) for k, s, d, _ in arrangement.parts[0].notes)
    return Rendering(wave=wave, sample_rate=SAMPLE_RATE, caption=caption, melody=played, tags=tags)
