"""The listening report: plots and one HTML page that a browser opens from disk with everything loaded."""

import html
import json
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from diamusic.report import spectrogram, write_report


@pytest.mark.integration
def test_report_writes_plots_and_links_every_file(small_ablation):
    page = write_report(small_ablation)
    text = page.read_text()
    figures = ("loss.png", "entropy.png", "codebooks.png", "metrics_primary.png", "metrics_exploratory.png")
    for name in (*figures, "pattern_dia.png", "pattern_musicgen.png"):
        assert (small_ablation / "plots" / name).stat().st_size > 5000, name
        assert f"plots/{name}" in text
    sources = re.findall(r"src='([^']+)'", text)
    assert sources and all((small_ablation / s).exists() for s in sources)  # relative paths, nothing remote
    assert "http://" not in text and "https://" not in text
    # 2 prompts x (reference + 2 patterns x 2 seeds), and 2 demo steps x 2 prompts per pattern
    assert len(re.findall(r"<audio ", text)) == 2 * (1 + 2 * 2) + 2 * 2 * 2
    # each clip with its spectrogram; the references as long as the generations asked for (0.3 s), not the
    # whole eval clip
    assert len(re.findall(r"<img class='spec' ", text)) == len(re.findall(r"<audio ", text))
    for ref in (small_ablation / "runs" / "dia" / "seed0" / "generated").glob("ref_*.wav"):
        assert sf.info(str(ref)).duration == pytest.approx(0.3, abs=1e-3), ref
    # the summary's sections, as in summary.md: the primary claims first, decode steps exact (nothing
    # stopped on EOS in 0.3 s), and every cell of summary.md's tables on the page
    assert re.findall(r"<h3>([^<]*)</h3>", text)[:2] == ["Primary", "Exploratory"]
    summary_md = (small_ablation / "summary.md").read_text()
    for line in summary_md.splitlines():
        if line.startswith("| ") and not line.startswith("| metric"):
            for cell in line.strip("| ").split(" | "):
                assert html.escape(cell) in text, cell


def chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


@pytest.mark.integration
def test_report_loads_in_a_headless_browser(small_ablation, tmp_path):
    browser = chromium()
    if browser is None:
        pytest.skip("no chromium here: `make test` installs Debian's chromium where it can (apt-get as root)")
    page = write_report(small_ablation)
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--autoplay-policy=no-user-gesture-required",
             "--virtual-time-budget=8000", "--allow-file-access-from-files"]  # fmt: skip
    dom = subprocess.run([browser, *flags, "--dump-dom", page.as_uri()], capture_output=True, text=True, timeout=120)
    check = re.search(r'id="selfcheck">([^<]*)<', dom.stdout)
    assert check, dom.stderr[-2000:]
    counts = re.fullmatch(r"images (\d+) failed (\d+); audio (\d+) failed (\d+)", check.group(1))
    assert counts, check.group(1)
    images, bad_images, audios, bad_audio = map(int, counts.groups())
    assert images >= 6 and bad_images == 0 and audios == 18 and bad_audio == 0
    # the primary table has one column per pattern (plus the metric, the difference and the winner; no
    # note column where no row has a note)
    header = re.search(r"<table><tbody><tr>(.*?)</tr>", dom.stdout).group(1)
    assert re.findall(r"<th>([^<]*)</th>", header) == ["metric", "dia", "musicgen", "musicgen - dia", "winner"]
    shot = tmp_path / "report.png"
    subprocess.run([browser, *flags, "--window-size=1400,2400", f"--screenshot={shot}", page.as_uri()],
                   capture_output=True, timeout=120)  # fmt: skip
    assert shot.stat().st_size > 20_000
    summary = json.loads((small_ablation / "summary.json").read_text())
    assert list(summary["patterns"]) == ["dia", "musicgen"]
    # the header: what was run, as the run folders and the dataset's card record it
    facts = dict(re.findall(r"<tr><th>([^<]*)</th><td>([^<]*)</td></tr>", dom.stdout))
    assert facts["patterns"] == "dia [0,8,9,10,11,12,13,14,15]; musicgen [0,1,2,3,4,5,6,7,8]"
    assert facts["seeds"] == "0, 1" and facts["optimizer steps"].startswith("4 per run, batch 2 x 1")
    run = json.loads((small_ablation / "runs" / "dia" / "seed0" / "run.json").read_text())
    assert facts["model"] == f"tiny, {run['parameters']['total'] / 1e6:.2f} M parameters, scratch"
    card = json.loads((Path(run["dataset"]) / "card.json").read_text())
    assert facts["data"] == f"{run['dataset']}: {card['clips']} clips, {card['hours']:.2f} h"
    assert facts["codec"] == f"spectral-rvq, 9 codebooks x 32 codes, {card['codec']['frame_rate']:.1f} frames/s"
    frames = round(0.3 * card["codec"]["frame_rate"])  # the length asked, in seconds and the frames it makes
    asked = f"{frames / card['codec']['frame_rate']:.1f} s ({frames} frames)"
    assert facts["diamusic"] == run["code_version"]
    assert facts["evaluation"] == f"2 generation(s) of up to {asked} per run"
    for link in ("summary.md", "summary.json", "ablation.json", "runs/dia/seed0/", "runs/musicgen/seed1/"):
        assert f'href="{link}"' in dom.stdout, link
    # each generation says how long it is and how it ended, as its run's generated/clips.json records
    endings = re.findall(r"(\d+\.\d) s, (stopped on EOS|cut at the length asked)", dom.stdout)
    assert len(endings) == 2 * 2 * 2  # patterns x seeds x prompts
    clips = json.loads((small_ablation / "runs" / "dia" / "seed0" / "generated" / "clips.json").read_text())
    assert len(clips) == 2 and all(0 < c["seconds"] <= 0.3 + 0.05 for c in clips)
    # every row of the tables has a figure (named in its alt text), or a note of why it has none
    shown = " | ".join(html.unescape(a) for a in re.findall(r'<img src="plots/[^"]*" alt="([^"]*)"', dom.stdout))
    unplotted = re.search(r'<p class="note">No plot for ([^<]*):', dom.stdout)
    for metric in summary["metrics"]:
        assert metric["label"] in shown or (unplotted and metric["label"] in html.unescape(unplotted.group(1))), metric


