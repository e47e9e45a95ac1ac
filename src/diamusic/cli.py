"""`diamusic ...` commands. Each handler is a thin layer over the module that does the work."""

from __future__ import annotations

import argparse
import dataclasses
import inspect
import math
import signal
import sys
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NoReturn

# the library's defaults are the CLI's: importing them here keeps one source for each
from diamusic.ablate import AblationError, ablate
from diamusic.clap import CLAP_MODEL
from diamusic.codecs import DAC_CODEBOOKS, DAC_FRAME_RATE, DAC_MODEL, DEFAULT_CODEC, SpectralConfig
from diamusic.config import DEFAULT_PRESET, ModelConfig
from diamusic.data.prepare import prepare
from diamusic.data.sources import CORPUS_DEFAULTS
from diamusic.demo import DEMO_PARALLEL, DemoPlan, demo, demo_plan
from diamusic.eval import evaluate_run
from diamusic.export import export_run
from diamusic.generate import DEFAULT_SECONDS, DecodeOptions, GenerationError, SamplingConfig
from diamusic.launch import LAUNCHERS, SLURM_CPUS_PER_RUN, SLURM_TIME_MINUTES
from diamusic.patterns import AUDIO_CHANNELS, PRESETS, DelayPattern, layout_name
from diamusic.progress import length
from diamusic.runs import load_run
from diamusic.tagging import CAPTION_MODES
from diamusic.threads import THREADS_ENV, requested_threads, use_threads

DESCRIPTION = (
    "Train the Dia codec language model on music, from scratch or from Dia-1.6B, and compare codebook delay "
    "patterns. Audio and captions become codec tokens once (prepare); train, generate and eval work on one run, "
    "ablate trains and scores every pattern x seed the same way and writes the table, report the page to listen."
)


def cmd_patterns_list(args: argparse.Namespace) -> int:
    print(f"{'name':<11} {'delays':<34} {'max delay':>9} {'extra steps':>11}")
    for name in PRESETS:
        p = DelayPattern.parse(name)
        print(f"{name:<11} {','.join(map(str, p.delays)):<34} {p.max_delay:>9} {p.extra_steps:>11}")
    return 0


def cmd_patterns_show(args: argparse.Namespace) -> int:
    channels = AUDIO_CHANNELS[args.channels]
    pattern = DelayPattern.parse(args.pattern, num_codebooks=args.codebooks, audio_channels=channels)
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


def _listed(value: Any) -> list[Any]:
    """An option that takes one or more values (nargs="+"): its default arrives alone."""
    return value if isinstance(value, list) else [value]


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


class _Formatter(argparse.HelpFormatter):
    """Help that ends each option with its default, where it has one to show and says none itself."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        if "(default" in text or action.default in (None, False, [], argparse.SUPPRESS) or not action.option_strings:
            return text
        return f"{text} (default: %(default)s)"


class _Parser(argparse.ArgumentParser):
    """Usage mistakes in one line, like every other error (the usage is one --help away)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", _Formatter)
        super().__init__(*args, **kwargs)
        # on every command (and before one): where it is given last wins, absent it is not set at all
        self.add_argument(
            "--threads",
            type=_positive,
            default=argparse.SUPPRESS,
            help=f"CPU threads for the work and the processes it starts (default: ${THREADS_ENV}, else one per core)",
        )

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _defaults(function: Callable[..., Any]) -> dict[str, Any]:
    """A library function's parameter defaults by name."""
    parameters = inspect.signature(function).parameters.values()
    return {p.name: p.default for p in parameters if p.default is not inspect.Parameter.empty}


def _field_defaults(cls: type) -> dict[str, Any]:
    """A library dataclass's field defaults by name."""
    return {f.name: f.default for f in dataclasses.fields(cls) if f.default is not dataclasses.MISSING}


def cmd_prepare(args: argparse.Namespace) -> int:
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
        channels=args.channels,
        skip_tags=args.skip_tags.split(",") if args.skip_tags else (),
        require_caption=args.require_caption,
        captions=args.captions,
        tagger_clap=args.tagger_clap,
        text_column=args.text_column,
        audio_column=args.audio_column,
        progress=not args.quiet,
    )
    print(result.describe(Path(args.out), args.shard))
    return 0


