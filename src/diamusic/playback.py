"""Play an arrangement: render each part alone, mix them by loudness, add a room, normalise.

Each part is rendered alone (a "stem"), with TinySoundFont and the General MIDI SoundFont that ships
inside `pretty_midi` (TimGM6mb.sf2: offline, no other file), or with the additive synth
(`diamusic.synth`, and a few synthesised drums). The stems are mixed by loudness (active RMS above 200 Hz):
the accompanying parts at their drawn balance among themselves, and all of them together 4 to 9 dB (drawn)
under the melody, so the tune is in front whatever the instruments, and the balance does not depend on
how loud each SoundFont preset happens to be. An optional reverb convolves with a seeded, exponentially
decaying noise impulse response. The mix is peak-normalised to -1 dBFS, so nothing clips.
"""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np

from diamusic import synth
from diamusic.arrangement import Arrangement, Part
from diamusic.corpus import Melody
from diamusic.errors import DiamusicError
from diamusic.instruments import KICK, SIDE_STICK, SNARE
from diamusic.seeding import piece_rng, stable_int

SAMPLE_RATE = 44100  # of render_arrangement's audio
OUTPUT_PEAK = 10 ** (-1.0 / 20.0)  # -1 dBFS


class PlaybackError(DiamusicError):
    """Audio that cannot be played as asked (a missing optional dependency)."""


def soundfont_path() -> Path:
    """The General MIDI SoundFont inside the pretty_midi package: the one file rendering needs."""
    import pretty_midi

    return Path(pretty_midi.__file__).parent / "TimGM6mb.sf2"


@functools.cache
def _soundfont_bytes() -> bytes:
    return soundfont_path().read_bytes()


def _events(part: Part, sample_rate: int, n: int) -> list[tuple[int, int, int, int]]:
    """(sample, 0 = off / 1 = on, key, velocity), note-offs first at equal times."""
    events = []
    for key, start, dur, vel in part.notes:
        on = min(int(round(start * sample_rate)), n)
        off = min(max(on + 1, int(round((start + dur) * sample_rate))), n)
        events += [(on, 1, key, vel), (off, 0, key, 0)]
    return sorted(events)


def soundfont_stem(part: Part, n: int, tuning_cents: float, sample_rate: int) -> np.ndarray:
    """`part` alone, `n` samples of mono float64, played with the General MIDI SoundFont; not normalised."""
    try:
        import tinysoundfont
    except ImportError as exc:
        raise PlaybackError(
            "the soundfont renderer needs tinysoundfont: pip install --no-deps tinysoundfont (or use the synth)"
        ) from exc

    # a fresh synthesiser per stem: tsf's reset lets voices ring out, which would leak into the next stem
    tsf = tinysoundfont.Synth(samplerate=sample_rate)
    sfid = tsf.sfload(_soundfont_bytes(), max_voices=128)
    drums = part.instrument is None
    chan = 9 if drums else 0
    tsf.program_select(chan, sfid, 128 if drums else 0, part.kit if drums else part.instrument.program, drums)
    if not drums:
        tsf.set_tuning(chan, tuning_cents / 100.0)
    stereo = np.zeros(2 * n, dtype=np.float32)  # interleaved left/right, rendered in place between events
    pos = 0
    for sample, kind, key, vel in [*_events(part, sample_rate, n), (n, -1, 0, 0)]:
        if sample > pos:
            tsf.generate_simple(sample - pos, buffer=memoryview(stereo[2 * pos : 2 * sample]).cast("B"))
            pos = sample
        if kind == 1:
            tsf.noteon(chan, key, min(vel, 127))
        elif kind == 0:
            tsf.noteoff(chan, key)
    return 0.5 * (stereo[0::2].astype(np.float64) + stereo[1::2])


