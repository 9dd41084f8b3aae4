"""LLMForge: a self-hosted LLM platform.

The package is laid out one subpackage per capability over a thin `core`; see docs/architecture.md.
Importing `llmforge` does no work: models load only when a command or the server asks for them.
"""

__version__ = "0.1.0"
