"""The flywheel file: what `llmforge distill run flywheel.yaml` does, stage by stage.

One YAML file names the task (`name`), the teacher and the student, and holds one section per
stage: `collect`, `label`, `train`, `eval`, `export`, `route`. Every key but `name` and `teacher`
has a default; unknown keys are rejected so a typo never silently does nothing. The server-side
`distill:` section of llmforge.yaml (folders, refresh) is `core.config.DistillConfig`, not this.

This module only describes; the stages live in their own modules.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from llmforge.core.errors import ConfigError
from llmforge.core.settings import format_validation_error


class Spec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class CollectSpec(Spec):
    """Where the prompts come from and how they are split."""

    source: Literal["traces", "jsonl", "feedback"] = Field(
        "traces",
        description="the gateway's traces, a JSONL file, or a route's escalations and "
        "disagreements (the loop's next dataset)",
    )
    path: str | None = Field(None, description="source jsonl: the file")
    text_field: str = Field("text", description="source jsonl: the field holding the prompt text")
    label_field: str | None = Field(
        "label", description="source jsonl: a gold label, kept as the reference for evaluation"
    )
    system: str | None = Field(
        None, description="a system message put before each prompt (jsonl source)"
    )
    test_path: str | None = Field(
        None,
        description="a JSONL file (same fields) that is the test split as it is, e.g. a "
        "benchmark's dev set; the source then fills only train and val",
    )
    model: str | None = Field(None, description="traces: calls made to this model")
    key_id: str | None = Field(None, description="traces: calls made with this API key id")
    since: float | None = Field(None, description="traces: unix time, calls at or after it")
    until: float | None = Field(None, description="traces: unix time, calls before it")
    metadata: dict[str, str] = Field(
        default_factory=dict,
        description="traces: the call's metadata must hold these (tags, `feedback: up`, a judge "
        "verdict the caller recorded)",
    )
    route: str | None = Field(None, description="feedback: the routed model name")
    limit: int = Field(100_000, gt=0, description="most examples read")
    val_share: float = Field(0.1, ge=0, lt=1)
    test_share: float = Field(0.2, gt=0, lt=1)
    split_seed: str = Field(
        "llmforge",
        description="salt of the hash that assigns a prompt to its split; a prompt keeps its split "
        "across re-collections, so the test split is never trained on",
    )

    @model_validator(mode="after")
    def _shares(self) -> CollectSpec:
        if self.val_share + self.test_share >= 1:
            raise ValueError("val_share + test_share must leave room for a train split")
        if self.source == "jsonl" and not self.path:
            raise ValueError("source jsonl needs `path`")
        if self.source == "feedback" and not self.route:
            raise ValueError("source feedback needs `route` (the routed model name)")
        return self


class LabelSpec(Spec):
    samples: int = Field(1, ge=1, le=16, description="self-consistency: answers per prompt")
    temperature: float | None = Field(
        None, ge=0, description="teacher temperature (default: 0 for one sample, 0.7 for more)"
    )
    min_agreement: float = Field(
        0.5, gt=0, le=1, description="share of samples the majority answer needs to be kept"
    )
    judge: str | None = Field(None, description="a chat model that grades each label (rubric)")
    judge_min: float = Field(0.75, ge=0, le=1, description="labels graded below are dropped")
    rubric: str | None = Field(None, description="what the judge checks (default: correctness)")
    max_tokens: int = Field(64, gt=0)
    concurrency: int = Field(4, ge=1)
    price_input_per_mtok: float | None = Field(
        None, ge=0, description="bill the teacher at this list price instead of its `price`"
    )
    price_output_per_mtok: float | None = Field(None, ge=0)


class LoraSpec(Spec):
    r: int = Field(16, gt=0)
    alpha: int = Field(32, gt=0)
    dropout: float = Field(0.0, ge=0, lt=1)
    targets: list[str] = Field(
        default_factory=lambda: [
            "q_proj",
            "k_proj",
            "v_proj",
            "o_proj",
            "gate_proj",
            "up_proj",
            "down_proj",
        ]
    )


class TrainSpec(Spec):
    steps: int = Field(100, gt=0, description="optimizer steps")
    batch_size: int = Field(8, gt=0)
    max_seq_len: int = Field(
        256, ge=16, description="tokens per example (prompt cut in the middle)"
    )
    learning_rate: float = Field(1e-3, gt=0)
    warmup_share: float = Field(0.1, ge=0, lt=1)
    weight_decay: float = Field(0.0, ge=0)
    checkpoint_every: int = Field(20, gt=0, description="steps between resumable checkpoints")
    seed: int = 0
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="auto: a GPU when present")
    threads: int | None = Field(None, gt=0, description="CPU threads (default: all)")
    lora: LoraSpec = Field(default_factory=LoraSpec)


class EvalSpec(Spec):
    metric: str = Field("exact_match", description="an evals metric scoring output vs reference")
    gate_share: float = Field(
        0.9, ge=0, le=1, description="the student passes when its score >= this x the teacher's"
    )
    max_tokens: int = Field(16, gt=0, description="student answers are cut here")
    concurrency: int = Field(1, ge=1)


class ExportSpec(Spec):
    model: str | None = Field(None, description="registered name (default: <name>-student)")
    quant: Literal["f16", "q8_0", "q6_k", "q5_k_m", "q4_k_m"] = "q8_0"
    max_quant_loss: float = Field(
        0.05, ge=0, le=1, description="the GGUF may score at most this much below the merged model"
    )
    context_length: int = Field(2048, gt=0)
    threads: int | None = Field(
        None,
        gt=0,
        description="CPU threads of the GGUF check (default: all; 1 on a machine busy with "
        "other work, where llama.cpp's spinning threads slow down many times)",
    )


class RouteSpec(Spec):
    model: str | None = Field(
        None, description="the model name whose traffic is shared (default: the teacher)"
    )
    share: float = Field(0.1, ge=0, le=1, description="canary: share of calls the student answers")
    min_logprob: float = Field(
        -1.0, le=0, description="escalate to the teacher below this mean token log-probability"
    )
    shadow: float = Field(
        0.0,
        ge=0,
        le=1,
        description="share of teacher-served calls also answered by the student "
        "for the online comparison",
    )
    promote_min: int = Field(50, ge=1, description="compared calls needed before promotion")
    promote_agreement: float = Field(0.9, ge=0, le=1, description="agreement needed to promote")
    auto_promote: bool = False


class FlywheelSpec(Spec):
    """A whole flywheel (one task)."""

    name: str = Field(min_length=1, pattern=r"^[A-Za-z0-9_.-]+$")
    teacher: str = Field(min_length=1, description="a chat model of llmforge.yaml")
    student: str = Field(
        "builtin:smollm2", description="the student's base: a GGUF (built-in) or an HF folder"
    )
    collect: CollectSpec = Field(default_factory=CollectSpec)
    label: LabelSpec = Field(default_factory=LabelSpec)
    train: TrainSpec = Field(default_factory=TrainSpec)
    eval: EvalSpec = Field(default_factory=EvalSpec)
    export: ExportSpec = Field(default_factory=ExportSpec)
    route: RouteSpec = Field(default_factory=RouteSpec)

    @property
    def student_name(self) -> str:
        return self.export.model or f"{self.name}-student"

    @property
    def routed_model(self) -> str:
        return self.route.model or self.teacher


def load_flywheel(path: str | Path, **overrides: Any) -> FlywheelSpec:
    """Read and check a flywheel file; every problem is one ConfigError line naming the key."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"Flywheel file '{p}' not found; see examples/flywheel.yaml.")
    try:
        data = yaml.safe_load(p.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{p}: is not valid YAML: {e}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{p}: the top level must be a mapping (name, teacher, collect, ...)")
    data.update(overrides)
    try:
        return FlywheelSpec.model_validate(data)
    except ValidationError as e:
        raise ConfigError(format_validation_error(str(p), e, FlywheelSpec)) from None
