import pytest
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from transformers.models.dia.processing_dia import DiaProcessor

from diamusic.patterns import PRESETS, DelayPattern, PatternError

BOS, PAD = 1026, 1025


@st.composite
def patterns(draw, max_codebooks: int = 9, max_delay: int = 16) -> DelayPattern:
    n = draw(st.integers(1, max_codebooks))
    delays = draw(st.lists(st.integers(0, max_delay), min_size=n, max_size=n))
    delays[draw(st.integers(0, n - 1))] = 0  # any codebook may be the undelayed reference
    return DelayPattern(tuple(delays))


@st.composite
def pattern_and_codes(draw):
    pattern = draw(patterns())
    batch = draw(st.integers(1, 4))
    frames = draw(st.integers(0, 40))
    seed = draw(st.integers(0, 2**16))
    g = torch.Generator().manual_seed(seed)
    codes = torch.randint(0, 1024, (batch, frames, pattern.num_codebooks), generator=g)
    return pattern, codes


def hf_apply(codes: torch.Tensor, delays: list[int]) -> torch.Tensor:
    """transformers' own delay: DiaProcessor pads with max_delay PAD frames, then shifts in place."""
    batch, frames, codebooks = codes.shape
    steps = frames + max(delays)
    prefill = torch.full((batch, steps, codebooks), PAD, dtype=codes.dtype)
    prefill[:, :frames] = codes
    idx = DiaProcessor.build_indices(bsz=batch, seq_len=steps, num_channels=codebooks, delay_pattern=delays)
    return DiaProcessor.apply_audio_delay(prefill, pad_token_id=PAD, bos_token_id=BOS, precomputed_idx=idx)


def hf_revert(delayed: torch.Tensor, delays: list[int]) -> torch.Tensor:
    batch, steps, codebooks = delayed.shape
    idx = DiaProcessor.build_indices(
        bsz=batch, seq_len=steps, num_channels=codebooks, delay_pattern=delays, revert=True
    )
    out = DiaProcessor.apply_audio_delay(delayed, pad_token_id=-1, bos_token_id=-1, precomputed_idx=idx)
    return out[:, : steps - max(delays)]


@settings(max_examples=150, deadline=None)
@given(pattern_and_codes())
def test_revert_inverts_apply(case):
    pattern, codes = case
    delayed = pattern.apply(codes, bos=BOS, pad=PAD)
    assert delayed.shape == (codes.shape[0], codes.shape[1] + pattern.max_delay, codes.shape[2])
    assert torch.equal(pattern.revert(delayed), codes)


@settings(max_examples=150, deadline=None)
@given(pattern_and_codes())
def test_apply_matches_transformers(case):
    pattern, codes = case
    # transformers' helper cannot index an empty sequence; our empty case is tested below
    assume(codes.shape[1] > 0)
    delayed = pattern.apply(codes, bos=BOS, pad=PAD)
    assert torch.equal(delayed, hf_apply(codes, pattern.to_list()))
    assert torch.equal(pattern.revert(delayed), hf_revert(delayed, pattern.to_list()))


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_presets_match_transformers(name):
    pattern = DelayPattern.parse(name)
    codes = torch.randint(0, 1024, (3, 50, 9), generator=torch.Generator().manual_seed(0))
    assert torch.equal(pattern.apply(codes, BOS, PAD), hf_apply(codes, list(PRESETS[name])))


def test_layout_bos_before_and_pad_after_each_codebook():
    pattern = DelayPattern.parse("musicgen")
    codes = torch.arange(5)[None, :, None].repeat(1, 1, 9)  # frame index as the code
    delayed = pattern.apply(codes, BOS, PAD)[0]
    for c, d in enumerate(pattern.delays):
        column = delayed[:, c].tolist()
        assert column[:d] == [BOS] * d
        assert column[d : d + 5] == [0, 1, 2, 3, 4]
        assert column[d + 5 :] == [PAD] * (pattern.max_delay - d)


