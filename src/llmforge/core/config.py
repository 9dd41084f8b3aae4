"""Schema of the sections of `llmforge.yaml` (every key optional; the defaults run fully offline).

Only shapes and per-field checks live here; loading, environment overrides and cross-field checks
are in `settings.py`. Unknown keys are rejected so a typo never silently does nothing. Every key is
documented in docs/configuration.md.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Price(Section):
    """USD per million tokens."""

    input_per_mtok: float = Field(0.0, ge=0)
    output_per_mtok: float = Field(0.0, ge=0)


class Deployment(Section):
    """One replica of a model. Keys left unset inherit the model's own."""

    id: str | None = Field(None, description="name shown in headers and traces (default: index)")
    path: str | None = None
    base_url: str | None = None
    api_key_env: str | None = None
    model_id: str | None = None
    timeout_s: float | None = Field(None, gt=0)


class RagOptions(Section):
    """Provider `rag`: how a knowledge base grounds the wrapped model's answers."""

    retrieval: Literal["auto", "always", "model"] = Field(
        "auto",
        description="when to search: `auto` skips greetings and thanks, `always` searches every "
        "turn, `model` lets the wrapped model decide and write the queries",
    )
    k: int | None = Field(
        None, gt=0, le=50, description="passages given to the model (kb.search.k)"
    )
    max_searches: int = Field(3, ge=1, le=8, description="queries searched per turn, at most")
    min_relevance: float = Field(
        0.2,
        ge=-1,
        le=1,
        description="a passage whose cosine similarity to every query is below this is dropped; "
        "when none is left the answer says the knowledge base does not cover the question",
    )
    max_context_tokens: int = Field(
        1500, gt=0, description="passage text given to the model, about 4 characters a token"
    )
    system_prompt: str | None = Field(None, description="replaces the built-in instructions")


class VllmOptions(Section):
    """Provider `vllm` with a local `path`: how LLMForge starts vLLM on it."""

    binary: str | None = Field(
        None, description="the `vllm` executable (default: `vllm` on PATH or beside Python)"
    )
    tensor_parallel_size: int | None = Field(
        None, ge=1, description="GPUs one replica is split over (vLLM's default: 1)"
    )
    gpu_memory_utilization: float | None = Field(
        None, gt=0, le=1, description="share of each GPU's memory vLLM may take (its default: 0.9)"
    )
    args: list[str] = Field(
        default_factory=list, description="more `vllm serve` arguments, passed as written"
    )
    start_timeout_s: float = Field(
        600.0, gt=0, description="how long loading the weights may take before the start fails"
    )


class ModelConfig(Section):
    """One chat model clients can name. Which keys matter depends on the provider (see docs)."""

    name: str = Field(min_length=1, description="what clients send as `model`")
    provider: str = Field(min_length=1, description="a name in the `llmforge.models` registry")
    path: str | None = Field(
        None, description="GGUF file or HF folder; `builtin:smollm2` is built in"
    )
    base_url: str | None = Field(
        None, description="OpenAI-compatible server, e.g. http://host:8000/v1"
    )
    api_key_env: str | None = Field(None, description="environment variable holding the API key")
    model_id: str | None = Field(
        None, description="the model's name on the upstream (default: name)"
    )
    timeout_s: float = Field(60.0, gt=0)
    context_length: int | None = Field(None, gt=0, description="context window in tokens")
    max_output_tokens: int | None = Field(
        None,
        gt=0,
        description="max_tokens given to requests of keys with a budget or TPM limit that set none "
        "(default: context_length, else 4096), so their cost has an upper bound",
    )
    threads: int | None = Field(None, gt=0, description="CPU threads for local inference")
    max_queue: int = Field(16, ge=0, description="requests that may wait for a busy local model")
    parallel: int | None = Field(
        None,
        ge=1,
        le=64,
        description="llamacpp: requests decoded at once by a managed llama-server (continuous "
        "batching); 1 runs the model in-process, one request at a time (default: 4 per CPU "
        "core, at most 8)",
    )
    llama_server: str | None = Field(
        None,
        description="llamacpp with parallel > 1: the llama-server binary (default: the one "
        "`make` builds in ~/.cache/llmforge/llama.cpp-VERSION/bin)",
    )
    chat_template: str | None = Field(
        None, description="Jinja chat template overriding the model's"
    )
    kb: str | None = Field(None, description="provider rag: the knowledge base searched")
    model: str | None = Field(None, description="provider rag: the chat model that answers")
    rag: RagOptions = Field(default_factory=RagOptions, description="provider rag: options")
    vllm: VllmOptions = Field(
        default_factory=VllmOptions, description="provider vllm with a local path: options"
    )
    fallbacks: list[str] = Field(default_factory=list)
    deployments: list[Deployment] = Field(default_factory=list, description="replicas")
    retries: int | None = Field(None, ge=0, description="retries per deployment (router default)")
    price: Price = Field(default_factory=Price)
    responses: list[str] = Field(
        default_factory=list, description="fake provider: scripted replies"
    )
    delay_s: float = Field(0.0, ge=0, description="fake provider: delay per streamed token")


