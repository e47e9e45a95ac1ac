"""One process per output directory: a second `train`, `prepare` (same share) or `ablate` stops in one
line naming the holder, and a holder killed with -9 leaves no stale lock."""

import contextlib
import os
import signal
import subprocess
import sys

import pytest

from diamusic.cli import main
from diamusic.locks import DirectoryBusy, DirectoryLock

HOLDER = "import sys, time\nfrom diamusic.locks import DirectoryLock\nDirectoryLock(sys.argv[1], sys.argv[2])\n"
HOLDER += "print('held', flush=True)\ntime.sleep(120)\n"


@contextlib.contextmanager
def held(directory, name=".lock"):
    """Another process holding ``directory``'s lock until the block ends (then killed with -9)."""
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(directory), name], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        yield holder.pid
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()


def test_a_held_directory_is_refused_with_the_holders_pid_and_freed_by_kill_9(tmp_path):
    with held(tmp_path / "out") as pid:
        with pytest.raises(DirectoryBusy, match=f"in use by another diamusic process \\(PID {pid}\\)"):
            DirectoryLock(tmp_path / "out")
        with DirectoryLock(tmp_path / "out", ".lock-other"):  # another name is another lock
            pass
    with DirectoryLock(tmp_path / "out") as lock:  # the kernel dropped the killed holder's lock
        assert lock.path.read_text() == str(os.getpid())
    with DirectoryLock(tmp_path / "fresh"):
        pass
    assert not (tmp_path / "fresh").exists()  # a directory the lock made, and nothing else wrote to, goes too


def test_train_prepare_and_ablate_refuse_a_directory_another_process_writes(melody_dataset, tmp_path, capsys):
    def refused(argv, directory, name=".lock") -> str:
        with held(directory, name) as pid:
            assert main(argv) == 2
            err = capsys.readouterr().err.strip().splitlines()
            assert len(err) == 1 and f"(PID {pid})" in err[0], err
        return err[0]

    run = tmp_path / "run"
    train = ["train", "--data", str(melody_dataset), "--out", str(run), "--steps", "2", "--quiet"]
    refused(train, run)
    assert [p.name for p in run.iterdir()] == [".lock"]  # the holder's file; no run was written
    data = tmp_path / "data"
    refused(["prepare", "--source", "melodies", "--out", str(data), "--limit", "2", "--quiet"], data,
            ".lock-shard-0-of-1")  # fmt: skip
    ablation = tmp_path / "ablation"
    refused(["ablate", "--data", str(melody_dataset), "--out", str(ablation), "--steps", "1", "--quiet"], ablation)
