"""`llmforge keys` as a user runs it: real processes on a real config and database, and a live
gateway on the same database honouring what the commands did."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import openai
import pytest

from llmforge.core.settings import load_settings
from llmforge.gateway import create_app
from tests.fakes.server import serve

CONFIG = """
database: sqlite:///{db}
models:
  - name: fake
    provider: fake
    responses: ["one two three"]
    price: {{input_per_mtok: 1000, output_per_mtok: 2000}}
  - name: other
    provider: fake
embeddings: []
"""


def keys(*args: str, cwd: Path, config: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "LLMFORGE_MASTER_KEY"}
    return subprocess.run(
        [sys.executable, "-m", "llmforge", "keys", *args, "--config", str(config)],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )


@pytest.fixture
def config(tmp_path: Path) -> Path:
    path = tmp_path / "llmforge.yaml"
    path.write_text(CONFIG.format(db=tmp_path / "keys.db"), encoding="utf-8")
    return path


def test_create_prints_the_key_once_and_stores_only_its_hash(tmp_path: Path, config: Path) -> None:
    args = ["create", "--name", "ci", "--models", "fake", "--rpm", "60", "--budget", "2.5"]
    created = keys(*args, cwd=tmp_path, config=config)
    assert created.returncode == 0, created.stderr
    key = created.stdout.strip()
    assert key.startswith("sk-lf-") and "\n" not in key  # alone on stdout
    assert "not shown again" in created.stderr

    listed = keys("list", "--json", cwd=tmp_path, config=config)
    assert listed.returncode == 0, listed.stderr
    [row] = json.loads(listed.stdout)
    assert key not in listed.stdout
    assert (row["name"], row["models"], row["rpm"], row["budget_usd"]) == ("ci", ["fake"], 60, 2.5)
    assert (row["spent_usd"], row["active"]) == (0.0, True)
    assert key.startswith(row["prefix"]) and len(row["prefix"]) < len(key) // 3

    stored = b"".join(p.read_bytes() for p in tmp_path.glob("keys.db*"))  # db, -wal, -shm
    assert key.encode() not in stored
    assert hashlib.sha256(key.encode()).hexdigest().encode() in stored


def test_list_and_revoke(tmp_path: Path, config: Path) -> None:
    first = keys("create", "--name", "first", "--json", cwd=tmp_path, config=config)
    assert first.returncode == 0, first.stderr
    first_id = json.loads(first.stdout)["id"]

    revoked = keys("revoke", first_id, cwd=tmp_path, config=config)
    assert revoked.returncode == 0, revoked.stderr
    assert f"Revoked {first_id}" in revoked.stdout

    table = keys("list", cwd=tmp_path, config=config)
    assert table.returncode == 0
    assert first_id in table.stdout and "first" in table.stdout and "revoked" in table.stdout

    missing = keys("revoke", "key_nope", cwd=tmp_path, config=config)
    assert missing.returncode == 1
    assert missing.stderr.startswith("error: No API key 'key_nope'")
    assert "Traceback" not in missing.stderr


def test_create_rejects_a_scope_naming_unknown_models(tmp_path: Path, config: Path) -> None:
    out = keys("create", "--name", "x", "--models", "fake,gpt-9", cwd=tmp_path, config=config)
    assert out.returncode == 1
    assert "gpt-9" in out.stderr and "Known: fake, other" in out.stderr
    assert out.stdout == ""


def test_the_gateway_honours_keys_made_and_revoked_by_the_cli(tmp_path: Path, config: Path) -> None:
    settings = load_settings(config, master_key="master")
    with serve(create_app(settings)) as base:
        created = keys("create", "--name", "app", "--models", "fake", cwd=tmp_path, config=config)
        key = created.stdout.strip()
        sdk = openai.OpenAI(base_url=base + "/v1", api_key=key, max_retries=0)
        reply = sdk.chat.completions.create(
            model="fake", messages=[{"role": "user", "content": "hi"}], max_tokens=5
        )
        assert reply.usage is not None
        with pytest.raises(openai.PermissionDeniedError):
            sdk.chat.completions.create(model="other", messages=[{"role": "user", "content": "hi"}])

        [row] = json.loads(keys("list", "--json", cwd=tmp_path, config=config).stdout)
        cost = (reply.usage.prompt_tokens * 1000 + reply.usage.completion_tokens * 2000) / 1e6
        assert row["spent_usd"] == pytest.approx(cost)

        assert keys("revoke", row["id"], cwd=tmp_path, config=config).returncode == 0
        with pytest.raises(openai.AuthenticationError):  # at once, from another process
            sdk.chat.completions.create(model="fake", messages=[{"role": "user", "content": "hi"}])
