"""Runs as plain transformers models: checkpoint files, `diamusic export`, the model card, the
unconditional input, and plain transformers' generate/DiaProcessor against ours in a fresh process."""

import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
import yaml

from diamusic.checkpoints import checkpoints_of
from diamusic.cli import main
from diamusic.codecs import load_codec
from diamusic.config import load_config
from diamusic.errors import DiamusicError
from diamusic.export import decode_exported, export_run, exported_inputs, model_card
from diamusic.generate import DEFAULT_SECONDS, SamplingConfig, generate_codes
from diamusic.model import build_model
from diamusic.patterns import DelayPattern
from diamusic.runs import load_run
from diamusic.tokens import AudioVocab, encode_text
from diamusic.train import train

TEXTS = ["a lively jig in D major", "slow air"]


@pytest.fixture(scope="module")
def dac_dataset(tmp_path_factory):
    """Built-in melodies encoded with a tiny random DAC of 64 codes (Dia's CFG filter takes 45)."""
    from transformers import DacConfig, DacModel

    from diamusic.data.prepare import prepare

    root = tmp_path_factory.mktemp("dac")
    torch.manual_seed(0)
    config = DacConfig(encoder_hidden_size=4, downsampling_ratios=[2, 4, 8, 8], decoder_hidden_size=16,
                       n_codebooks=9, codebook_size=64, codebook_dim=4, sampling_rate=44100)  # fmt: skip
    DacModel(config).save_pretrained(root / "weights")
    options = {"dac_model": str(root / "weights")}
    prepare("melodies", "dac", root / "data", limit=4, max_seconds=2.0, codec_options=options, progress=False)
    return root / "data"


def _train(data, out, **sets):
    overrides = {"data.path": str(data), "steps": 4, "batch_size": 2, "data.crop_frames": 32, "eval.every": 4,
                 "eval.clips": 2, "checkpoints.every": 4, "optim.warmup_steps": 1, **sets}  # fmt: skip
    train(load_config("tiny-cpu", overrides=overrides), out, progress=False)
    return out


@pytest.fixture(scope="module")
def dac_runs(dac_dataset, tmp_path_factory):
    root = tmp_path_factory.mktemp("dac_runs")
    return {
        "full": _train(dac_dataset, root / "full", delay_pattern="musicgen"),
        "lora": _train(dac_dataset, root / "lora", delay_pattern="dia", **{"model.lora_rank": 4}),
    }


def test_a_checkpoint_loads_and_generates_in_plain_transformers_with_the_runs_defaults(dac_runs):
    """Every whole-model checkpoint is a transformers folder: the model with our sampling defaults
    in its generation config, and DiaProcessor with the run's DAC; a LoRA one is not mistaken for one."""
    from transformers import DiaForConditionalGeneration, DiaProcessor

    ckpt = checkpoints_of(dac_runs["full"])[-1]
    model = DiaForConditionalGeneration.from_pretrained(ckpt)
    ours = SamplingConfig.for_seconds(DEFAULT_SECONDS, load_codec(dac_runs["full"] / "codec").frame_rate)
    settings = model.generation_config
    assert (settings.guidance_scale, settings.top_k, settings.temperature) == (ours.cfg_scale, ours.cfg_filter_top_k,
                                                                               ours.temperature)  # fmt: skip
    assert settings.do_sample and settings.eos_token_id == 64 and settings.pad_token_id == 65
    assert settings.max_new_tokens == DelayPattern.parse("musicgen").decode_steps(ours.max_frames)
    processor = DiaProcessor.from_pretrained(ckpt)
    assert processor.feature_extractor.sampling_rate == 44100
    assert str(processor.audio_tokenizer.name_or_path) == str(load_codec(dac_runs["full"] / "codec").model_id)
    lora = checkpoints_of(dac_runs["lora"])[-1]
    assert not (lora / "config.json").exists()  # adapters only: `diamusic export` merges them into the base


FRESH_PROCESS = textwrap.dedent(
    """
    import json, sys
    import numpy as np, torch
    from transformers import AutoProcessor, DiaForConditionalGeneration

    texts = json.loads(sys.argv[1])
    for folder, out in json.loads(sys.argv[2]):
        model = DiaForConditionalGeneration.from_pretrained(folder)
        processor = AutoProcessor.from_pretrained(folder)
        kw = {"delay_pattern": model.config.delay_pattern, "eos_token_id": 64, "pad_token_id": 65, "bos_token_id": 66}
        inputs = processor(text=texts, **kw)
        found = {}
        for name, settings in {"greedy": {"guidance_scale": 1.0}, "cfg": {"guidance_scale": 3.0, "top_k": 45}}.items():
            tokens = model.generate(**inputs, do_sample=False, max_new_tokens=40, **settings)
            found[name] = tokens.numpy()
            for i, audio in enumerate(processor.batch_decode(tokens, **kw)):
                found[f"{name}_audio_{i}"] = audio.numpy()
        torch.manual_seed(0)
        found["defaults"] = model.generate(**inputs).numpy()  # generation_config.json: sampling, CFG 3, top-k 45
        np.savez(out, **found)
    """
)


