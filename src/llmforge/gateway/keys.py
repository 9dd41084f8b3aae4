"""API keys and their spend: the `api_keys` table, its migrations, and the ledger operations on it.

A key is shown once when created (`sk-lf-` + 256 random bits) and stored only as its SHA-256 hex
digest, with a short prefix for display. Each key may carry a model scope, per-minute limits and a
budget. Spend is kept in integer nano-dollars (1e-9 USD), so sums are exact and the budget check is
one conditional `UPDATE` that is atomic on SQLite and PostgreSQL alike:

    reserve:  reserved += c   WHERE spent + reserved + c <= budget     (rowcount 0: not now)
    settle:   reserved -= c, spent += actual

A reservation that does not fit is told apart by why: when `spent + c` alone passes the budget the
key has no room for the call (`BudgetExceededError`); otherwise calls in flight hold the room it
needs, which their settlements free, and `reserve` returns None so the caller may try again.

Every reservation is also a row in `api_key_reservations`, written in the same transaction, so one
left behind by a process that died mid-call can be released later (`release_stale`); settling and
releasing both delete that row first, so a reservation is never released twice.

All methods are synchronous and transactional; the gateway calls them on worker threads. Rate
limits are not here (see `admission.py`); neither is deciding what a call may cost.
"""

from __future__ import annotations

import hashlib
import math
import secrets
import time
import uuid
from collections.abc import Collection, Sequence

import sqlalchemy as sa
from pydantic import BaseModel, computed_field
from sqlalchemy.engine import Connection, Engine

from llmforge import audit
from llmforge.core.db import Migration, migrate, sortable_id
from llmforge.core.errors import (
    AuthenticationError,
    BudgetExceededError,
    InvalidRequestError,
    LLMForgeError,
    NotFoundError,
)

KEY_PREFIX = "sk-lf-"
SHOWN_CHARS = 12  # of the key kept for display, e.g. "sk-lf-Ab3dEf"
NANO = 1_000_000_000  # nano-dollars per dollar

metadata = sa.MetaData()
api_keys = sa.Table(
    "api_keys",
    metadata,
    sa.Column("id", sa.String(40), primary_key=True),
    sa.Column("name", sa.String(200), nullable=False),
    sa.Column("prefix", sa.String(40), nullable=False),
    sa.Column("hash", sa.String(64), nullable=False, unique=True),
    sa.Column("models", sa.JSON),
    sa.Column("rpm", sa.Integer),
    sa.Column("tpm", sa.Integer),
    sa.Column("budget_nusd", sa.BigInteger),
    sa.Column("spent_nusd", sa.BigInteger, nullable=False, server_default="0"),
    sa.Column("reserved_nusd", sa.BigInteger, nullable=False, server_default="0"),
    sa.Column("created_at", sa.Float, nullable=False),
    sa.Column("revoked_at", sa.Float),
)
reservations = sa.Table(
    "api_key_reservations",
    metadata,
    sa.Column("id", sa.String(40), primary_key=True),
    sa.Column("key_id", sa.String(40), nullable=False),
    sa.Column("amount_nusd", sa.BigInteger, nullable=False),
    sa.Column("created_at", sa.Float, nullable=False),
)


def _create(conn: Connection) -> None:
    api_keys.create(conn)
    reservations.create(conn)
    conn.execute(
        sa.text("CREATE INDEX ix_key_reservations_created ON api_key_reservations (created_at)")
    )


MIGRATIONS = [Migration("keys.0001_create", _create)]


def to_nusd(usd: float, *, up: bool = False) -> int:
    """Dollars as integer nano-dollars; `up` rounds up (for worst cases), else to nearest."""
    scaled = usd * NANO
    return math.ceil(scaled - 1e-6) if up else round(scaled)


def to_usd(nusd: int | None) -> float | None:
    return None if nusd is None else nusd / NANO


