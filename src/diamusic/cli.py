"""`diamusic ...` commands. Each handler is a thin layer over the module that does the work."""

from __future__ import annotations

import argparse
import sys
import traceback
from collections.abc import Sequence

from diamusic.patterns import PRESETS, DelayPattern

DAC_FRAME_RATE = 44100 / 512


def cmd_patterns_list(args: argparse.Namespace) -> int:
    print(f"{'name':<11} {'delays':<34} {'max delay':>9} {'extra steps':>11}")
    for name in PRESETS:
        p = DelayPattern.parse(name)
        print(f"{name:<11} {','.join(map(str, p.delays)):<34} {p.max_delay:>9} {p.extra_steps:>11}")
    return 0


def cmd_patterns_show(args: argparse.Namespace) -> int:
    pattern = DelayPattern.parse(args.pattern, num_codebooks=args.codebooks)
    print(pattern.describe(steps=args.steps, frame_rate=DAC_FRAME_RATE))
    if args.png:
        pattern.plot(args.png, steps=args.steps)
        print(f"\nwrote {args.png}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="diamusic", description=__doc__)
    parser.add_argument("--debug", action="store_true", help="show full tracebacks on errors")
    sub = parser.add_subparsers(dest="command", required=True)

    patterns = sub.add_parser("patterns", help="delay-pattern presets and grids")
    psub = patterns.add_subparsers(dest="patterns_command", required=True)
    psub.add_parser("list", help="list the presets").set_defaults(func=cmd_patterns_list)
    show = psub.add_parser("show", help="print which frame each codebook holds at each decode step")
    show.add_argument("pattern", help="a preset name or comma-separated delays, e.g. 0,1,2,3,4,5,6,7,8")
    show.add_argument("--codebooks", type=int, default=9, help="codebook count to validate against (DAC: 9)")
    show.add_argument("--steps", type=int, default=20, help="decode steps to show")
    show.add_argument("--png", help="also draw the grid to this PNG file")
    show.set_defaults(func=cmd_patterns_show)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("diamusic: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # one line for the user; --debug for the traceback
        if args.debug:
            traceback.print_exc()
        message = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        print(f"diamusic: error: {message}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
