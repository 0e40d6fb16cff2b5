"""plumbing.runs: the run directory's names and the trainer's exit codes, spelled once."""

from __future__ import annotations

from plumbing import runs
from plumbing.runs import RunLayout, latest_in


def test_the_layout_of_a_run(tmp_path):
    run = RunLayout(tmp_path)
    assert [
        p.relative_to(tmp_path).as_posix()
        for p in (run.config, run.job, run.logs, run.checkpoints, run.latest, run.metrics, run.tensorboard, run.done)
    ] == ["config.json", "job", "logs", "checkpoints", "checkpoints/latest", "metrics.csv", "tensorboard", "done"]
    assert not run.is_done() and run.latest_checkpoint() is None
    run.checkpoints.mkdir()
    run.latest.write_text("step_00000010.pt\n")
    assert run.latest_checkpoint() == run.checkpoints / "step_00000010.pt" == latest_in(run.checkpoints)
    run.done.write_text("{}\n")
    assert run.is_done()


def test_exit_codes():
    assert (runs.EXIT_FINISHED, runs.EXIT_USAGE, runs.EXIT_RESUME) == (0, 2, 75)  # 75 = EX_TEMPFAIL (sysexits.h)
