"""Plots and the listening report of an ablation directory.

`write_report(DIR)` reads what `ablate` left there (ablation.json, summary.json, each run's
metrics.jsonl, generated/ and samples/) and writes PNG plots under ``DIR/plots`` and one HTML page,
``DIR/report.html``, that opens from disk: images and audio are files beside it, linked by
relative paths, and nothing is fetched from the network. A small script in the page checks that
every image and audio element loaded and writes the count into ``#selfcheck``.
"""

from __future__ import annotations

import html
import json
import math
import time
from pathlib import Path
from typing import Any

import numpy as np

from diamusic.ablate import PLAN_FILE, AblationError, bounds_of, run_name, sections
from diamusic.checkpoints import step_of
from diamusic.patterns import DelayPattern
from diamusic.progress import length, stage
from diamusic.runs import RUN_FILE, SAMPLES
from diamusic.stats import Estimate, mean_ci
from diamusic.tracking import read_metrics

# what tells the patterns' lines apart where they overlap
MARKERS = ["o", "s", "^", "D", "v", "P", "X", "*"]
LINES = ["-", "--", "-.", ":"]
# the bar figures, one per table of the summary (its rows' kinds), so the primary claims are not lost among 30 panels
BAR_FIGURES = {"primary": ("primary",), "exploratory": ("exploratory",), "other": ("exact", "wall-clock", "no signal")}
SPECTROGRAM_FFT = 2048  # 46 ms at 44.1 kHz: notes a semitone apart separate above the bass
SPECTROGRAM_BANDS = 64
SPECTROGRAM_DB = 80.0


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig: Any, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    _plt().close(fig)
    return path


def _error_bar(e: dict[str, float], bounds: tuple[float, float]) -> tuple[float, float]:
    """How far the 95% interval reaches below and above the mean, cut where the metric's values end (a
    similarity never exceeds 1); none where one seed gives no interval."""
    if math.isnan(e["low"]) or math.isnan(e["high"]):
        return 0.0, 0.0
    return e["mean"] - max(e["low"], bounds[0]), min(e["high"], bounds[1]) - e["mean"]


def _seed_dots(ax: Any, x: float, values: list[float], spread: float = 0.15) -> None:
    offsets = [spread * (i / max(len(values) - 1, 1) - 0.5) for i in range(len(values))]
    # a seed that measured nothing (nan) has no dot; matplotlib refuses dots that are all nan on a named axis
    dots = [(x + o, v) for o, v in zip(offsets, values, strict=True) if not math.isnan(v)]
    if dots:
        ax.scatter(*zip(*dots, strict=True), s=9, color="black", zorder=3)


def _runs(out: Path, plan: dict[str, Any]) -> dict[str, dict[int, Path]]:
    patterns = [DelayPattern.parse(d, audio_channels=plan.get("audio_channels", 1)) for d in plan["patterns"]]
    return {run_name(p): {s: out / "runs" / run_name(p) / f"seed{s}" for s in plan["seeds"]} for p in patterns}


def _curve(runs: dict[int, Path], key: str) -> tuple[list[int], list[Estimate]]:
    """Per step logged by every seed: the mean and t-interval of ``key`` over seeds."""
    by_seed = [{row["step"]: row[key] for row in read_metrics(r) if key in row} for r in runs.values()]
    steps = sorted(set.intersection(*(set(s) for s in by_seed))) if by_seed else []
    return steps, [mean_ci([s[step] for s in by_seed]) for step in steps]


