"""Train: LoRA supervised fine-tuning of the student on the teacher's labels.

Each example is the chat template's rendering of its conversation followed by the teacher's answer
and the end-of-turn token; the loss is on the answer only. A prompt longer than `max_seq_len`
keeps its head and its last tokens (the template's hand-over to the assistant) and loses its
middle. The batch order is a function of (seed, step), so a resumed run sees exactly the batches
the killed one would have.

Every `checkpoint_every` steps the adapter, the optimizer and scheduler state, the losses so far
and the RNG state are written to `checkpoints/step-N/` and then `checkpoints/latest` is replaced
atomically: a run killed at any moment (even `kill -9`) resumes from the last whole checkpoint.
The final adapter is saved in `adapter/`, with `report.json` and a loss curve (`loss.svg`).

A plain PyTorch loop over peft: trl's SFTTrainer would add its own checkpoint layout and data
pipeline for nothing this loop needs. Runs on a GPU when one is present (`device: auto`).
"""

from __future__ import annotations

import json
import os
import random
import shutil
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field

from llmforge.core.errors import InvalidRequestError
from llmforge.distill.collect import Example
from llmforge.distill.config import TrainSpec
from llmforge.distill.student import prompt_text

TrainProgress = Callable[[int, int, float | None], None]
"""(step done, total steps, last loss)"""

KEEP_CHECKPOINTS = 2
PROMPT_TAIL = 8  # tokens kept at the end of a cut prompt: the hand-over to the assistant


class TrainResult(BaseModel):
    base: str
    adapter: str
    steps: int
    batch_size: int
    max_seq_len: int
    examples: int
    epochs: float
    losses: list[float]
    final_loss: float | None = Field(None, description="mean loss of the last 10% of steps")
    resumed_from: int | None = Field(None, description="the checkpoint's step, when resumed")
    device: str
    train_s: float = Field(0.0, description="time in optimizer steps (this process)")
    tokens: int = Field(0, description="tokens trained on (this process)")


