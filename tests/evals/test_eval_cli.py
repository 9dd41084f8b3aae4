"""`llmforge eval` as a user runs it: real processes, real config files and databases, exit codes,
and a run killed half-way then resumed."""

from __future__ import annotations

import json
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.cli_process import llmforge

CONFIG = """
database: sqlite:///{db}
models:
  - name: fake
    provider: fake
    responses: ["Paris"]
  - name: slow
    provider: fake
    responses: ["alpha beta gamma"]
    delay_s: 0.15
  - name: judge
    provider: fake
    responses: ['{{"reasoning": "fine", "score": 4}}']
embeddings:
  - name: hash
    provider: fake
"""


@pytest.fixture
def setup(tmp_path: Path) -> tuple[Path, Path]:
    config = tmp_path / "llmforge.yaml"
    config.write_text(CONFIG.format(db=tmp_path / "evals.db"), encoding="utf-8")
    data = tmp_path / "qa.jsonl"
    data.write_text(
        '{"id": "fr", "input": "Capital of France?", "expected": "Paris"}\n'
        '{"id": "it", "input": "Capital of Italy?", "expected": "Rome"}\n',
        encoding="utf-8",
    )
    return config, data


def test_the_gate_passes_fails_and_errors_with_distinct_exit_codes(
    setup: tuple[Path, Path], tmp_path: Path
) -> None:
    config, data = setup
    base = ["eval", "run", str(data), "--model", "fake", "--config", str(config)]
    ok = llmforge(*base, "--fail-under", "exact_match=0.5", "--json", cwd=tmp_path)
    assert ok.returncode == 0, ok.stderr
    summary = json.loads(ok.stdout)["summary"]
    assert summary["exact_match"]["mean"] == 0.5  # "Paris" right for fr, wrong for it

    failed = llmforge(*base, "--fail-under", "exact_match=0.9", cwd=tmp_path)
    assert failed.returncode == 3
    assert "gate failed: exact_match: 0.5000 < 0.9" in failed.stderr

    bad = llmforge(*base, "--fail-under", "bleu=0.5", cwd=tmp_path)
    assert bad.returncode == 1
    assert bad.stderr.strip().startswith("error: --fail-under 'bleu=0.5'")
    assert "Traceback" not in bad.stderr


def test_bad_inputs_are_one_line_errors(setup: tuple[Path, Path], tmp_path: Path) -> None:
    config, data = setup
    bad_data = tmp_path / "bad.jsonl"
    bad_data.write_text('{"input": "ok"}\n{"inptu": "typo"}\n', encoding="utf-8")
    out = llmforge("eval", "run", str(bad_data), "--model", "fake", "-c", str(config), cwd=tmp_path)
    assert out.returncode == 1 and "bad.jsonl line 2: input: Field required" in out.stderr
    out = llmforge("eval", "run", str(data), "--model", "nope", "-c", str(config), cwd=tmp_path)
    assert out.returncode == 1 and "The model 'nope' does not exist" in out.stderr
    out = llmforge(
        "eval",
        "run",
        str(data),
        "-m",
        "fake",
        "--metrics",
        "rubric",
        "-c",
        str(config),
        cwd=tmp_path,
    )
    assert out.returncode == 1 and "rubric: needs a judge; pass --judge NAME" in out.stderr