def cmd_data_inspect(args: argparse.Namespace) -> int:
    from diamusic.data.inspect import inspect

    report = inspect(args.dataset, png=args.png, check=args.verify)
    print(
        f"{args.dataset}: {report['clips']} clips ({report['train_clips']} train, {report['eval_clips']} eval), "
        f"{report['hours']:.2f} h, {report['rejected']} rejected, codec {report['codec']}, "
        f"{layout_name(report['audio_channels'])}, "
        f"fingerprint {report['fingerprint']}" + (" (verified: recomputed from the shards)" if args.verify else "")
    )
    print("durations: " + ", ".join(f"{k}: {v}" for k, v in report["duration_histogram"].items()))
    sides = " (left's, then right's)" if report["audio_channels"] > 1 else ""
    print(f"code perplexity per codebook{sides}: " + " ".join(f"{p:.0f}" for p in report["codebook_perplexity"]))
    print(f"codes used per codebook{sides}:      " + " ".join(str(u) for u in report["codebook_used"]))
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
            f"{' (stopped early: ' + result.early_stop + ')' if result.early_stop else ''}"
            f"{': ' + summary if summary else ''}"
        )
    return 128 + result.signum if result.interrupted else 0  # 130 for Ctrl-C, 143 for SIGTERM


def cmd_generate(args: argparse.Namespace) -> int:
    from diamusic.generate import check_output, generate_files, prompt_codes, sampling_grid

    if (args.prompt_seconds is not None or args.keep_prompt) and not args.prompt_audio:
        raise GenerationError("--prompt-seconds and --keep-prompt need --prompt-audio FILE")
    check_output(Path(args.out), "gen", args.overwrite)  # before the model loads: a refusal costs nothing
    run = load_run(args.run, args.checkpoint, device=args.device)
    prompt = None
    if args.prompt_audio:
        prompt = prompt_codes(args.prompt_audio, run.codec, run.vocab.audio_channels, args.prompt_seconds)
    grid = sampling_grid(
        args.seconds,
        run.codec.frame_rate,
        _listed(args.temperature),
        _listed(args.cfg_scale),
        args.top_p or [None],
        cfg_filter_top_k=args.cfg_filter_top_k or None,
        seed=args.seed,
    )
    texts = [text for text in args.text for _ in range(args.num)]
    settings = {"run": str(Path(args.run).resolve()), "checkpoint": run.checkpoint.name, "codec": run.info["codec"]}
    if args.prompt_audio:
        settings["prompt_audio"] = str(Path(args.prompt_audio).resolve())
    out = Path(args.out)
    options = DecodeOptions(static_cache=args.cache == "static", compile=args.compile)
    for stem, sampling in grid.items():
        result, paths = generate_files(
            run.model, texts, run.codec, sampling, out, stem, settings, args.overwrite, options, prompt,
            args.keep_prompt,
        )  # fmt: skip
        audio_seconds = sum(result.frames) / run.codec.frame_rate
        print(
            f"wrote {len(paths)} clips to {out}{' as ' + stem + '_*' if len(grid) > 1 else ''} from "
            f"{run.checkpoint.name}: {length(sum(result.frames), run.codec.frame_rate)} of audio, "
            f"{sum(result.stopped_on_eos)} ended on EOS"
        )
        print(
            f"speed: {result.frames_per_second:.0f} frames/s, {audio_seconds / result.seconds:.2f}x real time; "
            f"{result.decode_steps} decode steps, {run.pattern.extra_steps} of them added by pattern {run.pattern}"
        )
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    result = evaluate_run(
        args.run, args.checkpoint, args.prompts, args.seconds, args.edge, args.device, args.out,
        continuation=args.continuation or 0.0, clap_model=args.clap_model,
    )  # fmt: skip
    keys = ("eval/loss", "eval/interior/loss", "eval/entropy", "eval/gap", "gen/in_key_ratio", "gen/frames_per_s")
    keys += ("gen/clipping_ratio", "gen/silence_ratio", "gen/beat_stability", "gen/key_consistency")
    keys += ("gen/clap_score", "gen/fad_clap")
    keys += ("cont/chroma_cosine", "cont/key_agreement", "cont/tempo_agreement", "cont/melody_agreement")
    keys = keys if "eval/loss" in result else ("train_subset/loss", "train_subset/interior/loss", "train/loss")
    print(f"{args.run} {result['checkpoint']}: " + ", ".join(f"{k} {result[k]:.4g}" for k in keys if k in result))
    if "note" in result:
        print(f"note: {result['note']}")
    if "early_stop" in result:
        print(f"note: the run stopped early at step {result['early_stop']['step']}: {result['early_stop']['reason']}")
    if args.out:
        print(f"wrote {args.out}")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from diamusic.export import push

    out = export_run(args.run, args.out, args.checkpoint, license=args.license)
    print(f"wrote {out}: a transformers folder (DiaForConditionalGeneration.from_pretrained), model card README.md")
    if args.push_to_hub:
        print(f"pushed to {push(out, args.push_to_hub)}")
    return 0


