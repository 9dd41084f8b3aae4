"""Provider `vllm`: a vLLM server, either one LLMForge starts and manages on a local folder of
Hugging Face weights (`path`), or one you run yourself (`base_url`, the OpenAI-compatible client).

With `path`, LLMForge runs `vllm serve PATH --host 127.0.0.1 --port P --served-model-name NAME`
(plus `--tensor-parallel-size`, `--gpu-memory-utilization` and more arguments from the model's
`vllm:` section, `--max-model-len` from `context_length`, `--chat-template` from `chat_template`)
as a `ManagedProcess`: a free port, its `/health` awaited, restarted with back-off when it dies,
stopped with LLMForge and never left behind. The process gets `HF_HUB_OFFLINE=1` (nothing is ever
downloaded: `path` must be a folder already on disk) and vLLM's usage reporting turned off. Calls
go through `OpenAICompatChatModel` pointed at the running process (chat and raw text, streamed
and whole, every OpenAI parameter passed through); a process restarted on a new port gets a new
client. A call whose connection fails before it showed anything is tried once more on the
restarted process; after that the error goes to the router (retries, fallbacks).

The executable is the `vllm.binary` configured, else `vllm` on PATH, else the one installed
beside the running Python; none is a ConfigError at first use (load or first call), so a config
naming a vLLM model still loads on a machine without one.

Not here: the OpenAI wire protocol (`openai_compat`), process supervision (`managed_process`),
installing vLLM or CUDA, downloading weights, several processes per model (each `deployments:`
entry is its own).
"""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import AsyncGenerator, Awaitable, Callable, Sequence
from contextlib import aclosing
from pathlib import Path
from typing import TypeVar

from llmforge.core.config import ModelConfig
from llmforge.core.errors import ConfigError, UpstreamError
from llmforge.core.types import Completion, Delta, Message, Sampling
from llmforge.models import openai_compat
from llmforge.models.base import ChatModel, ModelContext
from llmforge.models.managed_process import ManagedProcess
from llmforge.models.openai_compat import OpenAICompatChatModel

PYTHON_BIN = Path(sys.executable).parent  # a `vllm` installed into LLMForge's environment
OFFLINE_ENV = {
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "VLLM_NO_USAGE_STATS": "1",
    "DO_NOT_TRACK": "1",
}

T = TypeVar("T")


def create(config: ModelConfig, context: ModelContext | None = None) -> ChatModel:
    """A managed vLLM for a config with `path`, else the OpenAI-compatible client of a vLLM
    server at `base_url` (default http://127.0.0.1:8000/v1)."""
    if not config.path:
        return openai_compat.create(config, context)
    if config.base_url:
        raise ConfigError(
            f"model '{config.name}': provider vllm takes `path` (LLMForge starts vLLM on that "
            "folder) or `base_url` (a vLLM server you run), not both; remove one"
        )
    return ManagedVllmChatModel(config)


def weights_folder(config: ModelConfig) -> Path:
    """`path` as a local folder of Hugging Face weights, or a ConfigError saying how to get one
    (a hub id is refused: LLMForge runs offline and never downloads)."""
    raw = config.path or ""
    folder = Path(raw).expanduser()
    if not folder.is_dir():
        raise ConfigError(
            f"model '{config.name}': provider vllm needs `path` to be a local folder of Hugging "
            f"Face weights, and '{raw}' is not a folder. LLMForge never downloads: fetch the "
            "weights first (e.g. `huggingface-cli download ORG/MODEL --local-dir DIR`) and set "
            "`path: DIR`, or set `base_url` to use a vLLM server you run yourself"
        )
    if not (folder / "config.json").is_file():
        raise ConfigError(
            f"model '{config.name}': '{folder}' has no config.json, so it is not a Hugging Face "
            "model folder; point `path` at the folder holding config.json and the weights"
        )
    return folder.resolve()


def binary(config: ModelConfig) -> Path:
    """The `vllm` executable: the configured `vllm.binary`, else `vllm` on PATH, else beside
    the running Python; a ConfigError saying how to fix it when there is none."""
    configured = config.vllm.binary
    if configured:
        path = Path(configured).expanduser()
        if not (path.is_file() and os.access(path, os.X_OK)):
            raise ConfigError(
                f"model '{config.name}': vllm.binary '{configured}' is not an executable file; "
                "fix the path (e.g. the `vllm` in the virtualenv vLLM is installed in)"
            )
        return path
    found = shutil.which("vllm") or shutil.which("vllm", path=str(PYTHON_BIN))
    if found is None:
        raise ConfigError(
            f"model '{config.name}': provider vllm with a `path` needs the `vllm` executable, "
            "and none is on PATH or beside Python; install vLLM on a machine with a GPU "
            "(`pip install vllm`), set `vllm.binary` to its path, or set `base_url` to use a "
            "vLLM server you run"
        )
    return Path(found)