class EmbeddingConfig(Section):
    """One embedding model clients can name."""

    name: str = Field(min_length=1)
    provider: str = Field(min_length=1, description="a name in the `llmforge.embedders` registry")
    path: str | None = None
    base_url: str | None = None
    api_key_env: str | None = None
    model_id: str | None = None
    timeout_s: float = Field(60.0, gt=0)
    batch_size: int = Field(32, gt=0)
    max_request_tokens: int = Field(
        300_000,
        gt=0,
        description="most tokens one request may hold, each input counted after truncation to "
        "the model's input limit (OpenAI's cap; fits an ingest batch of 1024 x 256); more is a 400",
    )
    dimensions: int | None = Field(None, gt=0, description="fake provider: vector size")
    backend: Literal["torch", "onnx"] = Field(
        "torch", description="sentence-transformers: run through PyTorch or ONNX Runtime"
    )
    quantize: Literal["none", "int8"] = Field(
        "none", description="sentence-transformers with backend onnx: int8 dynamic quantization"
    )
    onnx_dir: str = Field(
        ".llmforge/onnx", description="where ONNX exports of local weights are cached"
    )


class ServerConfig(Section):
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=0, le=65535)
    max_body_bytes: int = Field(4 * 1024 * 1024, gt=0, description="larger request bodies get 413")
    preload: bool = Field(True, description="load local models at start-up instead of first use")
    workers: int = Field(
        1,
        ge=1,
        description="gateway processes sharing the port; above 1, keys' limits and the cache are "
        "shared only through redis_url and cache.backend redis (or the database)",
    )
    budget_wait_s: float = Field(
        5.0,
        ge=0,
        description="how long a call of a key with a budget may wait for calls in flight to "
        "settle when their reservations hold the room it needs; then 429 with Retry-After",
    )


class RouterConfig(Section):
    """Retries, back-off and the circuit breaker, for every model."""

    retries: int = Field(2, ge=0, description="retries of a failed call before falling back")
    backoff_s: float = Field(0.25, ge=0, description="first retry delay; doubles per retry")
    max_backoff_s: float = Field(8.0, ge=0, description="cap on one delay, Retry-After included")
    circuit_failures: int = Field(5, ge=1, description="consecutive failures that open a circuit")
    circuit_cooldown_s: float = Field(30.0, gt=0, description="how long an open circuit rests")


class SemanticCacheConfig(Section):
    enabled: bool = False
    embedding: str = Field("minilm", description="an `embeddings:` name")
    threshold: float = Field(0.95, gt=0, le=1, description="cosine similarity that counts as a hit")


class CacheConfig(Section):
    """Response cache. Off unless enabled; keyed on model, whole conversation and sampling."""

    enabled: bool = False
    backend: Literal["memory", "sqlite", "redis"] = "memory"
    ttl_s: float = Field(3600.0, gt=0)
    max_entries: int = Field(10_000, gt=0, description="memory backend: LRU size")
    semantic: SemanticCacheConfig = Field(default_factory=SemanticCacheConfig)


class TracesConfig(Section):
    enabled: bool = True
    queue_size: int = Field(
        1000, gt=0, description="traces waiting to be written before callers wait"
    )


class RerankerConfig(Section):
    """A second-stage reranker of knowledge-base search results."""

    provider: str = Field(
        "cross-encoder", min_length=1, description="a name in the `llmforge.rerankers` registry"
    )
    path: str = Field(min_length=1, description="local folder of the reranker's weights")
    candidates: int = Field(
        20, gt=0, description="fused results rescored by the reranker (at least k are)"
    )
    batch_size: int = Field(16, gt=0)


