import json

import numpy as np

from diamusic.tracking import Tracker, read_metrics


def test_metrics_jsonl_and_resume_truncation(tmp_path):
    tracker = Tracker(tmp_path, [], {"a": 1})
    for step in (10, 20, 30):
        tracker.log({"train/loss": 1.0 / step, "note": "text is kept in jsonl"}, step)
    with tracker.path.open("a") as f:
        f.write('{"step": 40, "train/lo')  # killed mid-line
    tracker.truncate_after(20)
    tracker.log({"train/loss": 0.5}, 30)
    tracker.close()
    rows = read_metrics(tmp_path)
    assert [r["step"] for r in rows] == [10, 20, 30] and rows[-1]["train/loss"] == 0.5
    assert rows[0]["note"] == "text is kept in jsonl"


def test_disabled_tracker_writes_nothing(tmp_path):
    tracker = Tracker(tmp_path, ["tensorboard", "wandb"], {}, enabled=False)  # a non-main process
    tracker.log({"x": 1.0}, 1)
    tracker.close()
    assert list(tmp_path.iterdir()) == []


def test_wandb_offline_logs_scalars_and_audio_and_resumes_the_same_run(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    tracker = Tracker(tmp_path, ["wandb"], {"lr": 0.1}, project="p", group="g", name="n")
    tracker.log({"train/loss": 2.0}, 1)
    tracker.log_audio("demo/0", np.sin(np.linspace(0, 100, 8000)).astype(np.float32), 8000, 1, caption="c")
    tracker.close()
    run_id = (tmp_path / "wandb_id").read_text()
    runs = list((tmp_path / "wandb").glob(f"offline-run-*-{run_id}"))
    assert len(runs) == 1 and list(runs[0].glob("*.wandb")) and list(runs[0].rglob("demo/0_1_*.wav"))
    resumed = Tracker(tmp_path, ["wandb"], {"lr": 0.1})
    resumed.log({"train/loss": 1.0}, 2)
    resumed.close()
    assert (tmp_path / "wandb_id").read_text() == run_id
    assert json.loads((tmp_path / "metrics.jsonl").read_text().splitlines()[-1])["train/loss"] == 1.0
