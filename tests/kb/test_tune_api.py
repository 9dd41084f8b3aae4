"""Tuning over HTTP (`/v1/kb/{name}/tune`, `/versions`, `/rollback`) and from the command line,
through the real app and a real `llmforge` process (hash embedder: the fusion method needs no
model)."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from fastapi.testclient import TestClient

from llmforge.core.settings import load_settings
from llmforge.gateway import create_app
from tests.cli_process import llmforge
from tests.kb.conftest import HASH_EMBEDDING
from tests.kb.test_tune import service_sheets

MASTER = "tune-master-key"


def wait_for_tune(client: TestClient, name: str, headers: dict[str, str]) -> dict[str, Any]:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        body: dict[str, Any] = client.get(f"/v1/kb/{name}/tune", headers=headers).json()
        if body["status"] != "running":
            return body
        time.sleep(0.1)
    raise AssertionError("the tune did not finish within 60 s")


def test_tune_over_http_runs_in_the_background_versions_and_rolls_back(tmp_path: Path) -> None:
    settings = load_settings(
        None,
        database=f"sqlite:///{tmp_path / 'kb-test.db'}",
        embeddings=[HASH_EMBEDDING],
        kb={"path": str(tmp_path / "kbs")},
        master_key=MASTER,
        models=[
            {
                "name": "writer",
                "provider": "fake",
                "responses": ["The fan QX-4435 takes seal kit K905."],
            }
        ],
    )
    master = {"Authorization": f"Bearer {MASTER}"}
    docs = service_sheets(tmp_path / "docs")
    with TestClient(create_app(settings)) as client:
        assert client.post("/v1/kb", json={"name": "sheets"}, headers=master).status_code == 201
        r = client.post("/v1/kb/sheets/sync", json={"paths": [str(docs)]}, headers=master)
        assert r.status_code == 200, r.text
        assert client.get("/v1/kb/sheets", headers=master).json()["version"] == 0
        r = client.get("/v1/kb/sheets/tune", headers=master)
        assert r.status_code == 404 and "POST /v1/kb/sheets/tune" in r.json()["error"]["message"]

        key = client.post("/admin/keys", json={"name": "reader"}, headers=master).json()["key"]
        reader = {"Authorization": f"Bearer {key}"}
        assert client.post("/v1/kb/sheets/tune", json={}, headers=reader).status_code == 403
        assert client.post("/v1/kb/sheets/rollback", headers=reader).status_code == 403

        r = client.post(
            "/v1/kb/sheets/tune", json={"method": "fusion", "min_gain": -1}, headers=master
        )
        assert r.status_code == 202, r.text
        assert r.json()["status"] in ("running", "accepted")
        done = wait_for_tune(client, "sheets", reader)
        assert done["status"] == "accepted", done
        assert done["report"]["version"] == 1 and done["report"]["gate"]["queries"] > 0
        assert client.get("/v1/kb/sheets", headers=reader).json()["version"] == 1
        listed = client.get("/v1/kb/sheets/versions", headers=reader).json()["data"]
        assert [(v["version"], v["status"]) for v in listed] == [(0, "retired"), (1, "active")]
        assert listed[1]["lineage"]["generator"] == "pseudo"
        r = client.post("/v1/kb/sheets/search", json={"query": "boiler filter"}, headers=reader)
        assert r.json()["fusion"] == listed[1]["fusion"]

        r = client.post("/v1/kb/sheets/rollback", headers=master)
        assert r.status_code == 200 and r.json()["version"] == 0, r.text
        assert client.get("/v1/kb/sheets", headers=reader).json()["version"] == 0

        r = client.post(
            "/v1/kb/sheets/tune", json={"method": "fusion", "min_gain": 1}, headers=master
        )
        assert r.status_code == 202
        refused = wait_for_tune(client, "sheets", master)
        assert refused["status"] == "refused" and refused["report"]["accepted"] is False
        assert "refused" in refused["report"]["message"]

        r = client.post("/v1/kb/sheets/tune", json={"queries": "model"}, headers=master)
        assert r.status_code == 400 and r.json()["error"]["param"] == "model"
        r = client.post("/v1/kb/sheets/tune", json={"sample": 3}, headers=master)
        assert r.status_code == 400
        assert client.delete("/v1/kb/sheets/tune", headers=master).status_code == 404
        r = client.post(
            "/v1/kb/sheets/search",
            json={"query": "zqxv", "k": 1, "expand": "hyde", "expand_model": "writer"},
            headers=reader,
        )
        assert r.status_code == 200, r.text
        assert r.json()["data"][0]["source"].endswith("fan-QX-4435.txt")
        r = client.post(
            "/v1/kb/sheets/search", json={"query": "zqxv", "expand": "hyde"}, headers=reader
        )
        assert r.status_code == 400 and r.json()["error"]["param"] == "expand_model"
        r = client.post("/v1/kb/sheets/rollback", json={"version": 9}, headers=master)
        assert r.status_code == 404 and "Versions you can use: 0, 1" in r.json()["error"]["message"]


CONFIG = """
database: sqlite:///{db}
embeddings:
  - name: hash
    provider: fake
kb:
  path: {kb}
"""


def test_tune_versions_and_rollback_from_the_command_line(tmp_path: Path) -> None:
    config = tmp_path / "llmforge.yaml"
    config.write_text(CONFIG.format(db=tmp_path / "cli.db", kb=tmp_path / "kbs"), encoding="utf-8")
    docs = service_sheets(tmp_path / "docs")
    base = ("-c", str(config), "kb")
    assert llmforge(*base, "ingest", str(docs), "--kb", "sheets", cwd=tmp_path).returncode == 0

    out = llmforge(
        *base, "tune", "--kb", "sheets", "--method", "fusion", "--min-gain", "-1", cwd=tmp_path
    )
    assert out.returncode == 0, out.stderr
    assert "candidate fusion" in out.stdout and "sheets: accepted fusion" in out.stdout

    labelled = tmp_path / "judged.jsonl"
    labelled.write_text('{"query": "boiler"}\n', encoding="utf-8")
    out = llmforge(*base, "tune", "--kb", "sheets", "--labelled", str(labelled), cwd=tmp_path)
    assert out.returncode == 1 and "judged.jsonl:1: not a judged query" in out.stderr

    out = llmforge(*base, "rollback", "--kb", "sheets", cwd=tmp_path)
    assert out.returncode == 0 and "now serving index version 0" in out.stdout
    registry = json.loads((tmp_path / "kbs" / "sheets" / "versions.json").read_text())
    assert [(v["version"], v["status"]) for v in registry["versions"]] == [
        (0, "active"),
        (1, "retired"),
    ]
