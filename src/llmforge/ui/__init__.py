"""The web UI: the workbench pages served by the gateway, and the chat's history on the server.

`create_web_app(settings)` builds the gateway app with `mount` as an extension, which adds
`/api/conversations` (history in the `conversations` tables, created by migrations), the pages
(`/` chat, `/kb`, `/traces`, `/evals`, `/keys`) and their assets under `/static/`. The pages talk
to the gateway's own APIs like any client.

It does not run models, stream answers on the pages' behalf, authenticate users or separate their
histories; it has no build step and loads nothing from outside the server.
"""

from llmforge.ui.app import PAGES, create_web_app, mount
from llmforge.ui.conversations import ConversationStore

__all__ = ["PAGES", "ConversationStore", "create_web_app", "mount"]
