"""A run as a plain transformers model: the files beside a checkpoint's weights that let
`DiaForConditionalGeneration.generate` and `DiaProcessor` use it with the run's settings, and
`export_run` (LoRA merged, a model card, optionally pushed to the Hub).

What plain transformers gets, and what it cannot:
- ``generation_config.json`` holds the special ids and our sampling defaults (Dia's CFG filter,
  scale 3, top-k 45, the default length cap), so ``model.generate(**inputs)`` samples as
  ``diamusic generate`` does by default.
- ``processor_config.json`` names the DAC the codes decode with. transformers' ``DiaProcessor`` keeps
  its delay pattern and special ids as class defaults (Dia's pattern, ids for 1024 codes) and does
  not read them from a saved folder, so a run with another pattern must pass ``delay_pattern=`` to
  the processor call and to ``batch_decode``; the model card's snippet does.
- The unconditional input: transformers and nari-labs' Dia both use all-zero text ids under the
  conditional text's mask, we train and sample with zero ids and one position attended. Both give
  the same guidance: every position of an all-zero text carries the same embedding, and attention
  over identical values returns that value whatever its weights, so the encoder states and the
  cross-attention output do not depend on how many zero positions are attended
  (`tests/test_export.py` checks both the states and greedy decoding).
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import yaml

from diamusic import __version__
from diamusic.codecs import DacCodec
from diamusic.errors import DiamusicError, first_line
from diamusic.generate import DEFAULT_SECONDS, SamplingConfig
from diamusic.model import pattern_of, vocab_of
from diamusic.runs import EVAL_FILE, load_run
from diamusic.tokens import encode_text

if TYPE_CHECKING:
    from transformers import DiaConfig, GenerationConfig


class ExportError(DiamusicError):
    """An export that cannot be written or pushed as asked."""


# --- the files beside a checkpoint's weights ----------------------------------------------------


def generation_config(config: DiaConfig, frame_rate: float) -> GenerationConfig:
    """transformers' generation settings equal to `SamplingConfig`'s defaults for this model."""
    from transformers import GenerationConfig

    sampling = SamplingConfig.for_seconds(DEFAULT_SECONDS, frame_rate)
    decoder = config.decoder_config
    pattern = pattern_of(config)
    return GenerationConfig(
        bos_token_id=decoder.bos_token_id,
        eos_token_id=decoder.eos_token_id,
        pad_token_id=decoder.pad_token_id,
        decoder_start_token_id=decoder.bos_token_id,
        do_sample=sampling.temperature > 0,
        temperature=sampling.temperature,
        top_k=sampling.cfg_filter_top_k,  # transformers' Dia takes its CFG filter's k from top_k
        top_p=sampling.top_p,
        guidance_scale=sampling.cfg_scale,
        # transformers counts the delay tail and the reference codebook's EOS step in the new tokens
        max_new_tokens=pattern.decode_steps(sampling.max_frames),
    )


def processor_kwargs(config: DiaConfig) -> dict[str, Any]:
    """What `DiaProcessor` must be told for this model: where the model differs from its defaults."""
    from transformers import DiaProcessor

    decoder = config.decoder_config
    ours = {"delay_pattern": list(config.delay_pattern), "eos_token_id": decoder.eos_token_id,
            "pad_token_id": decoder.pad_token_id, "bos_token_id": decoder.bos_token_id}  # fmt: skip
    return {k: v for k, v in ours.items() if v != DiaProcessor.audio_kwargs[k]}


def write_processor(folder: Path, dac: str, sample_rate: int) -> None:
    """DiaProcessor's files (tokenizer, feature extractor, the DAC it loads) for codes of the DAC at
    ``dac`` (a hub id or a local directory), written by transformers itself: the DAC is built on the
    meta device, so nothing is loaded and only its name is saved."""
    from transformers import DacConfig, DacModel, DiaFeatureExtractor, DiaProcessor, DiaTokenizer

    with torch.device("meta"):
        codec = DacModel(DacConfig())
    codec.name_or_path = dac
    DiaProcessor(DiaFeatureExtractor(sampling_rate=sample_rate), DiaTokenizer(), codec).save_pretrained(folder)


def write_transformers_files(folder: Path, config: DiaConfig, codec_dir: Path, codec_card: dict[str, Any]) -> None:
    """The generation config, and for DAC runs the processor files, beside a model's weights."""
    generation_config(config, codec_card["frame_rate"]).save_pretrained(folder)
    if codec_card["name"] == DacCodec.name:
        write_processor(folder, DacCodec.source(codec_dir), codec_card["sample_rate"])


