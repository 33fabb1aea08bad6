"""Long work shows progress: a bar on a terminal, a plain line now and then in a log, nothing from the API unasked."""

from rnp import progress as progress_module
from rnp.progress import LogProgress, progress, quiet


def test_in_a_log_progress_is_a_line_now_and_then_with_the_latest_figures(capsys, monkeypatch):
    monkeypatch.setattr(progress_module.sys.stderr, "isatty", lambda: False)
    assert isinstance(progress(None, "train", total=3), LogProgress)  # nohup, SLURM, CI: no bar
    bar = LogProgress(None, "train", total=3, every=0.0)  # every update is due
    for epoch in range(3):
        bar.set_postfix(loss=f"{1 / (epoch + 1):.3f}")
        bar.update()
    assert capsys.readouterr().err.splitlines() == [
        "train: 1/3, loss 1.000 (0m00s)", "train: 2/3, loss 0.500 (0m00s)", "train: 3/3, loss 0.333 (0m00s)"]
    assert list(LogProgress(range(4), "prune", every=0.0)) == [0, 1, 2, 3]  # iterating passes the items through
    assert capsys.readouterr().err.splitlines()[-1] == "prune: 4/4 (0m00s)"


def test_short_work_and_the_quiet_bar_print_nothing(capsys):
    quick = LogProgress(range(50), "prune")  # done within the minute: the log keeps only the summary line
    assert sum(quick) == sum(range(50)) and quick.n == 50
    silent = quiet(None, "unlearn", 5)
    for _ in range(5):
        silent.update()
    assert silent.n == 5 and capsys.readouterr().err == ""