def plot_curves(
    out: Path,
    runs: dict[str, dict[int, Path]],
    keys: list[tuple[str, str]],
    name: str,
    codebook_size: int | None = None,
) -> Path:
    """One panel per key, a line per pattern (mean over seeds, band: 95% interval); with ``codebook_size``, a
    line at chance: a uniform guess over the codebook, ln(codebook size) nats."""
    from matplotlib.ticker import MaxNLocator

    plt = _plt()
    fig, axes = plt.subplots(1, len(keys), figsize=(5.5 * len(keys), 3.8), squeeze=False)
    for ax, (key, title) in zip(axes[0], keys, strict=True):
        for i, (pattern, by_seed) in enumerate(runs.items()):
            steps, estimates = _curve(by_seed, key)
            if not steps:
                continue
            means = [e.mean for e in estimates]
            style = {"marker": MARKERS[i % len(MARKERS)], "linestyle": LINES[i % len(LINES)], "ms": 4}
            (line,) = ax.plot(steps, means, markevery=max(1, len(steps) // 8), label=pattern, **style)
            low = [e.low if not math.isnan(e.low) else e.mean for e in estimates]
            high = [e.high if not math.isnan(e.high) else e.mean for e in estimates]
            ax.fill_between(steps, low, high, color=line.get_color(), alpha=0.15)
        if codebook_size:
            chance = f"chance (ln {codebook_size})"
            ax.axhline(math.log(codebook_size), color="grey", linewidth=1, linestyle=":", label=chance)
        ax.set_title(title)
        ax.set_xlabel("optimizer step")
        ax.set_ylabel("nats per token")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle("mean over seeds, band: 95% interval")
    return _save(fig, out / "plots" / name)


def plot_bars(out: Path, summary: dict[str, Any], keys: list[str], name: str, title: str = "metrics") -> Path | None:
    """Small multiples: one panel per metric (titled with its label, which names its unit), one bar per
    pattern, the 95% interval cut to the metric's possible values as the error bar and each seed's value
    as a dot beside it (three dots say more than a bar). Metrics no run measured get no panel."""
    metrics = {m["key"]: m for m in summary["metrics"]}
    present = [k for k in keys if k in metrics and _measured(metrics[k])]
    if not present:
        return None
    plt = _plt()
    names = list(summary["patterns"])
    cols = min(4, len(present))
    rows = math.ceil(len(present) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.6 * cols, 2.9 * rows), squeeze=False)
    for ax, key in zip(axes.flat, present, strict=False):
        estimates = [metrics[key]["per_pattern"][n] for n in names]
        below, above = zip(*(_error_bar(e, bounds_of(key)) for e in estimates), strict=True)
        colours = [f"C{i % 10}" for i in range(len(names))]
        ax.bar(names, [e["mean"] for e in estimates], yerr=[below, above], capsize=4, color=colours)
        for i, n in enumerate(names):
            _seed_dots(ax, i, metrics[key]["per_seed"][n])
        low, high = bounds_of(key)
        if math.isfinite(low) and math.isfinite(high):
            ax.set_ylim(low, high)
        elif math.isfinite(low):  # from where the metric's values start (0 for a rate), not centred on all-zero bars
            ax.set_ylim(low, max(ax.get_ylim()[1], low + 1.0))
        ax.set_title(metrics[key]["label"] + (" ↓" if metrics[key]["lower_is_better"] else " ↑"), fontsize=9)
        ax.tick_params(axis="x", labelsize=8)
        if "loss" in key or "entropy" in key:  # the other labels name their unit, or have none (shares)
            ax.set_ylabel("nats per token", fontsize=8)
    for ax in list(axes.flat)[len(present) :]:
        ax.axis("off")
    fig.suptitle(f"{title}: bars the mean over seeds with its 95% interval, dots the seeds")
    return _save(fig, out / "plots" / name)


def _measured(metric: dict[str, Any]) -> bool:
    return any(not math.isnan(e["mean"]) for e in metric["per_pattern"].values())


def plot_codebooks(out: Path, summary: dict[str, Any]) -> Path | None:
    rows = sorted(
        (m for m in summary["metrics"] if m["key"].startswith("eval/loss/cb")), key=lambda m: int(m["key"][12:])
    )
    if not rows:
        return None
    plt = _plt()
    names = list(summary["patterns"])
    width = 0.8 / len(names)
    fig, ax = plt.subplots(figsize=(9, 3.6))
    for i, n in enumerate(names):
        means = [m["per_pattern"][n]["mean"] for m in rows]
        errors = list(zip(*(_error_bar(m["per_pattern"][n], bounds_of(m["key"])) for m in rows), strict=True))
        ax.bar([c + i * width for c in range(len(rows))], means, width, yerr=errors, capsize=2, label=n)
        for c, m in enumerate(rows):
            _seed_dots(ax, c + i * width, m["per_seed"][n], spread=width / 3)
    ax.set_xticks([c + 0.4 - width / 2 for c in range(len(rows))], [f"cb{c}" for c in range(len(rows))])
    ax.set_ylabel("eval loss (nats)")
    ax.set_title("eval loss per codebook (95% interval over seeds)")
    ax.legend(fontsize=8)
    return _save(fig, out / "plots" / "codebooks.png")


# --- the page -----------------------------------------------------------------------------------

SELFCHECK = """
<script>
// counts what loaded: the report's own test reads #selfcheck after the page settles
function check() {
  const imgs = [...document.images];
  const audios = [...document.querySelectorAll('audio')];
  const badImg = imgs.filter(i => !(i.complete && i.naturalWidth > 0)).length;
  const badAudio = audios.filter(a => a.error || a.readyState < 1).length;
  document.getElementById('selfcheck').textContent =
    `images ${imgs.length} failed ${badImg}; audio ${audios.length} failed ${badAudio}`;
}
window.addEventListener('load', () => setTimeout(check, 1500));
</script>
"""

STYLE = """
body { font-family: sans-serif; margin: 2em; max-width: 1400px; }
table { border-collapse: collapse; font-size: 13px; }
td, th { border: 1px solid #ccc; padding: 3px 8px; text-align: right; }
td:first-child, th:first-child { text-align: left; }
audio { width: 220px; height: 32px; }
.prompt { font-size: 13px; color: #333; max-width: 260px; }
.clip { font-size: 11px; color: #555; }
img { max-width: 100%; }
img.spec { width: 220px; height: 48px; }
table.facts { margin-bottom: 1em; }
table.facts th, table.facts td { text-align: left; }
#selfcheck { display: none; }  /* for the browser test, not for readers */
"""


def _e(text: Any) -> str:
    return html.escape(str(text))


def _first_run(runs: dict[str, dict[int, Path]]) -> dict[str, Any]:
    """run.json of the ablation's first run (what every run shares: data, codec, model, version)."""
    first = next(p for seeds in runs.values() for p in seeds.values())
    return json.loads((first / RUN_FILE).read_text()) if (first / RUN_FILE).exists() else {}


def _header(
    out: Path, plan: dict[str, Any], summary: dict[str, Any], runs: dict[str, dict[int, Path]], run: dict[str, Any]
) -> str:
    """What was run, as facts a reader can cite (``run``: the first run's run.json), and links to the tables and
    to every run folder."""
    config = plan["config"]
    card_path = Path(run.get("dataset", plan["data"])) / "card.json"
    card = json.loads(card_path.read_text()) if card_path.exists() else {}
    layout = run.get("codec") or card.get("codec")
    codec = "?" if not layout else (
        f"{layout['name']}, {layout['num_codebooks']} codebooks x {layout['codebook_size']} codes, "
        f"{layout['frame_rate']:.1f} frames/s"
    )  # fmt: skip
    size = f": {card['clips']} clips, {card['hours']:.2f} h" if card else ""
    rate = layout["frame_rate"] if layout else None
    asked = length(round(plan["seconds"] * rate), rate) if rate else f"{plan['seconds']:g} s"
    parameters = run.get("parameters", {}).get("total")
    model = config["model"]["preset"] + (f", {parameters / 1e6:.2f} M parameters" if parameters else "")
    init = config["model"]["init"]
    model += f", {init}" + (f" ({config['model']['pretrained']})" if init != "scratch" else "")
    facts = [
        ("patterns", "; ".join(f"{name} [{','.join(map(str, d))}]" for name, d in summary["patterns"].items())),
        ("seeds", ", ".join(map(str, summary["seeds"]))),
        ("optimizer steps", f"{config['steps']} per run, batch {config['batch_size']} x {config['grad_accum']}"),
        ("model", model),
        ("data", f"{run.get('dataset', plan['data'])}{size}"),
        ("codec", codec),
        ("evaluation", f"{plan['prompts']} generation(s) of up to {asked} per run"),
        ("diamusic", run.get("code_version", "?")),
        ("written", time.strftime("%Y-%m-%d %H:%M", time.localtime((out / "summary.json").stat().st_mtime))),
    ]
    rows = "".join(f"<tr><th>{_e(k)}</th><td>{_e(v)}</td></tr>" for k, v in facts)
    links = ", ".join(
        f"<a href='{_e(p.relative_to(out).as_posix())}/'>{_e(name)} seed {seed}</a>"
        for name, seeds in runs.items() for seed, p in seeds.items()
    )  # fmt: skip
    files = ", ".join(f"<a href='{name}'>{name}</a>" for name in ("summary.md", "summary.json", PLAN_FILE))
    return f"<table class='facts'>{rows}</table>\n<p>Tables: {files}. Runs: {links}.</p>"


def _tables(summary: dict[str, Any]) -> str:
    """The summary's sections, cell for cell as summary.md has them."""
    out = []
    for section in sections(summary):
        head = "".join(f"<th>{_e(h)}</th>" for h in section.head)
        body = "".join("<tr>" + "".join(f"<td>{_e(c)}</td>" for c in cells) + "</tr>" for cells in section.rows)
        out.append(f"<h3>{_e(section.title)}</h3><p>{_e(section.intro)}</p><table><tr>{head}</tr>{body}</table>")
    notes = "".join(f"<li>{_e(n)}</li>" for n in summary["notes"])
    return "".join(out) + (f"<ul>{notes}</ul>" if notes else "")


def spectrogram(wav: Path, png: Path) -> Path:
    """A small log-mel picture of a clip (its audio channels mixed), low notes at the bottom. One colour scale
    for every clip, SPECTROGRAM_DB below full scale to full scale, so a quiet clip looks dark beside a loud one."""
    import librosa
    import matplotlib.image
    import soundfile as sf

    wave, rate = sf.read(str(wav), dtype="float32", always_2d=True)
    mixed = wave.mean(1) if len(wave) else np.zeros(SPECTROGRAM_FFT, np.float32)
    window = np.hanning(SPECTROGRAM_FFT + 1)[:-1]
    # scaled so that a full-scale sine reaches 1 (0 dB) in the band that holds it
    stft = np.abs(librosa.stft(mixed, n_fft=SPECTROGRAM_FFT, window=window, center=True)) / (window.sum() / 2)
    bands = librosa.filters.mel(sr=rate, n_fft=SPECTROGRAM_FFT, n_mels=SPECTROGRAM_BANDS, norm=None) @ stft**2
    db = 10 * np.log10(np.maximum(bands, 1e-12))
    png.parent.mkdir(parents=True, exist_ok=True)
    matplotlib.image.imsave(png, db, cmap="magma", vmin=-SPECTROGRAM_DB, vmax=0.0, origin="lower")
    return png


def _audio(out: Path, path: Path, clip: dict[str, Any] | None = None) -> str:
    """A player with the clip's spectrogram and length (and, for a generation, whether it stopped on EOS or at the
    length asked)."""
    import soundfile as sf

    where = path.relative_to(out)
    seconds = sf.info(str(path)).duration
    picture = spectrogram(path, out / "plots" / "spectrograms" / f"{'__'.join(where.with_suffix('').parts)}.png")
    ending = "" if clip is None else ", stopped on EOS" if clip["stopped_on_eos"] else ", cut at the length asked"
    player = f"<audio controls preload='auto' src='{_e(where.as_posix())}'></audio>"
    image = f"<img class='spec' src='{_e(picture.relative_to(out).as_posix())}' alt='spectrogram of {_e(where)}'>"
    return f"{player}<br>{image}<br><span class='clip'>{seconds:.1f} s{ending}</span>"


def _clips(run: Path) -> list[dict[str, Any]]:
    path = run / "generated" / "clips.json"
    return json.loads(path.read_text()) if path.exists() else []


def _listening(out: Path, runs: dict[str, dict[int, Path]], stem: str = "gen", ref: str = "ref") -> str:
    """A row per eval prompt: its reference clip, then each pattern's ``stem_NN.wav`` per seed ('' if none)."""
    names = list(runs)
    first = next(iter(runs[names[0]].values())) / "generated"
    prompts = json.loads((first / "prompts.json").read_text()) if (first / "prompts.json").exists() else []
    what = "the clip: prompt and true continuation"
    what = "reference (through the codec, cut to the length asked)" if stem == "gen" else what
    head = "".join(f"<th>{_e(h)}</th>" for h in ["prompt", what, *names])
    clips = {r: _clips(r) if stem == "gen" else [] for seeds in runs.values() for r in seeds.values()}
    rows = []
    for i, text in enumerate(prompts):
        if not (first / f"{ref}_{i:02d}.wav").exists():  # a clip too short to continue
            continue
        cells = [f"<td class='prompt'>{_e(text)}</td>", f"<td>{_audio(out, first / f'{ref}_{i:02d}.wav')}</td>"]
        for n in names:
            players = []
            for s, r in runs[n].items():
                wav, clip = r / "generated" / f"{stem}_{i:02d}.wav", clips[r][i] if i < len(clips[r]) else None
                if wav.exists():
                    players.append(f"seed {s}<br>{_audio(out, wav, clip)}")
            cells.append("<td>" + "<br>".join(players) + "</td>")
        rows.append("<tr>" + "".join(cells) + "</tr>")
    return f"<table><tr>{head}</tr>{''.join(rows)}</table>" if rows else ""


def _samples(out: Path, runs: dict[str, dict[int, Path]]) -> str:
    sections = []
    for n, by_seed in runs.items():
        seed, run = next(iter(by_seed.items()))
        steps = sorted((run / SAMPLES).glob("step_*"), key=step_of)
        rows = []
        for folder in steps:
            wavs = sorted(folder.glob("sample_*.wav"))
            captions = [json.loads(w.with_suffix(".json").read_text())["text"] for w in wavs]
            players = "".join(f"<td><span class='prompt'>{_e(c)}</span><br>{_audio(out, w)}</td>"
                              for w, c in zip(wavs, captions, strict=True))  # fmt: skip
            rows.append(f"<tr><td>step {step_of(folder)}</td>{players}</tr>")
        sections.append(f"<h3>{_e(n)} (seed {seed})</h3><table>{''.join(rows)}</table>")
    return "".join(sections)


def write_report(out: str | Path) -> Path:
    """Plots and report.html for an ablation directory; returns the page's path."""
    out = Path(out)
    if not (out / PLAN_FILE).exists() or not (out / "summary.json").exists():
        raise AblationError(f"{out} holds no finished ablation (no {PLAN_FILE} and summary.json)")
    with stage(f"writing the report and its plots in {out}"):
        return _write_page(out)


def _write_page(out: Path) -> Path:
    plan = json.loads((out / PLAN_FILE).read_text())
    summary = json.loads((out / "summary.json").read_text())
    runs = _runs(out, plan)
    (out / "plots").mkdir(exist_ok=True)
    grids = []
    for name, delays in summary["patterns"].items():
        path = out / "plots" / f"pattern_{name}.png"
        DelayPattern.parse(delays, audio_channels=plan.get("audio_channels", 1)).plot(str(path), steps=24)
        grids.append(path)
    first = _first_run(runs)
    size = (first.get("codec") or {}).get("codebook_size")
    losses = [("train/loss", "train loss"), ("eval/loss", "eval loss")]
    entropies = [("train/entropy", "output entropy (train)"), ("eval/entropy", "output entropy (eval)")]
    per_codebook = [m for m in summary["metrics"] if m["key"].startswith("eval/loss/cb")]
    figures = [
        (plot_curves(out, runs, losses, "loss.png", size), "curves: final train loss, eval loss"),
        (plot_curves(out, runs, entropies, "entropy.png", size), "curves: output entropy (train), (eval)"),
        (plot_codebooks(out, summary), "bars: " + ", ".join(m["label"] for m in per_codebook)),
    ]
    for part, kinds in BAR_FIGURES.items():  # every other row of the tables as a bar, a figure per table
        rows = [m for m in summary["metrics"] if m not in per_codebook and m["kind"] in kinds]
        path = plot_bars(out, summary, [m["key"] for m in rows], f"metrics_{part}.png", f"{part} metrics")
        figures.append((path, f"bars ({part}): " + ", ".join(m["label"] for m in rows if _measured(m))))
    img = "".join(f"<p><img src='{_e(p.relative_to(out).as_posix())}' alt='{_e(alt)}'></p>" for p, alt in figures if p)
    unmeasured = [m["label"] for m in summary["metrics"] if not _measured(m)]
    if unmeasured:
        img += f"<p class='note'>No plot for {_e(', '.join(unmeasured))}: no run measured them (see the notes).</p>"
    grid_html = "".join(f"<p><img src='{_e(p.relative_to(out).as_posix())}'></p>" for p in grids)
    seeds = ", ".join(map(str, summary["seeds"]))
    continued = _listening(out, runs, "cont", "cont_ref")
    seconds = _e(plan.get("continuation"))
    continuations = f"<h2>Listening: continuations of the first {seconds} s</h2>\n{continued}" if continued else ""
    page = f"""<!doctype html>
<html><head><meta charset="utf-8"><title>Delay-pattern ablation</title><style>{STYLE}</style></head>
<body>
<h1>Delay-pattern ablation</h1>
{_header(out, plan, summary, runs, first)}
<p>{len(runs)} patterns x seeds {_e(seeds)}; differences against <b>{_e(summary["reference"])}</b>, paired by seed.
Interior frames: at least {summary["edge_frames"]} frames from both ends of a crop. In the plots, bars are
means over seeds with their 95% interval and the dots are the seeds.
<span id="selfcheck">not checked</span></p>
<h2>Summary</h2>
{_tables(summary)}
<h2>Curves and metrics</h2>
{img}
<h2>Listening: generations per prompt</h2>
{_listening(out, runs)}
{continuations}
<h2>Samples at checkpoints</h2>
{_samples(out, runs)}
<h2>Patterns</h2>
{grid_html}
{SELFCHECK}
</body></html>
"""
    path = out / "report.html"
    path.write_text(page)
    return path
