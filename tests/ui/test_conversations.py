"""The conversation history API, through the real web app on a temporary SQLite file."""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient

from llmforge.core.db import open_engine
from llmforge.core.settings import Settings, load_settings
from llmforge.ui import ConversationStore, create_web_app

CJK = "你好，世界！日本語のテキスト、한국어 문장 — emoji 🚀 and\ttabs\nand newlines"


def web_settings(db: Path) -> Settings:
    return load_settings(
        None,
        database=f"sqlite:///{db}",
        models=[{"name": "fake", "provider": "fake", "responses": ["ok"]}],
        embeddings=[],
        server={"preload": False},
    )


@pytest.fixture
def db_file(tmp_path: Path) -> Path:
    return tmp_path / "ui.db"


@pytest.fixture
def client(db_file: Path) -> Iterator[TestClient]:
    with TestClient(create_web_app(web_settings(db_file))) as c:
        yield c


def create(client: TestClient, **body: Any) -> dict[str, Any]:
    r = client.post("/api/conversations", json=body)
    assert r.status_code == 201, r.text
    return r.json()


def append(client: TestClient, cid: str, role: str, content: str) -> dict[str, Any]:
    r = client.post(f"/api/conversations/{cid}/messages", json={"role": role, "content": content})
    assert r.status_code == 201, r.text
    return r.json()


def test_create_returns_an_empty_conversation(client: TestClient) -> None:
    conv = create(client, title="Plans", model="fake")
    assert conv["title"] == "Plans"
    assert conv["model"] == "fake"
    assert conv["messages"] == []
    assert conv["message_count"] == 0
    assert conv["created_at"] == conv["updated_at"]


def test_create_without_a_body_makes_an_untitled_conversation(client: TestClient) -> None:
    r = client.post("/api/conversations")
    assert r.status_code == 201, r.text
    assert r.json()["title"] == ""
    assert r.json()["model"] is None


def test_messages_come_back_in_the_order_they_were_appended(client: TestClient) -> None:
    cid = create(client)["id"]
    append(client, cid, "system", "Be brief.")
    append(client, cid, "user", "Hi")
    append(client, cid, "assistant", "Hello!")
    conv = client.get(f"/api/conversations/{cid}").json()
    assert [(m["role"], m["content"]) for m in conv["messages"]] == [
        ("system", "Be brief."),
        ("user", "Hi"),
        ("assistant", "Hello!"),
    ]
    assert [m["position"] for m in conv["messages"]] == [0, 1, 2]
    assert conv["message_count"] == 3


def test_first_user_message_names_an_untitled_conversation(client: TestClient) -> None:
    cid = create(client)["id"]
    append(client, cid, "system", "A system prompt is not a title.")
    assert client.get(f"/api/conversations/{cid}").json()["title"] == ""
    long = (
        "Explain   the difference\nbetween processes and threads in operating systems, with cases"
    )
    append(client, cid, "user", long)
    append(client, cid, "user", "A second question does not rename it")
    title = client.get(f"/api/conversations/{cid}").json()["title"]
    assert title.startswith("Explain the difference between processes")
    assert len(title) <= 60
    assert title.endswith("…")


def test_a_given_title_is_kept(client: TestClient) -> None:
    cid = create(client, title="Mine")["id"]
    append(client, cid, "user", "Something else entirely")
    assert client.get(f"/api/conversations/{cid}").json()["title"] == "Mine"


def test_list_puts_the_most_recently_active_first(client: TestClient) -> None:
    first = create(client, title="first")["id"]
    second = create(client, title="second")["id"]
    listed = client.get("/api/conversations").json()
    assert listed["object"] == "list"
    assert [c["id"] for c in listed["data"]] == [second, first]

    append(client, first, "user", "bump")
    data = client.get("/api/conversations").json()["data"]
    assert [c["id"] for c in data] == [first, second]
    assert data[0]["message_count"] == 1
    assert data[1]["message_count"] == 0
    assert set(data[0]) >= {"id", "title", "model", "updated_at", "message_count"}
    assert "messages" not in data[0]


def test_list_limit(client: TestClient) -> None:
    for i in range(3):
        create(client, title=str(i))
    assert len(client.get("/api/conversations", params={"limit": 2}).json()["data"]) == 2
    assert client.get("/api/conversations", params={"limit": 0}).status_code == 400


def test_patch_changes_only_the_fields_sent(client: TestClient) -> None:
    cid = create(client, title="old", model="fake")["id"]
    r = client.patch(f"/api/conversations/{cid}", json={"title": "new"})
    assert r.status_code == 200, r.text
    assert (r.json()["title"], r.json()["model"]) == ("new", "fake")
    r = client.patch(f"/api/conversations/{cid}", json={"model": "other"})
    assert (r.json()["title"], r.json()["model"]) == ("new", "other")
    r = client.patch(f"/api/conversations/{cid}", json={"model": None})
    assert r.json()["model"] is None
    conv = client.get(f"/api/conversations/{cid}").json()
    assert (conv["title"], conv["model"]) == ("new", None)


