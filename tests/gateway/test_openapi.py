"""`/openapi.json` tells the truth about the whole API, the lane's routes included, and a fuzzer
driven by it (schemathesis, as a client generating code from the spec would read it) finds no
server error and no undocumented status on any route."""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from llmforge.core.settings import Settings, load_settings
from llmforge.ui import create_web_app
from tests.fakes.server import serve

MASTER = "sk-test-master"
LANE = ["/v1/chat/completions", "/v1/completions", "/v1/embeddings", "/v1/messages"]


def settings_for(tmp: Path, **overrides: Any) -> Settings:
    return load_settings(
        None,
        database=f"sqlite:///{tmp / 'gw.db'}",
        models=[{"name": "fake", "provider": "fake", "responses": ["All good."]}],
        embeddings=[{"name": "hash", "provider": "fake", "dimensions": 8}],
        kb={"path": str(tmp / "kb"), "embedding": "hash"},
        server={"preload": False},
        **overrides,
    )


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with serve(create_web_app(settings_for(tmp_path_factory.mktemp("spec")))) as url:
        yield url


@pytest.fixture(scope="module")
def spec(base: str) -> dict[str, Any]:
    r = httpx.get(base + "/openapi.json", timeout=10)
    assert r.status_code == 200
    return r.json()  # type: ignore[no-any-return]


@pytest.mark.parametrize("path", LANE)
def test_the_model_routes_are_in_the_spec_with_their_bodies(
    spec: dict[str, Any], path: str
) -> None:
    post = spec["paths"][path]["post"]
    ref = post["requestBody"]["content"]["application/json"]["schema"]["$ref"]
    assert ref.rsplit("/", 1)[1] in spec["components"]["schemas"]
    assert {"200", "400", "404", "413", "429"} <= set(post["responses"])


def test_validation_errors_are_documented_as_the_400_they_are(spec: dict[str, Any]) -> None:
    for path, item in spec["paths"].items():
        for method, operation in item.items():
            assert "422" not in operation["responses"], f"{method} {path}"
            assert "400" in operation["responses"], f"{method} {path}"


def test_created_resources_are_documented_as_201(spec: dict[str, Any]) -> None:
    for path in ("/v1/kb", "/admin/keys", "/api/conversations"):
        assert "201" in spec["paths"][path]["post"]["responses"], path


def test_upload_documents_its_multipart_body(spec: dict[str, Any]) -> None:
    body = spec["paths"]["/v1/kb/{name}/documents"]["post"]["requestBody"]
    schema = body["content"]["multipart/form-data"]["schema"]
    assert schema["properties"]["files"]["items"]["format"] == "binary"


@pytest.mark.parametrize(
    ("method", "path", "allow"),
    [
        ("DELETE", "/v1/kb", "GET, POST"),
        ("PUT", "/v1/kb/manuals", "DELETE, GET"),
        ("PUT", "/api/conversations/abc", "DELETE, GET, PATCH"),
        ("GET", "/v1/chat/completions", "POST"),
    ],
)
def test_405_names_every_method_the_path_has(base: str, method: str, path: str, allow: str) -> None:
    r = httpx.request(method, base + path, timeout=10)
    assert r.status_code == 405
    assert r.headers["allow"] == allow


def fuzz(base: str, *headers: str) -> None:
    """schemathesis over every operation of the spec: no 5xx, no status the spec does not list,
    the content types it lists (a fixed seed, so a failure reproduces)."""
    command = [
        sys.executable, "-m", "schemathesis.cli", "run", base + "/openapi.json",
        "--checks", "not_a_server_error,status_code_conformance,content_type_conformance",
        "--max-examples", "25", "--seed", "20261205", "--generation-database", "none",
        "--workers", "1", "--no-color", *[a for h in headers for a in ("-H", h)],
    ]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, timeout=600, check=False)
    assert done.returncode == 0, done.stdout[-6000:] + done.stderr[-2000:]
    counts = re.search(r"(\d+) generated, (\d+) passed", done.stdout)
    assert counts and counts[1] == counts[2] and int(counts[1]) > 500, done.stdout[-3000:]


def test_fuzzing_every_route_finds_no_server_error_or_undocumented_status(base: str) -> None:
    fuzz(base)


def test_fuzzing_with_keys_on_reaches_the_admin_routes_too(tmp_path: Path) -> None:
    settings = settings_for(tmp_path, master_key=MASTER)
    with serve(create_web_app(settings)) as url:
        fuzz(url, f"Authorization: Bearer {MASTER}")
