import json
import math
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from diamusic import codecs
from diamusic.config import load_config
from diamusic.data.dataset import CodesDataset
from diamusic.model import build_model
from diamusic.patterns import DelayPattern
from diamusic.runs import RunError, checkpoints_of
from diamusic.tracking import read_metrics
from diamusic.train import train


def tiny_config(data, sets: dict | None = None, **top):
    """A short tiny run; ``sets`` takes dotted keys, ``top`` the top-level ones."""
    base = {
        "data.path": str(data),
        "steps": 20,
        "batch_size": 4,
        "data.crop_frames": 32,
        "logging.every": 5,
        "eval.every": 10,
        "eval.batches": 1,
        "checkpoints.every": 10,
        "optim.warmup_steps": 5,
    }
    return load_config("tiny-cpu", overrides={**base, **(sets or {}), **top})


QUIET = {"logging.every": 1, "eval.every": 100, "checkpoints.every": 100}  # every step logged, nothing else


def losses(run_dir, key="train/loss"):
    """(step, value) of one metric; a metric that vanished fails here rather than comparing empty lists."""
    rows = [(row["step"], row[key]) for row in read_metrics(run_dir) if key in row]
    assert rows, f"{run_dir} logged no {key}"
    return rows


def test_loss_falls_well_below_uniform(melody_dataset, tmp_path):
    sets = {"logging.every": 1, "eval.every": 300, "checkpoints.every": 300, "optim.lr": 3e-3, "data.crop_frames": 48}
    config = tiny_config(melody_dataset, sets, steps=300)
    result = train(config, tmp_path / "run", progress=False)
    uniform = math.log(32)
    curve = [loss for _, loss in losses(tmp_path / "run")]
    assert len(curve) == 300
    assert curve[0] > 0.9 * uniform  # starts at chance...
    assert sum(curve[-25:]) / 25 < 0.8 * uniform  # ...and learns well below it (accompanied music: not 0.6)
    entropy = [e for _, e in losses(tmp_path / "run", "train/entropy")]
    assert sum(entropy[-25:]) / 25 < 0.8 * uniform
    for key in ("eval/loss", "train_subset/loss", "eval/gap", "eval/entropy", "eval/accuracy/cb8"):
        assert key in result.last_eval
    row = read_metrics(tmp_path / "run")[0]  # the first row, step 1
    for key in ("train/loss/cb0", "train/accuracy/cb8", "train/entropy/cb4", "train/loss_noise", "train/lr"):
        assert key in row


def test_run_dir_records_config_fingerprint_version_and_checkpoints(melody_dataset, tmp_path):
    train(tiny_config(melody_dataset, {"checkpoints.keep": 1}), tmp_path / "run", progress=False)
    info = json.loads((tmp_path / "run" / "run.json").read_text())
    assert info["dataset_fingerprint"] == CodesDataset(melody_dataset).fingerprint
    assert info["code_version"].startswith("0.1.0")
    assert info["pattern"]["delays"] == [0, 1, 2, 3, 4, 5, 6, 7, 8]
    assert (tmp_path / "run" / "config.yaml").exists() and (tmp_path / "run" / "codec" / "codec.json").exists()
    ckpts = checkpoints_of(tmp_path / "run")
    assert [p.name for p in ckpts] == ["step_000020"]  # keep-last-1
    files = {p.name for p in ckpts[0].iterdir()}
    assert {"model.safetensors", "config.json", "optimizer.bin", "scheduler.bin", "train_state.json"} <= files
    assert not list((tmp_path / "run" / "checkpoints").glob("*.tmp"))
    from transformers import DiaForConditionalGeneration

    model = DiaForConditionalGeneration.from_pretrained(ckpts[0])
    assert model.config.delay_pattern == [0, 1, 2, 3, 4, 5, 6, 7, 8]


