"""The web UI: a chat page served by the gateway, with conversation history kept on the server.

`create_web_app(settings)` builds the gateway app with `mount` as an extension, which adds
`/api/conversations` (history in the `conversations` tables, created by migrations), the page at `/`
and its assets under `/static/`. The page talks to the gateway's own OpenAI-compatible `/v1` API
like any client.

It does not run models, stream answers on the page's behalf, authenticate users or separate their
histories; it has no build step and loads nothing from outside the server.
"""

from llmforge.ui.app import create_web_app, mount
from llmforge.ui.conversations import ConversationStore

__all__ = ["ConversationStore", "create_web_app", "mount"]