class KBSearchConfig(Section):
    k: int = Field(5, gt=0, description="results returned when a search names none")
    fusion: Literal["corroborated", "zscore", "minmax", "rrf", "dense", "bm25"] = Field(
        "corroborated", description="how dense and BM25 results are combined"
    )
    dense_weight: float = Field(
        0.7,
        ge=0,
        le=1,
        description="zscore/minmax fusion: weight of dense (BM25 gets the rest)",
    )
    feedback: int = Field(
        0,
        ge=0,
        le=50,
        description="pseudo-relevance feedback: move the query's vector towards its top N "
        "dense results and search again (helps entity and topic searches, hurts pinpoint "
        "questions; 0 = off)",
    )
    feedback_weight: float = Field(
        0.3, gt=0, le=2, description="feedback: how far the query moves (Rocchio's beta)"
    )


class KBConfig(Section):
    """Knowledge bases: where they live, how they are chunked, embedded, stored and searched."""

    path: str = Field(
        ".llmforge/kb", description="folder holding one sub-folder per knowledge base"
    )
    store: str = Field(
        "lancedb", min_length=1, description="a name in the `llmforge.vectorstores` registry"
    )
    qdrant_url: str | None = Field(None, description="store qdrant: server URL (else local)")
    qdrant_api_key_env: str | None = Field(None, description="store qdrant: API key variable")
    qdrant_path: str | None = Field(
        None, description="store qdrant without url: local folder (default: inside the KB's folder)"
    )
    pgvector_url: str | None = Field(
        None, description="store pgvector: PostgreSQL URL of the vectors' database (required)"
    )
    embedding: str | None = Field(None, description="an `embeddings:` name (default: the first)")
    embedding_backend: Literal["onnx-int8", "onnx", "torch", "as-configured"] = Field(
        "onnx-int8",
        description="sentence-transformers embedders: backend used for knowledge bases",
    )
    chunk_tokens: int = Field(256, ge=16, description="chunk size in the embedder's tokens")
    chunk_overlap: int = Field(32, ge=0, description="tokens shared by neighbouring chunks")
    batch_chunks: int = Field(1024, gt=0, description="chunks embedded per batch during ingest")
    search: KBSearchConfig = Field(default_factory=KBSearchConfig)
    reranker: RerankerConfig | None = None

    @model_validator(mode="after")
    def _overlap_below_size(self) -> KBConfig:
        if self.chunk_overlap >= self.chunk_tokens:
            raise ValueError("chunk_overlap must be smaller than chunk_tokens")
        return self


# -- agents (llmforge.agents; docs/agents.md) ----------------------------------------------------

AGENT_NAME = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"
RESERVED_AGENT_NAMES = frozenset({"pending", "runs"})  # path segments of /v1/agents/...


class AgentLimits(Section):
    """A run's budget; the first one reached stops the run with status `budget_exceeded`."""

    max_steps: int = Field(12, ge=1, description="model turns per run")
    max_tokens: int | None = Field(None, gt=0, description="prompt + completion tokens per run")
    max_cost_usd: float | None = Field(None, gt=0, description="model cost per run (`price`)")
    max_wall_s: float | None = Field(
        300.0, gt=0, description="seconds of execution per run (waiting for approval not counted)"
    )


class AgentToolRef(Section):
    """A tool an agent may call, with its approval policy."""

    name: str = Field(min_length=1, description="a tool name, or `mcp:SERVER` for all its tools")
    approval: Literal["required", "never", "default"] = Field(
        "default", description="`required`: the run pauses before each call until approved"
    )


class AgentConfig(Section):
    """One agent: a graph over a model and tools (`agents.definitions[]`)."""

    name: str = Field(pattern=AGENT_NAME)
    graph: str = Field(
        "react",
        description="a name in the `llmforge.agent_graphs` registry: `react` (tool-using "
        "assistant), `research` (report with citations), or a plugin's",
    )
    description: str | None = None
    model: str | None = Field(None, description="the chat model (default: the first in `models:`)")
    system_prompt: str | None = None
    tools: list[str | AgentToolRef] = Field(default_factory=list)
    approval: list[str] = Field(
        default_factory=list, description="tool names whose calls need approval; `*`: every tool"
    )
    kb: str | None = Field(None, description="knowledge base that `kb_search` searches by default")
    temperature: float | None = Field(None, ge=0)
    max_tokens: int | None = Field(1024, gt=0, description="per model call")
    recall: int = Field(
        3, ge=0, le=20, description="long-term memories recalled into the prompt (0: off)"
    )
    limits: AgentLimits = Field(default_factory=AgentLimits)

    @model_validator(mode="after")
    def _not_reserved(self) -> AgentConfig:
        if self.name in RESERVED_AGENT_NAMES:
            raise ValueError(f"agent name '{self.name}' is reserved; pick another")
        return self


