"""The package layering of docs/architecture.md holds: each imports only packages above it."""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "llmforge"

# package -> the llmforge packages it may import (besides itself)
ALLOWED: dict[str, set[str]] = {
    "core": set(),
    "audit": {"core"},
    "models": {"core", "audit"},
    "kb": {"core", "audit", "models"},
    "guard": {"core", "audit", "models"},
    "traces": {"core", "audit", "models"},
    "agents": {"core", "audit", "models", "kb", "guard", "traces"},
    "evals": {"core", "audit", "models", "kb", "guard", "traces", "agents"},
    "distill": {"core", "audit", "models", "kb", "guard", "traces", "agents", "evals"},
}
ALLOWED["gateway"] = set(ALLOWED) - {"gateway"}
ALLOWED["ui"] = set(ALLOWED) - {"ui"}
ALLOWED["cli"] = set(ALLOWED) - {"cli"}


def imported_packages(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        names = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module]
        for name in names:
            parts = name.split(".")
            if parts[0] == "llmforge" and len(parts) > 1:
                found.add(parts[1])
    return found


def test_every_package_is_known() -> None:
    packages = {p.name for p in SRC.iterdir() if p.is_dir() and (p / "__init__.py").exists()}
    assert packages <= set(ALLOWED), f"add {packages - set(ALLOWED)} to ALLOWED and the docs"


def test_imports_point_one_way() -> None:
    violations = []
    for pkg, allowed in ALLOWED.items():
        for path in (SRC / pkg).rglob("*.py") if (SRC / pkg).exists() else ():
            bad = imported_packages(path) - allowed - {pkg, "__version__", "__main__"}
            if bad:
                violations.append(f"{path.relative_to(SRC)} imports {sorted(bad)}")
    assert not violations, "\n".join(violations)