class ManagedVllmChatModel:
    """A vLLM process serving one local folder, answered through the OpenAI-compatible client."""

    def __init__(self, config: ModelConfig) -> None:
        self.name = config.name
        self._config = config
        self._folder = weights_folder(config)
        self._served_name = config.model_id or config.name
        self._timeout_s = config.timeout_s
        self._process: ManagedProcess | None = None
        self._url: str | None = None
        self._backend: OpenAICompatChatModel | None = None

    @property
    def process(self) -> ManagedProcess:
        """The supervised vLLM process (created, with the executable looked up, on first use)."""
        if self._process is None:
            exe = binary(self._config)
            options = self._config.vllm
            self._process = ManagedProcess(
                self.name,
                "vLLM",
                lambda port: self.command(exe, port),
                env={**os.environ, **OFFLINE_ENV},
                start_timeout_s=options.start_timeout_s,
                detail=f"{self._folder} as '{self._served_name}'",
            )
        return self._process

    def command(self, exe: Path, port: int) -> list[str]:
        """The `vllm serve` command line for `port`."""
        c, options = self._config, self._config.vllm
        args = [
            str(exe), "serve", str(self._folder),
            "--host", "127.0.0.1",
            "--port", str(port),
            "--served-model-name", self._served_name,
        ]  # fmt: skip
        if options.tensor_parallel_size is not None:
            args += ["--tensor-parallel-size", str(options.tensor_parallel_size)]
        if c.context_length is not None:
            args += ["--max-model-len", str(c.context_length)]
        if options.gpu_memory_utilization is not None:
            args += ["--gpu-memory-utilization", str(options.gpu_memory_utilization)]
        if c.chat_template is not None:
            args += ["--chat-template", c.chat_template]
        return [*args, *options.args]

    # -- public API -----------------------------------------------------------------------------

    async def load(self) -> None:
        """Start vLLM and wait until it is healthy (loading weights may take minutes)."""
        await self.process.ready(self._config.vllm.start_timeout_s)

    async def complete(self, messages: Sequence[Message], sampling: Sampling) -> Completion:
        return await self._once_more(lambda b: b.complete(messages, sampling))

    async def stream(
        self, messages: Sequence[Message], sampling: Sampling
    ) -> AsyncGenerator[Delta, None]:
        run = self._stream(lambda b: b.stream(messages, sampling))
        async with aclosing(run) as deltas:
            async for delta in deltas:
                yield delta

    async def complete_text(self, prompt: str, sampling: Sampling) -> Completion:
        """Continue `prompt` as raw text (`/v1/completions`), whole."""
        return await self._once_more(lambda b: b.complete_text(prompt, sampling))

    async def stream_text(self, prompt: str, sampling: Sampling) -> AsyncGenerator[Delta, None]:
        """Continue `prompt` as raw text (`/v1/completions`), piece by piece."""
        run = self._stream(lambda b: b.stream_text(prompt, sampling))
        async with aclosing(run) as deltas:
            async for delta in deltas:
                yield delta

    async def aclose(self) -> None:
        if self._process is not None:
            await self._process.aclose()
        if self._backend is not None:
            await self._backend.aclose()
            self._backend = None

    # -- one call -------------------------------------------------------------------------------

    async def _once_more(self, call: Callable[[OpenAICompatChatModel], Awaitable[T]]) -> T:
        backend, url = await self._connect()
        try:
            return await call(backend)
        except UpstreamError as e:
            if e.status_code is not None:  # vLLM answered: its answer stands
                raise
            backend, _ = await self._connect(replacing=url)  # the process died: once more
            return await call(backend)

    async def _stream(
        self, open_stream: Callable[[OpenAICompatChatModel], AsyncGenerator[Delta, None]]
    ) -> AsyncGenerator[Delta, None]:
        backend, url = await self._connect()
        for attempt in range(2):
            shown = False
            try:
                async with aclosing(open_stream(backend)) as deltas:
                    async for delta in deltas:
                        shown = True
                        yield delta
                return
            except UpstreamError as e:
                # the process died before this answer showed anything: once, on the restarted
                # process (after that, or once text was sent, the error goes to the client)
                if shown or attempt or e.status_code is not None:
                    raise
                backend, url = await self._connect(replacing=url)

    async def _connect(self, replacing: str | None = None) -> tuple[OpenAICompatChatModel, str]:
        """The client of the running process and its URL (waiting through a start or restart;
        `replacing`: the URL a call just failed on)."""
        process = self.process
        # before the first healthy start a call waits as long as loading may take
        wait = self._timeout_s if process.starts_ok else self._config.vllm.start_timeout_s
        url = await process.ready(wait, replacing=replacing)
        backend = self._backend
        if backend is None or self._url != url:
            old = backend
            backend = self._backend = OpenAICompatChatModel(
                self._config.model_copy(
                    update={
                        "base_url": f"{url}/v1",
                        "model_id": self._served_name,
                        "api_key_env": None,
                    }
                )
            )
            self._url = url
            if old is not None:
                await old.aclose()
        return backend, url
