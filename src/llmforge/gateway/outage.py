"""A database that cannot be reached, as the client sees it: 503 with `Retry-After`, not 500.

`DatabaseUnavailableError` is what the gateway raises when a call needs the database (to look up
its API key, to reserve budget) and the database is unreachable, locked past its timeout, or has
dropped its connection: the call was not run, and the same request may succeed in a few seconds.
`database_unavailable(e)` translates such a SQLAlchemy error (the traces package's `unavailable`
decides which are "for now") and leaves every other error alone, so a bug in a query is still a
500 that the log explains. Admission translates where it calls the database; the gateway's last-
resort handlers (the lane's and FastAPI's) translate what reaches them from any other route.

This module does not retry anything: trace rows wait in their writer and settlements in
admission's queue (admission.py); a refused call is the client's to repeat.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from sqlalchemy.exc import SQLAlchemyError, StatementError

from llmforge.core.errors import OverloadedError
from llmforge.traces.store import unavailable

RETRY_AFTER_S = 2.0


class DatabaseUnavailableError(OverloadedError):
    """The database (`database:` in llmforge.yaml) cannot be reached now (503)."""

    code = "database_unavailable"

    def __init__(self, reason: str, *, retry_after_s: float = RETRY_AFTER_S) -> None:
        super().__init__(
            f"The database is unavailable ({reason}); the call was not run. Retry after the "
            "Retry-After seconds; if it persists, check that the server named by `database` "
            "(LLMFORGE_DATABASE) is running and reachable.",
            retry_after_s=retry_after_s,
        )
        self.reason = reason


def database_unavailable(e: BaseException) -> DatabaseUnavailableError | None:
    """The 503 for `e` when it says the database is unreachable for now, else None."""
    if not isinstance(e, SQLAlchemyError) or not unavailable(e):
        return None
    return DatabaseUnavailableError(outage_reason(e))


@contextlib.contextmanager
def outage_as_503() -> Iterator[None]:
    """Database work inside raises `DatabaseUnavailableError` instead of an error that says the
    database is unreachable for now; any other error passes unchanged."""
    try:
        yield
    except SQLAlchemyError as e:
        outage = database_unavailable(e)
        if outage is None:
            raise
        raise outage from None


def outage_reason(e: SQLAlchemyError) -> str:
    """The driver's first line, without the statement or its parameters (a key's hash)."""
    cause = e.orig if isinstance(e, StatementError) and e.orig is not None else e
    text = str(cause).split("\n", 1)[0].strip().rstrip(".")
    return f"{type(cause).__name__}: {text[:200]}"