def test_delete_removes_the_conversation(client: TestClient) -> None:
    cid = create(client)["id"]
    r = client.delete(f"/api/conversations/{cid}")
    assert r.status_code == 200
    assert r.json() == {"id": cid, "object": "conversation.deleted", "deleted": True}
    assert client.get(f"/api/conversations/{cid}").status_code == 404
    assert client.get("/api/conversations").json()["data"] == []


def test_deleting_a_conversation_deletes_its_messages(client: TestClient, db_file: Path) -> None:
    keep, drop = create(client)["id"], create(client)["id"]
    append(client, keep, "user", "stay")
    append(client, drop, "user", "go")
    append(client, drop, "assistant", "gone")
    client.delete(f"/api/conversations/{drop}")

    engine = open_engine(f"sqlite:///{db_file}")
    try:
        with engine.connect() as conn:
            rows = conn.execute(
                sa.text("SELECT conversation_id, content FROM conversation_messages")
            ).all()
    finally:
        engine.dispose()
    assert [tuple(r) for r in rows] == [(keep, "stay")]


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("GET", "/api/conversations/nope", None),
        ("PATCH", "/api/conversations/nope", {"title": "x"}),
        ("PATCH", "/api/conversations/nope", {}),
        ("DELETE", "/api/conversations/nope", None),
        ("POST", "/api/conversations/nope/messages", {"role": "user", "content": "hi"}),
    ],
)
def test_unknown_conversation_is_a_404_in_openai_shape(
    client: TestClient, method: str, path: str, body: dict[str, Any] | None
) -> None:
    r = client.request(method, path, json=body)
    assert r.status_code == 404, r.text
    error = r.json()["error"]
    assert "nope" in error["message"]
    assert error["code"] == "not_found"
    assert error["type"] == "invalid_request_error"


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"role": "robot", "content": "hi"}, "role"),
        ({"role": "user", "content": 42}, "content"),
        ({"role": "user", "content": ["a"]}, "content"),
        ({"role": "user"}, "content"),
        ({"content": "hi"}, "role"),
        ({"role": "user", "content": "hi", "extra": 1}, "extra"),
    ],
)
def test_bad_message_is_a_400_naming_the_field(
    client: TestClient, body: dict[str, Any], param: str
) -> None:
    cid = create(client)["id"]
    r = client.post(f"/api/conversations/{cid}/messages", json=body)
    assert r.status_code == 400, r.text
    assert r.json()["error"]["param"] == param
    assert client.get(f"/api/conversations/{cid}").json()["messages"] == []


def test_wrong_types_in_create_and_patch_are_400(client: TestClient) -> None:
    assert client.post("/api/conversations", json={"title": 5}).status_code == 400
    cid = create(client)["id"]
    r = client.patch(f"/api/conversations/{cid}", json={"model": 1})
    assert r.status_code == 400
    assert r.json()["error"]["param"] == "model"


def test_cjk_and_emoji_round_trip_exactly(client: TestClient) -> None:
    cid = create(client, title="中文标题")["id"]
    sent = append(client, cid, "user", CJK)
    assert sent["content"] == CJK
    append(client, cid, "assistant", "回答：" + CJK)
    r = client.get(f"/api/conversations/{cid}")
    assert r.headers["content-type"].startswith("application/json")
    conv = r.json()
    assert conv["title"] == "中文标题"
    assert [m["content"] for m in conv["messages"]] == [CJK, "回答：" + CJK]


def test_cjk_first_message_becomes_the_title(client: TestClient) -> None:
    cid = create(client)["id"]
    append(client, cid, "user", "请用三句话解释量子纠缠")
    assert client.get(f"/api/conversations/{cid}").json()["title"] == "请用三句话解释量子纠缠"


def test_concurrent_appends_get_distinct_positions(db_file: Path) -> None:
    engine = open_engine(f"sqlite:///{db_file}")
    try:
        store = ConversationStore(engine)
        cid = store.create().id

        def write(worker: int) -> None:
            for i in range(10):
                store.append(cid, "user", f"{worker}-{i}")

        with ThreadPoolExecutor(8) as pool:
            list(pool.map(write, range(8)))
        messages = store.get(cid).messages
    finally:
        engine.dispose()
    assert [m.position for m in messages] == list(range(80))
    assert sorted(m.content for m in messages) == sorted(
        f"{w}-{i}" for w in range(8) for i in range(10)
    )
    for w in range(8):  # each writer's messages stay in the order it sent them
        mine = [m.content for m in messages if m.content.startswith(f"{w}-")]
        assert mine == [f"{w}-{i}" for i in range(10)]