class SandboxConfig(Section):
    """Tool `python`: code run in a subprocess with limits, no network, a scratch folder."""

    cpu_s: float = Field(5.0, gt=0, description="CPU seconds (RLIMIT_CPU)")
    memory_mb: int = Field(512, ge=32, description="address space (RLIMIT_AS)")
    wall_s: float = Field(10.0, gt=0, description="wall-clock seconds before the process is killed")
    max_output_chars: int = Field(8000, gt=0, description="stdout + stderr kept")
    scratch: str = Field(".llmforge/agents/scratch", description="one sub-folder per run")


class FetchConfig(Section):
    """Tool `http_fetch`: GET of pages on allowed hosts only."""

    allow: list[str] = Field(
        default_factory=list, description="hosts (`docs.python.org`, `*.example.com`); empty: none"
    )
    timeout_s: float = Field(10.0, gt=0)
    max_bytes: int = Field(500_000, gt=0, description="body bytes read, at most")
    max_chars: int = Field(8000, gt=0, description="text handed to the model, at most")


class MCPServerConfig(Section):
    """An MCP server whose tools agents may call: a command (stdio) or a `url` (HTTP)."""

    name: str = Field(pattern=r"^[A-Za-z0-9_-]{1,32}$")
    command: str | None = None
    args: list[str] = Field(default_factory=list)
    env: dict[str, str] = Field(default_factory=dict)
    cwd: str | None = None
    url: str | None = Field(None, description="streamable HTTP endpoint")
    headers_env: dict[str, str] = Field(
        default_factory=dict, description="HTTP header -> environment variable holding its value"
    )
    timeout_s: float = Field(30.0, gt=0, description="per tool call")
    approval: Literal["required", "never"] = Field("never", description="for all its tools")

    @model_validator(mode="after")
    def _one_transport(self) -> MCPServerConfig:
        if (self.command is None) == (self.url is None):
            raise ValueError(f"mcp server '{self.name}': give exactly one of `command` or `url`")
        return self


class CheckpointConfig(Section):
    database: str | None = Field(None, description="SQLAlchemy URL (default: `database`)")
    keep_per_thread: int = Field(50, ge=1, description="newest checkpoints kept per thread")
    max_age_days: float = Field(
        30.0, gt=0, description="threads of runs finished longer ago are deleted"
    )


class AgentsConfig(Section):
    """Agents (`llmforge.agents`): definitions, tool settings, checkpoints, memory."""

    definitions: list[AgentConfig] = Field(default_factory=list)
    mcp_servers: list[MCPServerConfig] = Field(default_factory=list)
    sandbox: SandboxConfig = Field(default_factory=SandboxConfig)
    fetch: FetchConfig = Field(default_factory=FetchConfig)
    checkpoints: CheckpointConfig = Field(default_factory=CheckpointConfig)
    memory_embedding: str | None = Field(
        None, description="an `embeddings:` name for long-term memory (default: the first)"
    )
    resume_on_start: bool = Field(True, description="resume runs a dead process left running")
    lease_s: float = Field(
        30.0, gt=0, description="a run whose process sent no heartbeat this long is resumed"
    )

    @model_validator(mode="after")
    def _unique(self) -> AgentsConfig:
        for names, key in (
            ([a.name for a in self.definitions], "definitions"),
            ([m.name for m in self.mcp_servers], "mcp_servers"),
        ):
            dupes = sorted({n for n in names if names.count(n) > 1})
            if dupes:
                raise ValueError(f"agents.{key}: duplicate name(s) {', '.join(dupes)}")
        return self


# -- observability (llmforge.traces.otel / .drift; docs/workbench.md) ------------------------------