def hash_key(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


class ApiKey(BaseModel):
    """A stored key as listed: never the key itself."""

    id: str
    name: str
    prefix: str
    models: list[str] | None = None
    rpm: int | None = None
    tpm: int | None = None
    budget_usd: float | None = None
    spent_usd: float = 0.0
    reserved_usd: float = 0.0
    created_at: float
    revoked_at: float | None = None

    @computed_field  # type: ignore[prop-decorator]
    @property
    def active(self) -> bool:
        return self.revoked_at is None

    @classmethod
    def from_row(cls, row: sa.Row[tuple[object, ...]]) -> ApiKey:
        r = row._mapping
        return cls(
            id=r["id"],
            name=r["name"],
            prefix=r["prefix"],
            models=r["models"],
            rpm=r["rpm"],
            tpm=r["tpm"],
            budget_usd=to_usd(r["budget_nusd"]),
            spent_usd=to_usd(r["spent_nusd"]) or 0.0,
            reserved_usd=to_usd(r["reserved_nusd"]) or 0.0,
            created_at=r["created_at"],
            revoked_at=r["revoked_at"],
        )


class CreatedKey(BaseModel):
    """What `create` returns: the secret (shown this once) and the stored record."""

    key: str
    record: ApiKey


class KeyStore:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        migrate(engine, [*MIGRATIONS, *audit.MIGRATIONS])

    # -- keys -----------------------------------------------------------------------------------

    def create(
        self,
        name: str,
        *,
        models: Sequence[str] | None = None,
        rpm: int | None = None,
        tpm: int | None = None,
        budget_usd: float | None = None,
        known_models: Collection[str] | None = None,
        actor: str | None = None,
    ) -> CreatedKey:
        """A new key. `known_models`, when given, is what `models` must be drawn from. Recorded
        in the audit log (by `actor`) in the same transaction."""
        name = name.strip()
        if not name:
            raise InvalidRequestError("A key needs a non-empty name.", param="name")
        for value, param in ((rpm, "rpm"), (tpm, "tpm")):
            if value is not None and value < 1:
                raise InvalidRequestError(f"{param} must be at least 1 (or unset).", param=param)
        if budget_usd is not None and not (budget_usd >= 0 and math.isfinite(budget_usd)):
            raise InvalidRequestError("budget must be a number of dollars >= 0.", param="budget")
        scope = list(dict.fromkeys(m.strip() for m in models if m.strip())) if models else None
        if known_models is not None and scope:
            unknown = [m for m in scope if m not in known_models]
            if unknown:
                raise InvalidRequestError(
                    f"Unknown model(s) {', '.join(unknown)} in the key's scope. "
                    f"Known: {', '.join(sorted(known_models)) or '(none)'}.",
                    param="models",
                )
        secret = KEY_PREFIX + secrets.token_urlsafe(32)
        key_id = "key_" + uuid.uuid4().hex[:12]
        with self.engine.begin() as conn:
            conn.execute(
                api_keys.insert().values(
                    id=key_id,
                    name=name,
                    prefix=secret[:SHOWN_CHARS],
                    hash=hash_key(secret),
                    models=scope,
                    rpm=rpm,
                    tpm=tpm,
                    budget_nusd=None if budget_usd is None else to_nusd(budget_usd),
                    spent_nusd=0,
                    reserved_nusd=0,
                    created_at=time.time(),
                )
            )
            audit.record(
                conn,
                "key.created",
                actor=actor,
                subject=key_id,
                data={
                    "name": name,
                    "models": scope,
                    "rpm": rpm,
                    "tpm": tpm,
                    "budget_usd": budget_usd,
                },
            )
        return CreatedKey(key=secret, record=self.get(key_id))

    def list(self, include_revoked: bool = True) -> list[ApiKey]:
        q = sa.select(api_keys).order_by(api_keys.c.created_at)
        if not include_revoked:
            q = q.where(api_keys.c.revoked_at.is_(None))
        with self.engine.connect() as conn:
            return [ApiKey.from_row(row) for row in conn.execute(q)]

    def get(self, key_id: str) -> ApiKey:
        with self.engine.connect() as conn:
            row = conn.execute(sa.select(api_keys).where(api_keys.c.id == key_id)).first()
        if row is None:
            raise NotFoundError(f"No API key '{key_id}'. List them with `llmforge keys list`.")
        return ApiKey.from_row(row)

    def revoke(self, key_id: str, *, actor: str | None = None) -> ApiKey:
        """Revoke a key (idempotent); it stops working at once and stays listed with its spend.
        A revocation is recorded in the audit log in the same transaction."""
        with self.engine.begin() as conn:
            done = conn.execute(
                api_keys.update()
                .where(api_keys.c.id == key_id, api_keys.c.revoked_at.is_(None))
                .values(revoked_at=time.time())
            )
            if done.rowcount == 1:
                audit.record(conn, "key.revoked", actor=actor, subject=key_id)
        return self.get(key_id)

    def lookup(self, secret: str) -> ApiKey | None:
        """The active key whose secret this is, or None."""
        with self.engine.connect() as conn:
            row = conn.execute(
                sa.select(api_keys).where(
                    api_keys.c.hash == hash_key(secret), api_keys.c.revoked_at.is_(None)
                )
            ).first()
        return None if row is None else ApiKey.from_row(row)

    # -- spend ----------------------------------------------------------------------------------

    def reserve(self, key_id: str, amount_nusd: int) -> str | None:
        """Hold `amount_nusd` against the key's budget and return the reservation's id. None when
        it fits what is left of the budget but not beside the calls in flight (spent + amount <=
        budget < spent + reserved + amount): try again once they settle. BudgetExceededError when
        what is spent leaves no room for it; AuthenticationError when the key was revoked."""
        rid = sortable_id()  # reservation rows come and go with every call
        with self.engine.begin() as conn:
            k = api_keys.c
            held = conn.execute(
                api_keys.update()
                .where(
                    k.id == key_id,
                    k.revoked_at.is_(None),
                    sa.or_(
                        k.budget_nusd.is_(None),
                        k.spent_nusd + k.reserved_nusd + amount_nusd <= k.budget_nusd,
                    ),
                )
                .values(reserved_nusd=k.reserved_nusd + amount_nusd)
            )
            if held.rowcount != 1:
                row = conn.execute(sa.select(api_keys).where(k.id == key_id)).first()
                if row is None:
                    raise _refusal(None, amount_nusd)
                now = row._mapping
                if (
                    now["revoked_at"] is None
                    and now["spent_nusd"] + amount_nusd <= now["budget_nusd"]
                ):
                    return None  # calls in flight hold the room
                raise _refusal(ApiKey.from_row(row), amount_nusd)
            conn.execute(
                reservations.insert().values(
                    id=rid, key_id=key_id, amount_nusd=amount_nusd, created_at=time.time()
                )
            )
        return rid

    def settle(
        self, reservation_id: str | None, key_id: str, actual_nusd: int, again: bool = False
    ) -> None:
        """Release the reservation (if any, and not released already) and add the actual cost.
        `again` retries a settlement that failed: one whose reservation is gone already took
        effect (its commit went through before the connection broke) and is not charged twice.
        One without a reservation cannot tell: if its first commit was lost in transit after it
        took effect, it is charged twice (spend is over-counted then, never under)."""
        with self.engine.begin() as conn:
            held = 0
            if reservation_id is not None:
                row = conn.execute(
                    sa.delete(reservations)
                    .where(reservations.c.id == reservation_id)
                    .returning(reservations.c.amount_nusd)
                ).first()
                held = int(row[0]) if row is not None else 0
                if again and row is None:
                    return
            if held or actual_nusd:
                k = api_keys.c
                conn.execute(
                    api_keys.update()
                    .where(k.id == key_id)
                    .values(
                        reserved_nusd=k.reserved_nusd - held, spent_nusd=k.spent_nusd + actual_nusd
                    )
                )

    def release_stale(self, older_than_s: float) -> int:
        """Release reservations older than `older_than_s` (left by processes that died mid-call);
        returns how many."""
        cutoff = time.time() - older_than_s
        with self.engine.connect() as conn:
            stale = list(
                conn.scalars(sa.select(reservations.c.id).where(reservations.c.created_at < cutoff))
            )
        for rid in stale:
            with self.engine.begin() as conn:
                row = conn.execute(
                    sa.delete(reservations)
                    .where(reservations.c.id == rid)
                    .returning(reservations.c.key_id, reservations.c.amount_nusd)
                ).first()
                if row is not None:
                    conn.execute(
                        api_keys.update()
                        .where(api_keys.c.id == row[0])
                        .values(reserved_nusd=api_keys.c.reserved_nusd - int(row[1]))
                    )
        return len(stale)


def _refusal(key: ApiKey | None, amount_nusd: int) -> LLMForgeError:
    if key is None or not key.active:
        return AuthenticationError("This API key was revoked or deleted; use another key.")
    budget = key.budget_usd or 0.0
    return BudgetExceededError(
        f"Key '{key.name}' has spent ${key.spent_usd:.6f} of its ${budget:.6f} budget; the "
        f"${max(budget - key.spent_usd, 0):.6f} left is less than this request could cost "
        f"(${amount_nusd / NANO:.6f}). Lower max_tokens, shorten the prompt, or use a key with "
        "more budget.",
        retry_after_s=0,
    )
