"""Launchers of the ablation: several runs at once on this machine, SLURM jobs through submitit, and
`ablate --status`."""

import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from diamusic import launch
from diamusic.ablate import AblationError, ablate, load_plan, runs_of
from diamusic.cli import main
from diamusic.launch import Local, Slurm, launcher, status
from diamusic.patterns import DelayPattern

DIA = DelayPattern.parse("dia")
DIAMUSIC = str(Path(sys.executable).parent / "diamusic")
TINY = ["--steps", "8", "--set", "batch_size=2", "--set", "data.crop_frames=40", "--set", "eval.clips=2",
        "--set", "eval.every=8", "--set", "checkpoints.every=2", "--set", "optim.warmup_steps=1",
        "--prompts", "1", "--seconds", "0.3", "--patterns", "musicgen,dia", "--seeds", "2", "--quiet"]  # fmt: skip
OVERRIDES = {"steps": 8, "batch_size": 2, "data.crop_frames": 40, "eval.clips": 2, "eval.every": 8,
             "checkpoints.every": 2, "optim.warmup_steps": 1}  # fmt: skip


def numbers(summary: Path) -> dict[str, dict]:
    """Every number of a summary but the wall-clock ones (timing differs from run to run)."""
    metrics = json.loads(summary.read_text())["metrics"]
    return {m["key"]: m["per_seed"] for m in metrics if m["kind"] != "wall-clock"}


def test_each_local_slot_gets_its_own_gpus_or_its_share_of_the_cores():
    gpus = Local(parallel=2, gpus_per_run=2, gpus=["3", "5", "6", "7"])
    assert gpus.slot_env(0) == {"CUDA_VISIBLE_DEVICES": "3,5"} and gpus.slot_env(1) == {"CUDA_VISIBLE_DEVICES": "6,7"}
    command = gpus.command(Path("ab"), DIA, 1)
    assert command[1:5] == ["-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2"]
    assert command[-5:] == ["-m", "diamusic.launch", "ab", "dia", "1"]
    one = Local(parallel=4, gpus=["0", "1", "2", "3"])
    assert one.gpus_per_run == 1 and one.slot_env(3) == {"CUDA_VISIBLE_DEVICES": "3"}
    assert "torch.distributed.run" not in one.command(Path("ab"), DIA, 1)
    cpu = Local(parallel=2, gpus=[], cores=8)
    assert cpu.slot_env(1) == {"CUDA_VISIBLE_DEVICES": "", "DIAMUSIC_THREADS": "4", "OMP_NUM_THREADS": "4",
                               "MKL_NUM_THREADS": "4", "OPENBLAS_NUM_THREADS": "4"}  # fmt: skip
    with pytest.raises(AblationError, match="needs 6 GPUs; 4 are visible"):
        Local(parallel=3, gpus_per_run=2, gpus=["0", "1", "2", "3"])
    with pytest.raises(AblationError, match="--parallel 3 on 2 cores"):
        Local(parallel=3, gpus=[], cores=2)