class OtelConfig(Section):
    """OpenTelemetry export of every traced call (GenAI semantic conventions). Off while
    `endpoint` is unset: nothing leaves the machine unless configured."""

    endpoint: str | None = Field(
        None, description="OTLP/HTTP traces URL, e.g. http://collector:4318/v1/traces"
    )
    service_name: str = Field("llmforge", min_length=1, description="resource service.name")
    headers: dict[str, str] = Field(
        default_factory=dict, description="sent with every export, e.g. an auth header"
    )
    timeout_s: float = Field(10.0, gt=0, description="one export request, at most")
    capture_content: bool = Field(
        False, description="also export prompts and answers (gen_ai.input/output.messages)"
    )


class DriftConfig(Section):
    """Drift per model: recent traffic against a reference window, fed by the trace writer."""

    enabled: bool = False
    embedding: str | None = Field(
        None, description="an `embeddings:` name for prompt vectors (default: the first)"
    )
    reference_size: int = Field(200, ge=10, description="calls per model in the reference")
    window_size: int = Field(100, ge=10, description="most recent calls per model compared")
    min_samples: int = Field(30, ge=5, description="calls in both windows before judging")
    embedding_threshold: float = Field(
        0.5, gt=0, description="prompt centroid shift, in reference spreads, that alarms"
    )
    length_threshold: float = Field(
        0.25, gt=0, description="population stability index of answer lengths that alarms"
    )
    rate_threshold: float = Field(
        0.1, gt=0, le=1, description="change of refusal or error rate that alarms (and z >= 3)"
    )
    refusal_patterns: list[str] | None = Field(
        None, description="regular expressions marking a refusal (default: English + Chinese)"
    )
    judge: str | None = Field(
        None,
        description="a chat model under `models:` that grades a sampled share of answers (the "
        "evals `rubric` metric, 1-5 mapped onto 0-1); unset: no judge, no calls made",
    )
    judge_share: float = Field(
        0.05, gt=0, le=1, description="share of answered calls the judge grades"
    )
    judge_min_samples: int = Field(
        10, ge=3, description="graded answers in both windows before their scores are compared"
    )
    judge_threshold: float = Field(
        0.15, gt=0, le=1, description="change of the mean judge score (0-1) that alarms (z >= 3)"
    )


class ObservabilityConfig(Section):
    otel: OtelConfig = Field(default_factory=OtelConfig)
    drift: DriftConfig = Field(default_factory=DriftConfig)


class DistillConfig(Section):
    """The distillation flywheel (llmforge.distill): where its artifacts live and how the gateway
    follows its registry and routing policies. The pipeline itself is described by a flywheel file
    (`llmforge distill run flywheel.yaml`), not here."""

    path: str = Field(
        ".llmforge/distill",
        description="folder of datasets, labels, checkpoints, adapters and exported GGUF files",
    )
    base_cache: str = Field(
        "~/.cache/llmforge/distill/base",
        description="where a GGUF student base is kept after its one-time dequantization to a "
        "Hugging Face folder (training and merging read that)",
    )
    converter_dir: str | None = Field(
        None,
        description="folder holding llama.cpp's convert_hf_to_gguf.py and gguf-py (default: "
        "the llama-cpp-python sdist's vendor/llama.cpp under ~/.cache/llmforge/sdist, unpacked "
        "by `make converter`)",
    )
    refresh_s: float = Field(
        2.0,
        gt=0,
        description="how often a running gateway re-reads routing policies and active distilled "
        "versions (promote and rollback from another process apply within this)",
    )


class GuardTopic(Section):
    """A topic a moderation guard refuses, described in a few example sentences."""

    name: str = Field(min_length=1)
    examples: list[str] = Field(min_length=1, description="sentences that are on the topic")


