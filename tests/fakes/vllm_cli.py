"""A fake `vllm` executable for tests: `python -m tests.fakes.vllm_cli serve PATH --host H --port P
--served-model-name NAME [more vllm serve arguments]`.

Like `vllm serve` it refuses a PATH that is not a model folder (no config.json) with exit code 1,
then serves the OpenAI API on H:P until SIGTERM: `/health`, `/v1/models` (the served name), and
chat and text completions, whole and streamed, answered by `FakeOpenAI` (`openai_upstream.py`:
the last user message's words echoed back). A request naming another model gets vLLM's 404. Other
arguments (`--max-model-len`, `--tensor-parallel-size`, ...) are accepted and ignored; tests read
them from the process's command line. `FAKE_VLLM_START_S` in the environment delays the start
(loading weights).

Tests run it through a small shell script named `vllm` that execs this module with the test's
Python (see tests/models/test_vllm_managed.py).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from tests.fakes.openai_upstream import FakeOpenAI

Endpoint = Callable[[Request], Awaitable[Response]]


def build_app(served_name: str) -> Starlette:
    fake = FakeOpenAI()

    async def models(_request: Request) -> Response:
        return JSONResponse(
            {"object": "list", "data": [{"id": served_name, "object": "model", "owned_by": "vllm"}]}
        )

    def named(route: Endpoint) -> Endpoint:
        async def handler(request: Request) -> Response:
            body = json.loads(await request.body() or b"{}")
            if body.get("model") != served_name:
                return JSONResponse(
                    {
                        "object": "error",
                        "message": f"The model `{body.get('model')}` does not exist.",
                        "type": "NotFoundError",
                        "param": None,
                        "code": 404,
                    },
                    404,
                )
            return await route(request)

        return handler

    return Starlette(
        routes=[
            Route("/health", fake.health),
            Route("/v1/models", models),
            Route("/v1/chat/completions", named(fake.chat), methods=["POST"]),
            Route("/v1/completions", named(fake.completions), methods=["POST"]),
        ]
    )


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="vllm")
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve")
    serve.add_argument("model")
    serve.add_argument("--host", default="0.0.0.0")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument("--served-model-name")
    args, _rest = parser.parse_known_args(argv)
    folder = Path(args.model)
    if not (folder / "config.json").is_file():
        print(f"ValueError: no config.json in '{folder}'", file=sys.stderr, flush=True)
        return 1
    time.sleep(float(os.environ.get("FAKE_VLLM_START_S", "0")))
    app = build_app(args.served_model_name or args.model)
    config = uvicorn.Config(app, host=args.host, port=args.port, log_level="warning")
    asyncio.run(uvicorn.Server(config).serve())
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
