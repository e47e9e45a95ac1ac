import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from diamusic.config import ConfigError, from_dict, load_config, pattern_of_config, to_dict
from diamusic.errors import DiamusicError


def test_presets_load_and_match_the_research_log():
    tiny = load_config("tiny-cpu")
    assert tiny.model.preset == "tiny" and tiny.precision == "fp32"
    big = load_config("dia-1.6b-music")
    assert big.batch_size == 20 and big.precision == "bf16" and big.model.init == "pretrained"
    assert big.model.pretrained == "nari-labs/Dia-1.6B-0626"
    log = load_config("research-log-2025-11-25")  # the log's ablation: stereo, a small model from scratch
    assert (log.model.preset, log.model.init, log.data.channels, log.data.crop_frames) == ("research-log", "scratch",
                                                                                          "stereo", 600)  # fmt: skip
    assert (log.batch_size, log.grad_accum, log.optim.lr, log.optim.warmup_steps) == (4, 4, 1e-4, 0)
    assert log.cfg_dropout == 0.5 and log.codebook_weights is None


def test_a_stereo_config_on_mono_data_and_a_stereo_pattern_are_checked_at_load(melody_dataset, stereo_dataset):
    with pytest.raises(ConfigError, match="data.channels: the config is for stereo data, .* is mono"):
        load_config("research-log-2025-11-25", overrides={"data.path": str(melody_dataset)})
    stereo = {"data.path": str(stereo_dataset)}
    for name in ("dia", "musicgen", "compressed", "flat", "reverse", "middle-out"):
        pattern = pattern_of_config(load_config("research-log-2025-11-25", {**stereo, "delay_pattern": name}))
        assert pattern.num_streams == 18 and pattern.sides[0] == pattern.sides[1] and pattern.name == name
    with pytest.raises(ConfigError, match=r"codebook_weights has 4 entries for 9 codebooks \(or 18, per side\)"):
        load_config("tiny-cpu", {**stereo, "codebook_weights": [1.0] * 4})
    assert load_config("tiny-cpu", {**stereo, "codebook_weights": [1.0] * 18})


def test_overrides_and_sets_apply_in_order():
    config = load_config(
        "tiny-cpu",
        overrides={"steps": 7, "optim.lr": None},  # None means "not given on the command line"
        sets=["optim.lr=1e-4", "delay_pattern=0,1,2,3,4,5,6,7,8", "tracking.backends=[tensorboard]", "steps=9"],
    )
    assert config.steps == 9 and config.optim.lr == 1e-4
    assert config.delay_pattern == "0,1,2,3,4,5,6,7,8" and config.tracking.backends == ["tensorboard"]


def test_round_trip_through_dict():
    config = load_config("tiny-cpu", sets=["codebook_weights=[1,1,1,1,1,1,1,1,2]"])
    assert from_dict(to_dict(config)) == config
    assert config.codebook_weights[-1] == 2.0


@pytest.mark.parametrize(
    ("sets", "message"),
    [
        (["optim.lrr=1"], "unknown config key 'optim.lrr'"),
        (["steps=abc"], "steps: expected an integer"),
        (["steps=0"], "steps must be > 0"),
        (["eval.every=0"], "eval.every must be > 0"),
        (["checkpoints.every=0"], "checkpoints.every must be > 0"),
        (["cfg_dropout=1.5"], "cfg_dropout must be in"),
        (["model.init=magic"], "model.init: expected one of scratch, pretrained, got 'magic'"),
        (["model.preset=huge"], "model.preset 'huge' must be one of tiny, small, research-log, dia-1.6b"),
        (["precision=fp16"], "precision: expected one of auto, fp32, bf16"),
        (["tracking.backends=[mlflow]"], "tracking.backends[0]: expected one of wandb, tensorboard"),
        (["optim.lr=.nan"], "optim.lr must be a finite number"),
        (["data.eos_crop_share=2"], "data.eos_crop_share must be in"),
        (["delay_pattern=1,2,3"], "delay_pattern: .*needs a codebook with delay 0"),
        (["codebook_weights=[1,2]"], "codebook_weights has 2 entries for 9 codebooks"),
        (["codebook_weights=[0,0,0,0,0,0,0,0,0]"], "codebook_weights are all 0"),
        (["data.tag_dropout=1"], "data.tag_dropout must be in"),
        (["data.tag_limit=-1"], "data.tag_limit must be >= 0"),
        (["data.tag_shuffle=maybe"], "data.tag_shuffle: expected true or false"),
        (["tracking.run_name=[1,[2,3]]"], "tracking.run_name: expected a string, got [1, [2, 3]]"),
        (["tracking.project={a: 1}"], "tracking.project: expected a string, got {'a': 1}"),
        (["noequals"], "expected key=value"),
    ],
)
def test_bad_config_names_the_key(sets, message):
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("]", r"\]")):
        load_config("tiny-cpu", sets=sets)


