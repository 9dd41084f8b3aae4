"""The one error tree of LLMForge.

Every error a user can cause or meet is a subclass of `LLMForgeError`. Each class carries the HTTP
status and the OpenAI-style `type`/`code` it maps to, so the gateway turns any of them into a
response in one handler and the CLI prints its message on one line. Errors carry data; they never
log.

    LLMForgeError
    ├── ConfigError                   bad llmforge.yaml, settings or an unknown plugin name
    │   └── UnknownNameError          a registry has no entry of that name (lists the valid ones)
    ├── InvalidRequestError           a client's request is wrong (400)
    │   ├── ContextWindowExceededError  the prompt does not fit the model (400; router falls back)
    │   └── RequestTooLargeError      the request body is over `server.max_body_bytes` (413)
    ├── AuthenticationError           no or unknown API key (401)
    ├── PermissionDeniedError         the key may not use that model or endpoint (403)
    ├── NotFoundError                 something named does not exist (404)
    │   └── ModelNotFoundError        an unknown model name
    ├── RateLimitError                a key's requests or tokens per minute are used up (429)
    │   └── BudgetExceededError       a key's budget would be exceeded (429)
    ├── OverloadedError               a local queue is full; retry later (503)
    └── ModelError                    a model backend failed (502)
        ├── UpstreamError             an upstream server answered with an error status
        └── UpstreamTimeoutError      an upstream server did not answer in time (504)

Third-party exceptions are translated into these at the boundary where they are raised.
"""

from __future__ import annotations

from collections.abc import Iterable


class LLMForgeError(Exception):
    """Root of all LLMForge errors. `message` says what went wrong and how to fix it."""

    http_status: int = 500
    error_type: str = "server_error"
    code: str | None = None

    def __init__(self, message: str, *, param: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param


class ConfigError(LLMForgeError):
    """The configuration (file, environment or plugin names) is invalid."""

    code = "config_error"


class UnknownNameError(ConfigError):
    """A registry lookup failed; `names` are the valid choices."""

    def __init__(self, kind: str, name: str, names: Iterable[str], hint: str = "") -> None:
        self.kind, self.name, self.names = kind, name, sorted(names)
        known = ", ".join(self.names) or "(none)"
        super().__init__(f"Unknown {kind} '{name}'. Known: {known}.{(' ' + hint) if hint else ''}")


class InvalidRequestError(LLMForgeError):
    http_status = 400
    error_type = "invalid_request_error"
    code = "invalid_request"


class ContextWindowExceededError(InvalidRequestError):
    code = "context_length_exceeded"


class RequestTooLargeError(InvalidRequestError):
    http_status = 413
    code = "request_too_large"


class AuthenticationError(LLMForgeError):
    http_status = 401
    error_type = "authentication_error"
    code = "invalid_api_key"


class PermissionDeniedError(LLMForgeError):
    http_status = 403
    error_type = "permission_error"
    code = "permission_denied"


class RateLimitError(LLMForgeError):
    http_status = 429
    error_type = "rate_limit_error"
    code = "rate_limit_exceeded"

    def __init__(self, message: str, *, retry_after_s: float = 1.0) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class BudgetExceededError(RateLimitError):
    error_type = "insufficient_quota"
    code = "budget_exceeded"


class NotFoundError(LLMForgeError):
    http_status = 404
    error_type = "invalid_request_error"
    code = "not_found"


class ModelNotFoundError(NotFoundError):
    code = "model_not_found"

    def __init__(self, name: str, known: Iterable[str]) -> None:
        self.name, self.known = name, sorted(known)
        super().__init__(
            f"The model '{name}' does not exist. Known: {', '.join(self.known) or '(none)'}. "
            "Add it under `models:` in llmforge.yaml.",
            param="model",
        )


class OverloadedError(LLMForgeError):
    http_status = 503
    error_type = "server_error"
    code = "model_overloaded"

    def __init__(self, message: str, *, retry_after_s: float = 1.0) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class ModelError(LLMForgeError):
    http_status = 502
    error_type = "api_error"
    code = "model_error"


class UpstreamError(ModelError):
    """`status_code` is the upstream's; an upstream's verdict that the request is invalid stays a
    400."""

    def __init__(
        self, message: str, *, status_code: int | None = None, retry_after_s: float | None = None
    ) -> None:
        super().__init__(message)
        self.status_code = status_code
        self.retry_after_s = retry_after_s
        if status_code in (400, 413, 422):
            self.http_status, self.error_type, self.code = (
                400,
                "invalid_request_error",
                "upstream_rejected",
            )


class UpstreamTimeoutError(ModelError):
    http_status = 504
    code = "upstream_timeout"