def encode(tokenizer: Any, example: Example, max_len: int) -> tuple[list[int], list[int]]:
    """(input ids, labels): the prompt masked with -100, the label and end of turn learned."""
    if not example.label:
        raise InvalidRequestError(f"example '{example.id}' has no label; run the label stage")
    prompt = tokenizer(prompt_text(tokenizer, example.messages), add_special_tokens=False)
    answer = tokenizer(example.label + tokenizer.eos_token, add_special_tokens=False)
    p_ids, a_ids = list(prompt["input_ids"]), list(answer["input_ids"])[: max_len // 2]
    room = max_len - len(a_ids)
    if len(p_ids) > room:
        p_ids = p_ids[: room - PROMPT_TAIL] + p_ids[-PROMPT_TAIL:]
    return p_ids + a_ids, [-100] * len(p_ids) + a_ids


def batch_order(n: int, steps: int, batch_size: int, seed: int) -> list[list[int]]:
    """Example indices of every step's batch: a fresh permutation each epoch."""
    order: list[int] = []
    epoch = 0
    while len(order) < steps * batch_size:
        perm = list(range(n))
        random.Random(seed * 100_003 + epoch).shuffle(perm)
        order.extend(perm)
        epoch += 1
    return [order[s * batch_size : (s + 1) * batch_size] for s in range(steps)]


def train(
    examples: Sequence[Example],
    base: Path,
    spec: TrainSpec,
    folder: Path,
    progress: TrainProgress | None = None,
) -> TrainResult:
    """Train (or resume) the adapter in `folder`; returns when every step is done."""
    import torch
    from peft import LoraConfig, get_peft_model, set_peft_model_state_dict
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if not examples:
        raise InvalidRequestError("No labelled training examples; collect and label first.")
    torch.set_num_threads(spec.threads or os.cpu_count() or 1)
    device = (
        "cuda"
        if spec.device == "cuda" or (spec.device == "auto" and torch.cuda.is_available())
        else "cpu"
    )
    torch.manual_seed(spec.seed)
    tokenizer = AutoTokenizer.from_pretrained(base)
    pad_id = (
        tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    )
    encoded = [encode(tokenizer, ex, spec.max_seq_len) for ex in examples]
    model: Any = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    lora = spec.lora
    model = get_peft_model(
        model,
        LoraConfig(
            r=lora.r,
            lora_alpha=lora.alpha,
            lora_dropout=lora.dropout,
            target_modules=list(lora.targets),
            task_type="CAUSAL_LM",
        ),
    )
    model.to(device)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=spec.learning_rate, weight_decay=spec.weight_decay)
    warmup = int(spec.steps * spec.warmup_share)

    def schedule(step: int) -> float:
        if step < warmup:
            return (step + 1) / (warmup + 1)
        return max(0.0, (spec.steps - step) / max(1, spec.steps - warmup))

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
    checkpoints = folder / "checkpoints"
    losses: list[float] = []
    start = 0
    resumed_from = None
    latest = _latest(checkpoints)
    if latest is not None:
        state = torch.load(latest / "state.pt", weights_only=False)
        set_peft_model_state_dict(model, load_file(latest / "adapter.safetensors"))
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        torch.set_rng_state(state["rng"])
        losses = list(state["losses"])
        start = resumed_from = int(state["step"])
    batches = batch_order(len(encoded), spec.steps, spec.batch_size, spec.seed)
    model.train()
    if progress:
        progress(start, spec.steps, losses[-1] if losses else None)
    train_s = 0.0
    trained_tokens = 0
    for step in range(start, spec.steps):
        began = time.perf_counter()
        rows = [encoded[i] for i in batches[step]]
        width = max(len(ids) for ids, _ in rows)
        ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
        labels = torch.full((len(rows), width), -100, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for r, (x, y) in enumerate(rows):
            ids[r, : len(x)] = torch.tensor(x)
            labels[r, : len(y)] = torch.tensor(y)
            mask[r, : len(x)] = 1
        out = model(
            input_ids=ids.to(device), attention_mask=mask.to(device), labels=labels.to(device)
        )
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(float(out.loss.item()))
        train_s += time.perf_counter() - began
        trained_tokens += int(mask.sum())
        done = step + 1
        if done % spec.checkpoint_every == 0 and done < spec.steps:
            _checkpoint(model, optimizer, scheduler, losses, done, checkpoints)
        if progress:
            progress(done, spec.steps, losses[-1])
    adapter = folder / "adapter"
    tmp = folder / "adapter.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    shutil.rmtree(adapter, ignore_errors=True)
    tmp.rename(adapter)
    tail = losses[-max(1, len(losses) // 10) :]
    result = TrainResult(
        base=str(base),
        adapter=str(adapter),
        steps=spec.steps,
        batch_size=spec.batch_size,
        max_seq_len=spec.max_seq_len,
        examples=len(encoded),
        epochs=spec.steps * spec.batch_size / len(encoded),
        losses=losses,
        final_loss=sum(tail) / len(tail) if tail else None,
        resumed_from=resumed_from,
        device=device,
        train_s=train_s,
        tokens=trained_tokens,
    )
    (folder / "report.json").write_text(result.model_dump_json(indent=2), encoding="utf-8")
    (folder / "loss.svg").write_text(loss_svg(losses), encoding="utf-8")
    return result


def _checkpoint(
    model: Any, optimizer: Any, scheduler: Any, losses: list[float], step: int, root: Path
) -> None:
    import torch
    from peft import get_peft_model_state_dict
    from safetensors.torch import save_file

    root.mkdir(parents=True, exist_ok=True)
    target = root / f"step-{step:06d}"
    tmp = root / f".step-{step:06d}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    weights = {
        k: v.detach().cpu().contiguous() for k, v in get_peft_model_state_dict(model).items()
    }
    save_file(weights, tmp / "adapter.safetensors")
    torch.save(
        {
            "step": step,
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "losses": losses,
            "rng": torch.get_rng_state(),
        },
        tmp / "state.pt",
    )
    shutil.rmtree(target, ignore_errors=True)
    tmp.rename(target)
    pointer = root / ".latest.tmp"
    pointer.write_text(target.name, encoding="utf-8")
    pointer.replace(root / "latest")  # atomic: `latest` always names a whole checkpoint
    for old in sorted(p for p in root.glob("step-*") if p.is_dir())[:-KEEP_CHECKPOINTS]:
        shutil.rmtree(old, ignore_errors=True)


def _latest(root: Path) -> Path | None:
    pointer = root / "latest"
    if not pointer.is_file():
        return None
    target = root / pointer.read_text(encoding="utf-8").strip()
    return target if (target / "state.pt").is_file() else None


def latest_step(folder: Path) -> int | None:
    """The step of the run's last whole checkpoint (None if it has none)."""
    found = _latest(folder / "checkpoints")
    return None if found is None else int(found.name.removeprefix("step-"))


def loss_svg(losses: Sequence[float], width: int = 480, height: int = 160) -> str:
    """The loss curve as a small self-contained SVG polyline."""
    if not losses:
        return f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}"/>\n'
    top, low = max(losses), min(losses)
    span = (top - low) or 1.0
    n = max(len(losses) - 1, 1)
    points = " ".join(
        f"{10 + (width - 20) * i / n:.1f},{10 + (height - 30) * (top - v) / span:.1f}"
        for i, v in enumerate(losses)
    )
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}">'
        f'<polyline fill="none" stroke="#2563eb" stroke-width="1.5" points="{points}"/>'
        f'<text x="10" y="{height - 5}" font-size="11">{len(losses)} steps, loss '
        f"{losses[0]:.3f} → {losses[-1]:.3f}</text></svg>\n"
    )


def report_json(folder: Path) -> dict[str, Any] | None:
    path = folder / "report.json"
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None
