"""The knowledge-base HTTP API (`/v1/kb/...`) through the real ASGI app, with real files."""

from __future__ import annotations

import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient

from llmforge.core.settings import load_settings
from llmforge.gateway import create_app
from tests.fakes.server import serve
from tests.kb.conftest import (
    HASH_EMBEDDING,
    make_settings,
    minilm,
    tiny_cross_encoder,
    write_html,
    write_markdown,
)

MASTER = "kb-master-key"


@pytest.fixture
def client(tmp_path: Path) -> Iterator[TestClient]:
    with TestClient(create_app(make_settings(tmp_path))) as c:
        yield c


def files_of(folder: Path) -> list[tuple[str, tuple[str, bytes]]]:
    """Real files as multipart parts: markdown, HTML, plain text and an unsupported PNG."""
    folder.mkdir(parents=True, exist_ok=True)
    md = write_markdown(folder / "pump.md")
    html = write_html(folder / "garden.html")
    txt = folder / "bikes.txt"
    txt.write_text("Bicycle chains need oil after riding in the rain.\n", encoding="utf-8")
    parts = [("files", (p.name, p.read_bytes())) for p in (md, html, txt)]
    parts.append(("files", ("photo.png", b"\x89PNG\r\n\x1a\n")))
    return parts


def assert_error(r: httpx.Response, status: int, param: str | None = None) -> dict[str, Any]:
    assert r.status_code == status, r.text
    error: dict[str, Any] = r.json()["error"]
    assert error["message"]
    if param is not None:
        assert error["param"] == param
    return error


def test_create_upload_search_fetch_delete(client: TestClient, tmp_path: Path) -> None:
    r = client.post("/v1/kb", json={"name": "manuals"})
    assert r.status_code == 201, r.text
    assert r.json()["name"] == "manuals" and r.json()["documents"] == 0

    r = client.post("/v1/kb/manuals/documents", files=files_of(tmp_path / "src"))
    assert r.status_code == 200, r.text
    results = {f["filename"]: f for f in r.json()["files"]}
    assert {n: f["status"] for n, f in results.items()} == {
        "pump.md": "added",
        "garden.html": "added",
        "bikes.txt": "added",
        "photo.png": "skipped",
    }
    assert "unsupported file type" in results["photo.png"]["error"]
    uploads = tmp_path / "kbs" / "manuals" / "uploads"
    assert sorted(p.name for p in uploads.iterdir()) == ["bikes.txt", "garden.html", "pump.md"]
    assert results["pump.md"]["source"] == str((uploads / "pump.md").resolve())

    docs = client.get("/v1/kb/manuals/documents").json()["data"]
    assert sorted(d["title"] for d in docs) == ["Garden Guide", "Pump Manual", "bikes"]
    assert [kb["name"] for kb in client.get("/v1/kb").json()["data"]] == ["manuals"]
    info = client.get("/v1/kb/manuals").json()
    assert info["documents"] == 3 and info["chunks"] >= 3 and info["ingesting"] is None

    r = client.post("/v1/kb/manuals/search", json={"query": "impeller seals", "k": 2})
    assert r.status_code == 200, r.text
    body = r.json()
    assert len(body["data"]) == 2 and body["k"] == 2  # exactly k: there are more chunks
    top = body["data"][0]
    assert top["title"] == "Pump Manual" and "impeller seals" in top["text"]
    assert body["reranked"] is False and "stages" not in body

    detailed = client.post(
        "/v1/kb/manuals/search", json={"query": "orchids", "k": 1, "detailed": True}
    ).json()
    assert [s["name"] for s in detailed["stages"]] == ["dense", "bm25", "fusion"]
    assert detailed["data"][0]["title"] == "Garden Guide"
    fed = client.post(
        "/v1/kb/manuals/search",
        json={"query": "orchids", "k": 1, "detailed": True, "feedback": 2},
    ).json()
    assert [s["name"] for s in fed["stages"]] == ["dense", "feedback", "bm25", "fusion"]
    assert fed["data"][0]["title"] == "Garden Guide"

    filtered = client.post(
        "/v1/kb/manuals/search",
        json={"query": "oil chains", "k": 5, "filters": {"file_types": ["txt"]}},
    ).json()["data"]
    assert filtered and {h["file_type"] for h in filtered} == {"txt"}

    chunk = client.get(f"/v1/kb/manuals/chunks/{top['chunk_id']}").json()
    assert chunk["id"] == top["chunk_id"] and chunk["text"] == top["text"]
    assert chunk["source"] == top["source"] and chunk["kb"] == "manuals"

    r = client.delete("/v1/kb/manuals")
    assert r.status_code == 200 and r.json()["deleted"] is True
    assert_error(client.get("/v1/kb/manuals"), 404)
    assert not (tmp_path / "kbs" / "manuals").exists()
    assert client.get("/v1/kb").json()["data"] == []