def test_a_metric_no_seed_of_a_pattern_measured_is_drawn_without_its_dots(tmp_path):
    """A pattern whose every clip was unvoiced has no in-key ratio in any seed (nan): its bar and dots are
    left out, not the whole report (matplotlib refused dots that are all nan on a named axis)."""
    from diamusic.report import plot_bars

    nan = float("nan")
    metric = {"key": "gen/in_key_ratio", "label": "in-key ratio", "lower_is_better": False,
              "per_pattern": {"musicgen": {"mean": nan, "low": nan, "high": nan, "n": 0},
                              "dia": {"mean": 0.9, "low": 0.5, "high": 1.3, "n": 2}},
              "per_seed": {"musicgen": [nan, nan], "dia": [1.0, 0.8]}}  # fmt: skip
    summary = {"patterns": {"musicgen": [], "dia": []}, "metrics": [metric]}
    (tmp_path / "plots").mkdir()
    path = plot_bars(tmp_path, summary, ["gen/in_key_ratio"], "bars.png")
    assert path is not None and path.stat().st_size > 1000


def test_a_spectrogram_puts_a_tone_in_its_band_and_compares_loudness_across_clips(tmp_path):
    """Low notes at the bottom, high ones above them; one colour scale for every clip, so a tone 40 dB down is
    darker than the same tone at full scale, and silence is the scale's bottom colour everywhere."""
    from matplotlib.image import imread

    rate, t = 44100, np.arange(44100) / 44100

    def brightness(name: str, wave: np.ndarray) -> np.ndarray:
        sf.write(tmp_path / f"{name}.wav", wave.astype(np.float32), rate)
        image = imread(spectrogram(tmp_path / f"{name}.wav", tmp_path / f"{name}.png"))
        return image[::-1, :, :3].sum(-1).mean(1)  # per band, lowest first

    low = brightness("low", 0.9 * np.sin(2 * np.pi * 220 * t))
    high = brightness("high", 0.9 * np.sin(2 * np.pi * 3520 * t))
    quiet = brightness("quiet", 0.009 * np.sin(2 * np.pi * 220 * t))
    silent = brightness("silent", np.zeros_like(t))
    assert np.argmax(low) < np.argmax(high)
    assert quiet.max() < low.max() - 0.5
    assert np.ptp(silent) == 0 and silent.max() < quiet.min() + 1e-6
