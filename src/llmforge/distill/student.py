"""The student in PyTorch: its base as a Hugging Face folder, loaded with or without an adapter,
and a `ChatModel` over it for evaluation.

A GGUF base (`builtin:smollm2`, or a `.gguf` path) is dequantized by transformers once and saved
as a plain HF folder under `distill.base_cache`, keyed by the file's sha256; training, evaluation
and merging read that folder (a second load takes well under a second instead of ~20 s of
dequantization). An HF folder is used as it is. Nothing is ever downloaded.

torch and transformers are imported inside the functions, so importing this module is cheap.
"""

from __future__ import annotations

import asyncio
import hashlib
import shutil
import threading
from collections.abc import AsyncGenerator, Sequence
from pathlib import Path
from typing import Any

from llmforge.core.errors import ConfigError
from llmforge.core.types import Completion, Delta, Message, Sampling, TokenLogprob, Usage
from llmforge.models.builtin import resolve

DEFAULT_MAX_TOKENS = 64


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def base_folder(student: str, cache_root: Path) -> Path:
    """The HF folder of the student's base (see the module docstring)."""
    path = resolve(student, what="student")
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ConfigError(
                f"student '{student}' is a folder without config.json; give a Hugging Face model "
                "folder or a GGUF file"
            )
        return path
    if path.suffix != ".gguf":
        raise ConfigError(f"student '{student}': expected a .gguf file or an HF folder")
    folder = cache_root.expanduser() / file_sha256(path)[:16]
    if (folder / "config.json").is_file():
        return folder
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    model: Any = AutoModelForCausalLM.from_pretrained(
        path.parent, gguf_file=path.name, dtype=torch.float32
    )
    # the weights are plain tensors now; forget that they came from a GGUF so they can be saved
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    tmp = folder.with_name(folder.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    shutil.rmtree(folder, ignore_errors=True)
    tmp.rename(folder)
    return folder


def load_student(base: Path, adapter: Path | None = None, device: str = "cpu") -> tuple[Any, Any]:
    """(model, tokenizer) from the base folder, with the adapter merged in when given."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(base)
    model: Any = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    if adapter is not None:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, adapter).merge_and_unload()
    model.to(device)
    model.eval()
    return model, tokenizer


def prompt_text(tokenizer: Any, messages: Sequence[Message]) -> str:
    chat = [{"role": m.role, "content": m.content} for m in messages]
    text: str = tokenizer.apply_chat_template(chat, tokenize=False, add_generation_prompt=True)
    return text


class TransformersChatModel:
    """A `ChatModel` over a loaded causal LM: greedy (or sampled) generation on a worker thread,
    one call at a time, with token log-probabilities when asked."""

    def __init__(self, model: Any, tokenizer: Any) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self._lock = threading.Lock()

    async def complete(self, messages: Sequence[Message], sampling: Sampling) -> Completion:
        return await asyncio.to_thread(self._generate, messages, sampling)

    async def stream(
        self, messages: Sequence[Message], sampling: Sampling
    ) -> AsyncGenerator[Delta, None]:
        answer = await self.complete(messages, sampling)
        yield Delta(text=answer.text, logprobs=answer.logprobs)
        yield Delta(finish_reason=answer.finish_reason, usage=answer.usage)

    async def aclose(self) -> None:
        return None

    def _generate(self, messages: Sequence[Message], sampling: Sampling) -> Completion:
        import torch

        tok = self.tokenizer
        enc = tok(prompt_text(tok, messages), return_tensors="pt", add_special_tokens=False)
        ids = enc["input_ids"].to(self.model.device)
        max_new = sampling.max_tokens or DEFAULT_MAX_TOKENS
        sample = bool(sampling.temperature)
        options: dict[str, Any] = {"do_sample": sample}
        if sample:
            options.update(temperature=sampling.temperature, top_p=sampling.top_p or 1.0)
            if sampling.seed is not None:
                torch.manual_seed(sampling.seed)
        with self._lock, torch.no_grad():
            out = self.model.generate(
                ids,
                attention_mask=torch.ones_like(ids),
                max_new_tokens=max_new,
                eos_token_id=tok.eos_token_id,
                pad_token_id=tok.pad_token_id or tok.eos_token_id,
                output_scores=sampling.logprobs,
                return_dict_in_generate=True,
                **options,
            )
        new = out.sequences[0, ids.shape[1] :].tolist()
        ended = bool(new) and new[-1] == tok.eos_token_id
        body = new[:-1] if ended else new
        logprobs = None
        if sampling.logprobs:
            logprobs = []
            for step, token in zip(out.scores, body, strict=False):
                lp = torch.log_softmax(step[0].float(), dim=-1)[token].item()
                logprobs.append(TokenLogprob(token=tok.decode([token]), logprob=lp))
        text = tok.decode(body, skip_special_tokens=True)
        for stop in sampling.stop:
            if stop and stop in text:
                text = text[: text.index(stop)]
        return Completion(
            text=text,
            finish_reason="stop" if ended or len(new) < max_new else "length",
            usage=Usage(prompt_tokens=int(ids.shape[1]), completion_tokens=len(new)),
            logprobs=logprobs,
        )


__all__ = [
    "TransformersChatModel",
    "base_folder",
    "file_sha256",
    "load_student",
    "prompt_text",
]
