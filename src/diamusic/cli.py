"""`diamusic ...` commands. Each handler is a thin layer over the module that does the work."""

from __future__ import annotations

import argparse
import math
import sys
import traceback
from collections.abc import Sequence
from pathlib import Path
from typing import NoReturn

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
    print(pattern.describe(steps=args.decode_steps, frame_rate=DAC_FRAME_RATE))
    if args.png:
        pattern.plot(args.png, steps=args.decode_steps)
        print(f"\nwrote {args.png}")
    return 0


def _shard(text: str) -> tuple[int, int]:
    i, sep, n = text.partition("/")
    if not sep or not i.isdigit() or not n.isdigit():
        raise argparse.ArgumentTypeError(f"expected i/n like 0/4, got {text!r}")
    return int(i), int(n)


def _positive(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return int(text)


def _count(text: str) -> int:
    if not text.isdigit():
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {text!r}")
    return int(text)


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not 0 < value < math.inf:
        raise argparse.ArgumentTypeError(f"expected a finite number of seconds > 0, got {text!r}")
    return value


class _Parser(argparse.ArgumentParser):
    """Usage mistakes in one line, like every other error (the usage is one --help away)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def cmd_prepare(args: argparse.Namespace) -> int:
    from diamusic.data.prepare import prepare

    # only what was given: the codec's own defaults apply otherwise, and job.json records just the choices
    given = {"codebook_size": args.codebook_size, "dac_model": args.dac_model}
    options = {k: v for k, v in given.items() if v is not None}
    result = prepare(
        args.source,
        args.codec,
        args.out,
        limit=args.limit,
        max_seconds=args.max_seconds,
        seed=args.seed,
        shard=args.shard,
        eval_fraction=args.eval_fraction,
        codec_options=options,
        corpus={k: v for k, v in (("renderer", args.renderer), ("texture", args.texture)) if v} or None,
        progress=not args.quiet,
    )
    if result.audio_seconds_encoded > 0:
        rate = result.audio_seconds_encoded / max(result.encode_seconds, 1e-9)
        speed = (
            f"encoded {result.audio_seconds_encoded:.1f} s of audio at {rate:.3g}x real time "
            f"({result.seconds:.1f} s in all, with loading and the codec fit)"
        )
    else:
        speed = "nothing left to encode"
    if result.complete:
        print(
            f"{args.out}: {result.clips} clips, {result.hours:.2f} h, {result.rejected} rejected "
            f"(see rejected.jsonl); {speed}"
        )
        if result.captions_truncated:
            print(f"warning: {result.captions_truncated} captions were longer than 1024 bytes and were truncated")
    else:
        print(f"shard {args.shard[0]}/{args.shard[1]} done ({speed}); other shards still to run")
    return 0


def cmd_data_inspect(args: argparse.Namespace) -> int:
    from diamusic.data.inspect import inspect

    report = inspect(args.dataset, png=args.png)
    print(
        f"{args.dataset}: {report['clips']} clips ({report['train_clips']} train, {report['eval_clips']} eval), "
        f"{report['hours']:.2f} h, {report['rejected']} rejected, codec {report['codec']}, "
        f"fingerprint {report['fingerprint']}"
    )
    print("durations: " + ", ".join(f"{k}: {v}" for k, v in report["duration_histogram"].items()))
    print("code perplexity per codebook: " + " ".join(f"{p:.0f}" for p in report["codebook_perplexity"]))
    print("codes used per codebook:      " + " ".join(str(u) for u in report["codebook_used"]))
    for name, counts in report["mix"].items():
        print(f"{name.replace('_', ' ')}: " + ", ".join(f"{k} {n}" for k, n in counts.items()))
    if args.png:
        print(f"wrote {args.png}")
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from diamusic.config import load_config
    from diamusic.train import train

    overrides = {
        "data.path": args.data,
        "model.preset": args.model,
        "model.init": args.init,
        "model.pretrained": args.pretrained,
        "delay_pattern": args.delay_pattern,
        "steps": args.steps,
        "batch_size": args.batch_size,
        "grad_accum": args.grad_accum,
        "optim.lr": args.lr,
        "seed": args.seed,
        "tracking.backends": args.tracker,
    }
    config = load_config(args.config, overrides, args.set)
    result = train(config, args.out, resume=args.resume, force=args.force, progress=not args.quiet)
    if result.main_process:  # under accelerate/torchrun one summary, not one per process
        summary = ", ".join(
            f"{k} {v:.4f}"
            for k, v in {**result.last_train, **result.last_eval}.items()
            if k in ("train/loss", "train/entropy", "eval/loss", "eval/entropy")
        )
        print(
            f"{result.run_dir}: step {result.step}{' (interrupted, checkpoint saved)' if result.interrupted else ''}"
            f"{': ' + summary if summary else ''}"
        )
    return 130 if result.interrupted else 0


def cmd_generate(args: argparse.Namespace) -> int:
    from diamusic.generate import DecodeOptions, SamplingConfig, generate_files
    from diamusic.runs import load_run

    run = load_run(args.run, args.checkpoint, device=args.device)
    sampling = SamplingConfig.for_seconds(
        args.seconds,
        run.codec.frame_rate,
        cfg_scale=args.cfg_scale,
        cfg_filter_top_k=args.cfg_filter_top_k or None,
        temperature=args.temperature,
        top_p=args.top_p,
        seed=args.seed,
    )
    texts = [text for text in args.text for _ in range(args.num)]
    settings = {"run": str(Path(args.run).resolve()), "checkpoint": run.checkpoint.name, "codec": run.info["codec"]}
    out = Path(args.out)
    options = DecodeOptions(static_cache=args.cache == "static", compile=args.compile)
    result, paths = generate_files(run.model, texts, run.codec, sampling, out, "gen", settings, args.overwrite, options)
    audio_seconds = sum(result.frames) / run.codec.frame_rate
    print(
        f"wrote {len(paths)} clips to {out} ({audio_seconds:.1f} s of audio, "
        f"{sum(result.stopped_on_eos)} ended on EOS) from {run.checkpoint.name}"
    )
    print(
        f"speed: {result.frames_per_second:.0f} frames/s, {audio_seconds / result.seconds:.2f}x real time; "
        f"{result.decode_steps} decode steps, {run.pattern.extra_steps} of them added by pattern {run.pattern}"
    )
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from diamusic.eval import evaluate_run

    result = evaluate_run(args.run, args.checkpoint, args.prompts, args.seconds, device=args.device, out=args.out)
    keys = ("eval/loss", "eval/interior/loss", "eval/entropy", "eval/gap", "gen/in_key_ratio", "gen/frames_per_s")
    print(f"{args.run} {result['checkpoint']}: " + ", ".join(f"{k} {result[k]:.4g}" for k in keys if k in result))
    if args.out:
        print(f"wrote {args.out}")
    return 0


def cmd_ablate(args: argparse.Namespace) -> int:
    from diamusic.ablate import ablate

    overrides = {"steps": args.steps, "tracking.backends": args.tracker}
    result = ablate(
        args.data,
        args.out,
        args.patterns,
        args.seeds,
        args.config,
        overrides,
        args.set,
        prompts=args.prompts,
        seconds=args.seconds,
        reference=args.reference,
        force=args.force,
        progress=not args.quiet,
    )
    print(result.summary.read_text())
    print(f"wrote {result.summary} and summary.json")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from diamusic.report import write_report

    print(f"wrote {write_report(args.dir)}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from diamusic.ablate import demo, demo_commands
    from diamusic.report import write_report

    out = Path(args.out)
    print("the demo runs, as commands:\n  " + "\n  ".join(demo_commands(out, args.patterns, args.melodies, args.steps,
          args.seeds, args.set)), file=sys.stderr)  # fmt: skip
    result = demo(out, args.patterns, args.melodies, args.steps, args.seeds, args.set, not args.quiet)
    page = write_report(result.out)
    print(result.summary.read_text())
    print(f"wrote {result.summary}; runs, their demos and generated audio under {result.out / 'runs'}")
    print(f"listening report: {page.resolve()}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="diamusic", description=__doc__)
    parser.add_argument("--debug", action="store_true", help="show full tracebacks on errors")
    sub = parser.add_subparsers(dest="command", required=True)

    patterns = sub.add_parser("patterns", help="delay-pattern presets and grids")
    psub = patterns.add_subparsers(dest="patterns_command", required=True)
    psub.add_parser("list", help="list the presets").set_defaults(func=cmd_patterns_list)
    show = psub.add_parser("show", help="print which frame each codebook holds at each decode step")
    show.add_argument("pattern", help="a preset name or comma-separated delays, e.g. 0,1,2,3,4,5,6,7,8")
    show.add_argument("--codebooks", type=int, default=9, help="codebook count to validate against (DAC: 9)")
    show.add_argument("--decode-steps", type=_positive, default=20, help="decode steps to show")
    show.add_argument("--png", help="also draw the grid to this PNG file")
    show.set_defaults(func=cmd_patterns_show)

    prep = sub.add_parser("prepare", help="encode audio + captions (or the built-in melodies) to codec tokens")
    prep.add_argument("--source", required=True, help="'melodies' (built-in corpus) or a folder of audio")
    prep.add_argument("--codec", default="spectral-rvq", help="dac | spectral-rvq (offline, not DAC quality)")
    prep.add_argument("--out", required=True, help="dataset directory to write (re-run to resume)")
    prep.add_argument("--limit", type=_positive, help="use at most N inputs")
    prep.add_argument("--max-seconds", type=_seconds, default=30.0, help="split longer audio into clips")
    prep.add_argument("--eval-fraction", type=float, default=0.05, help="share of inputs held out for eval")
    prep.add_argument("--renderer", help="built-in melodies: soundfont (General MIDI, default) | synth")
    prep.add_argument("--texture", help="built-in melodies: solo | accompanied | mixed (default)")
    prep.add_argument("--seed", type=int, default=0)
    prep.add_argument("--shard", type=_shard, default=(0, 1), help="i/n: this process's share of the job")
    prep.add_argument("--codebook-size", type=int, help="spectral-rvq codebook size (default 1024)")
    prep.add_argument("--dac-model", help="DAC hub id or local directory (default descript/dac_44khz)")
    prep.add_argument("--quiet", action="store_true", help="no progress bar")
    prep.set_defaults(func=cmd_prepare)

    data = sub.add_parser("data", help="look at prepared datasets")
    dsub = data.add_subparsers(dest="data_command", required=True)
    insp = dsub.add_parser("inspect", help="counts, durations and per-codebook code usage")
    insp.add_argument("dataset")
    insp.add_argument("--png", help="also plot to this PNG file")
    insp.set_defaults(func=cmd_data_inspect)

    tr = sub.add_parser("train", help="fine-tune Dia on a prepared dataset")
    tr.add_argument("--data", help="dataset directory from `diamusic prepare`")
    tr.add_argument("--out", required=True, help="run directory")
    tr.add_argument("--config", default="tiny-cpu", help="a preset in configs/ or a YAML file")
    tr.add_argument("--model", help="model preset: tiny | small | dia-1.6b")
    tr.add_argument("--init", choices=["scratch", "pretrained"], help="train from scratch or fine-tune a checkpoint")
    tr.add_argument("--pretrained", help="hub id or local directory for --init pretrained (default: Dia-1.6B-0626)")
    tr.add_argument("--delay-pattern", help="a preset name or comma-separated delays")
    tr.add_argument("--steps", type=int)
    tr.add_argument("--batch-size", type=int)
    tr.add_argument("--grad-accum", type=int)
    tr.add_argument("--lr", type=float)
    tr.add_argument("--seed", type=int)
    tr.add_argument("--tracker", action="append", choices=["wandb", "tensorboard"], help="repeatable")
    tr.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="any config key, repeatable")
    tr.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    tr.add_argument("--force", action="store_true", help="resume even if pattern, model or dataset changed")
    tr.add_argument("--quiet", action="store_true", help="no progress bar")
    tr.set_defaults(func=cmd_train)

    gen = sub.add_parser("generate", help="text to music from a trained run")
    gen.add_argument("--run", required=True, help="run directory from `diamusic train`")
    gen.add_argument("--checkpoint", default="latest", help="a step number or 'latest'")
    gen.add_argument("--text", action="append", required=True, help="a caption, repeatable")
    gen.add_argument("--num", type=_positive, default=1, help="samples per text")
    gen.add_argument("--seconds", type=_seconds, default=10.0, help="length cap; generation stops earlier at EOS")
    gen.add_argument("--cfg-scale", type=float, default=3.0, help="classifier-free guidance (1 = off)")
    gen.add_argument(
        "--cfg-filter-top-k", type=int, default=45, help="Dia's CFG filter candidates; 0 = plain CFG sampling"
    )
    gen.add_argument("--temperature", type=float, default=1.0, help="0 = greedy; values below 1 are honoured")
    gen.add_argument("--top-p", type=float)
    gen.add_argument("--seed", type=int, default=0)
    gen.add_argument("--device", help="cpu | cuda (default: cuda when present)")
    gen.add_argument("--cache", choices=["static", "dynamic"], default="static", help="KV cache (same tokens)")
    gen.add_argument("--compile", action="store_true", help="torch.compile the decoder step (CUDA graphs on GPU)")
    gen.add_argument("--out", required=True, help="directory for WAV, .npy codes and JSON sidecars")
    gen.add_argument("--overwrite", action="store_true", help="replace earlier generations in --out")
    gen.set_defaults(func=cmd_generate)

    ev = sub.add_parser("eval", help="teacher-forced and generated-audio metrics of one checkpoint")
    ev.add_argument("--run", required=True, help="run directory from `diamusic train`")
    ev.add_argument("--checkpoint", default="latest", help="a step number or 'latest'")
    ev.add_argument("--prompts", type=_count, default=4, help="eval captions to generate from (0: none)")
    ev.add_argument("--seconds", type=_seconds, default=4.0, help="length cap of each generation")
    ev.add_argument("--device", help="cpu | cuda (default: cuda when present)")
    ev.add_argument("--out", help="also write the metrics to this JSON file")
    ev.set_defaults(func=cmd_eval)

    ab = sub.add_parser("ablate", help="train and evaluate every pattern x seed on identical settings, then a table")
    ab.add_argument("--data", required=True, help="dataset directory from `diamusic prepare`")
    ab.add_argument("--out", required=True, help="ablation directory (re-run to resume)")
    ab.add_argument("--config", default="tiny-cpu", help="a preset in configs/ or a YAML file")
    ab.add_argument("--patterns", default="dia,musicgen,compressed", help="presets and delay lists, comma-separated")
    ab.add_argument("--seeds", type=_positive, default=3, help="seeds per pattern (consecutive from the config's)")
    ab.add_argument("--steps", type=_positive, help="optimizer steps per run")
    ab.add_argument("--prompts", type=_count, default=4, help="eval captions each run generates from")
    ab.add_argument("--seconds", type=_seconds, default=4.0, help="length cap of each generation")
    ab.add_argument("--reference", default="dia", help="the pattern differences are taken against")
    ab.add_argument("--tracker", action="append", choices=["wandb", "tensorboard"], help="repeatable")
    ab.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="any config key, repeatable")
    ab.add_argument("--force", action="store_true", help="start over if the directory holds other settings")
    ab.add_argument("--quiet", action="store_true", help="no progress bars")
    ab.set_defaults(func=cmd_ablate)

    rep = sub.add_parser("report", help="plots and an HTML listening report of an ablation directory")
    rep.add_argument("dir", help="an ablation directory from `diamusic ablate`")
    rep.set_defaults(func=cmd_report)

    demo = sub.add_parser("demo", help="offline end to end: built-in melodies -> codes -> the pattern ablation")
    demo.add_argument("--out", default="runs/demo", help="demo directory (re-runs reuse its data and finished runs)")
    demo.add_argument("--patterns", nargs="+", default=["dia", "musicgen", "compressed"])
    demo.add_argument("--melodies", type=_positive, default=80, help="melodies from the built-in corpus")
    demo.add_argument("--steps", type=_positive, default=300, help="optimizer steps per run")
    demo.add_argument("--seeds", type=_positive, default=3, help="seeds per pattern")
    demo.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="any config key, repeatable")
    demo.add_argument("--quiet", action="store_true", help="no progress bars")
    demo.set_defaults(func=cmd_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    from diamusic.errors import DiamusicError, first_line

    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("diamusic: interrupted", file=sys.stderr)
        return 130
    except (DiamusicError, OSError) as exc:  # bad input, or a file system that refused: one line
        if args.debug:
            traceback.print_exc()
        print(f"diamusic: error: {first_line(exc)}", file=sys.stderr)
        return 2
    except Exception as exc:  # a bug: say so, so it never reads as the user's mistake
        if args.debug:
            traceback.print_exc()
        print(
            f"diamusic: internal error: {type(exc).__name__}: {first_line(exc)} (re-run with --debug for the "
            "traceback and report it)",
            file=sys.stderr,
        )
        return 3


if __name__ == "__main__":
    sys.exit(main())
