"""Long work in every command (ingest, tune, eval runs, distillation stages) shows one bar: its
label, done / total and the task's own detail (a loss, the current file)."""

from __future__ import annotations

import io

from rich.console import Console

from llmforge.core.cli import progress_bar


def test_the_bar_shows_label_count_and_detail() -> None:
    out = io.StringIO()
    screen = Console(file=out, force_terminal=True, width=100)
    with progress_bar(on=screen, transient=False) as bar:
        task = bar.add_task("train", total=4, extra="")
        bar.update(task, completed=2, extra="loss 0.5000")
    shown = out.getvalue()
    assert "train" in shown and "2/4" in shown and "loss 0.5000" in shown