# --- export -------------------------------------------------------------------------------------


def export_run(
    run_dir: str | Path,
    out: str | Path,
    checkpoint: str | int = "latest",
    license: str | None = None,
) -> Path:
    """A standalone transformers folder of one checkpoint: weights (LoRA merged into its base),
    configs, generation config, processor files (DAC runs) or the offline codec, and a model card;
    written whole or not at all (`push` uploads it)."""
    run_dir, out = Path(run_dir), Path(out)
    if license is not None and not re.fullmatch(r"[a-z0-9][a-z0-9.+-]*", license):
        raise ExportError(f"license must be a Hub license id such as apache-2.0, cc-by-4.0 or other, got {license!r}")
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ExportError(f"{out} already exists and is not an empty directory: choose a new one")
    from transformers.utils import logging as hf_logging

    run = load_run(run_dir, checkpoint, device="cpu")
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    hf_logging.disable_progress_bar()  # a bar per file written: stderr is for what went wrong
    try:
        run.model.save_pretrained(tmp)
        codec_card = run.info["codec"]
        write_transformers_files(tmp, run.model.config, run_dir / "codec", codec_card)
        if codec_card["name"] != DacCodec.name:  # transformers cannot decode these codes: diamusic can
            shutil.copytree(run_dir / "codec", tmp / "codec")
        (tmp / "README.md").write_text(model_card(run_dir, run.checkpoint.name, run.model.config, run.info, license))
        if out.exists():
            out.rmdir()
        tmp.rename(out)
    except OSError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        raise ExportError(f"cannot write {out}: {first_line(exc)}") from exc
    finally:
        hf_logging.enable_progress_bar()
    return out


def push(folder: Path, repo: str) -> str:
    """Upload an exported folder to a Hub model repo (created if missing); returns its URL."""
    from huggingface_hub import HfApi

    try:
        api = HfApi()
        api.create_repo(repo, exist_ok=True)
        api.upload_folder(repo_id=repo, folder_path=str(folder), commit_message=f"diamusic {__version__} export")
    except Exception as exc:  # the Hub client's errors have no common base: offline, auth, HTTP, a bad id
        raise ExportError(
            f"cannot push to the Hub repo {repo!r}: {first_line(exc)} (the export in {folder} is complete)"
        ) from exc
    return f"https://huggingface.co/{repo}"


# --- the offline codec's exports: what DiaProcessor does for DAC ones ---------------------------


def exported_inputs(model: Any, texts: list[str]) -> dict[str, torch.Tensor]:
    """`model.generate`'s inputs for texts, as DiaProcessor prepares them: the text bytes and the
    first decode steps of the model's delay pattern (BOS until each codebook's delay has passed)."""
    pattern = pattern_of(model)
    decoder = model.config.decoder_config
    input_ids, attention_mask = encode_text(texts)
    first = torch.full((len(texts), 1, pattern.num_streams), decoder.bos_token_id, dtype=torch.long)
    start = pattern.apply(first, bos=decoder.bos_token_id, pad=decoder.pad_token_id)
    steps = torch.ones(len(texts), start.shape[1], dtype=torch.long)
    return {"input_ids": input_ids, "attention_mask": attention_mask, "decoder_input_ids": start,
            "decoder_attention_mask": steps}  # fmt: skip