def _drum_hit(key: int, velocity: float, sample_rate: int, rng: np.random.Generator) -> np.ndarray:
    t = np.arange(int(0.3 * sample_rate)) / sample_rate
    if key == KICK:
        freq = 45.0 + 65.0 * np.exp(-t / 0.04)
        hit = np.sin(2 * np.pi * np.cumsum(freq) / sample_rate) * np.exp(-t / 0.12)
    elif key in (SNARE, SIDE_STICK):
        decay = 0.07 if key == SNARE else 0.03
        hit = 0.6 * rng.standard_normal(len(t)) * np.exp(-t / decay) + 0.5 * np.sin(2 * np.pi * 190 * t) * np.exp(
            -t / 0.05
        )
    else:  # hi-hat: differenced noise is a cheap high-pass
        hit = 0.5 * np.diff(rng.standard_normal(len(t) + 1)) * np.exp(-t / 0.025)
    return velocity * hit


def synth_stem(part: Part, n: int, tuning_cents: float, sample_rate: int, rng: np.random.Generator) -> np.ndarray:
    """`part` alone, `n` samples of mono float64, played with the additive synth (drums: synthesised hits)."""
    out = np.zeros(n, dtype=np.float64)
    if part.instrument is None:
        for key, start, _, vel in part.notes:
            hit = _drum_hit(key, vel / 127.0, sample_rate, rng)
            n0 = int(round(start * sample_rate))
            m = min(len(hit), n - n0)
            if m > 0:
                out[n0 : n0 + m] += hit[:m]
        return out
    timbre = synth.TIMBRES[part.instrument.timbre]
    perf = synth.Performance(
        detune_cents=tuning_cents,
        vibrato_hz=float(rng.uniform(4.5, 6.5)),
        vibrato_cents=float(timbre.vibrato_cents * rng.uniform(0.6, 1.3)),
        brightness=float(rng.uniform(-0.3, 0.3)),
        gain=1.0,
    )
    notes = [(float(k), s, d) for k, s, d, _ in part.notes]
    synth.add_notes(out, notes, sample_rate, timbre, perf, rng, [v / 127.0 for *_, v in part.notes])
    return out


def loudness(wave: np.ndarray, sample_rate: int, frame: int = 2048) -> float:
    """RMS over the frames within 30 dB of the loudest, after a 200 Hz high-pass.

    Active frames: the level of the notes, not of the pauses. The high-pass stands in for the ear's low
    sensitivity to the lowest octaves, so a bass line is not turned down for energy nobody hears as loud.
    """
    from scipy.signal import butter, sosfilt

    wave = sosfilt(butter(2, 200.0, "highpass", fs=sample_rate, output="sos"), wave)
    frames = len(wave) // frame
    if frames == 0:
        return float(np.sqrt(np.mean(wave**2))) if len(wave) else 0.0
    energy = (wave[: frames * frame].reshape(frames, frame) ** 2).mean(axis=1)
    active = energy > energy.max() * 1e-3
    return float(np.sqrt(energy[active].mean())) if active.any() else 0.0


def reverb(wave: np.ndarray, sample_rate: int, rt60: float, wet: float, seed: int) -> np.ndarray:
    """Add a seeded room: Gaussian noise decaying by 60 dB over `rt60` s, darkened, after a 12 ms pre-delay.

    The impulse response has unit energy, so `wet` is roughly the reverb's level relative to the dry sound.
    """
    from scipy.signal import fftconvolve, lfilter

    rng = np.random.default_rng(seed)
    t = np.arange(int(rt60 * sample_rate)) / sample_rate
    ir = rng.standard_normal(len(t)) * np.exp(-6.91 * t / rt60)
    ir = lfilter([0.35], [1.0, -0.65], ir)  # a one-pole low-pass: real rooms absorb the highs first
    ir = np.concatenate([np.zeros(int(0.012 * sample_rate)), ir])
    ir /= np.sqrt(np.sum(ir**2))
    return wave + wet * fftconvolve(wave, ir)[: len(wave)]


# where each role stands on the stereo stage: (centre of its drawn pan, how far the draw may move it);
# -1 is hard left, +1 hard right. The melody stays near the middle, as a mix engineer would put a soloist.
STAGE = {
    "melody": (0.0, 0.2),
    "chords": (-0.45, 0.25),
    "alto": (-0.35, 0.25),
    "tenor": (0.35, 0.25),
    "bass": (0.0, 0.15),
    "drums": (0.2, 0.2),
}


