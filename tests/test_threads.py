import json
import subprocess
import sys

import pytest

from diamusic.cli import main
from diamusic.launch import Local
from diamusic.threads import THREADS_ENV, ThreadsError, requested_threads, thread_env

REPORT = """
import json, os, sys, torch
from threadpoolctl import threadpool_info
from diamusic.cli import main
code = main(sys.argv[1:])
blas = sorted({pool["num_threads"] for pool in threadpool_info()})
env = {k: os.environ.get(k) for k in ("DIAMUSIC_THREADS", "OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS")}
print(json.dumps({"code": code, "torch": torch.get_num_threads(), "blas": blas, "env": env}))
"""


def threads_after(*argv: str, env: dict[str, str] | None = None) -> dict:
    """What a command run with `argv` leaves set in a fresh process (torch, the BLAS, children's env)."""
    done = subprocess.run([sys.executable, "-c", REPORT, *argv], capture_output=True, text=True, timeout=120,
                          env=env)  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_threads_on_the_command_or_from_the_environment_set_every_pool():
    import os

    asked = [(["patterns", "list", "--threads", "1"], None), (["patterns", "list"], {**os.environ, THREADS_ENV: "1"})]
    for argv, env in asked:
        seen = threads_after(*argv, env=env)
        assert seen["code"] == 0 and seen["torch"] == 1 and seen["blas"] == [1], (argv, seen)
        assert set(seen["env"].values()) == {"1"}, (argv, seen)  # what loader workers and launched runs inherit


def test_threads_go_before_or_after_the_command_and_are_unset_unless_given():
    from diamusic.cli import build_parser

    parser = build_parser()
    assert parser.parse_args(["--threads", "3", "patterns", "list"]).threads == 3
    assert parser.parse_args(["--threads", "3", "train", "--out", "o", "--threads", "2"]).threads == 2  # the last
    assert not hasattr(parser.parse_args(["train", "--out", "o"]), "threads")  # torch's own default then


@pytest.mark.parametrize("value", ["0", "two", "-1", "1.5"])
def test_a_bad_thread_count_is_one_line_and_exit_2(value, monkeypatch, capsys):
    with pytest.raises(SystemExit) as stopped:
        main(["patterns", "list", "--threads", value])
    assert stopped.value.code == 2 and "--threads" in capsys.readouterr().err
    monkeypatch.setenv(THREADS_ENV, value)
    assert main(["patterns", "list"]) == 2
    err = capsys.readouterr().err
    assert f"{THREADS_ENV}={value!r}: expected a positive integer" in err and len(err.strip().splitlines()) == 1


def test_requested_threads_prefers_the_option_to_the_environment(monkeypatch):
    monkeypatch.delenv(THREADS_ENV, raising=False)
    assert requested_threads() is None and requested_threads(3) == 3
    monkeypatch.setenv(THREADS_ENV, " 4 ")
    assert requested_threads() == 4 and requested_threads(2) == 2
    monkeypatch.setenv(THREADS_ENV, "x")
    with pytest.raises(ThreadsError):
        requested_threads()


def test_runs_at_once_share_the_threads_asked_for(monkeypatch):
    monkeypatch.setenv(THREADS_ENV, "4")
    local = Local(parallel=2, gpus=[])
    assert local.cores == 4 and local.slot_env(0) == {"CUDA_VISIBLE_DEVICES": "", **thread_env(2)}
    assert thread_env(2)[THREADS_ENV] == "2"  # a run applies its share, not the whole ablation's
