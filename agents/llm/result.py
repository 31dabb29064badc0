"""What one chat completion returned: what the journal records of an `ctx.llm` call, and
what a replay decodes (without loading the HTTP client)."""

from __future__ import annotations

from typing import Any

import msgspec


class ChatResult(msgspec.Struct, kw_only=True):
    """What one chat completion returned."""

    content: str
    model: str
    input_tokens: int = 0
    output_tokens: int = 0
    finish_reason: str = ""
    tool_calls: list[dict[str, Any]] = []
