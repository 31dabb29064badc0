"""LLM calls: an OpenAI-compatible client, tool use through the authorization gate, prompts
that keep untrusted text in data blocks, and the scripted dev model for demos and tests."""

from typing import TYPE_CHECKING

from relaybus.bus.lazy import exports

from .prompt import prompt  # bound eagerly: the name is also its module's, which would shadow it

if TYPE_CHECKING:
    from .client import LLMClient
    from .prompt import DATA_RULE, data_block
    from .result import ChatResult
    from .scripted import ScriptedModel, serve_model
    from .tools import ToolCall, ToolRun, use_tools

__getattr__ = exports(
    __name__,
    {
        ".client": ["LLMClient"],
        ".result": ["ChatResult"],
        ".prompt": ["DATA_RULE", "data_block"],
        ".scripted": ["ScriptedModel", "serve_model"],
        ".tools": ["ToolCall", "ToolRun", "use_tools"],
    },
)

__all__ = [
    "DATA_RULE",
    "ChatResult",
    "LLMClient",
    "ScriptedModel",
    "ToolCall",
    "ToolRun",
    "data_block",
    "prompt",
    "serve_model",
    "use_tools",
]