def test_interrupted_then_resumed_run_reproduces_the_uninterrupted_one(melody_dataset, tmp_path):
    config = tiny_config(melody_dataset, {"logging.every": 3}, cfg_dropout=0.3)
    train(config, tmp_path / "whole", progress=False)
    partial = train(config, tmp_path / "split", progress=False, stop_after=10)
    assert partial.step == 10
    train(config, tmp_path / "split", resume=True, progress=False)
    for key in ("train/loss", "train/entropy", "eval/loss", "train/loss_noise", "train/grad_norm"):
        a, b = losses(tmp_path / "whole", key), losses(tmp_path / "split", key)
        assert [s for s, _ in a] == [s for s, _ in b]
        assert [v for _, v in a] == pytest.approx([v for _, v in b], rel=1e-6, abs=1e-7), key


RAGGED = {**QUIET, "data.crop_frames": 64}


def test_ragged_crops_really_differ_in_valid_targets(ragged_dataset):
    """The premise of the parity tests below: micro-batches of one step hold different target counts."""
    from diamusic.data.dataset import BatchPlan, StepBatches

    data = CodesDataset(ragged_dataset)
    plan = BatchPlan(seed=0, batch_size=2, grad_accum=2, crop_frames=64, cfg_dropout=0.15)
    batches = StepBatches(data, plan, DelayPattern.parse("musicgen"), 0, 6)
    counts = [[int((b["labels"] != -100).sum()) for b in batches[k]] for k in range(6)]
    assert sum(a != b for a, b in counts) >= 3, counts


def test_grad_accumulation_normalises_per_valid_target(ragged_dataset, tmp_path):
    """Fails with a per-micro-batch mean: the grad norm of the very first step already differs."""
    train(tiny_config(ragged_dataset, RAGGED, steps=6), tmp_path / "one", progress=False)
    train(tiny_config(ragged_dataset, RAGGED, steps=6, batch_size=2, grad_accum=2), tmp_path / "two", progress=False)
    for key in ("train/loss", "train/grad_norm"):
        a, b = losses(tmp_path / "one", key), losses(tmp_path / "two", key)
        assert len(a) == len(b) == 6
        assert [v for _, v in a] == pytest.approx([v for _, v in b], rel=1e-4), key


def test_eos_crops_are_logged_and_follow_the_configured_share(melody_dataset, tmp_path):
    shares = {}
    for share in (0.0, 1.0):
        sets = {**QUIET, "data.eos_crop_share": share}
        train(tiny_config(melody_dataset, sets, steps=8), tmp_path / f"s{share}", progress=False)
        shares[share] = [v for _, v in losses(tmp_path / f"s{share}", "train/eos_share")]
    # with share 1 every sample of a source's last clip ends with EOS, and no other sample does
    from diamusic.data.dataset import BatchPlan

    data = CodesDataset(melody_dataset)
    plan = BatchPlan(seed=0, batch_size=4, grad_accum=1, crop_frames=32, cfg_dropout=0.15)
    finals = [sum(data.final(clip) for _, clip, _ in plan.samples(step, 0, len(data))) / 4 for step in range(8)]
    assert shares[1.0] == pytest.approx(finals) and sum(finals) > 0
    # 32-frame crops of clips up to 6 s: random crops rarely reach the end of a final clip
    assert sum(shares[0.0]) < 0.5 * sum(shares[1.0])


def test_worker_processes_load_the_same_batches(melody_dataset, tmp_path):
    settings = {**QUIET, "steps": 6, "cfg_dropout": 0.5}
    train(tiny_config(melody_dataset, **settings), tmp_path / "inline", progress=False)
    train(tiny_config(melody_dataset, **settings, **{"data.num_workers": 2}), tmp_path / "workers", progress=False)
    assert losses(tmp_path / "inline") == losses(tmp_path / "workers")


