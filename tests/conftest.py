import os

import pytest
import torch

# Two cores: keep torch from oversubscribing them when pytest runs subprocesses too.
torch.set_num_threads(min(2, os.cpu_count() or 1))
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="module")
def one_thread():
    """For modules of tiny models: their matmuls run faster on one thread, and OpenMP spins badly on
    2 shared cores (use with ``pytestmark = pytest.mark.usefixtures("one_thread")``)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="session")
def melody_dataset(tmp_path_factory):
    """A small prepared dataset of built-in melodies with a 32-entry offline codec (shared, read-only)."""
    from diamusic.data.prepare import prepare

    out = tmp_path_factory.mktemp("data") / "melodies"
    prepare(
        "melodies", "spectral-rvq", out, limit=10, max_seconds=6.0, codec_options={"codebook_size": 32}, progress=False
    )
    return out


@pytest.fixture(scope="session")
def tiny_run(melody_dataset, tmp_path_factory):
    """A short tiny-model run with samples every 5 steps (shared, read-only)."""
    from diamusic.config import load_config
    from diamusic.train import train

    overrides = {
        "data.path": str(melody_dataset),
        "steps": 10,
        "batch_size": 4,
        "data.crop_frames": 32,
        "eval.every": 10,
        "eval.clips": 4,
        "checkpoints.every": 5,
        "samples.every": 5,
        "samples.seconds": 0.3,
        "tracking.backends": ["tensorboard"],
    }
    out = tmp_path_factory.mktemp("runs") / "tiny"
    train(load_config("tiny-cpu", overrides=overrides), out, progress=False)
    return out


@pytest.fixture(scope="session")
def tiny_clap_dir(tmp_path_factory):
    """A tiny random CLAP (HTSAT audio tower, RoBERTa text tower) with a byte-level BPE tokenizer made
    here, saved as the hub's folders are (offline: no vocabulary is downloaded)."""
    from tokenizers import ByteLevelBPETokenizer
    from transformers import ClapConfig, ClapFeatureExtractor, ClapModel, ClapProcessor, RobertaTokenizerFast

    specials = {"bos_token": "<s>", "pad_token": "<pad>", "eos_token": "</s>", "unk_token": "<unk>"}
    specials["mask_token"] = "<mask>"
    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(["a lively jig in D major", "a slow air", "piano, calm"], vocab_size=300, min_frequency=1,
                            special_tokens=list(specials.values()))  # fmt: skip
    tokenizer = RobertaTokenizerFast(tokenizer_object=bpe._tokenizer, cls_token="<s>", sep_token="</s>", **specials)
    text = {"vocab_size": len(tokenizer), "hidden_size": 16, "num_hidden_layers": 1, "num_attention_heads": 2,
            "intermediate_size": 32, "max_position_embeddings": 64}  # fmt: skip
    audio = {"hidden_size": 32, "depths": [1, 1], "num_attention_heads": [2, 2], "patch_embeds_hidden_size": 16,
             "num_hidden_layers": 2}  # fmt: skip
    torch.manual_seed(0)
    model = ClapModel(ClapConfig(text_config=text, audio_config=audio, projection_dim=8))
    path = tmp_path_factory.mktemp("tiny_clap")
    model.save_pretrained(path)
    # larger_clap_music is an unfused model: one window, a long clip cut (at random: diamusic cuts it first)
    ClapProcessor(ClapFeatureExtractor(truncation="rand_trunc"), tokenizer).save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def ragged_dataset(tmp_path_factory):
    """Tones of 0.55 to 2.3 s cut into clips of at most 1.2 s, so crops of 64 frames (0.74 s) are
    ragged: the micro-batches of a step hold different numbers of valid targets, and some sources
    give a middle clip (no EOS) before their final one (shared, read-only)."""
    import numpy as np
    import soundfile as sf

    from diamusic.data.prepare import prepare

    folder = tmp_path_factory.mktemp("ragged") / "audio"
    folder.mkdir()
    rate = 22050
    for i in range(16):
        seconds = 0.55 + 0.117 * i
        t = np.arange(int(seconds * rate)) / rate
        sf.write(
            folder / f"tone{i:02d}.wav", (0.3 * np.sin(2 * np.pi * 220 * 2 ** (i / 12) * t)).astype("float32"), rate
        )
        (folder / f"tone{i:02d}.txt").write_text(f"a tone of {seconds:.2f} seconds")
    out = folder.parent / "data"
    prepare(str(folder), "spectral-rvq", out, max_seconds=1.2, codec_options={"codebook_size": 16}, progress=False)
    return out