def test_history_survives_a_new_app_on_the_same_database(db_file: Path) -> None:
    with TestClient(create_web_app(web_settings(db_file))) as first:
        cid = create(first, model="fake")["id"]
        append(first, cid, "user", "remember me")
        append(first, cid, "assistant", "I will: 记住")
    with TestClient(create_web_app(web_settings(db_file))) as second:
        listed = second.get("/api/conversations").json()["data"]
        assert [c["id"] for c in listed] == [cid]
        conv = second.get(f"/api/conversations/{cid}").json()
        assert conv["model"] == "fake"
        assert conv["title"] == "remember me"
        assert [(m["role"], m["content"]) for m in conv["messages"]] == [
            ("user", "remember me"),
            ("assistant", "I will: 记住"),
        ]


def test_page_and_assets_are_served_with_their_content_types(client: TestClient) -> None:
    page = client.get("/")
    assert page.status_code == 200
    assert page.headers["content-type"] == "text/html; charset=utf-8"
    assert "default-src 'self'" in page.headers["content-security-policy"]
    assert '<meta charset="utf-8">' in page.text
    assert '<html lang="en">' in page.text
    for path, kind in [
        ("/static/app.js", "text/javascript"),
        ("/static/style.css", "text/css"),
        ("/static/vendor/marked.umd.js", "text/javascript"),
        ("/static/vendor/purify.min.js", "text/javascript"),
        ("/static/favicon.svg", "image/svg+xml"),
    ]:
        r = client.get(path)
        assert r.status_code == 200, path
        assert r.headers["content-type"].startswith(kind), (path, r.headers["content-type"])
    assert client.get("/static/missing.js").status_code == 404


def test_page_loads_nothing_from_outside(client: TestClient) -> None:
    page = client.get("/").text
    assert "http://" not in page
    assert "https://" not in page
    assert "//cdn" not in client.get("/static/app.js").text


SOURCE = {
    "number": 1,
    "id": "chunk-1",
    "kb": "manuals",
    "source": "/kb/uploads/pump.md",
    "title": "Pump Manual",
    "heading": "Maintenance > Seals",
    "text": "Replace the seals every 2000 hours.",
    "cited": True,
}


def test_an_answer_keeps_its_sources(client: TestClient) -> None:
    cid = create(client)["id"]
    append(client, cid, "user", "When do I replace the seals?")
    r = client.post(
        f"/api/conversations/{cid}/messages",
        json={"role": "assistant", "content": "Every 2000 hours [1].", "sources": [SOURCE]},
    )
    assert r.status_code == 201, r.text
    messages = client.get(f"/api/conversations/{cid}").json()["messages"]
    assert messages[0]["sources"] is None
    assert messages[1]["sources"][0]["heading"] == "Maintenance > Seals"
    assert messages[1]["sources"][0]["cited"] is True
    bad = client.post(
        f"/api/conversations/{cid}/messages",
        json={"role": "assistant", "content": "x", "sources": [{"number": 0}]},
    )
    assert bad.status_code == 400


def test_only_the_last_message_can_be_deleted(client: TestClient) -> None:
    cid = create(client)["id"]
    question = append(client, cid, "user", "Hi")
    answer = append(client, cid, "assistant", "A bad answer")
    early = client.delete(f"/api/conversations/{cid}/messages/{question['id']}")
    assert early.status_code == 404 and "not the last message" in early.text
    r = client.delete(f"/api/conversations/{cid}/messages/{answer['id']}")
    assert r.status_code == 200, r.text
    again = append(client, cid, "assistant", "A better answer")
    conv = client.get(f"/api/conversations/{cid}").json()
    assert [m["content"] for m in conv["messages"]] == ["Hi", "A better answer"]
    assert again["position"] == 1
    assert client.delete(f"/api/conversations/nope/messages/{again['id']}").status_code == 404


def test_a_database_from_before_sources_is_migrated(db_file: Path) -> None:
    from llmforge.core.db import migrate
    from llmforge.ui.conversations import MIGRATIONS

    engine = open_engine(f"sqlite:///{db_file}")
    migrate(engine, MIGRATIONS[:1])  # the tables as the first release made them
    with engine.begin() as conn:
        conn.execute(sa.text("INSERT INTO conversations VALUES ('old', 't', NULL, 1, 1)"))
        conn.execute(
            sa.text("INSERT INTO conversation_messages VALUES (1, 'old', 'user', 'hi', 1, 0)")
        )
    engine.dispose()
    with TestClient(create_web_app(web_settings(db_file))) as c:
        old = c.get("/api/conversations/old").json()["messages"]
        assert [(m["content"], m["sources"]) for m in old] == [("hi", None)]
        append(c, "old", "assistant", "still works")