def test_an_option_of_the_other_launcher_or_a_bad_slurm_name_is_refused():
    assert launcher("local", {"parallel": None, "partition": None}) is None  # one at a time, in this process
    assert isinstance(launcher("local", {"parallel": 2}), Local)
    with pytest.raises(AblationError, match="--partition, --time: not an option of --launcher local"):
        launcher("local", {"partition": "gpu", "time_minutes": 60})
    with pytest.raises(AblationError, match="--parallel: not an option of --launcher slurm"):
        launcher("slurm", {"parallel": 2})
    with pytest.raises(AblationError, match="no spaces"):
        Slurm(partition="big gpu")
    with pytest.raises(AblationError, match="no spaces"):
        Slurm(account="lab;rm -rf /")
    with pytest.raises(AblationError, match="expected KEY=VALUE"):
        Slurm(sbatch=["constraint a100"])


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--partition", "gpu"], "--partition: not an option of --launcher local"),
        (["--launcher", "slurm", "--partition", "big gpu"], "no spaces"),
        (["--parallel", "64"], "--parallel 64 on"),
        (["--launcher", "slurm", "--sbatch", "qos"], "expected KEY=VALUE"),
    ],
)
def test_bad_launcher_options_exit_2_in_one_line_and_leave_the_ablation_as_it_was(
    small_ablation, tmp_path, capsys, extra, message
):
    out = tmp_path / "ab"
    shutil.copytree(small_ablation, out)
    before = {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in out.rglob("*") if p.is_file()}
    plan = load_plan(out)
    argv = ["ablate", "--data", plan.data, "--out", str(out), "--patterns", "dia,musicgen", "--seeds", "2"]
    assert main([*argv, *extra]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err
    assert before == {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in out.rglob("*") if p.is_file()}


def fake_slurm(bin_dir: Path, queue: dict[str, str]) -> Path:
    """sbatch, squeue and srun stand-ins on PATH: sbatch keeps each script and answers as SLURM does,
    squeue lists ``queue`` (job id -> SLURM state)."""
    bin_dir.mkdir()
    scripts = bin_dir / "scripts"
    scripts.mkdir()
    lines = "\\n".join(f"{j}|{s}" for j, s in queue.items())
    (bin_dir / "sbatch").write_text(
        f'#!/bin/sh\nn=$(ls {scripts} | wc -l); id=$((900 + n)); cp "$1" {scripts}/$id.sh\n'
        'echo "Submitted batch job $id"\n'
    )
    (bin_dir / "squeue").write_text(f'#!/bin/sh\nprintf "{lines}\\n"\n')
    (bin_dir / "srun").write_text("#!/bin/sh\nexit 0\n")
    for tool in ("sbatch", "squeue", "srun"):
        (bin_dir / tool).chmod(0o755)
    return scripts


def test_status_says_done_queued_running_failed_and_stopped(small_ablation, tmp_path, monkeypatch):
    out = tmp_path / "ab"
    shutil.copytree(small_ablation, out)
    plan = load_plan(out)
    keys = [launch.run_key(p, s) for p, s in runs_of(plan)]  # dia/seed0, musicgen/seed0, dia/seed1, musicgen/seed1
    for key in keys[1:]:  # one run stays done; the others lose their evaluation
        (out / "runs" / key / "eval.json").unlink()
    log = tmp_path / "77.err"
    log.write_text("== training ==\nstep 3\rstep 4\n\nCUDA out of memory.\n")
    launch.record_job(out, keys[1], {"launcher": "slurm", "job": "77", "log": str(log)})
    launch.record_job(out, keys[2], {"launcher": "slurm", "job": "78", "log": str(log)})
    fake_slurm(tmp_path / "bin", {"78": "RUNNING", "79": "PENDING"})
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}:{os.environ['PATH']}")
    states = {s.key: (s.state, s.job, s.last_line) for s in status(out)}
    assert states == {
        keys[0]: ("done", "", ""),
        keys[1]: ("failed", "77", "CUDA out of memory."),  # its job is gone and the run is not finished
        keys[2]: ("running", "78", "CUDA out of memory."),
        keys[3]: ("stopped", "", ""),  # a checkpoint, no evaluation, never submitted by a launcher
    }


def test_slurm_submits_each_run_not_finished_nor_queued_with_the_options_asked(small_ablation, tmp_path, monkeypatch):
    out = tmp_path / "ab"
    shutil.copytree(small_ablation, out)
    plan = load_plan(out)
    runs = runs_of(plan)
    keys = [launch.run_key(p, s) for p, s in runs]
    for key in keys[1:3]:
        (out / "runs" / key / "eval.json").unlink()
    launch.record_job(out, keys[2], {"launcher": "slurm", "job": "79", "log": ""})  # still queued
    scripts = fake_slurm(tmp_path / "bin", {"79": "PENDING"})
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}:{os.environ['PATH']}")
    slurm = Slurm(partition="gpu", time_minutes=90, gpus_per_run=2, cpus_per_run=16, mem_gb=64, account="lab",
                  sbatch=["constraint=a100", "--qos=high"])  # fmt: skip
    assert slurm.launch(plan, out, runs, progress=False) is False  # submitted: the table comes later
    submitted = sorted(scripts.iterdir())
    assert [p.name for p in submitted] == ["900.sh"]  # keys[1] only: keys[2] is queued, the others done
    script = submitted[0].read_text()
    for line in ("--partition=gpu", "--time=90", "--gpus-per-node=2", "--ntasks-per-node=2", "--cpus-per-task=8",
                 "--mem=64GB", "--account=lab", "--constraint=a100", "--qos=high"):  # fmt: skip
        assert f"#SBATCH {line}\n" in script, (line, script)
    assert f"{out / 'logs' / 'slurm'}" in script  # its logs sit in the ablation folder
    jobs = launch.read_jobs(out)
    assert jobs[keys[1]]["job"] == "900" and jobs[keys[2]]["job"] == "79"
    assert Path(jobs[keys[1]]["log"]).parent == out / "logs" / "slurm"