def cmd_ablate(args: argparse.Namespace) -> int:
    from diamusic.launch import collect_if_finished, launcher, status

    if args.status or args.collect:
        return _ablation_status(args, status, collect_if_finished)
    if args.data is None:
        raise AblationError("ablate needs --data (a dataset directory from `diamusic prepare`)")
    options = {"parallel": args.parallel, "gpus_per_run": args.gpus_per_run, "partition": args.partition,
               "time_minutes": args.time, "cpus_per_run": args.cpus_per_run, "mem_gb": args.mem_gb,
               "account": args.account, "sbatch": args.sbatch}  # fmt: skip
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
        continuation=args.continuation or 0.0,
        launcher=launcher(args.launcher, options),
    )
    if result.summary is None:
        print(f"the runs go on as SLURM jobs: `diamusic ablate --out {args.out} --status` shows them; the last to "
              "finish writes the summary and report (or `--collect`)")  # fmt: skip
        return 0
    print(result.summary.read_text())
    print(f"wrote {result.summary} and summary.json")
    return 0


def _ablation_status(args: argparse.Namespace, status: Callable, collect_if_finished: Callable) -> int:
    out = Path(args.out)
    states = status(out)
    for s in states:
        print(f"{s.key:<28} {s.state:<12} {s.job:<10} {s.last_line[:100]}")
    counts = {state: sum(s.state == state for s in states) for state in dict.fromkeys(s.state for s in states)}
    print(", ".join(f"{n} {state}" for state, n in counts.items()))
    if args.collect:
        if counts.get("done", 0) < len(states):
            raise AblationError(f"{len(states) - counts.get('done', 0)} of {len(states)} runs are not done: "
                                "nothing collected")  # fmt: skip
        print(collect_if_finished(out))
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from diamusic.report import write_report

    print(f"wrote {write_report(args.dir)}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from diamusic.report import write_report

    plan = demo_plan(
        Path(args.out),
        args.patterns,
        args.melodies,
        args.steps,
        args.seeds,
        args.set,
        args.prompts,
        args.seconds,
        args.channels,
        args.parallel,
    )
    print("the demo runs, as commands:\n  " + "\n  ".join(demo_commands(plan)), file=sys.stderr)
    result = demo(plan, progress=not args.quiet)
    page = write_report(result.out)
    print(result.summary.read_text())
    print(f"wrote {result.summary}; runs, their samples and generated audio under {result.out / 'runs'}")
    print(f"listening report: {page.resolve()}")
    return 0


def demo_commands(plan: DemoPlan) -> list[str]:
    """The `diamusic` commands that do what the demo does, so a user can rerun or vary each step."""
    preparing = dict(plan.prepare)
    preparing |= preparing.pop("codec_options", {})
    ablating = dict(plan.ablate)
    overrides, sets = dict(ablating.pop("overrides")), ablating.pop("sets")
    ablating["steps"] = overrides.pop("steps")  # the one config key with an option of its own
    if plan.parallel > 1:
        ablating["parallel"] = plan.parallel
    # the demo's config keys before the user's, so that the user's win
    sets = [f"{key}={_word(value)}" for key, value in overrides.items()] + list(sets)
    return [
        " ".join(["diamusic", "prepare", *_options(preparing)]),
        " ".join(["diamusic", "ablate", *_options(ablating), *(w for s in sets for w in ("--set", s))]),
        f"diamusic report {plan.report}",
    ]


def _options(arguments: dict[str, Any]) -> list[str]:
    """Library arguments as the options of the same names."""
    return [word for name, value in arguments.items() for word in ("--" + name.replace("_", "-"), _word(value))]


def _word(value: Any) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def build_parser() -> argparse.ArgumentParser:
    """The commands and their options; every default is the library's own (shown by --help)."""
    sampling = _field_defaults(SamplingConfig)
    preparing = _defaults(prepare)
    evaluating = _defaults(evaluate_run)
    ablating = _defaults(ablate)
    demoing = _defaults(demo_plan)
    parser = _Parser(prog="diamusic", description=DESCRIPTION)
    parser.add_argument("--debug", action="store_true", help="show full tracebacks on errors")
    sub = parser.add_subparsers(dest="command", required=True)

    patterns = sub.add_parser("patterns", help="delay-pattern presets and grids")
    psub = patterns.add_subparsers(dest="patterns_command", required=True)
    psub.add_parser("list", help="list the presets").set_defaults(func=cmd_patterns_list)
    show = psub.add_parser("show", help="print which frame each codebook holds at each decode step")
    show.add_argument("pattern", help="a preset name or comma-separated delays, e.g. 0,1,2,3,4,5,6,7,8")
    show.add_argument("--codebooks", type=int, default=DAC_CODEBOOKS, help="codebook count to validate against (DAC)")
    show.add_argument(
        "--channels", choices=list(AUDIO_CHANNELS), default="mono", help="stereo: the pattern repeated per side"
    )
    show.add_argument(
        "--decode-steps", type=_positive, default=_defaults(DelayPattern.describe)["steps"], help="decode steps to show"
    )
    show.add_argument("--png", help="also draw the grid to this PNG file")
    show.set_defaults(func=cmd_patterns_show)

    prep = sub.add_parser("prepare", help="encode audio + captions (or the built-in melodies) to codec tokens")
    prep.add_argument(
        "--source",
        required=True,
        help="'melodies' (built-in corpus), a folder of audio, hf:NAME[:CONFIG][@SPLIT] (a Hugging Face dataset, "
        "streamed; split 'train' unless given) or a folder from save_to_disk (PATH@SPLIT for a DatasetDict's)",
    )
    prep.add_argument("--codec", default=DEFAULT_CODEC, help="dac | spectral-rvq (offline, not DAC quality)")
    prep.add_argument("--out", required=True, help="dataset directory to write (re-run to resume)")
    prep.add_argument("--limit", type=_positive, help="use at most N inputs")
    prep.add_argument(
        "--channels",
        choices=list(AUDIO_CHANNELS),
        default=preparing["channels"],
        help="stereo: left and right encoded separately (a mono input is copied to both)",
    )
    prep.add_argument(
        "--require-caption",
        action="store_true",
        help="leave out files without a caption (metadata row or sidecar .txt) instead of tagging them by path",
    )
    prep.add_argument(
        "--captions",
        choices=CAPTION_MODES,
        default=preparing["captions"],
        help="auto: add tags from the audio (tempo, key, level) to every caption; auto-missing: to captions a "
        "file did not bring",
    )
    prep.add_argument("--tagger-clap", help="a CLAP model (hub id or folder) for instrument, genre and mood tags")
    prep.add_argument(
        "--text-column",
        default=preparing["text_column"],
        help="the column with the captions: a metadata file's (the file in 'file' or an audiofolder's 'file_name') "
        "or a Hugging Face dataset's",
    )
    prep.add_argument(
        "--audio-column", default=preparing["audio_column"], help="a Hugging Face dataset's column with the audio"
    )
    prep.add_argument(
        "--skip-tags", help="leave out inputs whose caption has one of these comma-separated tags, e.g. vocals,speech"
    )
    prep.add_argument(
        "--max-seconds", type=_seconds, default=preparing["max_seconds"], help="split longer audio into clips"
    )
    prep.add_argument(
        "--eval-fraction", type=float, default=preparing["eval_fraction"], help="share of inputs held out for eval"
    )
    prep.add_argument(
        "--renderer",
        help=f"built-in melodies: soundfont (General MIDI) | synth (default: {CORPUS_DEFAULTS['renderer']})",
    )
    prep.add_argument(
        "--texture", help=f"built-in melodies: solo | accompanied | mixed (default: {CORPUS_DEFAULTS['texture']})"
    )
    prep.add_argument(
        "--seed", type=int, default=preparing["seed"], help="seed of the eval split, the codec fit and the rendering"
    )
    prep.add_argument(
        "--shard",
        type=_shard,
        default="/".join(map(str, preparing["shard"])),
        help="i/n: this process's share of the job",
    )
    prep.add_argument(
        "--codebook-size", type=int, help=f"spectral-rvq codebook size (default: {SpectralConfig.codebook_size})"
    )
    prep.add_argument("--dac-model", help=f"DAC hub id or local directory (default: {DAC_MODEL})")
    prep.add_argument("--quiet", action="store_true", help="no progress bar")
    prep.set_defaults(func=cmd_prepare)

    data = sub.add_parser("data", help="look at prepared datasets")
    dsub = data.add_subparsers(dest="data_command", required=True)
    insp = dsub.add_parser("inspect", help="counts, durations and per-codebook code usage")
    insp.add_argument("dataset")
    insp.add_argument("--png", help="also plot to this PNG file")
    insp.add_argument("--verify", action="store_true", help="read every shard and recompute the fingerprint")
    insp.set_defaults(func=cmd_data_inspect)

    tr = sub.add_parser("train", help="fine-tune Dia on a prepared dataset")
    tr.add_argument("--data", help="dataset directory from `diamusic prepare`")
    tr.add_argument("--out", required=True, help="run directory")
    tr.add_argument("--config", default=DEFAULT_PRESET, help="a preset in configs/ or a YAML file")
    tr.add_argument("--model", help="model preset: tiny | small | research-log | dia-1.6b")
    tr.add_argument("--init", choices=["scratch", "pretrained"], help="train from scratch or fine-tune a checkpoint")
    tr.add_argument(
        "--pretrained", help=f"hub id or local directory for --init pretrained (default: {ModelConfig.pretrained})"
    )
    tr.add_argument("--delay-pattern", help="a preset name or comma-separated delays")
    tr.add_argument("--steps", type=int, help="optimizer steps (default: the config's steps)")
    tr.add_argument("--batch-size", type=int, help="clips per micro-batch (default: the config's batch_size)")
    tr.add_argument(
        "--grad-accum", type=int, help="micro-batches per optimizer step (default: the config's grad_accum)"
    )
    tr.add_argument("--lr", type=float, help="peak learning rate (default: the config's optim.lr)")
    tr.add_argument("--seed", type=int, help="seed of the initial weights and data order (default: the config's seed)")
    tr.add_argument("--tracker", action="append", choices=["wandb", "tensorboard"], help="repeatable")
    tr.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="any config key, repeatable")
    tr.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    tr.add_argument("--force", action="store_true", help="resume even if pattern, model or dataset changed")
    tr.add_argument("--quiet", action="store_true", help="no progress bar")
    tr.set_defaults(func=cmd_train)

    gen = sub.add_parser("generate", help="text to music from a trained run")
    gen.add_argument("--run", required=True, help="run directory from `diamusic train`")
    gen.add_argument("--checkpoint", default=_defaults(load_run)["checkpoint"], help="a step number or 'latest'")
    gen.add_argument("--text", action="append", required=True, help="a caption, repeatable")
    gen.add_argument("--num", type=_positive, default=1, help="samples per text")
    gen.add_argument(
        "--seconds", type=_seconds, default=DEFAULT_SECONDS, help="length cap; generation stops earlier at EOS"
    )
    gen.add_argument(
        "--cfg-scale",
        type=float,
        nargs="+",
        default=sampling["cfg_scale"],
        help="classifier-free guidance (1 = off); several values make a grid with the other lists",
    )
    gen.add_argument(
        "--cfg-filter-top-k",
        type=int,
        default=sampling["cfg_filter_top_k"] or 0,
        help="Dia's CFG filter candidates; 0 = plain CFG sampling",
    )
    gen.add_argument(
        "--temperature",
        type=float,
        nargs="+",
        default=sampling["temperature"],
        help="0 = greedy; values below 1 are honoured; several make a grid",
    )
    gen.add_argument("--top-p", type=float, nargs="+", help="nucleus sampling (default: off); several make a grid")
    gen.add_argument("--seed", type=int, default=sampling["seed"], help="sampling seed")
    gen.add_argument("--device", help="cpu | cuda (default: cuda when present)")
    gen.add_argument(
        "--cache",
        choices=["static", "dynamic"],
        default="static" if DecodeOptions().static_cache else "dynamic",
        help="KV cache (same tokens)",
    )
    gen.add_argument("--compile", action="store_true", help="torch.compile the decoder step (CUDA graphs on GPU)")
    gen.add_argument("--prompt-audio", help="an audio file the clips continue (encoded with the run's codec)")
    gen.add_argument("--prompt-seconds", type=_seconds, help="use the prompt file's first S seconds (default: all)")
    gen.add_argument("--keep-prompt", action="store_true", help="write the prompt before each continuation")
    gen.add_argument("--out", required=True, help="directory for WAV, .npy codes and JSON sidecars")
    gen.add_argument("--overwrite", action="store_true", help="replace earlier generations in --out")
    gen.set_defaults(func=cmd_generate)

    ev = sub.add_parser("eval", help="teacher-forced and generated-audio metrics of one checkpoint")
    ev.add_argument("--run", required=True, help="run directory from `diamusic train`")
    ev.add_argument("--checkpoint", default=evaluating["checkpoint"], help="a step number or 'latest'")
    ev.add_argument(
        "--prompts", type=_count, default=evaluating["prompts"], help="eval captions to generate from (0: none)"
    )
    ev.add_argument("--seconds", type=_seconds, default=evaluating["seconds"], help="length cap of each generation")
    ev.add_argument(
        "--edge",
        type=_count,
        help="interior frames are at least this many frames from both ends of a crop (default: the run's max "
        "delay + 1; to compare with an ablation, pass its edge_frames)",
    )
    ev.add_argument(
        "--continuation",
        type=_seconds,
        help="also continue each eval clip from its first S seconds and score what follows against the clip",
    )
    ev.add_argument(
        "--clap-model",
        nargs="?",
        const=CLAP_MODEL,
        help=f"add the CLAP score and FAD with this CLAP (hub id or folder; alone: {CLAP_MODEL}; default: the run's "
        "eval.clap_model)",
    )
    ev.add_argument("--device", help="cpu | cuda (default: cuda when present)")
    ev.add_argument("--out", help="also write the metrics to this JSON file")
    ev.set_defaults(func=cmd_eval)

    exp = sub.add_parser("export", help="one checkpoint as a standalone transformers folder with a model card")
    exp.add_argument("--run", required=True, help="run directory from `diamusic train`")
    exp.add_argument("--checkpoint", default=_defaults(export_run)["checkpoint"], help="a step number or 'latest'")
    exp.add_argument("--out", required=True, help="a new (or empty) directory")
    exp.add_argument("--license", help="the license the model card states (the data's decides it; default: other)")
    exp.add_argument("--push-to-hub", metavar="REPO", help="also upload the folder to this Hub model repo")
    exp.set_defaults(func=cmd_export)

    ab = sub.add_parser("ablate", help="train and evaluate every pattern x seed on identical settings, then a table")
    ab.add_argument("--data", help="dataset directory from `diamusic prepare` (not needed by --status, --collect)")
    ab.add_argument("--out", required=True, help="ablation directory (re-run to resume)")
    ab.add_argument("--config", default=ablating["config"], help="a preset in configs/ or a YAML file")
    ab.add_argument(
        "--patterns", default=",".join(ablating["patterns"]), help="presets and delay lists, comma-separated"
    )
    ab.add_argument(
        "--seeds", type=_positive, default=ablating["seeds"], help="seeds per pattern (consecutive from the config's)"
    )
    ab.add_argument("--steps", type=_positive, help="optimizer steps per run")
    ab.add_argument("--prompts", type=_count, default=ablating["prompts"], help="eval captions each run generates from")
    ab.add_argument("--seconds", type=_seconds, default=ablating["seconds"], help="length cap of each generation")
    ab.add_argument("--reference", default=ablating["reference"], help="the pattern differences are taken against")
    ab.add_argument(
        "--continuation", type=_seconds, help="also continue each eval clip from its first S seconds and score it"
    )
    ab.add_argument("--tracker", action="append", choices=["wandb", "tensorboard"], help="repeatable")
    ab.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="any config key, repeatable")
    ab.add_argument("--force", action="store_true", help="start over if the directory holds other settings")
    ab.add_argument("--quiet", action="store_true", help="no progress bars")
    where = ab.add_argument_group("where the runs execute (see README: Many runs)")
    where.add_argument("--launcher", choices=LAUNCHERS, default=LAUNCHERS[0], help="this machine, or SLURM jobs")
    where.add_argument("--parallel", type=_positive, help="local: runs at once (default 1, in this process)")
    where.add_argument("--gpus-per-run", type=_count, help="GPUs each run trains on (several: through torchrun)")
    where.add_argument("--partition", help="slurm: the partition")
    where.add_argument("--time", type=_positive, help=f"slurm: minutes per job (default {SLURM_TIME_MINUTES})")
    where.add_argument("--cpus-per-run", type=_positive, help=f"slurm: CPUs per run (default {SLURM_CPUS_PER_RUN})")
    where.add_argument("--mem-gb", type=_positive, help="slurm: memory per job")
    where.add_argument("--account", help="slurm: the account charged")
    where.add_argument("--sbatch", action="append", metavar="KEY=VALUE", help="slurm: an extra sbatch option")
    where.add_argument("--status", action="store_true", help="each run's state and its log's last line, then exit")
    where.add_argument("--collect", action="store_true", help="the summary and report once every run is done")
    ab.set_defaults(func=cmd_ablate)

    rep = sub.add_parser("report", help="plots and an HTML listening report of an ablation directory")
    rep.add_argument("dir", help="an ablation directory from `diamusic ablate`")
    rep.set_defaults(func=cmd_report)

    dem = sub.add_parser("demo", help="offline end to end: built-in melodies -> codes -> the pattern ablation")
    dem.add_argument("--out", default=demoing["out"], help="demo directory (re-runs reuse its data and finished runs)")
    dem.add_argument(
        "--patterns", default=",".join(demoing["patterns"]), help="presets and delay lists, comma-separated"
    )
    dem.add_argument(
        "--melodies", type=_positive, default=demoing["melodies"], help="melodies from the built-in corpus"
    )
    dem.add_argument("--steps", type=_positive, default=demoing["steps"], help="optimizer steps per run")
    dem.add_argument("--seeds", type=_positive, default=demoing["seeds"], help="seeds per pattern")
    dem.add_argument("--prompts", type=_count, default=demoing["prompts"], help="eval captions each run generates from")
    dem.add_argument("--seconds", type=_seconds, default=demoing["seconds"], help="length cap of each generation")
    dem.add_argument(
        "--channels", choices=list(AUDIO_CHANNELS), default=demoing["channels"], help="render the melodies in stereo"
    )
    dem.add_argument(
        "--parallel", type=_positive, help=f"runs at once (default: up to {DEMO_PARALLEL}, one per core or GPU)"
    )
    dem.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="any config key, repeatable")
    dem.add_argument("--quiet", action="store_true", help="no progress bars")
    dem.set_defaults(func=cmd_demo)
    return parser