@pytest.fixture(scope="module")
def plain(dac_runs, tmp_path_factory):
    """Each run exported (LoRA merged), then generated and decoded by plain transformers in one fresh
    Python process: kind -> (export folder, its results)."""
    root = tmp_path_factory.mktemp("plain")
    folders = {kind: export_run(run, root / kind) for kind, run in dac_runs.items()}
    jobs = [(str(folder), str(root / f"{kind}.npz")) for kind, folder in folders.items()]
    script = root / "plain.py"
    script.write_text(FRESH_PROCESS)
    done = subprocess.run([sys.executable, str(script), json.dumps(TEXTS), json.dumps(jobs)],
                          capture_output=True, text=True, timeout=300)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    return {kind: (folder, np.load(root / f"{kind}.npz")) for kind, folder in folders.items()}


def agree_up_to_a_tie(model, text: str, ours: torch.Tensor, theirs: torch.Tensor) -> None:
    """Two greedy decodings of one text (steps, codebooks) are equal, or equal until a step where the
    two picks score the same to float precision: batched and cached float paths differ by ~1e-6, and
    an untrained model's top codes can be closer than that. Both greedy and the CFG filter pick the
    best *conditional* logit, so that is what must tie."""
    differ = (ours != theirs).nonzero()
    if len(differ) == 0:
        return
    step, codebook = differ[0].tolist()
    ids, mask = encode_text([text])
    with torch.no_grad():
        logits = model(input_ids=ids, attention_mask=mask, decoder_input_ids=ours[None, :step]).logits
    cond = logits.view(model.config.decoder_config.num_channels, step, -1)[codebook, -1]
    a, b = ours[step, codebook], theirs[step, codebook]
    assert abs(float(cond[a] - cond[b])) < 1e-5, (step, codebook, float(cond[a]), float(cond[b]))


@pytest.mark.integration
@pytest.mark.parametrize("kind", ["full", "lora"])
def test_an_export_in_plain_transformers_gives_our_tokens_and_audio(dac_runs, plain, kind, tmp_path):
    """Export (LoRA merged), then in a fresh Python process transformers' generate (greedy, and greedy
    with CFG 3 and the top-k 45 filter) gives `diamusic generate`'s codes (up to float ties), and
    DiaProcessor's batch_decode gives the audio our codec decodes from the same codes."""
    run = dac_runs[kind]
    folder, theirs = plain[kind]
    loaded = load_run(run, device="cpu")
    pattern = loaded.pattern
    codec = load_codec(run / "codec")
    frames = 40 - pattern.decode_steps(0)  # transformers' 40 new tokens hold BOS + max delay + the frames
    sampling = {
        "greedy": (["--cfg-scale", "1"], {"cfg_scale": 1.0}),
        "cfg": (["--cfg-scale", "3", "--cfg-filter-top-k", "45"], {"cfg_scale": 3.0, "cfg_filter_top_k": 45}),
    }
    for name, (flags, settings) in sampling.items():
        out = tmp_path / name
        args = ["generate", "--run", str(run), "--out", str(out), "--temperature", "0", "--device", "cpu"]
        args += ["--seconds", str(frames / codec.frame_rate), *flags]
        assert main([*args, *(w for t in TEXTS for w in ("--text", t))]) == 0
        ours = generate_codes(loaded.model, TEXTS, pattern, loaded.vocab,
                              SamplingConfig(max_frames=frames, temperature=0, **settings))  # fmt: skip
        delayed = torch.from_numpy(theirs[name])
        for i, text in enumerate(TEXTS):
            assert np.array_equal(np.load(out / f"gen_{i:02d}.npy"), ours.codes[i])  # the CLI is the library
            agree_up_to_a_tie(loaded.model, text, ours.delayed[i], delayed[i])
            ended = (delayed[i, :, 0] == loaded.vocab.eos).nonzero()
            length = int(ended[0]) - 1 if len(ended) else frames
            codes = pattern.revert(delayed[i : i + 1, 1:])[0, :length].numpy()
            assert np.allclose(theirs[f"{name}_audio_{i}"], codec.decode(codes), atol=1e-5), (name, i)
    defaults = theirs["defaults"]
    assert defaults.shape[0] == len(TEXTS) and defaults.shape[2] == 9 and (defaults[:, 0] == 66).all()
    card = (folder / "README.md").read_text()
    metadata = yaml.safe_load(card.split("---")[1])
    assert metadata["library_name"] == "transformers" and f"delay-pattern-{pattern.name}" in metadata["tags"]
    assert "processor.batch_decode(tokens, **kw)" in card and str(pattern.to_list()) in card