def test_resume_refuses_changes_and_fresh_run_refuses_existing_dir(melody_dataset, tmp_path):
    config = tiny_config(melody_dataset, steps=10)
    train(config, tmp_path / "run", progress=False)
    with pytest.raises(RunError, match="already holds a run"):
        train(config, tmp_path / "run", progress=False)
    other = tiny_config(melody_dataset, steps=12, delay_pattern="dia")
    with pytest.raises(RunError, match="delay pattern musicgen.*force"):
        train(other, tmp_path / "run", resume=True, progress=False)
    result = train(other, tmp_path / "run", resume=True, force=True, progress=False)
    assert result.step == 12
    with pytest.raises(RunError, match="holds no run"):
        train(config, tmp_path / "empty", resume=True, progress=False)


def test_pretrained_checkpoint_with_another_pattern(melody_dataset, tmp_path):
    vocab = CodesDataset(melody_dataset).vocab
    build_model("tiny", DelayPattern.parse("dia"), vocab, seed=5).save_pretrained(tmp_path / "pretrained")
    config = tiny_config(
        melody_dataset, steps=4, **{"model.init": "pretrained", "model.pretrained": str(tmp_path / "pretrained")}
    )
    train(config, tmp_path / "run", progress=False)
    info = json.loads((tmp_path / "run" / "run.json").read_text())
    assert any("dia" in note and "musicgen" in note for note in info["notes"])
    saved = json.loads((checkpoints_of(tmp_path / "run")[-1] / "config.json").read_text())
    assert saved["delay_pattern"] == [0, 1, 2, 3, 4, 5, 6, 7, 8]


def test_training_never_calls_the_codec(melody_dataset, tmp_path, monkeypatch):
    def forbidden(*args, **kwargs):
        raise AssertionError("the codec was called during training")

    for cls in (codecs.SpectralRVQCodec, codecs.DacCodec):
        monkeypatch.setattr(cls, "encode", forbidden)
        monkeypatch.setattr(cls, "decode", forbidden)
    monkeypatch.setattr(codecs, "load_codec", forbidden)
    result = train(tiny_config(melody_dataset, steps=5), tmp_path / "run", progress=False)
    assert result.step == 5


def test_tensorboard_tracker_and_ctrl_c(melody_dataset, tmp_path, monkeypatch):
    from diamusic import tracking

    real_log = tracking.Tracker.log

    def interrupt_at_step_10(self, metrics, step):
        real_log(self, metrics, step)
        if step == 10:
            raise KeyboardInterrupt

    monkeypatch.setattr(tracking.Tracker, "log", interrupt_at_step_10)
    config = tiny_config(melody_dataset, {"checkpoints.every": 100, "tracking.backends": ["tensorboard"]})
    result = train(config, tmp_path / "run", progress=False)
    assert result.interrupted and result.step == 10
    assert [p.name for p in checkpoints_of(tmp_path / "run")] == ["step_000010"]
    assert list((tmp_path / "run" / "tensorboard").glob("events.out.tfevents.*"))


DIST_SCRIPT = textwrap.dedent(
    """
    import json, sys
    data, out, batch, settings = sys.argv[1], sys.argv[2], int(sys.argv[3]), json.loads(sys.argv[4])
    if settings.pop("fsdp_on_cpu", False):
        # accelerate shards only on GPUs: turn its CPU (gloo) processes into FSDP2 ones, as it does on
        # GPUs, so the sharded path (wrapping, sharded checkpoints, gathering) runs here too
        import accelerate
        from accelerate.state import PartialState
        from accelerate.utils import DistributedType, FullyShardedDataParallelPlugin
        init = accelerate.Accelerator.__init__
        def init_fsdp(self, *args, **kwargs):
            init(self, *args, **kwargs)
            if self.state.distributed_type == DistributedType.MULTI_CPU:
                self.state.distributed_type = PartialState._shared_state["distributed_type"] = DistributedType.FSDP
                self.state.fsdp_plugin = FullyShardedDataParallelPlugin()  # from accelerate launch's FSDP_* env
                if self.state.mixed_precision != "no":  # bf16 compute, fp32 master weights, as on GPUs
                    self.state.fsdp_plugin.set_mixed_precision(self.state.mixed_precision)
        accelerate.Accelerator.__init__ = init_fsdp
    from diamusic.config import load_config
    from diamusic.train import train
    stop_after, resume = settings.pop("stop_after", None), settings.pop("resume", False)
    overrides = {"data.path": data, "steps": 4, "batch_size": batch, "data.crop_frames": 32, "logging.every": 1,
                 "eval.every": 2, "eval.batches": 2, "checkpoints.every": 2, "optim.warmup_steps": 2}
    train(load_config("tiny-cpu", overrides={**overrides, **settings}), out, resume=resume, progress=False,
          stop_after=stop_after)
    """
)