@pytest.mark.integration
def test_two_runs_at_once_give_the_sequential_numbers_and_a_killed_ablation_resumes(
    melody_dataset, tmp_path, one_thread
):
    """The local launcher on CPU: each run a process with one thread of the two cores. kill -9 of the
    `ablate` process mid-way stops its runs at a checkpoint (they get SIGTERM when it dies); the same
    command resumes them, and the table equals a sequential ablation's with one thread, number for number."""
    sequential = ablate(melody_dataset, tmp_path / "seq", "musicgen,dia", 1, overrides=OVERRIDES, prompts=0,
                        progress=False)  # fmt: skip
    out = tmp_path / "par"
    argv = [DIAMUSIC, "ablate", "--data", str(melody_dataset), "--out", str(out), "--parallel", "2", *TINY]
    # two runs, both at once; scored without generating (a process of its own pays ~8 s to load the audio
    # analysis; generation in a fresh process is compared with this one's in test_generate)
    argv += ["--seeds", "1", "--prompts", "0"]
    first = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 300
    while not list(out.glob("runs/*/seed*/checkpoints/step_000002")) and time.time() < deadline:
        assert first.poll() is None, first.stderr.read()
        time.sleep(0.05)
    first.kill()  # kill -9: no handler runs in the ablate process
    first.wait()
    workers = [j["pid"] for j in launch.read_jobs(out).values()]
    while any(launch.process_alive(pid) for pid in workers) and time.time() < deadline:
        time.sleep(0.1)  # each run saves its last finished step and exits
    assert not any(launch.process_alive(pid) for pid in workers)
    assert any(s.state != "done" for s in status(out)), "the kill came after the runs finished: nothing to resume"
    again = subprocess.run(argv, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr
    logs = [p.read_text() for p in (out / "logs").glob("*.log")]
    assert sum("== resuming" in text for text in logs) >= 1  # a run killed after a checkpoint resumed from it
    assert numbers(out / "summary.json") == numbers(sequential.out / "summary.json")
    assert {s.state for s in status(out)} == {"done"}


def local_slurm() -> Path | None:
    """The single-node cluster `scripts/local-slurm.sh` starts (`make test` does), if it is up."""
    conf = Path(os.environ.get("TMPDIR", "/tmp")) / "diamusic-slurm" / "slurm.conf"
    if not conf.exists() or shutil.which("sinfo") is None:
        return None
    up = subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True, env={**os.environ,
                        "SLURM_CONF": str(conf)}, timeout=30)  # fmt: skip
    return conf if up.returncode == 0 and up.stdout.strip() else None


@pytest.mark.integration
@pytest.mark.skipif(local_slurm() is None, reason="no local SLURM cluster (scripts/local-slurm.sh needs root and apt)")
def test_an_ablation_through_a_real_slurm_cluster(melody_dataset, tmp_path, monkeypatch):
    """Two jobs at once on the single-node cluster (one seed of two patterns): a pre-empted one (requeued by
    SLURM mid-way) resumes from its checkpoint, and the last job to finish writes the summary and report."""
    monkeypatch.setenv("SLURM_CONF", str(local_slurm()))
    out = tmp_path / "ab"
    argv = ["ablate", "--data", str(melody_dataset), "--out", str(out), "--launcher", "slurm", "--gpus-per-run", "0",
            "--cpus-per-run", "1", "--time", "20", *TINY, "--prompts", "0", "--seeds", "1"]  # fmt: skip
    assert main(argv) == 0
    assert not (out / "summary.json").exists()
    jobs = launch.read_jobs(out)
    assert len(jobs) == 2 and all(j["launcher"] == "slurm" for j in jobs.values())
    first = jobs["musicgen/seed0"]
    deadline = time.time() + 600
    while not (out / "runs/musicgen/seed0/checkpoints/step_000002").exists() and time.time() < deadline:
        time.sleep(0.1)
    subprocess.run(["scontrol", "requeue", first["job"]], check=True, timeout=30)  # what pre-emption does
    # a requeued job waits two minutes before it may start again: once it is back in the queue, let it start
    while launch.status(out)[0].state != "queued" and time.time() < deadline:
        time.sleep(0.2)
    subprocess.run(["scontrol", "update", f"JobId={first['job']}", "StartTime=now"], check=True, timeout=30)
    while not (out / "summary.json").exists() or not (out / "report.html").exists():
        assert time.time() < deadline, subprocess.run(["squeue"], capture_output=True, text=True).stdout
        time.sleep(1)
    assert {s.state for s in status(out)} == {"done"}
    assert "== resuming" in Path(first["log"]).read_text()
    summary = json.loads((out / "summary.json").read_text())
    assert summary["seeds"] == [0] and set(summary["patterns"]) == {"musicgen", "dia"}
    assert main(["ablate", "--out", str(out), "--collect"]) == 0  # collecting again rewrites the same table