def test_an_export_on_the_offline_codec_carries_it_and_decodes_with_diamusic(tiny_run, tmp_path):
    from transformers import DiaForConditionalGeneration

    folder = export_run(tiny_run, tmp_path / "export", checkpoint=5)
    assert (folder / "codec" / "codec.json").exists() and not (folder / "processor_config.json").exists()
    model = DiaForConditionalGeneration.from_pretrained(folder)
    tokens = model.generate(**exported_inputs(model, TEXTS), do_sample=False, guidance_scale=1.0, max_new_tokens=30)
    run = load_run(tiny_run, 5, device="cpu")
    ours = generate_codes(run.model, TEXTS, run.pattern, run.vocab, SamplingConfig(max_frames=30 - 9, temperature=0,
                                                                                   cfg_scale=1.0))  # fmt: skip
    assert torch.equal(tokens, ours.delayed)
    for (audio, rate), codes in zip(decode_exported(folder, tokens), ours.codes, strict=True):
        assert rate == run.codec.sample_rate and np.allclose(audio, run.codec.decode(codes), atol=1e-6)
    assert "decode_exported" in (folder / "README.md").read_text()


def test_export_refuses_a_used_folder_and_an_offline_push_is_one_line(tiny_run, tmp_path, capsys, monkeypatch):
    (tmp_path / "used").mkdir()
    (tmp_path / "used" / "keep.txt").write_text("mine")
    assert main(["export", "--run", str(tiny_run), "--out", str(tmp_path / "used")]) == 2
    assert "is not an empty directory" in capsys.readouterr().err
    assert (tmp_path / "used" / "keep.txt").read_text() == "mine"
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    code = main(["export", "--run", str(tiny_run), "--out", str(tmp_path / "e"), "--push-to-hub", "someone/model"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "cannot push to the Hub repo 'someone/model'" in err[0], err
    assert (tmp_path / "e" / "model.safetensors").exists() and (tmp_path / "e" / "README.md").exists()


def test_the_model_card_shows_user_strings_as_text(tiny_run, tmp_path):
    info = json.loads((tiny_run / "run.json").read_text())
    info["config"]["data"]["path"] = "```\n<script>alert(1)</script>"
    info["dataset"] = str(tmp_path / "data")
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "card.json").write_text(json.dumps({"source": "<img src=x onerror=alert(1)>", "clips": 3}))
    run_dir = tmp_path / "<b onclick=x>[link](javascript:x)"
    run_dir.mkdir()
    config = load_run(tiny_run, device="cpu").model.config
    card = model_card(run_dir, "step_000010", config, info, license="cc-by-4.0")
    # the config's fence is longer than the backticks inside it, so the value stays in the block, as text
    fences = [line for line in card.splitlines() if line.startswith("````")]
    assert fences == ["````yaml", "````"]
    start, end = card.index("````yaml"), card.rindex("````")
    assert "<script>" in card[start:end]
    outside = card[:start] + card[end:]
    for markup in ("<script", "<img", "<b", "](javascript"):
        assert markup not in outside, markup
    assert yaml.safe_load(card.split("---")[1])["license"] == "cc-by-4.0"
    with pytest.raises(DiamusicError, match="license must be a Hub license id"):
        export_run(tiny_run, tmp_path / "e", license="<i>mit</i>")
    assert not (tmp_path / "e").exists()


@pytest.mark.parametrize(("pattern", "warned"), [("dia", False), ("reverse", True), ("middle-out", True)])
def test_the_model_card_warns_when_plain_transformers_cannot_stop_the_pattern(tiny_run, pattern, warned):
    info = json.loads((tiny_run / "run.json").read_text())
    config = build_model("tiny", DelayPattern.parse(pattern), AudioVocab(32, 9)).config
    card = model_card(tiny_run, "step_000010", config, info)
    assert ("This pattern delays codebook 0" in card) == warned
    assert not warned or f"codebook {DelayPattern.parse(pattern).reference}'s EOS" in card
    assert "Stereo:" not in card
    stereo = build_model("tiny", DelayPattern.parse(pattern, 9, 2), AudioVocab(32, 9, 2)).config
    assert "Stereo: the model's 18 token streams" in model_card(tiny_run, "step_000010", stereo, info)


def test_both_unconditional_inputs_give_the_same_encoder_states_and_cross_attention():
    """Ours: zero ids, one position attended; transformers' and nari-labs': zero ids under the
    conditional text's mask. An all-zero text is the same at every position, and attention over
    equal values returns that value, so both guide the decoder identically."""
    vocab = AudioVocab(codebook_size=32, num_codebooks=9)
    model = build_model("tiny", DelayPattern.parse("dia"), vocab, seed=3).eval()
    ours_ids, ours_mask = encode_text([None])
    length = len(TEXTS[0].encode())
    theirs_ids, theirs_mask = torch.zeros(1, length, dtype=torch.long), torch.ones(1, length, dtype=torch.long)
    with torch.no_grad():
        ours = model.get_encoder()(input_ids=ours_ids, attention_mask=ours_mask).last_hidden_state
        theirs = model.get_encoder()(input_ids=theirs_ids, attention_mask=theirs_mask).last_hidden_state
        assert torch.allclose(theirs, ours[:, :1].expand_as(theirs), atol=1e-5)
        steps = torch.randint(0, 32, (1, 5, 9))
        logits = [
            model(input_ids=ids, attention_mask=mask, decoder_input_ids=steps).logits
            for ids, mask in ((ours_ids, ours_mask), (theirs_ids, theirs_mask))
        ]
    assert torch.allclose(logits[0], logits[1], atol=1e-4)
