"""Where an ablation's runs execute when not one after another in the `ablate` process: several at once
on this machine (`Local`: each run a process of its own, pinned to its GPUs or to its share of the
cores), or as SLURM jobs submitted through submitit (`Slurm`).

``ablation.json`` stays the one record of what an ablation is, and a run is done when the evaluation of
its final checkpoint is on disk (`ablate.finished`), so any launcher resumes what another started.
``jobs.json`` only says where each run was last started and where its log is, for `status`.

``python -m diamusic.launch DIR NAME SEED`` runs one run of the ablation in DIR: what both launchers start.
"""

from __future__ import annotations

import ctypes
import getpass
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from diamusic.ablate import (
    AblationError,
    Launcher,
    Plan,
    RunClock,
    collect,
    finished,
    load_plan,
    run_name,
    run_one,
    runs_of,
)
from diamusic.checkpoints import checkpoints_of
from diamusic.errors import DiamusicError, first_line
from diamusic.locks import DirectoryBusy
from diamusic.patterns import DelayPattern
from diamusic.threads import requested_threads, thread_env, usable_cores, use_threads
from diamusic.train import Stopped

JOBS_FILE = "jobs.json"
LOGS = "logs"
LAUNCHERS = ("local", "slurm")
SLURM_TIME_MINUTES = 24 * 60  # a day: long enough for a Dia-1.6B fine-tune, short enough for most queues
SLURM_CPUS_PER_RUN = 8  # data loading and the evaluation's audio analysis are CPU work


def run_key(pattern: DelayPattern, seed: int) -> str:
    return f"{run_name(pattern)}/seed{seed}"


# --- one run in a process of its own ------------------------------------------------------------