def test_sync_picks_up_changed_and_deleted_uploads(client: TestClient, tmp_path: Path) -> None:
    client.post("/v1/kb", json={"name": "notes"})
    r = client.post("/v1/kb/notes/documents", files=files_of(tmp_path / "src"))
    bikes = Path(next(f["source"] for f in r.json()["files"] if f["filename"] == "bikes.txt"))

    r = client.post("/v1/kb/notes/sync")
    assert r.status_code == 200, r.text
    assert len(r.json()["unchanged"]) == 3 and r.json()["chunks_embedded"] == 0

    bikes.write_text("Tandem bicycles seat two riders on one frame.\n", encoding="utf-8")
    (bikes.parent / "garden.html").unlink()
    report = client.post("/v1/kb/notes/sync", json={}).json()
    assert report["updated"] == [str(bikes)]
    assert [Path(p).name for p in report["removed"]] == ["garden.html"]
    assert report["chunks_embedded"] >= 1

    hits = client.post("/v1/kb/notes/search", json={"query": "tandem riders", "k": 1}).json()
    assert "Tandem bicycles" in hits["data"][0]["text"]
    titles = {d["title"] for d in client.get("/v1/kb/notes/documents").json()["data"]}
    assert titles == {"Pump Manual", "bikes"}


def test_re_uploading_a_file_updates_it(client: TestClient, tmp_path: Path) -> None:
    client.post("/v1/kb", json={"name": "notes"})
    first = [("files", ("a.md", b"# Alpha\n\nThe first version mentions walruses.\n"))]
    second = [("files", ("a.md", b"# Alpha\n\nThe second version mentions pelicans.\n"))]
    assert (
        client.post("/v1/kb/notes/documents", files=first).json()["files"][0]["status"] == "added"
    )
    again = client.post("/v1/kb/notes/documents", files=first).json()
    assert again["files"][0]["status"] == "unchanged"
    assert client.post("/v1/kb/notes/documents", files=second).json()["files"][0]["status"] == (
        "updated"
    )
    hit = client.post("/v1/kb/notes/search", json={"query": "pelicans", "k": 5}).json()["data"]
    assert len(hit) == 1 and "pelicans" in hit[0]["text"]  # the old version is gone


def test_bad_requests_get_clear_4xx_errors(client: TestClient, tmp_path: Path) -> None:
    assert (
        "Unknown knowledge base 'nope'" in assert_error(client.get("/v1/kb/nope"), 404)["message"]
    )
    assert_error(client.post("/v1/kb/nope/search", json={"query": "x"}), 404)
    assert_error(client.post("/v1/kb/nope/documents", files=files_of(tmp_path / "s")), 404)
    assert_error(client.get("/v1/kb/nope/documents"), 404)
    assert_error(client.delete("/v1/kb/nope"), 404)

    assert_error(client.post("/v1/kb", json={"name": "../etc"}), 400)
    assert_error(client.post("/v1/kb", json={}), 400, "name")
    client.post("/v1/kb", json={"name": "docs"})
    assert (
        "already exists"
        in assert_error(client.post("/v1/kb", json={"name": "docs"}), 400)["message"]
    )

    assert_error(client.post("/v1/kb/docs/search", json={"query": "   "}), 400, "query")
    assert_error(client.post("/v1/kb/docs/search", json={"query": "x", "k": 0}), 400, "k")
    assert_error(client.post("/v1/kb/docs/search", json={"query": "x", "k": 5000}), 400, "k")
    assert_error(client.post("/v1/kb/docs/search", json={"query": "x", "top": 3}), 400, "top")
    bad = {"query": "x", "feedback": 51}
    assert_error(client.post("/v1/kb/docs/search", json=bad), 400, "feedback")
    assert_error(client.get("/v1/kb/docs/chunks/0123abcd"), 404)

    assert_error(client.post("/v1/kb/docs/documents", json={"files": []}), 400, "files")
    r = client.post("/v1/kb/docs/documents", files=[("files", (".env", b"SECRET=1"))])
    assert r.json()["files"][0]["status"] == "failed"
    assert not (tmp_path / "kbs" / "docs" / "uploads" / ".env").exists()
    sneaky = [("files", ("../../escape.md", b"# Escape\n\nA file trying to leave its folder.\n"))]
    stored = client.post("/v1/kb/docs/documents", files=sneaky).json()["files"][0]
    assert stored["status"] == "added" and stored["filename"] == "escape.md"
    assert Path(stored["source"]).parent == (tmp_path / "kbs" / "docs" / "uploads").resolve()
    too_many = [("files", (f"n{i}.txt", b"x")) for i in range(101)]
    r = client.post("/v1/kb/docs/documents", files=too_many)
    assert "Maximum number of files is 100" in assert_error(r, 400)["message"]
    assert not (tmp_path / "kbs" / "docs" / "uploads" / "n0.txt").exists()

    # reading the server's disk needs the master key, which is not configured here
    r = client.post("/v1/kb/docs/sync", json={"paths": [str(tmp_path)]})
    assert "LLMFORGE_MASTER_KEY" in assert_error(r, 403, "paths")["message"]


