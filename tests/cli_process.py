"""Run the real `llmforge` command in a subprocess, as a user would (for the CLI tests)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path


def llmforge(
    *args: str, cwd: Path, env: dict[str, str] | None = None, timeout: float = 300
) -> subprocess.CompletedProcess[str]:
    """`python -m llmforge ARGS` in `cwd`; wide columns so rich tables do not wrap."""
    return subprocess.run(
        [sys.executable, "-m", "llmforge", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "COLUMNS": "200", **(env or {})},
    )