def test_empty_codes():
    pattern = DelayPattern.parse("dia")
    delayed = pattern.apply(torch.zeros(2, 0, 9, dtype=torch.long), BOS, PAD)
    assert delayed.shape == (2, 15, 9)
    assert pattern.revert(delayed).shape == (2, 0, 9)


def test_presets_and_derived_facts():
    assert DelayPattern.parse("dia").delays == (0, 8, 9, 10, 11, 12, 13, 14, 15)
    assert DelayPattern.parse("musicgen").max_delay == 8
    assert DelayPattern.parse("compressed").max_delay == 4
    assert DelayPattern.parse("parallel").extra_steps == 0
    assert DelayPattern.parse("dia").extra_steps == 15
    assert DelayPattern.parse("musicgen").decode_steps(100) == 109
    assert DelayPattern.parse("parallel").decode_steps(100) == 101
    # the research log's other patterns: the reference for length and EOS is the undelayed codebook
    assert DelayPattern.parse("reverse").delays == (8, 7, 6, 5, 4, 3, 2, 1, 0)
    assert DelayPattern.parse("reverse").reference == 8 and DelayPattern.parse("reverse").max_delay == 8
    assert DelayPattern.parse("middle-out").delays == (4, 3, 2, 1, 0, 1, 2, 3, 4)
    assert DelayPattern.parse("middle-out").reference == 4 and DelayPattern.parse("middle-out").decode_steps(10) == 15
    assert DelayPattern.parse("flat") == DelayPattern((0,) * 9, "flat") and DelayPattern.parse("dia").reference == 0
    assert DelayPattern.parse("parallel").delays == DelayPattern.parse("flat").delays  # the older name stays
    assert DelayPattern.parse([0] * 9).name == "flat" and DelayPattern.parse("2,0,1,0").reference == 1


@pytest.mark.parametrize(
    ("spec", "expected"),
    [("0,1,2,3,4,5,6,7,8", "musicgen"), ("[0, 8, 9, 10, 11, 12, 13, 14, 15]", "dia"), ("0 0 1", "custom")],
)
def test_parse_strings_and_names(spec, expected):
    assert DelayPattern.parse(spec).name == expected


def test_parse_lists_and_patterns():
    p = DelayPattern.parse([0, 2, 1])
    assert p.delays == (0, 2, 1) and DelayPattern.parse(p) is p


@pytest.mark.parametrize(
    ("spec", "fragment"),
    [
        ("0,2,1", "has 3 delays but the codec has 9 codebooks"),
        ("1,2,3,4,5,6,7,8,9", "needs a codebook with delay 0"),
        ("0,-1,2,3,4,5,6,7,8", "must be >= 0"),
        ("0,1.5,2", "comma-separated integers"),
        ("wobbly", "unknown delay pattern"),
        ("", "unknown delay pattern"),
    ],
)
def test_invalid_patterns_name_the_problem(spec, fragment):
    with pytest.raises(PatternError, match=fragment.replace("(", r"\(")):
        DelayPattern.parse(spec, num_codebooks=9)


def test_non_integer_list_rejected():
    with pytest.raises(PatternError, match="integers"):
        DelayPattern.parse([0, 1.0, 2])
    with pytest.raises(PatternError, match="integers"):
        DelayPattern((0, True))


def test_wrong_shape_rejected():
    with pytest.raises(PatternError, match="expected codes shaped"):
        DelayPattern.parse("musicgen").apply(torch.zeros(2, 5, 4, dtype=torch.long), BOS, PAD)


def test_grid_and_describe():
    p = DelayPattern.parse("dia")
    grid = p.grid(10)
    assert grid[0] == list(range(10))
    assert grid[1][:8] == [None] * 8 and grid[1][8:] == [0, 1]
    text = p.describe(steps=12, frame_rate=86.13)
    assert "max delay 15" in text and "extra decode steps vs parallel: 15" in text


