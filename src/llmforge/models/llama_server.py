"""A llama-server process managed by LLMForge: found, started on a free 127.0.0.1 port, checked
healthy, restarted when it dies, and stopped with nothing left behind.

`LlamaServer` is a `ManagedProcess` (`managed_process`: the supervisor thread, `/health` wait,
restarts with back-off, no orphans) running one GGUF with `parallel` slots of `context_length`
tokens each and `threads` CPU threads. Calls ask `await ready()` for the base URL of the running
process, waiting through a restart.

`binary(config)` finds the executable (the configured `llama_server`, else the one the Makefile
builds under ~/.cache/llmforge/llama.cpp-VERSION/bin for the installed llama-cpp-python VERSION).

Not here: how a process is supervised (`managed_process`), what is sent to the server or read
from it (`llama_served.py`), several processes per model (each `deployments:` entry is its own
model and gets its own process), GPUs.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

from llmforge.core.config import ModelConfig
from llmforge.core.errors import ConfigError
from llmforge.models.managed_process import ManagedProcess

CACHE_RAM_MIB = 1024  # host memory for prompts of idle slots (llama-server's own default: 8192)


def binary(config: ModelConfig) -> Path | None:
    """The llama-server executable for `config`, or None when there is none (then the model runs
    in-process). A configured `llama_server` that does not exist is a ConfigError."""
    if config.llama_server:
        path = Path(config.llama_server).expanduser()
        if not (path.is_file() and os.access(path, os.X_OK)):
            raise ConfigError(
                f"model '{config.name}': llama_server '{config.llama_server}' is not an "
                "executable file; build it with `make llama-tools` or fix the path"
            )
        return path
    path = default_binary()
    return path if path.is_file() and os.access(path, os.X_OK) else None


def default_binary() -> Path:
    """Where `make llama-tools` puts llama-server for the installed llama-cpp-python."""
    try:
        version = metadata.version("llama-cpp-python")
    except metadata.PackageNotFoundError:
        version = "unknown"
    return Path.home() / ".cache" / "llmforge" / f"llama.cpp-{version}" / "bin" / "llama-server"


@dataclass(frozen=True)
class ServerSpec:
    """What a process is started with."""

    name: str  # the model's name (logs, errors)
    binary: Path
    model: Path
    parallel: int
    context: int  # tokens per slot
    threads: int


class LlamaServer(ManagedProcess):
    """One supervised llama-server process (see the module docstring)."""

    def __init__(self, spec: ServerSpec) -> None:
        super().__init__(
            spec.name,
            "llama-server",
            self._args,
            detail=f"{spec.parallel} slots x {spec.context} tokens, {spec.threads} threads",
        )
        self.spec = spec

    def _args(self, port: int) -> list[str]:
        s = self.spec
        return [
            str(s.binary),
            "--model", str(s.model),
            "--host", "127.0.0.1",
            "--port", str(port),
            "--parallel", str(s.parallel),
            "--ctx-size", str(s.context * s.parallel),  # each slot gets `context` tokens
            "--threads", str(s.threads),
            "--threads-batch", str(s.threads),
            "--cont-batching",
            "--no-kv-unified",
            "--cache-ram", str(CACHE_RAM_MIB),
            "--no-webui",
            "--log-verbosity", "2",  # warnings and errors
        ]  # fmt: skip