def test_keys_read_and_only_the_master_key_writes(tmp_path: Path) -> None:
    settings = load_settings(
        None,
        database=f"sqlite:///{tmp_path / 'kb-test.db'}",
        embeddings=[HASH_EMBEDDING],
        kb={"path": str(tmp_path / "kbs")},
        master_key=MASTER,
    )
    master = {"Authorization": f"Bearer {MASTER}"}
    with TestClient(create_app(settings)) as client:
        assert_error(client.get("/v1/kb"), 401)
        assert_error(client.post("/v1/kb", json={"name": "docs"}), 401)
        assert_error(client.post("/v1/kb/docs/search", json={"query": "x"}), 401)
        assert_error(client.post("/mcp", json={}), 401)

        assert client.post("/v1/kb", json={"name": "docs"}, headers=master).status_code == 201
        key = client.post("/admin/keys", json={"name": "reader"}, headers=master).json()["key"]
        reader = {"Authorization": f"Bearer {key}"}
        assert client.get("/v1/kb", headers=reader).status_code == 200
        assert_error(client.post("/v1/kb", json={"name": "mine"}, headers=reader), 403)
        assert_error(client.delete("/v1/kb/docs", headers=reader), 403)
        assert_error(client.post("/v1/kb/docs/sync", headers=reader), 403)
        r = client.post("/v1/kb/docs/documents", files=files_of(tmp_path / "s"), headers=reader)
        assert_error(r, 403)

        # the master key syncs a server folder; a missing or relative path is refused
        folder = tmp_path / "server-docs"
        folder.mkdir()
        write_markdown(folder / "pump.md")
        r = client.post("/v1/kb/docs/sync", json={"paths": [str(folder)]}, headers=master)
        assert r.status_code == 200, r.text
        assert r.json()["added"] == [str((folder / "pump.md").resolve())]
        r = client.post(
            "/v1/kb/docs/sync", json={"paths": [str(tmp_path / "missing")]}, headers=master
        )
        assert "No such file or folder" in assert_error(r, 404)["message"]
        assert_error(
            client.post("/v1/kb/docs/sync", json={"paths": ["relative/dir"]}, headers=master),
            400,
            "paths",
        )

        r = client.post("/v1/kb/docs/search", json={"query": "impeller", "k": 1}, headers=reader)
        assert r.json()["data"][0]["title"] == "Pump Manual"


def test_semantic_search_with_the_real_embedder(tmp_path: Path, onnx_cache: Path) -> None:
    """MiniLM finds a passage by meaning: the query shares no content word with it."""
    settings = make_settings(tmp_path, embedding=minilm(onnx_cache), search={"fusion": "dense"})
    with TestClient(create_app(settings)) as client:
        client.post("/v1/kb", json={"name": "home"})
        client.post("/v1/kb/home/documents", files=files_of(tmp_path / "src"))
        r = client.post(
            "/v1/kb/home/search", json={"query": "cycling maintenance in wet weather", "k": 1}
        )
        assert r.json()["data"][0]["title"] == "bikes", r.text


def test_a_running_sync_shows_its_progress(tmp_path: Path) -> None:
    """While a long sync runs, GET /v1/kb/{name} says how far it is (no silent stall)."""
    settings = make_settings(tmp_path, batch_chunks=1)
    with serve(create_app(settings)) as base, httpx.Client(base_url=base, timeout=60) as http:
        http.post("/v1/kb", json={"name": "big"}).raise_for_status()
        uploads = tmp_path / "kbs" / "big" / "uploads"
        uploads.mkdir(parents=True)
        for i in range(20):
            (uploads / f"note-{i:03}.txt").write_text(f"Note {i} about topic {i}.\n")
        with ThreadPoolExecutor(1) as pool:
            sync = pool.submit(httpx.post, base + "/v1/kb/big/sync", timeout=60)
            seen: list[dict[str, Any]] = []
            while not sync.done():
                ingesting = http.get("/v1/kb/big").json()["ingesting"]
                if ingesting and "files_total" in ingesting:
                    seen.append(ingesting)
                time.sleep(0.02)
            report = sync.result().json()
        assert len(report["added"]) == 20
        assert seen, "no progress was visible during the sync"
        assert {s["files_total"] for s in seen} == {20}
        assert all(0 <= s["files_done"] <= 20 for s in seen)
        assert http.get("/v1/kb/big").json()["ingesting"] is None


def test_a_configured_reranker_is_reported_as_having_run(tmp_path: Path) -> None:
    model = tiny_cross_encoder(tmp_path / "reranker")
    settings = make_settings(tmp_path, reranker={"path": str(model), "candidates": 8})
    with TestClient(create_app(settings)) as client:
        client.post("/v1/kb", json={"name": "docs"})
        assert client.get("/v1/kb/docs").json()["reranker"] is True
        client.post("/v1/kb/docs/documents", files=files_of(tmp_path / "src"))
        body = client.post(
            "/v1/kb/docs/search", json={"query": "water the orchids", "k": 2, "detailed": True}
        ).json()
    assert body["reranked"] is True
    rerank = next(s for s in body["stages"] if s["name"] == "rerank")
    assert rerank["candidates"] >= 2
    assert len(body["data"]) == 2
    assert all(h["rerank_score"] is not None for h in body["data"])
    assert [h["score"] for h in body["data"]] == [h["rerank_score"] for h in body["data"]]