class GuardSpec(Section):
    """One configured guard (`guard.guards[]`). Which keys matter depends on its `type`."""

    name: str = Field(min_length=1, description="what policies call it")
    type: str = Field(
        min_length=1,
        description="a name in the `llmforge.guards` registry: injection, pii, moderation, "
        "keywords",
    )
    action: Literal["allow", "mask", "redact", "refuse", "block"] = Field(
        "block",
        description="what a hit does: allow (record and review only), mask (reversible "
        "placeholders, pii), redact (irreversible, pii), refuse (answer with `refusal`), block "
        "(400 on input; refusal on output)",
    )
    threshold: float | None = Field(
        None, ge=0, le=1, description="score from which a text is a hit (type default if unset)"
    )
    entities: list[str] | None = Field(
        None, description="pii: kinds to find (default: all; see docs/safety.md)"
    )
    topics: list[GuardTopic] = Field(default_factory=list, description="moderation: refused")
    judge: str | None = Field(
        None, description="moderation: a chat model under `models:` that judges (else embeddings)"
    )
    embedding: str | None = Field(
        None, description="injection, moderation: an `embeddings:` name (default: built-in MiniLM)"
    )
    head: str | None = Field(
        None, description="injection: a head file from `llmforge guard train` (default: built-in)"
    )
    rules: bool = Field(True, description="injection: the rules stage runs before the classifier")
    second_stage: str | None = Field(
        None,
        description="injection: a chat model under `models:` (e.g. a student made with `llmforge "
        "distill` from labelled prompts) that decides the texts the head is unsure of; it answers "
        "`injection` or `benign`",
    )
    second_stage_band: tuple[float, float] | None = Field(
        None,
        description="injection: head scores [low, high) that go to `second_stage` (below: allow, "
        "at or above high: hit); default: the band stored in the head",
    )
    keywords: list[str] = Field(default_factory=list, description="keywords: words that hit")
    refusal: str = Field(
        "I can't help with that request.", description="the answer given instead (refuse/output)"
    )

    @model_validator(mode="after")
    def _band_in_order(self) -> GuardSpec:
        band = self.second_stage_band
        if band is not None and not 0 <= band[0] < band[1] <= 1:
            raise ValueError(
                f"second_stage_band {list(band)} must be [low, high] with 0 <= low < high <= 1"
            )
        return self


class GuardPolicy(Section):
    """Which guards run on a call's input and output."""

    input: list[str] = Field(
        default_factory=list, description="guard names run on user and tool messages"
    )
    output: list[str] = Field(default_factory=list, description="guard names run on the answer")
    trace: Literal["as_is", "masked"] = Field(
        "as_is", description="masked: traces (and datasets drawn from them) keep PII masked"
    )
    review_sample: float = Field(
        0.0, ge=0, le=1, description="share of this policy's calls queued for review"
    )


class GuardConfig(Section):
    """Guards, the policies that combine them, and who gets which. Off unless configured."""

    guards: list[GuardSpec] = Field(default_factory=list)
    policies: dict[str, GuardPolicy] = Field(default_factory=dict)
    default: str | None = Field(None, description="policy for calls no other rule names")
    models: dict[str, str] = Field(default_factory=dict, description="model name -> policy")
    keys: dict[str, str] = Field(
        default_factory=dict, description="API key id or name -> policy (beats `models`)"
    )
    stream_window: int = Field(
        200, gt=0, description="characters of a streamed answer checked together; held back"
    )
    review_judge: str | None = Field(
        None, description="a chat model that pre-scores queued reviews"
    )

    @model_validator(mode="after")
    def _names_resolve(self) -> GuardConfig:
        names = [g.name for g in self.guards]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"guard.guards: duplicate name(s) {', '.join(dupes)}")
        for pname, policy in self.policies.items():
            unknown = [g for g in [*policy.input, *policy.output] if g not in names]
            if unknown:
                raise ValueError(
                    f"guard.policies.{pname}: unknown guard(s) {', '.join(unknown)}; "
                    f"known: {', '.join(names) or '(none)'}"
                )
        for where, mapping in (("models", self.models), ("keys", self.keys)):
            bad = sorted({p for p in mapping.values() if p not in self.policies})
            if bad:
                raise ValueError(
                    f"guard.{where}: unknown polic(ies) {', '.join(bad)}; "
                    f"known: {', '.join(self.policies) or '(none)'}"
                )
        if self.default and self.default not in self.policies:
            raise ValueError(f"guard.default: unknown policy '{self.default}'")
        return self


class AuditConfig(Section):
    """The audit log (key changes, guard verdicts and reviews are always recorded)."""

    requests: bool = Field(
        False, description="also record every call: ids, model, key, status, SHA-256 of texts"
    )
    plaintext: bool = Field(
        False, description="with requests: keep prompts and answers in clear, not only hashes"
    )


DEFAULT_MODELS = [ModelConfig(name="local", provider="llamacpp", path="builtin:smollm2")]
DEFAULT_EMBEDDINGS = [
    EmbeddingConfig(
        name="minilm", provider="sentence-transformers", path="builtin:all-minilm-l6-v2"
    )
]
