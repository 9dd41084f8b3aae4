"""Local GGUF files as configured models (`llmforge models add PATH`): what a GGUF says about
itself, and the `models:` entries written into the config file.

- **From the file**: its chat template (it must have one that renders a conversation, or the
  command is given one), its training context (`context_length`, capped at `MAX_CONTEXT` because
  every slot of a served model reserves KV memory for it), its name. Read with llama.cpp's own
  loader, vocabulary only: the weights are not read, and a file this llama.cpp cannot load fails
  here rather than at start-up.
- **From the machine**, at run time rather than written down (the config file may move to a bigger
  machine): `threads` (all cores) and `parallel` (`llamacpp.default_parallel`); the command writes
  them only when given.
- **Into the config file**: the file the command names (`--config`, `$LLMFORGE_CONFIG`, else
  `./llmforge.yaml`, created if missing), because the catalog is built from it at start-up and it
  is where every other model is configured. The new entries are appended to its top-level
  `models:` block as text, so comments and layout elsewhere stay as they were; a file that has no
  `models:` key gets one holding the built-in defaults (which it was running on) and the new
  entries. The result is validated as settings before it replaces the file.

Not here: downloading models, converting or quantizing them, or editing entries already there
(besides replacing one with `replace`).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from llmforge.core.config import DEFAULT_MODELS, ModelConfig
from llmforge.core.errors import ConfigError
from llmforge.core.settings import load_settings

MAX_CONTEXT = 8192  # per slot; more only when asked for
_SHARD = re.compile(r"-(\d{5})-of-\d{5}\.gguf$")


@dataclass(frozen=True)
class GgufFacts:
    """What a GGUF file says about itself."""

    path: Path
    title: str  # general.name, else the file name
    architecture: str
    context_length: int | None  # what it was trained for
    chat_template: bool


def gguf_files(path: Path) -> list[Path]:
    """`path` itself, or the GGUF files in the folder `path` (the first shard of a split model;
    multimodal projectors left out)."""
    path = path.expanduser()
    if path.is_file():
        return [path]
    if not path.is_dir():
        raise ConfigError(f"'{path}' is neither a .gguf file nor a folder of them")
    found = [p for p in sorted(path.glob("*.gguf")) if _is_model(p)]
    if not found:
        raise ConfigError(f"the folder '{path}' holds no .gguf files")
    return found


def _is_model(path: Path) -> bool:
    shard = _SHARD.search(path.name)
    return "mmproj" not in path.name.lower() and (shard is None or shard.group(1) == "00001")


def inspect(path: Path, chat_template: str | None = None) -> GgufFacts:
    """The facts of one GGUF. ConfigError when llama.cpp cannot read it or it has no usable chat
    template (and none is given)."""
    from llama_cpp import Llama

    from llmforge.models.llama_decoder import VOCAB_CTX
    from llmforge.models.llamacpp import chat_prompt_of

    try:
        llm = Llama(model_path=str(path), vocab_only=True, n_ctx=VOCAB_CTX, verbose=False)
    except (ValueError, RuntimeError) as e:
        raise ConfigError(f"cannot read GGUF '{path}': {e}") from None
    meta: dict[str, str] = llm.metadata
    architecture = meta.get("general.architecture", "")
    trained = meta.get(f"{architecture}.context_length")
    try:  # raises when there is none, or it cannot render a conversation
        chat_prompt_of(path.name, llm, chat_template)
    except ConfigError as e:
        raise ConfigError(f"{e.message} (with `models add`: --chat-template FILE)") from None
    return GgufFacts(
        path=path.resolve(),
        title=meta.get("general.name") or path.stem,
        architecture=architecture,
        context_length=int(trained) if trained and trained.isdigit() else None,
        chat_template="tokenizer.chat_template" in meta,
    )


def model_name(path: Path) -> str:
    """A model name from a file name: lower case, `-` for anything unusual, no `.gguf`."""
    stem = _SHARD.sub("", path.name).removesuffix(".gguf")
    return re.sub(r"[^a-z0-9._-]+", "-", stem.lower()).strip("-") or "model"


def entry(
    facts: GgufFacts,
    name: str,
    *,
    context_length: int | None = None,
    parallel: int | None = None,
    threads: int | None = None,
    chat_template: str | None = None,
) -> ModelConfig:
    """The `models:` entry for a GGUF: its context from the file unless given (capped at
    MAX_CONTEXT), the rest from the machine at run time unless given."""
    context = context_length or min(facts.context_length or MAX_CONTEXT, MAX_CONTEXT)
    return ModelConfig(
        name=name,
        provider="llamacpp",
        path=str(facts.path),
        context_length=context,
        parallel=parallel,
        threads=threads,
        chat_template=chat_template,
    )


def config_file(path: Path | None) -> Path:
    """The file `models add` writes: the given one, else $LLMFORGE_CONFIG, else ./llmforge.yaml
    (which need not exist yet)."""
    return (path or Path(os.environ.get("LLMFORGE_CONFIG") or "llmforge.yaml")).expanduser()


def add_models(file: Path, entries: list[ModelConfig], *, replace: bool = False) -> None:
    """Append `entries` to the `models:` of `file` (see the module docstring). A name already
    configured is a ConfigError unless `replace` (then the old entry is dropped, and the file is
    rewritten from its parsed form: comments inside `models:` are lost)."""
    text = file.read_text(encoding="utf-8") if file.exists() else ""
    data = yaml.safe_load(text) if text.strip() else {}
    if not isinstance(data, dict):
        raise ConfigError(f"{file}: the top level must be a mapping of keys")
    existing = data.get("models")
    names = {e.name for e in entries}
    taken = sorted(
        str(m["name"]) for m in existing or [] if isinstance(m, dict) and m.get("name") in names
    )
    if taken and not replace:
        raise ConfigError(
            f"{file}: a model named {', '.join(taken)} is already configured; pick another "
            "--name, or pass --replace"
        )
    dumped = [_plain(e) for e in entries]
    if existing is None:
        defaults = [_plain(m) for m in DEFAULT_MODELS if m.name not in names]
        new_text = _with_block(text, yaml.safe_dump({"models": defaults + dumped}, sort_keys=False))
    elif taken or not isinstance(existing, list) or not _is_block(text):
        kept = [m for m in existing or [] if not (isinstance(m, dict) and m.get("name") in names)]
        data["models"] = kept + dumped
        new_text = yaml.safe_dump(data, sort_keys=False, allow_unicode=True)
    else:
        new_text = _append_to_block(text, dumped)
    try:
        load_settings_from_text(file, new_text)
    except ConfigError as e:
        raise ConfigError(f"{file} would not be valid with the new model(s): {e.message}") from None
    file.write_text(new_text, encoding="utf-8")


def load_settings_from_text(file: Path, text: str) -> None:
    """Validate `text` as the settings file `file` would be (written beside it, then removed)."""
    trial = file.with_name(f".{file.name}.llmforge-check")
    trial.write_text(text, encoding="utf-8")
    try:
        load_settings(trial)
    finally:
        trial.unlink(missing_ok=True)


def _plain(config: ModelConfig) -> dict[str, Any]:
    return config.model_dump(exclude_defaults=True, exclude_none=True)


def _is_block(text: str) -> bool:
    """Whether `models:` is a top-level key followed by a block (not flow) sequence."""
    return re.search(r"^models:[ \t]*(#.*)?$", text, re.MULTILINE) is not None


def _with_block(text: str, block: str) -> str:
    if text and not text.endswith("\n"):
        text += "\n"
    return text + ("\n" if text else "") + block


def _append_to_block(text: str, items: list[dict[str, Any]]) -> str:
    """Insert `items` at the end of the top-level `models:` block sequence, indented as its
    existing items are."""
    lines = text.splitlines(keepends=True)
    start = next(i for i, line in enumerate(lines) if re.match(r"^models:[ \t]*(#.*)?$", line))
    end = start + 1
    indent = "  "
    for i in range(start + 1, len(lines)):
        line = lines[i]
        if line.strip() and not line[0].isspace() and not line.startswith(("-", "#")):
            break  # the next top-level key
        if (m := re.match(r"^(\s*)- ", line)) is not None and end == start + 1:
            indent = m.group(1)
        if line.strip() and not line.lstrip().startswith("#"):
            end = i + 1
    dumped = yaml.safe_dump(items, sort_keys=False, allow_unicode=True)
    block = "".join(indent + line if line.strip() else line for line in dumped.splitlines(True))
    if end > 0 and not lines[end - 1].endswith("\n"):
        lines[end - 1] += "\n"
    return "".join(lines[:end]) + block + "".join(lines[end:])