@pytest.fixture(scope="session")
def stereo_folder(tmp_path_factory):
    """Stereo tones whose sides differ (a tone left, a fifth above it right), one mono file and one
    with three audio channels, captioned in metadata.jsonl (shared, read-only)."""
    import json

    import numpy as np
    import soundfile as sf

    folder = tmp_path_factory.mktemp("stereo") / "audio"
    folder.mkdir()
    rate, meta = 22050, []
    t = np.arange(int(1.5 * rate)) / rate

    def tone(freq: float) -> np.ndarray:
        return (0.3 * np.sin(2 * np.pi * freq * t) * (1 + 0.3 * np.sin(2 * np.pi * 3 * t))).astype("float32")

    for i in range(6):
        low = 220 * 2 ** (i / 12)
        sf.write(folder / f"duo{i}.wav", np.stack([tone(low), tone(1.5 * low)], axis=1), rate)
        meta.append({"file": f"duo{i}.wav", "text": f"two tones, number {i}"})
    sf.write(folder / "mono.wav", tone(300), rate)
    meta.append({"file": "mono.wav", "text": "one tone on both sides"})
    sf.write(folder / "surround.wav", np.stack([tone(200), tone(300), tone(400)], axis=1), rate)
    meta.append({"file": "surround.wav", "text": "three audio channels"})
    (folder / "metadata.jsonl").write_text("".join(json.dumps(m) + "\n" for m in meta))
    return folder


@pytest.fixture(scope="session")
def stereo_dataset(stereo_folder, tmp_path_factory):
    """`stereo_folder` prepared as a stereo dataset with a 32-entry offline codec (shared, read-only)."""
    from diamusic.data.prepare import prepare

    out = tmp_path_factory.mktemp("stereo_data") / "data"
    prepare(str(stereo_folder), "spectral-rvq", out, codec_options={"codebook_size": 32}, channels="stereo",
            progress=False)  # fmt: skip
    return out


@pytest.fixture(scope="session")
def small_ablation(melody_dataset, tmp_path_factory):
    """Two patterns x two seeds, four steps each, with samples and one generation per run (shared, read-only)."""
    from diamusic.ablate import ablate

    overrides = {"steps": 4, "batch_size": 2, "data.crop_frames": 40, "eval.clips": 2, "eval.every": 4,
                 "checkpoints.every": 4, "logging.every": 1, "optim.warmup_steps": 1, "samples.every": 2,
                 "samples.seconds": 0.3}  # fmt: skip
    out = tmp_path_factory.mktemp("ablation") / "ab"
    ablate(melody_dataset, out, "dia,musicgen", 2, overrides=overrides, prompts=2, seconds=0.3, progress=False)
    return out


@pytest.fixture
def small_disk(tmp_path):
    """``mount(bytes)``: a real filesystem of that size (tmpfs) under tmp_path, or None where this
    process may not mount one (not root, or no CAP_SYS_ADMIN); ``resize(path, bytes)`` grows it.
    Full-disk tests use it when they can and patch the writer otherwise."""
    import subprocess

    mounted = []

    class Disk:
        @staticmethod
        def mount(size: int):
            path = tmp_path / f"disk{len(mounted)}"
            path.mkdir()
            if os.geteuid() != 0:
                return None
            command = ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)]
            done = subprocess.run(command, capture_output=True)
            if done.returncode != 0:
                return None
            mounted.append(path)
            return path

        @staticmethod
        def resize(path, size: int) -> None:
            subprocess.run(["mount", "-o", f"remount,size={size}", str(path)], check=True)

    yield Disk
    for path in mounted:
        subprocess.run(["umount", "-l", str(path)], capture_output=True)


@pytest.fixture(scope="session")
def melodies():
    """Nine pieces of the built-in corpus: three of each collection, essen/oneills/bach in turn."""
    from diamusic import corpus

    return list(corpus.iter_melodies(limit=9, seed=0))


@pytest.fixture(scope="session")
def arrangements():
    """``arrangements(melodies, seeds, texture, renderer)``: (melody, seed, arrangement) for each pair."""
    from diamusic import arrangement

    def arranged(melodies, seeds, texture="mixed", renderer="soundfont"):
        for m in melodies:
            for seed in seeds:
                yield m, seed, arrangement.arrange(m, seed, texture, renderer)

    return arranged


@pytest.fixture
def eager_torchao(monkeypatch):
    """torchao's 8-bit AdamW compiles its update per weight shape, minutes on a CPU; the same update
    uncompiled (the library's own code) is what a CPU test can afford."""
    import torch

    monkeypatch.setattr(torch, "compile", lambda fn=None, **kwargs: fn if fn is not None else (lambda f: f))