def _free_port() -> str:
    with socket.socket() as probe:  # a free port, so parallel or leftover runs cannot collide
        probe.bind(("127.0.0.1", 0))
        return str(probe.getsockname()[1])


def _run_script(tmp_path, launcher: list[str], data, out: str, batch: int, **settings) -> subprocess.CompletedProcess:
    script = tmp_path / "dist_train.py"
    script.write_text(DIST_SCRIPT)
    done = subprocess.run(
        [*launcher, str(script), str(data), str(tmp_path / out), str(batch), json.dumps(settings)],
        capture_output=True,
        text=True,
        timeout=400,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def _assert_same_curves(tmp_path, a: str, b: str, rel: float = 1e-4) -> None:
    for key in ("train/loss", "eval/loss", "train/grad_norm"):
        x, y = losses(tmp_path / a, key), losses(tmp_path / b, key)
        assert len(x) == len(y) > 0
        assert [v for _, v in x] == pytest.approx([v for _, v in y], rel=rel), key


def test_two_process_ddp_matches_single_process(ragged_dataset, tmp_path):
    """Ragged crops: the ranks hold different target counts, so a per-rank mean would fail here."""
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", _free_port()]
    ragged = {"data.crop_frames": 64}
    ddp = _run_script(tmp_path, torchrun, ragged_dataset, "ddp", 2, **ragged)
    _run_script(tmp_path, [sys.executable], ragged_dataset, "single", 4, **ragged)
    assert "2 process(es)" in ddp.stderr
    _assert_same_curves(tmp_path, "single", "ddp")


def test_fsdp_matches_single_process_resumes_from_shards_and_gathers_weights(melody_dataset, tmp_path):
    """The shipped FSDP config under `accelerate launch`, on 2 CPU processes (see DIST_SCRIPT)."""
    from safetensors.torch import load_file

    from diamusic.runs import load_run

    fsdp_config = Path(__file__).parents[1] / "configs" / "accelerate" / "fsdp-8gpu.yaml"
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(fsdp_config),
              "--num_processes", "2", "--main_process_port", _free_port()]  # fmt: skip
    data = melody_dataset
    # interrupted after step 2, then resumed from the sharded checkpoint
    first = _run_script(tmp_path, launch, data, "fsdp", 2, fsdp_on_cpu=True, stop_after=2)
    assert "2 process(es)" in first.stderr
    _run_script(tmp_path, launch, data, "fsdp", 2, fsdp_on_cpu=True, resume=True)
    _run_script(tmp_path, [sys.executable], data, "single", 4)
    _assert_same_curves(tmp_path, "single", "fsdp")
    last = checkpoints_of(tmp_path / "fsdp")[-1]
    assert (last / "pytorch_model_fsdp_0").is_dir()  # sharded, for resuming
    gathered = load_file(last / "model.safetensors")  # whole, for generation
    single = load_file(checkpoints_of(tmp_path / "single")[-1] / "model.safetensors")
    assert gathered.keys() == single.keys()
    vocab = CodesDataset(melody_dataset).vocab
    initial = build_model("tiny", DelayPattern.parse("musicgen"), vocab, seed=load_config("tiny-cpu").seed)
    start = initial.state_dict()
    moved = max((single[k] - start[k]).abs().max().item() for k in single)  # training's change...
    apart = max((gathered[k] - single[k]).abs().max().item() for k in single)  # ...dwarfs float noise
    assert apart < 0.01 * moved
    assert load_run(tmp_path / "fsdp", device="cpu").checkpoint == last

    # LoRA and bf16 under FSDP: adapters train as without sharding and the run loads (merged) for
    # generation; a demo step writes a checkpoint (no process holds the whole model), the demo comes from it
    lora = {"model.lora_rank": 4, "precision": "bf16"}
    demos = {"demos.every": 2, "demos.seconds": 0.2, "checkpoints.every": 4}
    _run_script(tmp_path, launch, data, "fsdp_lora", 2, fsdp_on_cpu=True, **lora, **demos)
    _run_script(tmp_path, [sys.executable], data, "single_lora", 4, **lora)
    _assert_same_curves(tmp_path, "single_lora", "fsdp_lora", rel=1e-2)  # bf16 weights vs bf16 autocast
    weights = load_file(checkpoints_of(tmp_path / "fsdp_lora")[-1] / "model.safetensors")
    assert {t.dtype for t in weights.values()} == {torch.float32}  # fp32 master weights
    assert load_run(tmp_path / "fsdp_lora", device="cpu").model.config.delay_pattern == list(range(9))
    assert [p.name for p in checkpoints_of(tmp_path / "fsdp_lora")] == ["step_000002", "step_000004"]
    for step in ("step_000002", "step_000004"):
        assert list((tmp_path / "fsdp_lora" / "demos" / step).glob("*.wav")), step


