import numpy as np
import pytest

from diamusic.clap import CLAP_SECONDS, Clap, ClapError, frechet_distance, frechet_from_moments


def test_frechet_distance_has_the_closed_form_of_two_known_gaussians():
    rng = np.random.default_rng(0)
    mu1, mu2 = np.array([0.0, 1.0, -1.0, 2.0]), np.array([0.5, 1.0, 0.0, 2.0])
    s1, s2 = np.array([1.0, 2.0, 0.5, 1.0]), np.array([1.0, 1.0, 1.5, 3.0])
    # diagonal covariances commute: |mu1 - mu2|^2 + sum (s1 - s2)^2 exactly
    closed = float(((mu1 - mu2) ** 2).sum() + ((s1 - s2) ** 2).sum())
    assert frechet_from_moments(mu1, np.diag(s1**2), mu2, np.diag(s2**2)) == pytest.approx(closed, rel=1e-9)
    a, b = rng.normal(mu1, s1, (40_000, 4)), rng.normal(mu2, s2, (40_000, 4))
    assert frechet_distance(a, b) == pytest.approx(closed, rel=0.03)
    # a full covariance: the distance of a set to itself is 0, and a rotation of one set moves it away
    mixed = a @ np.linalg.qr(rng.normal(size=(4, 4)))[0]
    assert frechet_distance(mixed, mixed) == pytest.approx(0.0, abs=1e-6)
    assert frechet_distance(mixed, a) > 0.1


def test_clap_loads_from_a_folder_and_scores_captions_against_audio(tiny_clap_dir):
    clap = Clap.load(str(tiny_clap_dir))
    assert Clap.load(str(tiny_clap_dir)) is clap  # loaded once per process
    rate = 22050
    t = np.arange(3 * rate) / rate
    waves = [np.sin(2 * np.pi * 440 * t).astype(np.float32), np.random.default_rng(1).normal(0, 0.2, 3 * rate)]
    audio = clap.embed_audio(waves, rate)
    assert audio.shape == (2, 8) and np.allclose(np.linalg.norm(audio, axis=1), 1.0, atol=1e-5)
    assert not np.allclose(audio[0], audio[1])
    np.testing.assert_allclose(clap.embed_audio(waves[:1], rate), audio[:1], atol=1e-5)  # alone as in a batch
    scores = clap.scores(["a slow air", "a lively jig in D major"], waves, rate)
    text = clap.embed_text(["a slow air", "a lively jig in D major"])
    assert scores == pytest.approx([float(text[0] @ audio[0]), float(text[1] @ audio[1])], abs=1e-5)
    # a caption longer than the text tower's positions is cut to them
    assert clap.embed_text(["a lively jig in D major, " * 40]).shape == (1, 8)
    # a clip longer than the window is its first CLAP_SECONDS, wherever the processor would have cut
    long = np.tile(waves[1], 5)
    np.testing.assert_allclose(
        clap.embed_audio([long], rate), clap.embed_audio([long[: int(CLAP_SECONDS * rate)]], rate), atol=1e-4
    )


def test_a_clap_model_that_cannot_load_is_one_line(tmp_path):
    with pytest.raises(ClapError, match="cannot load the CLAP model") as caught:
        Clap.load(str(tmp_path / "missing"))
    assert "\n" not in str(caught.value)