def decode_exported(folder: str | Path, tokens: torch.Tensor) -> list[tuple[Any, int]]:
    """(audio, sample rate) per row of `generate`'s output for an export holding diamusic's codec:
    the delay reverted, each row cut where the reference codebook ended, decoded with ``codec/``."""
    from transformers import DiaConfig

    from diamusic.codecs import decode_channels, load_codec

    config = DiaConfig.from_pretrained(folder)
    pattern = pattern_of(config)
    vocab = vocab_of(config)
    codec = load_codec(Path(folder) / "codec")
    frames = pattern.revert(tokens[:, 1:].cpu())
    out = []
    for row, delayed in zip(frames, tokens, strict=True):
        ended = (delayed[:, pattern.reference] == vocab.eos).nonzero()
        length = int(ended[0]) - 1 if len(ended) else len(row)  # the reference's EOS at step e: e - 1 frames
        out.append((decode_channels(codec, row[:length].numpy(), vocab.audio_channels), codec.sample_rate))
    return out


# --- the model card -----------------------------------------------------------------------------


def model_card(
    run_dir: Path, checkpoint: str, config: DiaConfig, info: dict[str, Any], license: str | None = None
) -> str:
    """README.md with the Hub's YAML metadata. Every value that comes from the user (paths, config,
    dataset source) is escaped or fenced, so it shows as text and never as markup."""
    train = info["config"]
    pretrained = train["model"]["pretrained"] if train["model"]["init"] == "pretrained" else None
    pattern = pattern_of(config)
    codec = info["codec"]
    metadata: dict[str, Any] = {
        "library_name": "transformers",
        "pipeline_tag": "text-to-audio",
        "license": license or "other",
        "tags": ["diamusic", "dia", "music", "text-to-audio", f"delay-pattern-{pattern.name}"],
    }
    if pretrained and _hub_id(pretrained):
        metadata["base_model"] = pretrained
    dataset = _dataset_card(Path(info["dataset"]))
    lines = ["---", yaml.safe_dump(metadata, sort_keys=False).strip(), "---", ""]
    lines += [f"# {_text(run_dir.resolve().name)}", ""]
    model = train["model"]
    origin = f"fine-tuned from {_text(pretrained)}" if pretrained else f"trained from scratch ({model['preset']})"
    adapters = f", LoRA rank {model['lora_rank']} merged into the base" if model["lora_rank"] else ""
    lines += [
        f"A Dia text-to-music model {origin}{adapters} with diamusic {__version__}, "
        f"exported from checkpoint `{checkpoint}` ({train['steps']} optimizer steps planned).",
        "",
        "## Delay pattern",
        "",
        f"`{pattern.name}` {pattern.to_list()}: codebook c of a decode step holds the frame `delays[c]` "
        "steps back. It is in `config.json` (`delay_pattern`); pass it to `DiaProcessor`, which does not read it.",
        "",
    ]
    if pattern.reference != 0:  # transformers' Dia generation ends a clip on codebook 0's EOS
        lines += [
            f"This pattern delays codebook 0: the model ends a clip with codebook {pattern.reference}'s EOS, "
            "while transformers' Dia generation waits for codebook 0's, so plain `generate` does not stop "
            "where the model does. Generate with diamusic (`diamusic generate`), whose decode loop follows "
            "the pattern.",
            "",
        ]
    if pattern.audio_channels == 2:
        lines += [
            f"Stereo: the model's {pattern.num_streams} token streams are the codec's {pattern.num_codebooks} "
            "codebooks of the left side, then of the right, each side encoded on its own. `DiaProcessor` "
            f"decodes {pattern.num_codebooks} codebooks as one signal: split the codes per side and decode "
            "each (diamusic's `decode_exported` does).",
            "",
        ]
    lines += ["## Generate with plain transformers", ""]
    lines += _snippet(config, codec)
    lines += ["", "## Training data", ""]
    lines += [f"- fingerprint `{info['dataset_fingerprint']}`, codec {_text(codec['name'])} "
              f"(`{codec['fingerprint']}`, {codec['num_codebooks']} x {codec['codebook_size']} codes, "
              f"{codec['frame_rate']:.2f} frames/s)"]  # fmt: skip
    if dataset:
        source, hours = _text(str(dataset.get("source"))), float(dataset.get("hours", 0))
        lines += [f"- source {source}: {dataset.get('clips')} clips, {hours:.2f} hours "
                  f"({dataset.get('eval_clips')} held out for eval)"]  # fmt: skip
    lines += [f"- license: {_text(license) if license else 'not recorded by diamusic; state it before publishing'}"]
    lines += ["", "## Training config", "", *_fenced(yaml.safe_dump(train, sort_keys=False), "yaml")]
    evaluation = _eval_summary(run_dir)
    if evaluation:
        lines += ["", "## Evaluation", "", f"`diamusic eval` of `{_text(str(evaluation[0]))}`:", ""]
        lines += ["| metric | value |", "|---|---:|", *evaluation[1]]
    lines += ["", f"Exported by diamusic {__version__} (code {_text(str(info.get('code_version')))}).", ""]
    return "\n".join(lines)


