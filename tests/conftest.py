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
    from diamusic.data import prepare

    out = tmp_path_factory.mktemp("data") / "melodies"
    prepare(
        "melodies", "spectral-rvq", out, limit=10, max_seconds=6.0, codec_options={"codebook_size": 32}, progress=False
    )
    return out


@pytest.fixture(scope="session")
def tiny_run(melody_dataset, tmp_path_factory):
    """A short tiny-model run with demos every 5 steps (shared, read-only)."""
    from diamusic.config import load_config
    from diamusic.train import train

    overrides = {
        "data.path": str(melody_dataset),
        "steps": 10,
        "batch_size": 4,
        "data.max_frames": 32,
        "eval_every": 10,
        "eval_batches": 1,
        "checkpoint_every": 5,
        "demo_every": 5,
        "demo_seconds": 0.3,
        "tracker": ["tensorboard"],
    }
    out = tmp_path_factory.mktemp("runs") / "tiny"
    train(load_config("tiny-cpu", overrides=overrides), out, progress=False)
    return out
