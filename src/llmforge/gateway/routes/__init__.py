"""The gateway's HTTP routes, one module per API: `openai` (chat, text completions, embeddings,
models), `anthropic` (messages), `kb` (knowledge bases and the MCP mount), `evals`, `admin` (keys),
`ops` (health, metrics). Each holds module-level route functions: FastAPI ones on its `router`, and
the model-running ones as `LANE` entries served by the lane (lane.py)."""