def _snippet(config: DiaConfig, codec: dict[str, Any]) -> list[str]:
    kwargs = processor_kwargs(config)
    extra = ", **kw" if kwargs else ""
    code = ["from transformers import AutoProcessor, DiaForConditionalGeneration", "",
            'model = DiaForConditionalGeneration.from_pretrained("MODEL_DIR_OR_REPO")']  # fmt: skip
    if codec["name"] != DacCodec.name:
        code = ["from transformers import DiaForConditionalGeneration",
                "from diamusic.export import decode_exported, exported_inputs", "",
                'model = DiaForConditionalGeneration.from_pretrained("MODEL_DIR")',
                'tokens = model.generate(**exported_inputs(model, ["a lively jig in D major"]))',
                "# the codes are of diamusic's offline codec (codec/ here), which only diamusic decodes",
                'audio, rate = decode_exported("MODEL_DIR", tokens)[0]']  # fmt: skip
        return _fenced("\n".join(code), "python")
    code += [
        'processor = AutoProcessor.from_pretrained("MODEL_DIR_OR_REPO")',
        *([f"kw = {kwargs!r}  # this model's pattern and ids: DiaProcessor assumes Dia's"] if kwargs else []),
        f'inputs = processor(text=["a lively jig in D major"]{extra})',
        "tokens = model.generate(**inputs)  # samples with generation_config.json: CFG 3, top-k 45",
        f'processor.save_audio(processor.batch_decode(tokens{extra}), ["jig.wav"])',
    ]
    return _fenced("\n".join(code), "python")


def _eval_summary(run_dir: Path) -> tuple[str, list[str]] | None:
    path = run_dir / EVAL_FILE
    if not path.exists():
        return None
    try:
        metrics = json.loads(path.read_text())
    except ValueError:
        return None
    rows = [
        f"| {_text(key)} | {value:.4g} |"
        for key, value in metrics.items()
        if isinstance(value, (int, float)) and not isinstance(value, bool) and "/cb" not in key
        and key.split("/")[0] in ("eval", "train_subset", "gen")
    ]  # fmt: skip
    return str(metrics.get("checkpoint", "")), rows


def _dataset_card(path: Path) -> dict[str, Any] | None:
    try:
        card = json.loads((path / "card.json").read_text())
    except (OSError, ValueError):
        return None  # the dataset moved since training: the fingerprint still names it
    return card if isinstance(card, dict) else None


def _hub_id(name: str) -> bool:
    return bool(re.fullmatch(r"[\w.-]+/[\w.-]+", name)) and not Path(name).exists()


def _text(value: str) -> str:
    """A user's string as literal Markdown text: no markup, no HTML, one line."""
    value = " ".join(str(value).split())
    value = value.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    return re.sub(r"([\\`*_{}\[\]()#+\-.!|~])", r"\\\1", value)


def _fenced(text: str, language: str) -> list[str]:
    """A code block whose fence is longer than any run of backticks inside it, so it cannot be closed early."""
    longest = max((len(m) for m in re.findall(r"`+", text)), default=0)
    fence = "`" * max(3, longest + 1)
    return [f"{fence}{language}", text.rstrip("\n"), fence]
