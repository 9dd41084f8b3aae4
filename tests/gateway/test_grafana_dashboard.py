"""The Grafana dashboard in deploy/grafana/ queries only metrics the gateway exports (a renamed
metric fails here instead of leaving an empty panel), uses its data-source variable everywhere and
lays its panels out without overlaps."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from fastapi.testclient import TestClient

from llmforge.core.settings import load_settings
from llmforge.gateway import create_app

DASHBOARD = Path(__file__).parents[2] / "deploy" / "grafana" / "llmforge-dashboard.json"
SUFFIXES = ("_total", "_bucket", "_sum", "_count", "_created")


def exported(tmp_path: Path) -> set[str]:
    settings = load_settings(
        None,
        database=f"sqlite:///{tmp_path / 't.db'}",
        models=[{"name": "fake", "provider": "fake", "responses": ["ok"]}],
        embeddings=[{"name": "hash", "provider": "fake"}],
        server={"preload": False},
        observability={"drift": {"enabled": True}},
    )
    with TestClient(create_app(settings)) as client:
        text = client.get("/metrics").text
    return set(re.findall(r"^# TYPE (\w+) ", text, re.MULTILINE))


def family(name: str) -> str:
    for suffix in SUFFIXES:
        if name.endswith(suffix):
            return name.removesuffix(suffix)
    return name


def test_every_queried_metric_is_exported(tmp_path: Path) -> None:
    dashboard: dict[str, Any] = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    families = exported(tmp_path)
    targets = [t for p in dashboard["panels"] for t in p.get("targets", [])]
    assert len(targets) > 20
    queried = {m for t in targets for m in re.findall(r"\bllmforge_\w+", t["expr"])}
    unknown = sorted(m for m in queried if family(m) not in families and m not in families)
    assert unknown == [], f"not exported by the gateway: {unknown}"
    assert {"llmforge_requests", "llmforge_drift_score", "llmforge_cost_usd"} <= {
        family(m) for m in queried
    }
    for t in targets:
        assert t["expr"].count("(") == t["expr"].count(")"), t["expr"]


def test_panels_use_the_data_source_variable_and_do_not_overlap() -> None:
    dashboard: dict[str, Any] = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    names = [v["name"] for v in dashboard["templating"]["list"]]
    assert names == ["datasource", "model"]
    taken: set[tuple[int, int]] = set()
    for panel in dashboard["panels"]:
        if panel["type"] != "row":
            assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
        g = panel["gridPos"]
        cells = {
            (x, y) for x in range(g["x"], g["x"] + g["w"]) for y in range(g["y"], g["y"] + g["h"])
        }
        assert not cells & taken, panel["title"]
        assert g["x"] + g["w"] <= 24
        taken |= cells