def test_a_killed_run_resumes_without_duplicates(setup: tuple[Path, Path], tmp_path: Path) -> None:
    config, _ = setup
    data = tmp_path / "many.jsonl"
    data.write_text(
        "".join(
            f'{{"id": "q{i}", "input": "question {i}", "expected": "alpha"}}\n' for i in range(8)
        ),
        encoding="utf-8",
    )
    cmd = [sys.executable, "-m", "llmforge", "eval", "run", str(data), "--model", "slow"]
    cmd += ["--concurrency", "1", "--run-id", "resume-me", "--config", str(config)]
    proc = subprocess.Popen(cmd, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    db = tmp_path / "evals.db"

    def stored() -> list[tuple[str, float]]:
        if not db.exists():
            return []
        with sqlite3.connect(db) as conn:
            try:
                return conn.execute(
                    "SELECT case_id, created_at FROM eval_results WHERE run_id = 'resume-me'"
                ).fetchall()
            except sqlite3.OperationalError:
                return []

    deadline = time.time() + 60
    while len(stored()) < 2 and time.time() < deadline and proc.poll() is None:
        time.sleep(0.1)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    before = dict(stored())
    assert 2 <= len(before) < 8, "the run should have been killed half-way"

    again = llmforge(*cmd[3:], "--json", cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    info = json.loads(again.stdout)
    assert info["status"] == "done" and info["done"] == 8
    after = stored()
    assert len(after) == 8 and len({cid for cid, _ in after}) == 8
    assert all(dict(after)[cid] == t for cid, t in before.items())  # stored cases not redone
    assert (
        info["summary"]["exact_match"]["mean"] == 0.0 and info["summary"]["token_f1"]["scored"] == 8
    )


def test_list_compare_and_report(setup: tuple[Path, Path], tmp_path: Path) -> None:
    config, data = setup
    for model, rid in (("fake", "a"), ("judge", "b")):
        out = llmforge(
            "eval", "run", str(data), "-m", model, "--run-id", rid, "-c", str(config), cwd=tmp_path
        )
        assert out.returncode == 0, out.stderr
    listed = json.loads(llmforge("eval", "list", "--json", "-c", str(config), cwd=tmp_path).stdout)
    assert {r["id"] for r in listed} == {"a", "b"}
    assert all(r["cases"] == "2/2" and r["status"] == "done" for r in listed)

    cmp = llmforge("eval", "compare", "a", "b", "--json", "-c", str(config), cwd=tmp_path)
    assert cmp.returncode == 0, cmp.stderr
    deltas = {m["metric"]: m for m in json.loads(cmp.stdout)["metrics"]}
    assert deltas["exact_match"]["delta"] == -0.5 and deltas["exact_match"]["pairs"] == 2

    html, exported = tmp_path / "r.html", tmp_path / "r.json"
    rep = llmforge(
        "eval", "report", "b", "-o", str(html), "--json-out", str(exported),
        "--compare-to", "a", "-c", str(config), cwd=tmp_path,
    )  # fmt: skip
    assert rep.returncode == 0, rep.stderr
    assert '<svg class="chart deltas"' in html.read_text(encoding="utf-8")
    assert json.loads(exported.read_text(encoding="utf-8"))["comparison"]["run_a"] == "a"

    missing = llmforge("eval", "compare", "a", "zzz", "-c", str(config), cwd=tmp_path)
    assert missing.returncode == 1 and "No evaluation run 'zzz'" in missing.stderr


def test_judge_metric_through_the_cli(setup: tuple[Path, Path], tmp_path: Path) -> None:
    config, data = setup
    out = llmforge(
        "eval", "run", str(data), "-m", "fake", "--metrics", "exact_match,rubric",
        "--judge", "judge", "--samples", "2", "--json", "-c", str(config), cwd=tmp_path,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    summary = json.loads(out.stdout)["summary"]
    assert summary["rubric"]["mean"] == 0.75 and summary["rubric"]["errors"] == 0


def test_dataset_from_traces_writes_a_loadable_dataset(
    setup: tuple[Path, Path], tmp_path: Path
) -> None:
    from llmforge.core.db import open_engine
    from llmforge.traces import Trace, TraceStore

    config, _ = setup
    store = TraceStore(open_engine(f"sqlite:///{tmp_path / 'evals.db'}"))
    store.write(
        [
            Trace(
                model="fake",
                request={"messages": [{"role": "user", "content": "Hi?"}]},
                output="Hello",
            ),
            Trace(
                model="other", request={"messages": [{"role": "user", "content": "X?"}]}, output="Y"
            ),
        ]
    )
    store.engine.dispose()
    out_path = tmp_path / "from_traces.jsonl"
    out = llmforge(
        "eval", "dataset", "from-traces", str(out_path), "--model", "fake", "--since", "1d",
        "-c", str(config), cwd=tmp_path,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    lines = [json.loads(line) for line in out_path.read_text(encoding="utf-8").splitlines()]
    assert [(c["input"][0]["content"], c["expected"]) for c in lines] == [("Hi?", "Hello")]


def test_a_knowledge_bases_retrieval_is_scored_and_gated(tmp_path: Path) -> None:
    config = tmp_path / "llmforge.yaml"
    config.write_text(
        f"database: sqlite:///{tmp_path / 'kb.db'}\n"
        f"embeddings: [{{name: words, provider: fake, dimensions: 512}}]\n"
        f"kb: {{path: {tmp_path / 'kbs'}}}\n",
        encoding="utf-8",
    )
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "pump.md").write_text("# Pump\n\nReplace the impeller seals every 2000 hours.\n")
    (docs / "garden.md").write_text("# Garden\n\nWater the orchids twice a week.\n")
    ingested = llmforge("kb", "ingest", str(docs), "--kb", "docs", "-c", str(config), cwd=tmp_path)
    assert ingested.returncode == 0, ingested.stderr
    data = tmp_path / "retrieval.jsonl"
    data.write_text(
        '{"id": "seals", "input": "impeller seals hours", "relevant": ["pump.md"]}\n'
        '{"id": "orchids", "input": "orchids water week", "relevant": ["garden.md"]}\n',
        encoding="utf-8",
    )
    base = ["eval", "run", str(data), "--kb", "docs", "--k", "1", "-c", str(config), "--json"]
    run = llmforge(*base, "--fail-under", "recall_at_k=1", cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    summary = json.loads(run.stdout)["summary"]
    assert summary["recall_at_k"]["mean"] == 1.0 and summary["mrr"]["mean"] == 1.0
    unknown = llmforge("eval", "run", str(data), "--kb", "nope", "-c", str(config), cwd=tmp_path)
    assert unknown.returncode == 1 and "Unknown knowledge base 'nope'" in unknown.stderr
