"""Live progress: computed from results rows, printed as lines (plain) or a redrawn block (TTY)."""

from __future__ import annotations

import io

from slimtune.search import format_progress, progress
from slimtune.search.driver.progress import Reporter, size_budgets

OBJ = {"accuracy": "max", "size_bytes": "min"}


def rows():
    return [
        {"trial_id": "a", "trial_number": 0, "status": "ok", "accuracy": 0.9, "size_bytes": 5000, "feasible": True},
        {"trial_id": "b", "trial_number": 1, "status": "ok", "accuracy": 0.8, "size_bytes": 900, "feasible": True},
        {"trial_id": "c", "trial_number": 2, "status": "ok", "accuracy": 0.7, "size_bytes": 4000, "feasible": True},
        {"trial_id": "d", "trial_number": 3, "status": "failed", "error": "ValueError: x"},
    ]


def test_progress_counts_front_and_budgets():
    p = progress(rows(), OBJ, budget=10, running=2, elapsed_s=40.0)
    assert (p.ok, p.failed, p.running, p.finished, p.budget) == (3, 1, 2, 4, 10)
    assert p.front_size == 2  # a and b; c is dominated by b (more accurate and smaller)
    assert p.eta_s == 60.0  # 10 s per finished trial, 6 left
    assert dict(p.best_under) == {1024: 0.8, 4096: 0.8, 16384: 0.9}
    text = "\n".join(format_progress(p))
    assert "4/10 finished" in text and "front 2" in text and "0.9000 under 16 KiB" in text


def test_size_budgets_span_the_sizes():
    assert size_budgets([900, 5000]) == [1024, 4096, 16384][-4:]
    assert size_budgets([]) == []


def test_plain_reporter_prints_one_line_per_trial():
    out = io.StringIO()
    r = Reporter(OBJ, budget=4, stream=out)
    rs = rows()
    for i, row in enumerate(rs):
        r.trial_ended(row, rs[: i + 1], running=0)
        r.tick(rs[: i + 1], running=0)  # no redraw when not a terminal
    lines = out.getvalue().splitlines()
    assert len(lines) == 4
    assert lines[-1].startswith("[4/4 trained") and lines[-1].endswith("] trial 3 failed: ValueError: x")
    assert "\x1b" not in out.getvalue()


def test_terminal_reporter_redraws_in_place():
    class Tty(io.StringIO):
        def isatty(self):
            return True

    out = Tty()
    r = Reporter(OBJ, budget=4, stream=out)
    rs = rows()
    r.trial_ended(rs[0], rs[:1], running=1)
    r.trial_ended(rs[1], rs[:2], running=1)
    text = out.getvalue()
    assert "\x1b[" in text and "F\x1b[J" in text  # cursor up + clear before the redraw
    assert text.count("trials ") == 2


def test_plain_on_a_terminal_prints_lines_only():
    class Tty(io.StringIO):
        def isatty(self):
            return True

    out = Tty()
    r = Reporter(OBJ, budget=4, plain=True, stream=out)
    r.trial_ended(rows()[0], rows()[:1], running=0)
    assert out.getvalue().count("\n") == 1 and "\x1b" not in out.getvalue()


def test_a_failed_trial_is_one_line_that_names_its_traceback_file():
    out = io.StringIO()
    r = Reporter(OBJ, budget=4, stream=out, locate=lambda rel: f"s3://bucket/run/{rel}")
    row = {"trial_id": "e", "trial_number": 4, "status": "failed", "error": "ValueError: two\nlines",
           "traceback": "errors/trial-4.txt"}
    r.trial_ended(row, [*rows(), row], running=0)
    lines = out.getvalue().splitlines()
    assert len(lines) == 1
    assert lines[0].endswith("] trial 4 failed: ValueError: two lines (traceback: s3://bucket/run/errors/trial-4.txt)")