def test_plot_writes_png(tmp_path):
    out = tmp_path / "grid.png"
    DelayPattern.parse("musicgen").plot(str(out))
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@settings(max_examples=300, deadline=None)
@given(
    st.one_of(
        st.text(max_size=40),
        st.lists(st.integers(-5, 40), max_size=12).map(lambda d: ",".join(map(str, d))),
        st.lists(st.one_of(st.integers(-5, 40), st.floats(allow_nan=True), st.text(max_size=3)), max_size=12),
    ),
    st.one_of(st.none(), st.integers(1, 12)),
)
def test_any_spec_parses_to_a_valid_pattern_or_a_pattern_error(spec, codebooks):
    try:
        pattern = DelayPattern.parse(spec, num_codebooks=codebooks)
    except PatternError as exc:
        assert str(exc) and "\n" not in str(exc)
        return
    assert min(pattern.delays) == 0 and pattern.delays[pattern.reference] == 0
    assert codebooks is None or pattern.num_codebooks == codebooks
    codes = torch.randint(0, 8, (1, 5, pattern.num_codebooks))
    assert torch.equal(pattern.revert(pattern.apply(codes, bos=BOS, pad=PAD)), codes)


# --- stereo: the pattern repeated per side ----------------------------------------------------------


@pytest.mark.parametrize("name", ["dia", "musicgen", "compressed", "flat", "reverse", "middle-out"])
def test_a_preset_is_repeated_per_side_and_costs_no_extra_decode_steps(name):
    mono, stereo = DelayPattern.parse(name), DelayPattern.parse(name, num_codebooks=9, audio_channels=2)
    assert stereo.delays == mono.delays * 2 and stereo.name == name and stereo.sides == [mono.delays] * 2
    assert (stereo.num_streams, stereo.num_codebooks, stereo.audio_channels) == (18, 9, 2)
    assert stereo.decode_steps(100) == mono.decode_steps(100) and stereo.reference == mono.reference
    assert str(stereo) == f"{name} [{','.join(map(str, mono.delays))}] per side"
    # a frame's two sides are emitted at the same decode steps
    codes = torch.randint(0, 1024, (2, 30, 18))
    steps = stereo.apply(codes, BOS, PAD)
    assert torch.equal(steps[..., :9], mono.apply(codes[..., :9], BOS, PAD))
    assert torch.equal(steps[..., 9:], mono.apply(codes[..., 9:], BOS, PAD))
    assert torch.equal(stereo.revert(steps), codes)
    assert DelayPattern.parse(stereo.to_list(), num_codebooks=9, audio_channels=2) == stereo  # a full list too
    assert DelayPattern.parse(name, audio_channels=2) == stereo  # a preset is one side's
    assert DelayPattern.parse(stereo.to_list(), audio_channels=2) == stereo  # a list is every side's


def test_a_stereo_list_may_give_each_side_its_own_delays_or_is_refused_in_one_line():
    own = DelayPattern.parse(list(range(9)) + [0] * 9, num_codebooks=9, audio_channels=2)
    assert own.sides == [tuple(range(9)), (0,) * 9] and own.name == "custom"
    assert str(own) == "custom [0,1,2,3,4,5,6,7,8 | 0,0,0,0,0,0,0,0,0]"
    with pytest.raises(PatternError, match=r"has 10 delays but the codec has 9 codebooks \(9 repeated per side, or 18"):
        DelayPattern.parse(list(range(10)), num_codebooks=9, audio_channels=2)
    with pytest.raises(PatternError, match="needs a codebook with delay 0"):
        DelayPattern.parse([1] * 9, num_codebooks=9, audio_channels=2)


def test_describe_draws_both_sides():
    text = DelayPattern.parse("dia", num_codebooks=9, audio_channels=2).describe(steps=10)
    rows = [line for line in text.splitlines() if " cb" in line]
    assert [r.split()[0] + r.split()[1] for r in rows] == [f"{s}cb{c}" for s in "LR" for c in range(9)]
    assert rows[0].split()[2:] == rows[9].split()[2:] == [str(s) for s in range(10)]  # L cb0 and R cb0 alike
