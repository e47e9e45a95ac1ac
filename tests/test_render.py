"""render_piece: the whole path from a melody to a captioned piece of audio. Short excerpts keep this file fast."""

import json

import numpy as np
import pytest

from diamusic import arrangement, captions, pitch, playback, render
from diamusic.errors import DiamusicError
from diamusic.seeding import piece_rng

SR = playback.SAMPLE_RATE


@pytest.fixture(scope="module")
def excerpts(melodies):
    return [m.excerpt(6.0) for m in melodies]


def pinned_run(wave: np.ndarray, length: int = 3) -> bool:
    """Whether `length` consecutive samples sit at full scale: the signature of clipping."""
    at_rail = np.abs(wave) >= 0.999
    return bool(np.convolve(at_rail, np.ones(length), mode="valid").max(initial=0) >= length)


@pytest.mark.parametrize("renderer", render.RENDERERS)
def test_deterministic_per_seed_and_different_across_seeds(excerpts, renderer):
    for m in (excerpts[0], excerpts[2]):  # a harmonised tune and a chorale
        a = render.render_piece(m, 3, renderer, "accompanied")
        b = render.render_piece(m, 3, renderer, "accompanied")
        assert a.wave.tobytes() == b.wave.tobytes()
        assert (a.caption, a.melody, a.tags) == (b.caption, b.melody, b.tags)
        c = render.render_piece(m, 4, renderer, "accompanied")
        assert a.wave.tobytes() != c.wave.tobytes()
        assert a.tags != c.tags


def test_mixed_renders_exactly_its_drawn_texture(excerpts):
    m = excerpts[1]
    drawn = {seed: render.render_piece(m, seed) for seed in range(6)}
    assert {r.tags["texture"] for r in drawn.values()} == {"solo", "accompanied"}
    for seed in (0, 1):
        explicit = render.render_piece(m, seed, texture=drawn[seed].tags["texture"])
        assert explicit.wave.tobytes() == drawn[seed].wave.tobytes()
        assert explicit.caption == drawn[seed].caption


def test_output_format(excerpts):
    for m in excerpts[:3]:
        r = render.render_piece(m, 0, texture="accompanied")
        assert r.sample_rate == SR == 44100
        assert r.wave.dtype == np.float32 and r.wave.ndim == 1 and np.all(np.isfinite(r.wave))
        assert np.abs(r.wave).max() == pytest.approx(playback.OUTPUT_PEAK, rel=1e-4)  # -1 dBFS, never clipped
        assert not pinned_run(r.wave)
        assert len(r.wave) / SR > r.melody[-1][1] + r.melody[-1][2]  # the last note and its release fit
        json.dumps(r.tags)  # the tags go into dataset manifests


def test_bad_renderer_or_texture_is_a_one_line_user_error(excerpts):
    suggested = r"unknown renderer 'soundfnt' \(did you mean 'soundfont'\?\); choose one of soundfont, synth$"
    with pytest.raises(DiamusicError, match=suggested):
        render.render_piece(excerpts[0], 0, renderer="soundfnt")
    with pytest.raises(
        render.RenderOptionError, match=r"unknown texture 'duet'; choose one of solo, accompanied, mixed$"
    ):
        render.render_piece(excerpts[0], 0, texture="duet")


def test_rendered_melody_is_the_score_transposed_stretched_and_humanised(excerpts):
    for m in excerpts[:3]:
        for seed in (0, 1):
            r = render.render_piece(m, seed, texture="accompanied")
            t = r.tags
            factor = t["tempo_bpm"] / m.tempo_bpm
            assert len(r.melody) == len(m.notes)
            for (p, s, d), (p0, s0, d0) in zip(r.melody, m.notes, strict=True):
                assert p == pytest.approx(p0 + t["transpose"] + t["tuning_cents"] / 100, abs=1e-3)
                assert abs(s - s0 / factor) <= 0.013  # a few ms of timing humanisation, clipped at 3 sigma
                assert 0 < d <= d0 / factor
            starts = np.array([s for _, s, _ in r.melody])
            ends = starts + np.array([d for *_, d in r.melody])
            assert np.all(ends[:-1] <= starts[1:])  # still one line: a note ends before the next
            assert abs(t["tuning_cents"]) <= arrangement.MAX_TUNING_CENTS


