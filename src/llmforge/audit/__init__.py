"""The audit log: append-only, hash-chained, verifiable; `llmforge audit verify|export|list`.

Other packages record what an auditor must be able to see with one call:

    from llmforge.audit import record
    record(engine_or_connection, "key.created", actor="master", subject=key_id, data={...})

Kinds in use: `key.created`, `key.revoked`, `guard.verdict`, `guard.review`, `request`,
`model.promoted`, `model.rolled_back`, `agent.approved`, `agent.rejected`.
"""

from llmforge.audit.export import ExportHead, export, export_lines, verify_file
from llmforge.audit.log import (
    GENESIS,
    MIGRATIONS,
    AuditEntry,
    AuditLog,
    Problem,
    Verification,
    check_chain,
    record,
)

__all__ = [
    "GENESIS",
    "MIGRATIONS",
    "AuditEntry",
    "AuditLog",
    "ExportHead",
    "Problem",
    "Verification",
    "check_chain",
    "export",
    "export_lines",
    "record",
    "verify_file",
]