def test_a_stop_signal_reaches_every_local_run_once_and_stops_the_ablation(small_ablation, tmp_path, monkeypatch):
    """SIGTERM to `ablate` (a scheduler, `timeout`) is passed to each run it started, which saves its checkpoint
    and exits 128 + 15; the ablation then stops with that status rather than starting the next run."""
    import signal
    import threading

    from diamusic.train import Stopped

    out = tmp_path / "ab"
    shutil.copytree(small_ablation, out)
    plan = load_plan(out)
    runs = runs_of(plan)
    for pattern, seed in runs:
        (plan.run_dir(out, pattern, seed) / "eval.json").unlink()
    # each "run" counts the stop signals it gets, then exits as a run that saved its checkpoint does
    run = """import signal, sys, time
n = 0
def stop(s, f):
    global n
    n += 1
signal.signal(signal.SIGTERM, stop)
open(sys.argv[1] + ".started", "w").close()
end = time.time() + 20  # a signal that never comes ends the run too, with 0 counted
while not n and time.time() < end:
    time.sleep(0.05)
time.sleep(0.3)  # a second signal in this time would be counted
open(sys.argv[1], "w").write(str(n))
sys.exit(128 + 15)
"""
    monkeypatch.setattr(Local, "command", lambda self, o, p, s: [sys.executable, "-c", run, f"{tmp_path}/{p.name}{s}"])
    started = [tmp_path / f"{p.name}{s}.started" for p, s in runs[:2]]

    def terminate_once_both_run():
        while not all(p.exists() for p in started):
            time.sleep(0.05)
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=terminate_once_both_run, daemon=True).start()
    with pytest.raises(Stopped) as stopped:
        Local(parallel=2, gpus=[], cores=2).launch(plan, out, runs, progress=False)
    assert stopped.value.signum == signal.SIGTERM
    assert [(tmp_path / f"{p.name}{s}").read_text() for p, s in runs[:2]] == ["1", "1"]  # once each
    assert not any((tmp_path / f"{p.name}{s}.started").exists() for p, s in runs[2:])  # nothing new started


def test_status_and_collect_through_the_cli(small_ablation, tmp_path, capsys):
    out = tmp_path / "ab"
    shutil.copytree(small_ablation, out)
    (out / "summary.json").unlink()
    assert main(["ablate", "--out", str(out), "--status"]) == 0
    printed = capsys.readouterr().out.splitlines()
    assert printed[-1] == "4 done" and printed[0].split()[:2] == ["dia/seed0", "done"], printed
    (out / "runs" / "musicgen" / "seed1" / "eval.json").unlink()
    assert main(["ablate", "--out", str(out), "--collect"]) == 2
    assert "1 of 4 runs are not done: nothing collected" in capsys.readouterr().err
    assert not (out / "summary.json").exists()
    assert main(["ablate", "--out", str(tmp_path / "nothing"), "--status"]) == 2
    assert "holds no ablation" in capsys.readouterr().err
    assert main(["ablate", "--out", str(out)]) == 2  # training needs the data
    assert "ablate needs --data" in capsys.readouterr().err


def test_a_partition_sbatch_refuses_is_said_in_one_line_and_the_ablation_is_kept(small_ablation, tmp_path, monkeypatch):
    out = tmp_path / "ab"
    shutil.copytree(small_ablation, out)
    (out / "runs" / "dia" / "seed1" / "eval.json").unlink()
    fake_slurm(tmp_path / "bin", {})
    (tmp_path / "bin" / "sbatch").write_text("#!/bin/sh\necho 'sbatch: error: invalid partition specified: gpux' >&2\n"
                                             "exit 1\n")  # fmt: skip
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}:{os.environ['PATH']}")
    before = (out / "ablation.json").read_bytes()
    plan = load_plan(out)
    with pytest.raises(AblationError) as refused:
        Slurm(partition="gpux").launch(plan, out, runs_of(plan), progress=False)
    assert str(refused.value) == "sbatch refused dia/seed1: sbatch: error: invalid partition specified: gpux"
    assert (out / "ablation.json").read_bytes() == before and (out / "runs" / "dia" / "seed0" / "eval.json").exists()
    assert launch.read_jobs(out) == {}  # nothing recorded as submitted
