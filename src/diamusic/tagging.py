"""Tags for music without captions, in the research log's comma-separated style, from the audio itself:
tempo and key (librosa's beat tracker and Krumhansl-Schmuckler on chroma, `audio_metrics`), loudness and
dynamics words, and, given a CLAP model, zero-shot instrument, genre and mood from VOCABULARY.

`prepare --captions auto` adds them to every input's caption, `auto-missing` only to inputs without a
caption of their own; the dataset's index lists each input's automatic tags apart from its given ones.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from diamusic import pitch
from diamusic.audio_metrics import SILENCE_DB, estimate_key, estimate_tempo, frame_rms
from diamusic.clap import Clap

CAPTION_MODES = ("keep", "auto", "auto-missing")
TAG_SECONDS = 60.0  # of an input analysed for its tags: a song's tempo and key are set by then
# mean level of the non-silent frames (dBFS) at or above which each word applies, quietest first
LOUDNESS = ((-math.inf, "quiet"), (-30.0, "moderate level"), (-16.0, "loud"))
# spread of the frame levels (95th minus 10th percentile, dB): under the first "steady dynamics", over the
# second "wide dynamics"
DYNAMICS = (6.0, 18.0)
# zero-shot choices, one tag per group, each scored as CLAP scores a caption
VOCABULARY = {
    "instrument": ("piano", "acoustic guitar", "electric guitar", "strings", "brass", "woodwinds", "synthesizer",
                   "organ", "drums", "voice", "choir", "bass"),  # fmt: skip
    "genre": ("classical", "folk", "jazz", "rock", "pop", "electronic", "hip hop", "ambient", "blues", "country",
              "metal", "reggae", "soundtrack"),  # fmt: skip
    "mood": ("calm", "happy", "sad", "energetic", "dark", "romantic", "tense", "dreamy"),
}
TEMPLATES = {"instrument": "music played on {}", "genre": "{} music", "mood": "{} music"}


def level_tags(wave: np.ndarray, sample_rate: int) -> list[str]:
    """A loudness word, and a dynamics word where the level is steady or widely spread; none for silence."""
    db = 20 * np.log10(np.maximum(frame_rms(pitch.to_analysis_rate(wave, sample_rate)).astype(np.float64), 1e-10))
    sounding = db[db > db.max() + SILENCE_DB] if len(db) and db.max() > -100 else db[:0]
    if not len(sounding):
        return []
    tags = [next(word for floor, word in reversed(LOUDNESS) if sounding.mean() >= floor)]
    spread = float(np.percentile(sounding, 95) - np.percentile(sounding, 10))
    if spread < DYNAMICS[0]:
        tags.append("steady dynamics")
    elif spread > DYNAMICS[1]:
        tags.append("wide dynamics")
    return tags


def zero_shot_tags(clap: Clap, wave: np.ndarray, sample_rate: int) -> list[str]:
    """The VOCABULARY label of each group whose caption CLAP finds closest to the clip."""
    audio = clap.embed_audio([wave], sample_rate)[0]
    tags = []
    for group, labels in VOCABULARY.items():
        texts = clap.embed_text([TEMPLATES[group].format(label) for label in labels])
        tags.append(labels[int(np.argmax(texts @ audio))])
    return tags


def audio_tags(wave: np.ndarray, sample_rate: int, clap: Clap | None = None) -> list[str]:
    """Tags of a wave (mono, or (samples, audio channels): their mid) from its first TAG_SECONDS: "120 bpm",
    "A minor", loudness and dynamics words, then CLAP's instrument, genre and mood with ``clap``."""
    wave = np.asarray(wave, dtype=np.float32)
    wave = (wave.mean(axis=1) if wave.ndim == 2 else wave)[: int(TAG_SECONDS * sample_rate)]
    tags = []
    bpm = estimate_tempo(wave, sample_rate)
    if bpm > 0:
        tags.append(f"{round(bpm)} bpm")
    key = estimate_key(wave, sample_rate)
    if key is not None:
        tags.append(key)
    tags += level_tags(wave, sample_rate)
    if clap is not None and tags:  # a silent input gets no tags at all
        tags += zero_shot_tags(clap, wave, sample_rate)
    return tags


@dataclass(frozen=True)
class Captioner:
    """How `prepare` captions its inputs: ``mode`` one of CAPTION_MODES, ``clap`` for the zero-shot tags."""

    mode: str = "keep"
    clap: Clap | None = None

    def caption(self, caption: str, derived: bool, wave: np.ndarray, sample_rate: int) -> tuple[str, list[str]]:
        """The caption to keep (given or path tags, then the automatic ones) and the automatic tags."""
        if self.mode == "keep" or (self.mode == "auto-missing" and not derived):
            return caption, []
        auto = audio_tags(wave, sample_rate, self.clap)
        return ", ".join([part for part in [caption.strip()] if part] + auto), auto