def test_reference_melody_matches_the_audio(excerpts):
    """pyin on a solo rendering agrees with the returned melody notes on almost every frame."""
    r = render.render_piece(excerpts[0], 0, texture="solo")
    times, f0, voiced = pitch.pitch_track(r.wave, r.sample_rate)
    expected = np.full(len(times), np.nan)
    for p, s, d in r.melody:
        expected[(times > s + 0.06) & (times < s + d - 0.03)] = p
    frames = np.isfinite(expected)
    assert frames.sum() > 50
    hit = voiced[frames] & (np.abs(pitch.hz_to_midi(np.where(voiced, f0, 1.0))[frames] - expected[frames]) < 0.2)
    assert hit.mean() > 0.9


def test_render_piece_caption_and_tags_match(excerpts):
    r = render.render_piece(excerpts[4], 2, "synth", "accompanied")
    assert r.caption == captions.describe(r.tags, piece_rng(excerpts[4].id, 2, "caption"))
    required = {"form", "key", "meter", "tempo_bpm", "texture", "melody_instrument", "accompaniment", "drums"}
    assert required | {"reverb", "renderer", "transpose", "collection"} <= set(r.tags)
    assert r.tags["renderer"] == "synth" and r.tags["melody_instrument"].startswith("synth ")
    assert r.tags["collection"] == excerpts[4].collection


@pytest.mark.parametrize("renderer", render.RENDERERS)
def test_stereo_places_the_parts_on_a_stage_and_leaves_mono_as_it_was(excerpts, renderer):
    """Stereo: (samples, 2), the parts panned to seeded places and a room per side, so the sides differ;
    the same seed gives the same bytes; mono renders exactly what it renders without a stereo option."""
    m = excerpts[0]
    mono = render.render_piece(m, 3, renderer, "accompanied")
    stereo = render.render_piece(m, 3, renderer, "accompanied", audio_channels=2)
    assert np.array_equal(render.render_piece(m, 3, renderer, "accompanied", audio_channels=1).wave, mono.wave)
    assert stereo.wave.shape == (len(mono.wave), 2) and stereo.wave.dtype == np.float32
    assert np.array_equal(render.render_piece(m, 3, renderer, "accompanied", audio_channels=2).wave, stereo.wave)
    left, right = stereo.wave.T
    assert 0.2 < np.corrcoef(left, right)[0, 1] < 0.98  # one piece, heard from two places
    assert abs(np.abs(stereo.wave).max() - playback.OUTPUT_PEAK) < 1e-6 and not pinned_run(stereo.wave.ravel())
    stage = stereo.tags["stage"]
    assert set(stage) == {p.role for p in arrangement.arrange(m, 3, "accompanied", renderer).parts}
    assert abs(stage["melody"]) <= 0.2 and all(-1 <= pan <= 1 for pan in stage.values())
    assert "stage" not in mono.tags and stereo.caption == mono.caption and stereo.melody == mono.melody


def test_a_part_is_panned_with_constant_power_to_its_drawn_place(excerpts):
    """Without the room, a solo's two sides are its mono stem scaled by cos and sin of its pan angle."""
    import dataclasses

    m = excerpts[0]
    dry = dataclasses.replace(arrangement.arrange(m, 3, "solo", "synth"), reverb_wet=0.0)
    wave = playback.render_arrangement(dry, "synth", m, 3, audio_channels=2)
    pan = playback.stage_pans(dry, m, 3)["melody"]
    assert pan != 0.0  # a drawn place, off the centre line
    angle = (pan + 1.0) * np.pi / 4
    np.testing.assert_allclose(wave[:, 0] * np.sin(angle), wave[:, 1] * np.cos(angle), atol=1e-6)
    mono = playback.render_arrangement(dry, "synth", m, 3)
    assert np.corrcoef(mono, wave[:, 0])[0, 1] > 0.9999  # the same performance
