"""How many CPU threads diamusic's work may use: ``--threads N`` or ``DIAMUSIC_THREADS``.

On a shared machine torch's default (a thread per core) competes with everyone else's jobs, and on two
cores a process per run on top of that drowns them. One number sets torch's threads, the BLAS under
numpy, and what processes started from here inherit (data loader workers, launched runs).
"""

from __future__ import annotations

import os

from diamusic.errors import DiamusicError

THREADS_ENV = "DIAMUSIC_THREADS"
# read by torch, OpenMP, MKL and OpenBLAS in processes started from here
_CHILD_ENV = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")


class ThreadsError(DiamusicError):
    """A thread count that cannot be used; one line for the user."""


def usable_cores() -> int:
    """The cores this process may run on (a SLURM job or taskset may allow fewer than the machine has)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def requested_threads(given: int | None = None) -> int | None:
    """`given` (``--threads``), else ``DIAMUSIC_THREADS``, else None (torch's own default)."""
    if given is not None:
        return given
    text = os.environ.get(THREADS_ENV, "").strip()
    if not text:
        return None
    if not text.isdigit() or int(text) < 1:
        raise ThreadsError(f"{THREADS_ENV}={text!r}: expected a positive integer (or unset it)")
    return int(text)


def use_threads(count: int) -> None:
    """Run this process's work on `count` threads, and have the processes it starts do the same."""
    import torch
    from threadpoolctl import threadpool_limits

    if count < 1:
        raise ThreadsError(f"--threads {count}: expected a positive integer")
    torch.set_num_threads(count)
    threadpool_limits(count)  # numpy's BLAS, already loaded with a thread per core
    os.environ.update(thread_env(count))


def thread_env(count: int) -> dict[str, str]:
    """The environment that gives a process started with it `count` threads."""
    return {name: str(count) for name in (THREADS_ENV, *_CHILD_ENV)}
