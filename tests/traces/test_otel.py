"""OpenTelemetry export: every traced call reaches an OTLP/HTTP collector as a span with the GenAI
semantic conventions. The collector is a tiny HTTP server on 127.0.0.1 that decodes the OTLP
protobuf body the way a real collector does; the gateway runs for real with scripted models."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue
from opentelemetry.proto.trace.v1.trace_pb2 import Span

from llmforge.core.config import OtelConfig
from llmforge.core.settings import load_settings
from llmforge.gateway import create_app
from llmforge.traces import Trace
from llmforge.traces.otel import OtelExporter
from tests.fakes.server import serve


class Collector:
    """Receives OTLP/HTTP trace exports (protobuf) and keeps the spans and request headers."""

    def __init__(self, status: int = 200) -> None:
        self.spans: list[tuple[dict[str, Any], Span]] = []  # (resource attributes, span)
        self.headers: list[dict[str, str]] = []
        self.status = status
        collector = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                collector.headers.append({k.lower(): v for k, v in self.headers.items()})
                if self.path == "/v1/traces" and collector.status == 200:
                    request = ExportTraceServiceRequest.FromString(body)
                    for resource_spans in request.resource_spans:
                        resource = attributes(resource_spans.resource.attributes)
                        for scope in resource_spans.scope_spans:
                            collector.spans += [(resource, s) for s in scope.spans]
                self.send_response(collector.status)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1/traces"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def wait_for(self, n: int, timeout_s: float = 10) -> list[tuple[dict[str, Any], Span]]:
        deadline = time.monotonic() + timeout_s
        while len(self.spans) < n and time.monotonic() < deadline:
            time.sleep(0.05)
        return self.spans

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def value(v: AnyValue) -> Any:
    kind = v.WhichOneof("value")
    if kind == "array_value":
        return [value(x) for x in v.array_value.values]
    return getattr(v, kind) if kind else None


def attributes(kvs: Any) -> dict[str, Any]:
    return {kv.key: value(kv.value) for kv in kvs}


@pytest.fixture
def collector() -> Iterator[Collector]:
    c = Collector()
    yield c
    c.close()


def test_every_gateway_call_is_exported_with_genai_attributes(
    collector: Collector, tmp_path: Path
) -> None:
    settings = load_settings(
        None,
        database=f"sqlite:///{tmp_path / 't.db'}",
        models=[
            {"name": "fake", "provider": "fake", "responses": ["Paris is the capital."]},
            {"name": "down", "provider": "openai", "base_url": "http://127.0.0.1:9/v1"},
        ],
        embeddings=[{"name": "hash", "provider": "fake"}],
        server={"preload": False},
        router={"retries": 0},
        observability={
            "otel": {
                "endpoint": collector.url,
                "service_name": "forge-test",
                "headers": {"x-collector-token": "t0ken"},
            }
        },
    )
    with serve(create_app(settings)) as base:
        ok = httpx.post(
            base + "/v1/chat/completions",
            json={
                "model": "fake",
                "messages": [{"role": "user", "content": "Capital of France?"}],
                "max_tokens": 50,
                "temperature": 0.2,
            },
        )
        assert ok.status_code == 200
        failed = httpx.post(
            base + "/v1/chat/completions",
            json={"model": "down", "messages": [{"role": "user", "content": "hi"}]},
        )
        assert failed.status_code >= 500
        httpx.post(base + "/v1/embeddings", json={"model": "hash", "input": ["a", "b"]})
        spans = collector.wait_for(3)
    assert len(spans) == 3
    found = {attributes(s.attributes)["gen_ai.request.model"]: (r, s) for r, s in spans}

    resource, chat = found["fake"]
    attrs = attributes(chat.attributes)
    assert resource["service.name"] == "forge-test"
    assert chat.name == "chat fake"
    assert chat.kind == Span.SPAN_KIND_CLIENT
    assert attrs["gen_ai.operation.name"] == "chat"
    assert attrs["gen_ai.provider.name"] == "fake"
    assert attrs["gen_ai.response.model"] == "fake"
    assert attrs["gen_ai.response.id"] == ok.json()["id"]
    assert attrs["gen_ai.usage.input_tokens"] == ok.json()["usage"]["prompt_tokens"]
    assert attrs["gen_ai.usage.output_tokens"] == ok.json()["usage"]["completion_tokens"] > 0
    assert attrs["gen_ai.response.finish_reasons"] == ["stop"]
    assert attrs["gen_ai.request.max_tokens"] == 50
    assert attrs["gen_ai.request.temperature"] == pytest.approx(0.2)
    assert attrs["llmforge.status"] == "ok"
    assert chat.end_time_unix_nano - chat.start_time_unix_nano == pytest.approx(
        attrs["llmforge.latency_ms"] * 1e6, rel=0.01
    )
    assert "gen_ai.input.messages" not in attrs  # content stays home unless asked for
    assert chat.status.code != chat.status.STATUS_CODE_ERROR

    _, down = found["down"]
    down_attrs = attributes(down.attributes)
    assert down.status.code == down.status.STATUS_CODE_ERROR
    assert down_attrs["error.type"] == "_OTHER"
    assert down_attrs["llmforge.status"] == "error"

    _, embed = found["hash"]
    assert embed.name == "embeddings hash"
    assert attributes(embed.attributes)["gen_ai.operation.name"] == "embeddings"
    assert all(h.get("x-collector-token") == "t0ken" for h in collector.headers)
    assert collector.headers[0]["content-type"] == "application/x-protobuf"


def trace(**fields: Any) -> Trace:
    base: dict[str, Any] = {
        "model": "m",
        "request": {"messages": [{"role": "user", "content": "你好"}], "sampling": {}},
        "output": "Hello",
        "finish_reason": "stop",
        "latency_ms": 12.5,
        "ttft_ms": 3.0,
        "stream": True,
    }
    return Trace(**{**base, **fields})


def test_content_is_exported_only_when_configured(collector: Collector) -> None:
    exporter = OtelExporter(
        OtelConfig(endpoint=collector.url, capture_content=True), schedule_delay_ms=50
    )
    exporter.observe([trace()])
    assert exporter.force_flush()
    exporter.shutdown()
    attrs = attributes(collector.wait_for(1)[0][1].attributes)
    assert '"content": "你好"' in attrs["gen_ai.input.messages"]
    assert '"content": "Hello"' in attrs["gen_ai.output.messages"]
    assert attrs["gen_ai.response.time_to_first_chunk"] == pytest.approx(0.003)


def test_a_collector_that_fails_costs_spans_not_calls(tmp_path: Path) -> None:
    down = Collector(status=503)
    try:
        exporter = OtelExporter(OtelConfig(endpoint=down.url, timeout_s=1), schedule_delay_ms=50)
        batch = [trace() for _ in range(256)]
        started = time.perf_counter()
        for _ in range(4):
            exporter.observe(batch)
        assert time.perf_counter() - started < 0.01  # the writer only queues; spans are made apart
        exporter.force_flush(5)
        exporter.shutdown()
        assert exporter.exported == 1024
        assert down.headers  # it tried
        assert down.spans == []
    finally:
        down.close()


def test_export_is_off_unless_an_endpoint_is_set(tmp_path: Path) -> None:
    assert OtelExporter.from_settings(load_settings(None)) is None