def test_a_yaml_alias_bomb_is_refused_in_one_line(tmp_path):
    # 9 levels of 9 aliases: ~400 bytes standing for 9^9 strings (str() of it grew past 1 GB, never finished)
    levels = ["&a0 [" + ", ".join(["lol"] * 9) + "]"]
    levels += [f"&a{i} [{', '.join([f'*a{i - 1}'] * 9)}]" for i in range(1, 9)]
    bomb = f"[{', '.join(levels)}]"
    (tmp_path / "bomb.yaml").write_text(f"tracking:\n  run_name: {bomb}\n")
    with pytest.raises(ConfigError, match="bomb.yaml: expands to more than 100000 values") as caught:
        load_config(str(tmp_path / "bomb.yaml"))
    assert "\n" not in str(caught.value)
    with pytest.raises(ConfigError, match="setting tracking.run_name: expands to more than"):
        load_config("tiny-cpu", sets=[f"tracking.run_name={bomb}"])
    assert load_config("tiny-cpu", sets=["tracking.tags=[a, b]"]).tracking.tags == ["a", "b"]


def test_pattern_is_checked_against_the_dataset_when_the_config_loads(melody_dataset):
    """A 3-codebook pattern fails at load, before any model is built or file written."""
    with pytest.raises(ConfigError, match="has 3 delays but the codec has 9 codebooks"):
        load_config("tiny-cpu", overrides={"data.path": str(melody_dataset), "delay_pattern": "0,1,2"})
    assert load_config("tiny-cpu", overrides={"data.path": str(melody_dataset), "delay_pattern": "dia"})


@pytest.mark.parametrize(
    ("card", "message"),
    [("{not json", "card.json: not valid JSON"), ('{"codec": {}}', "card.json: no codebook count")],
)
def test_a_damaged_dataset_card_is_one_line(tmp_path, card, message):
    (tmp_path / "card.json").write_text(card)
    with pytest.raises(DiamusicError) as caught:
        load_config("tiny-cpu", {"data.path": str(tmp_path)})
    assert message in str(caught.value) and "\n" not in str(caught.value)


def test_unknown_preset_lists_the_presets(tmp_path):
    with pytest.raises(ConfigError, match="tiny-cpu"):
        load_config("nope")
    bad = tmp_path / "bad.yaml"
    bad.write_text("steps: [1, 2\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(str(bad))


KEYS = [
    *("steps", "batch_size", "optim.lr", "optim.beta1", "data.crop_frames", "data.eos_crop_share", "cfg_dropout"),
    *(
        "delay_pattern",
        "codebook_weights",
        "model.preset",
        "checkpoints.keep",
        "optim",
        "nope",
        "optim.nope",
        "steps.x",
    ),
]
VALUES = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-10, 10**6),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=12),
    st.lists(st.one_of(st.integers(-2, 5), st.floats(allow_nan=True), st.text(max_size=3)), max_size=10),
    st.dictionaries(st.text(max_size=5), st.integers(), max_size=2),
)


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(st.sampled_from(KEYS), VALUES, max_size=4), st.lists(st.text(max_size=20), max_size=3))
def test_any_overrides_give_a_valid_config_or_one_config_error(overrides, sets):
    try:
        config = load_config("tiny-cpu", overrides=overrides, sets=sets)
    except ConfigError as exc:
        assert str(exc) and "\n" not in str(exc)
        return
    assert config.steps > 0 and config.batch_size > 0 and 0 < config.optim.lr < float("inf")
    assert from_dict(to_dict(config)) == config


@settings(max_examples=100, deadline=None)
@given(st.binary(max_size=200))
def test_any_config_file_gives_a_config_or_one_config_error(tmp_path_factory, content):
    path = tmp_path_factory.mktemp("yaml") / "config.yaml"
    path.write_bytes(content)
    try:
        load_config(str(path))
    except ConfigError as exc:
        assert "\n" not in str(exc)