# C0 and C1 control characters but tab, newline and carriage return (progress bars redraw with \r)
_CONTROLS = {c: f"\\x{c:02x}" for c in [*range(32), *range(127, 160)] if c not in (9, 10, 13)}


class _Printable:
    """A text stream that shows control characters escaped: what we print can hold text from users'
    files (captions, run.json, folder names), and an escape sequence must not reach the terminal."""

    def __init__(self, stream: Any) -> None:
        self._stream = stream

    def write(self, text: str) -> int:
        return self._stream.write(text.translate(_CONTROLS))

    def __getattr__(self, name: str) -> Any:  # flush, isatty, fileno, encoding: the stream's own
        return getattr(self._stream, name)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    streams = sys.stdout, sys.stderr
    sys.stdout, sys.stderr = _Printable(sys.stdout), _Printable(sys.stderr)
    try:
        return _run(args)
    finally:
        sys.stdout, sys.stderr = streams


def _run(args: argparse.Namespace) -> int:
    from diamusic.errors import DiamusicError, first_line

    try:
        threads = requested_threads(getattr(args, "threads", None))
        if threads is not None:
            use_threads(threads)
        return int(args.func(args) or 0)
    except KeyboardInterrupt as exc:  # Ctrl-C, or `Stopped` by a signal once the work was saved
        print(f"diamusic: {first_line(exc) if str(exc) else 'interrupted'}", file=sys.stderr)
        return 128 + getattr(exc, "signum", signal.SIGINT)
    except (DiamusicError, OSError) as exc:  # bad input, or a file system that refused: one line
        if args.debug:
            traceback.print_exc()
        option = getattr(exc, "option", None)  # the way out the message ends on, as its flag
        flag = f" (--{option.replace('_', '-')})" if option else ""
        print(f"diamusic: error: {first_line(exc)}{flag}", file=sys.stderr)
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