def stage_pans(arrangement: Arrangement, melody: Melody, seed: int) -> dict[str, float]:
    """Each part's seeded pan position, from its own generator (a mono rendering draws none of them)."""
    rng = piece_rng(melody.id, seed, "stage")
    side = 1.0 if rng.random() < 0.5 else -1.0  # the accompaniment's layout mirrored for half the pieces
    pans = {}
    for part in arrangement.parts:
        centre, spread = STAGE[part.role]
        pans[part.role] = round(float(np.clip(side * centre + rng.uniform(-spread, spread), -1, 1)), 3)
    return pans


def _pan(stem: np.ndarray, pan: float) -> np.ndarray:
    """A mono stem placed on the stage with constant-power panning: (n, 2)."""
    angle = (pan + 1.0) * np.pi / 4  # -1 -> 0 (all left), +1 -> pi/2 (all right)
    return np.stack([stem * np.cos(angle), stem * np.sin(angle)], axis=1) * np.sqrt(2.0)


def render_arrangement(
    arrangement: Arrangement,
    renderer: str,
    melody: Melody,
    seed: int,
    sample_rate: int = SAMPLE_RATE,
    audio_channels: int = 1,
) -> np.ndarray:
    """Render each part, mix at the drawn levels, add reverb, normalise to -1 dBFS peak (float32).

    `renderer` is "soundfont" or "synth"; `melody` and `seed` seed the synth and the room. Mono gives
    (samples,). Stereo gives (samples, 2): each part panned to its seeded place (`stage_pans`) and a
    room with a different seeded impulse response per side, so the sides differ as in a recording;
    the levels are those of the mono mix, which stereo leaves byte-identical.
    """
    end = max((s + d for part in arrangement.parts for _, s, d, _ in part.notes), default=0.0)
    tail = 1.2 + min(arrangement.reverb_rt60, 1.5)
    n = int(np.ceil((end + tail) * sample_rate))
    stems = []
    for part in arrangement.parts:
        if renderer == "soundfont":
            stem = soundfont_stem(part, n, arrangement.tuning_cents, sample_rate)
        else:
            rng = piece_rng(melody.id, seed, f"synth-{part.role}")
            stem = synth_stem(part, n, arrangement.tuning_cents, sample_rate, rng)
        level = loudness(stem, sample_rate)
        stems.append(stem * (10 ** (part.level_db / 20) / level) if level > 0 else stem)
    gain = 0.0  # of the accompaniment, set against the melody by loudness
    if len(stems) > 1:
        accompaniment = np.sum(stems[1:], axis=0)
        melody_level, accompaniment_level = loudness(stems[0], sample_rate), loudness(accompaniment, sample_rate)
        if accompaniment_level > 0:
            gain = 10 ** (arrangement.accompaniment_db / 20) * melody_level / accompaniment_level
    if audio_channels == 1:
        mix = stems[0] + gain * accompaniment if gain else stems[0]
        rooms = [stable_int("ir", melody.id, seed)]
    else:
        pans = stage_pans(arrangement, melody, seed)
        mix = _pan(stems[0], pans[arrangement.parts[0].role])
        for part, stem in zip(arrangement.parts[1:], stems[1:], strict=True):
            mix = mix + gain * _pan(stem, pans[part.role])
        rooms = [stable_int("ir", melody.id, seed, side) for side in ("left", "right")]
    if arrangement.reverb_wet > 0:
        rt60, wet = arrangement.reverb_rt60, arrangement.reverb_wet
        if mix.ndim == 1:
            mix = reverb(mix, sample_rate, rt60, wet, rooms[0])
        else:
            mix = np.stack([reverb(mix[:, c], sample_rate, rt60, wet, room) for c, room in enumerate(rooms)], axis=1)
    fade = min(n, int(0.05 * sample_rate))
    ramp = np.linspace(1.0, 0.0, fade)
    mix[n - fade :] *= ramp if mix.ndim == 1 else ramp[:, None]
    peak = np.abs(mix).max()
    if peak > 0:
        mix *= OUTPUT_PEAK / peak
    return mix.astype(np.float32)