def test_bf16_autocast_runs_the_model_in_bf16_and_tracks_fp32(melody_dataset, tmp_path, monkeypatch):
    from diamusic import train as train_module

    head_dtypes = set()  # the output head's matmul (accelerate hands the logits back in fp32 either way)
    forward = train_module.forward_stats

    def spy(model, batch, codebook_size, weights):
        if not head_dtypes:
            head = next(m for name, m in model.named_modules() if name.endswith("logits_dense"))
            head.register_forward_hook(lambda module, args, out: head_dtypes.add(out.dtype))
        return forward(model, batch, codebook_size, weights)

    settings = {"steps": 6, "logging.every": 1, "eval.every": 6, "checkpoints.every": 100}
    train(tiny_config(melody_dataset, **settings), tmp_path / "fp32", progress=False)
    monkeypatch.setattr(train_module, "forward_stats", spy)
    # accelerate fixes the precision once per process: start afresh, and leave it fresh for later tests
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(reset_partial_state=True)
    try:
        train(tiny_config(melody_dataset, **settings, precision="bf16"), tmp_path / "bf16", progress=False)
    finally:
        AcceleratorState._reset_state(reset_partial_state=True)
    assert head_dtypes == {torch.bfloat16}  # autocast really ran the matmuls in bf16
    a, b = losses(tmp_path / "fp32"), losses(tmp_path / "bf16")
    assert [v for _, v in a] != [v for _, v in b]
    assert [v for _, v in a] == pytest.approx([v for _, v in b], rel=0.02)
    info = json.loads((tmp_path / "bf16" / "run.json").read_text())
    assert info["config"]["precision"] == "bf16"


def test_activation_checkpointing_with_lora_gives_the_same_run(melody_dataset, tmp_path):
    settings = {"steps": 4, "logging.every": 1, "eval.every": 100, "checkpoints.every": 100, "model.lora_rank": 4}
    train(tiny_config(melody_dataset, **settings), tmp_path / "plain", progress=False)
    checkpointed = {**settings, "model.gradient_checkpointing": True}
    train(tiny_config(melody_dataset, **checkpointed), tmp_path / "checkpointed", progress=False)
    for key in ("train/loss", "train/grad_norm"):
        a, b = losses(tmp_path / "plain", key), losses(tmp_path / "checkpointed", key)
        assert a[-1][1] != a[0][1]  # the adapters learn...
        assert [v for _, v in a] == pytest.approx([v for _, v in b], rel=1e-5), key  # ...as much with checkpointing
