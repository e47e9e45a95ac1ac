import pytest

from diamusic.progress import bar, duration, stage


def test_a_stage_says_when_it_starts_and_how_long_it_took(capsys):
    with stage("fitting the codec"):
        pass
    assert capsys.readouterr().err.splitlines() == ["fitting the codec...", "fitting the codec: done in 0 s"]
    with pytest.raises(ValueError), stage("failing"):
        raise ValueError
    assert capsys.readouterr().err.splitlines() == ["failing..."]  # no "done" for what did not finish
    with stage("quiet", shown=False):
        pass
    assert capsys.readouterr().err == ""


@pytest.mark.parametrize(("seconds", "text"), [(4.4, "4 s"), (65, "1 min 05 s"), (3725, "1 h 02 min")])
def test_durations_read_as_people_say_them(seconds, text):
    assert duration(seconds) == text


def test_off_a_terminal_a_bar_writes_whole_lines_once(capsys):
    """Captured stderr is not a terminal: no carriage-return redraws, and the closing redraw is not repeated."""
    with bar(total=3, unit="step", desc="train") as steps:
        for _ in range(3):
            steps.update(1)
    err = capsys.readouterr().err
    lines = err.splitlines()
    assert "\r" not in err and lines[0].startswith("train:   0%") and lines[-1].startswith("train: 100%")
    assert len(lines) == len(set(lines)) == 2  # the first and the last state: updates come under 30 s apart
    with bar(shown=False, total=3) as hidden:
        hidden.update(3)
    assert capsys.readouterr().err == ""


def test_a_bar_whose_last_update_was_shown_does_not_repeat_it_when_it_closes(monkeypatch, capsys):
    from diamusic import progress

    monkeypatch.setattr(progress, "LOG_INTERVAL_SECONDS", 0)  # as if every update came after the interval
    with bar(total=2, unit="input", desc="prepare", bar_format="{desc}: {n_fmt}/{total_fmt}") as inputs:
        inputs.update(1)
        inputs.update(1)
    assert capsys.readouterr().err.splitlines() == ["prepare: 0/2", "prepare: 1/2", "prepare: 2/2"]
