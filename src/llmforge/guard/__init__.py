"""Guards on model input and output: prompt injection, personal data, moderation; the review
queue; `llmforge guard scan|train|review`.

- `Guard` (base.py): text in, `Verdict` out (allow / mask / redact / refuse / block, score,
  spans); registry `guards` (entry-point group `llmforge.guards`), built-ins `injection`, `pii`,
  `moderation`, `keywords`.
- `GuardPipeline` / `Screen` (pipeline.py): which guards run for a model and API key, and running
  them on one call's messages, answer or stream; hits audited and queued for review.
- `ReviewQueue` (review.py): guard hits and sampled traffic, judged, decided by people, exported
  as labelled data for `guard train` (train.py), which rebuilds the injection head (head.py).
"""

from llmforge.guard.base import (
    Action,
    Guard,
    GuardBlockedError,
    GuardContext,
    Span,
    Verdict,
    Where,
    guards,
)
from llmforge.guard.masking import StreamRestorer, Vault, redact
from llmforge.guard.pii import find_pii
from llmforge.guard.pipeline import GuardPipeline, Screen, register_builtins
from llmforge.guard.review import Review, ReviewQueue

__all__ = [
    "Action",
    "Guard",
    "GuardBlockedError",
    "GuardContext",
    "GuardPipeline",
    "Review",
    "ReviewQueue",
    "Screen",
    "Span",
    "StreamRestorer",
    "Vault",
    "Verdict",
    "Where",
    "find_pii",
    "guards",
    "redact",
    "register_builtins",
]
