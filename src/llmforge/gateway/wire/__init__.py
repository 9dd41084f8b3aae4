"""The wire formats the gateway speaks — OpenAI's (`openai.py`), Anthropic's Messages API
(`anthropic.py`) and OpenAI's Responses API (`responses.py`) — each converted to and from core types
in its own module. Routes use them; nothing below the gateway ever sees them."""
