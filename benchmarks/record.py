"""What every benchmark table carries: the device, date, versions and exact command; appended to RESULTS.md."""

from __future__ import annotations

import argparse
import contextlib
import datetime
import os
import platform
import shlex
import sys
from pathlib import Path

import torch

RESULTS = Path(__file__).parent / "RESULTS.md"


def device_name(device: str) -> str:
    if device.startswith("cuda"):
        props = torch.cuda.get_device_properties(device)
        return f"{props.name}, {props.total_memory / 2**30:.0f} GiB"
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError, StopIteration):  # the model name, where Linux has it
        lines = Path("/proc/cpuinfo").read_text().splitlines()
        cpu = next(line.split(":", 1)[1].strip() for line in lines if line.startswith("model name"))
    return f"{cpu}, {os.cpu_count()} cores, {torch.get_num_threads()} torch thread(s)"


def setting(device: str) -> str:
    import transformers

    date = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d")
    command = shlex.join([Path(sys.executable).name, *sys.argv])
    versions = f"torch {torch.__version__}, transformers {transformers.__version__}, Python {platform.python_version()}"
    return f"- device: {device_name(device)}\n- versions: {versions}\n- date: {date}\n- command: `{command}`\n"


def add_results_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--results", type=Path, default=RESULTS, help="append the table here ('-': print only)")


def report(title: str, device: str, table: str, path: Path) -> None:
    """Print the table under its setting; append both to ``path`` (RESULTS.md) unless it is '-'."""
    text = f"### {title}\n\n{setting(device)}\n{table.rstrip()}\n"
    print("\n" + text)
    if str(path) != "-":
        with path.open("a") as f:
            f.write("\n" + text)
        print(f"(appended to {path})")