def run_in_process(out: Path, name: str, seed: int, evaluate: bool = True) -> None:
    """One run of the ablation in ``out``, named as `run_name` names its pattern; ``evaluate`` False for
    every process of a several-GPU run but the first."""
    plan = load_plan(out)
    pattern = next((p for p in plan.delay_patterns if run_name(p) == name), None)
    if pattern is None or seed not in plan.seeds:
        raise AblationError(f"{out}'s plan has no run {name} seed {seed}")
    run_one(plan, out, pattern, seed, progress=False, evaluate=evaluate)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m diamusic.launch DIR NAME SEED``: exit 0 once the run is finished, 128 + the signal when a
    signal stopped it (its checkpoint saved), 2 with one line on bad input."""
    out, name, seed = argv if argv is not None else sys.argv[1:]
    try:
        threads = requested_threads()  # a CPU slot's share of the cores, or --threads of the ablation
        if threads is not None:
            use_threads(threads)
        run_in_process(Path(out), name, int(seed), evaluate=int(os.environ.get("RANK", "0")) == 0)
    except Stopped as exc:
        print(f"diamusic: {first_line(exc)}", file=sys.stderr)
        return 128 + exc.signum
    except (DiamusicError, OSError) as exc:
        print(f"diamusic: error: {first_line(exc)}", file=sys.stderr)
        return 2
    return 0


# --- what jobs.json records ----------------------------------------------------------------------


def read_jobs(out: Path) -> dict[str, dict[str, Any]]:
    path = out / JOBS_FILE
    return json.loads(path.read_text()) if path.exists() else {}


def record_job(out: Path, key: str, job: dict[str, Any]) -> None:
    jobs = read_jobs(out) | {key: job}
    tmp = out / f"{JOBS_FILE}.tmp{os.getpid()}"
    tmp.write_text(json.dumps(jobs, indent=2))
    os.replace(tmp, out / JOBS_FILE)  # a reader never sees half a file


def last_line(path: Path | None) -> str:
    """The last non-empty line of a log (progress bars' carriage returns split lines too)."""
    if path is None or not path.exists():
        return ""
    with path.open("rb") as f:
        f.seek(max(0, path.stat().st_size - 4096))
        lines = re.split(rb"[\r\n]+", f.read())
    return next((ln.decode(errors="replace").strip() for ln in reversed(lines) if ln.strip()), "")


# --- several runs at once on this machine --------------------------------------------------------


def visible_gpus() -> list[str]:
    """The GPUs this process may use, as CUDA_VISIBLE_DEVICES names them."""
    import torch

    count = torch.cuda.device_count()
    named = [g.strip() for g in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if g.strip()]
    return named[:count] if named else [str(i) for i in range(count)]


@dataclass
class Local:
    """``parallel`` runs at once, each in a process of its own: with GPUs, each on ``gpus_per_run`` of them
    (several through torchrun); without, each with its share of the cores as its threads."""

    parallel: int = 1
    gpus_per_run: int | None = None  # None: 1 where there are GPUs, 0 without
    gpus: list[str] = field(default_factory=visible_gpus)
    cores: int = field(default_factory=lambda: requested_threads() or usable_cores())

    def __post_init__(self) -> None:
        if self.gpus_per_run is None:
            self.gpus_per_run = 1 if self.gpus else 0
        if self.parallel < 1:
            raise AblationError(f"--parallel must be >= 1, got {self.parallel}")
        if self.gpus_per_run and self.parallel * self.gpus_per_run > len(self.gpus):
            raise AblationError(
                f"--parallel {self.parallel} x --gpus-per-run {self.gpus_per_run} needs "
                f"{self.parallel * self.gpus_per_run} GPUs; {len(self.gpus)} are visible here"
            )
        if not self.gpus_per_run and self.parallel > self.cores:
            raise AblationError(f"--parallel {self.parallel} on {self.cores} cores: each run needs a core of its own")

    def slot_env(self, slot: int) -> dict[str, str]:
        """What pins the run in ``slot`` to its GPUs, or to its threads."""
        if self.gpus_per_run:
            mine = self.gpus[slot * self.gpus_per_run : (slot + 1) * self.gpus_per_run]
            return {"CUDA_VISIBLE_DEVICES": ",".join(mine)}
        # the run's share of the cores, for every library that reads one; no GPU is visible to a CPU slot
        return {"CUDA_VISIBLE_DEVICES": "", **thread_env(self.cores // self.parallel)}

    def command(self, out: Path, pattern: DelayPattern, seed: int) -> list[str]:
        worker = ["-m", "diamusic.launch", str(out), run_name(pattern), str(seed)]
        if self.gpus_per_run and self.gpus_per_run > 1:
            distributed = ["-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={self.gpus_per_run}"]
            return [sys.executable, *distributed, *worker]
        return [sys.executable, *worker]

    def launch(self, plan: Plan, out: Path, runs: list[tuple[DelayPattern, int]], progress: bool) -> bool:
        todo = [(p, s) for p, s in runs if finished(plan, out, p, s) is None]
        (out / LOGS).mkdir(exist_ok=True)
        failed = _Pool(self, out).run(todo, RunClock(plan, out, runs, at_once=self.parallel))
        if failed:
            raise AblationError(
                f"{len(failed)} of {len(todo)} runs failed: " + "; ".join(failed) + f" (logs in {out / LOGS}); "
                "run the same command again to resume them"
            )
        return True


class _Pool:
    """The local launcher's processes: a free slot takes the next run; a stop signal reaches every run once."""

    def __init__(self, local: Local, out: Path) -> None:
        self.local, self.out = local, out
        # slot -> the run's process, pattern, seed, log and start time
        self.running: dict[int, tuple[subprocess.Popen, DelayPattern, int, Path, float]] = {}
        self.stop: int | None = None

    def run(self, todo: list[tuple[DelayPattern, int]], clock: RunClock) -> list[str]:
        failed: list[str] = []
        handlers = {s: signal.signal(s, self._forward) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            queue = list(todo)
            while (queue and self.stop is None) or self.running:
                free = [s for s in range(self.local.parallel) if s not in self.running]
                while queue and free and self.stop is None:
                    self._start(free.pop(0), *queue.pop(0))
                time.sleep(0.2)
                for slot, (process, pattern, seed, log, started) in list(self.running.items()):
                    if process.poll() is None:
                        continue
                    del self.running[slot]
                    if process.returncode != 0 and self.stop is None:
                        failed.append(f"{run_key(pattern, seed)} (exit {process.returncode}: {last_line(log)})")
                    print(clock.finish(pattern, seed, time.monotonic() - started), file=sys.stderr)
        finally:
            for s, handler in handlers.items():
                signal.signal(s, handler)
        if self.stop is not None:  # every run saved its checkpoint: the next call resumes them
            raise Stopped(f"interrupted: the runs saved their checkpoints; run the same command again to resume "
                          f"the ablation ({self.out})", self.stop)  # fmt: skip
        return failed

    def _start(self, slot: int, pattern: DelayPattern, seed: int) -> None:
        key = run_key(pattern, seed)
        log = self.out / LOGS / f"{run_name(pattern)}-seed{seed}.log"
        with log.open("ab") as f:
            process = subprocess.Popen(
                self.local.command(self.out, pattern, seed),
                env={**os.environ, **self.local.slot_env(slot)},
                stdout=f,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # a Ctrl-C reaches the runs once, through this process
                preexec_fn=_die_with_parent,
            )
        self.running[slot] = (process, pattern, seed, log, time.monotonic())
        print(f"== started {key} (log: {log}) ==", file=sys.stderr)
        record_job(self.out, key, {"launcher": "local", "pid": process.pid, "log": str(log), "started": time.time()})

    def _forward(self, signum: int, frame: Any) -> None:
        self.stop = signum
        for process, *_ in self.running.values():
            process.send_signal(signum)  # each run checkpoints its last finished step and exits


def _die_with_parent() -> None:
    """A run whose `ablate` process dies (kill -9) gets SIGTERM: it checkpoints and stops, not trains on."""
    PR_SET_PDEATHSIG = 1
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


# --- SLURM through submitit ----------------------------------------------------------------------

SLURM_OPTION = re.compile(r"^-{0,2}([A-Za-z][A-Za-z0-9_-]*)=(\S.*)$")


@dataclass
class Slurm:
    """One SLURM job per run, submitted through submitit; ``sbatch``: extra ``KEY=VALUE`` lines
    (``constraint=a100``, ``qos=high``). A run whose job failed or was pre-empted is submitted again by the
    next `ablate`, and resumes from its checkpoint; the last job to finish writes the summary and report."""

    partition: str | None = None
    time_minutes: int = SLURM_TIME_MINUTES
    gpus_per_run: int = 1
    cpus_per_run: int = SLURM_CPUS_PER_RUN
    mem_gb: int | None = None
    account: str | None = None
    sbatch: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        for name, value in (("partition", self.partition), ("account", self.account)):
            if value is not None and not re.fullmatch(r"[A-Za-z0-9_.,+-]+", value):
                raise AblationError(f"--{name} {value!r}: a SLURM {name} name has no spaces or shell characters")
        for line in self.sbatch:
            if not SLURM_OPTION.match(line) or any(c in line for c in "\n;`$"):
                raise AblationError(f"--sbatch {line!r}: expected KEY=VALUE, one sbatch option per line")
        if self.time_minutes < 1 or self.cpus_per_run < 1 or self.gpus_per_run < 0:
            raise AblationError("--time and --cpus-per-run must be >= 1 and --gpus-per-run >= 0")

    def executor(self, out: Path) -> Any:
        import submitit

        extra = {}
        for line in self.sbatch:
            key, value = SLURM_OPTION.match(line).groups()  # type: ignore[union-attr]
            extra[key.replace("-", "_")] = value
        executor = submitit.SlurmExecutor(folder=out / LOGS / "slurm")
        tasks = max(self.gpus_per_run, 1)  # a run on several GPUs: one task (process) per GPU
        executor.update_parameters(
            job_name=f"diamusic-{out.name}", partition=self.partition, time=self.time_minutes, account=self.account,
            gpus_per_node=self.gpus_per_run or None, ntasks_per_node=tasks,
            cpus_per_task=max(1, self.cpus_per_run // tasks), mem=f"{self.mem_gb}GB" if self.mem_gb else None,
            additional_parameters=extra,
        )  # fmt: skip
        return executor

    def launch(self, plan: Plan, out: Path, runs: list[tuple[DelayPattern, int]], progress: bool) -> bool:
        if shutil.which("sbatch") is None:
            raise AblationError("--launcher slurm: sbatch is not on PATH here (run ablate on a SLURM login node)")
        live = {s.key for s in status(out, plan) if s.state in ("queued", "running")}
        todo = [(p, s) for p, s in runs if finished(plan, out, p, s) is None and run_key(p, s) not in live]
        if not todo:
            return not live
        from submitit.core.utils import FailedJobError, FailedSubmissionError

        executor = self.executor(out)
        for pattern, seed in todo:
            try:
                job = executor.submit(SlurmRun(), str(out), run_name(pattern), seed)
            except (FailedJobError, FailedSubmissionError) as exc:  # sbatch refused: a partition, account, limit
                raise AblationError(f"sbatch refused {run_key(pattern, seed)}: {first_line(exc)}") from exc
            record_job(out, run_key(pattern, seed), {"launcher": "slurm", "job": str(job.job_id),
                                                     "log": str(job.paths.stderr), "started": time.time()})  # fmt: skip
            print(f"submitted {run_key(pattern, seed)} as SLURM job {job.job_id}", file=sys.stderr)
        return False


class SlurmRun:
    """What a SLURM job runs: one run, then, if it was the last, the summary and report. submitit calls
    ``checkpoint`` before SLURM's time limit and requeues the job, which resumes from its checkpoint."""

    def __call__(self, out: str, name: str, seed: int) -> str:
        import submitit

        environment = submitit.JobEnvironment()
        if cpus := os.environ.get("SLURM_CPUS_PER_TASK"):  # the CPUs SLURM gave the task, not the node's
            use_threads(int(cpus))
        if environment.num_tasks > 1:  # a run on several GPUs: torch.distributed's variables, one process each
            submitit.helpers.TorchDistributedEnvironment().export()
        run_in_process(Path(out), name, seed, evaluate=environment.global_rank == 0)
        if environment.global_rank == 0:
            return collect_if_finished(Path(out))
        return ""

    def checkpoint(self, *args: Any) -> Any:
        import submitit

        return submitit.helpers.DelayedSubmission(SlurmRun(), *args)


def collect_if_finished(out: Path) -> str:
    """The summary and report once every run is finished (what the last job to finish does)."""
    from diamusic.report import write_report

    plan = load_plan(out)
    if any(finished(plan, out, p, s) is None for p, s in runs_of(plan)):
        return "other runs are not finished"
    try:
        result = collect(out)
    except DirectoryBusy:
        return "another job is writing the summary"
    write_report(out)
    return f"wrote {result.summary}"


# --- status -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RunStatus:
    key: str  # pattern/seedN
    state: str  # done | queued | running | failed | stopped | not started
    job: str  # the SLURM job id or local PID, "" if never started
    last_line: str  # of its log: where a running run is, why a failed one failed


def status(out: Path, plan: Plan | None = None) -> list[RunStatus]:
    """Each run's state: done from its evaluation on disk, queued/running from SLURM (or the process), and
    otherwise failed (its job ended without finishing) or stopped (a checkpoint and no job)."""
    plan = plan or load_plan(out)
    jobs = read_jobs(out)
    queue = _slurm_queue() if any(j.get("launcher") == "slurm" for j in jobs.values()) else {}
    states = []
    for pattern, seed in runs_of(plan):
        key, job = run_key(pattern, seed), jobs.get(run_key(pattern, seed), {})
        ident = str(job.get("job", job.get("pid", "")))
        log = Path(job["log"]) if job.get("log") else None
        if finished(plan, out, pattern, seed) is not None:
            state = "done"
        elif job.get("launcher") == "slurm" and ident in queue:
            state = queue[ident]
        elif job.get("launcher") == "local" and process_alive(int(ident)):
            state = "running"
        elif job:
            state = "failed"
        else:
            state = "stopped" if checkpoints_of(plan.run_dir(out, pattern, seed)) else "not started"
        states.append(RunStatus(key, state, ident, last_line(log)))
    return states


def _slurm_queue() -> dict[str, str]:
    """Job id -> queued | running, for this user's jobs SLURM still holds."""
    if shutil.which("squeue") is None:
        return {}
    listing = subprocess.run(["squeue", "-h", "-u", getpass.getuser(), "-o", "%i|%T"], capture_output=True,
                             text=True, timeout=60)  # fmt: skip
    queue = {}
    for line in listing.stdout.splitlines():
        ident, _, state = line.partition("|")
        queue[ident.strip()] = "queued" if state.strip() in ("PENDING", "REQUEUED") else "running"
    return queue


def process_alive(pid: int) -> bool:
    """Whether a run the local launcher started still runs."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False
    return b"diamusic.launch" in cmdline  # not a later process that reused the PID


def launcher(name: str, options: dict[str, Any]) -> Launcher | None:
    """The launcher ``name`` with its options (those given: None means not given); an option of the
    other launcher is refused."""
    local = {"parallel", "gpus_per_run"}
    slurm = {"partition", "time_minutes", "gpus_per_run", "cpus_per_run", "mem_gb", "account", "sbatch"}
    given = {k: v for k, v in options.items() if v not in (None, [])}
    if name not in LAUNCHERS:
        raise AblationError(f"--launcher must be one of {', '.join(LAUNCHERS)}, got {name!r}")
    wrong = sorted(set(given) - (local if name == "local" else slurm))
    if wrong:
        flags = ", ".join("--" + w.replace("_minutes", "").replace("_", "-") for w in wrong)
        raise AblationError(f"{flags}: not an option of --launcher {name}")
    if name == "slurm":
        return Slurm(**given)
    local_launcher = Local(**given)
    return None if local_launcher.parallel == 1 and not given.get("gpus_per_run") else local_launcher


if __name__ == "__main__":
    sys.exit(main())
