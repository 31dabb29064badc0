"""LLM calls: an OpenAI-compatible client, tool use through the authorization gate, prompts
that keep untrusted text in data blocks, and the scripted dev model for demos and tests."""

from .client import ChatResult, LLMClient
from .prompt import DATA_RULE, data_block, prompt
from .scripted import ScriptedModel, serve_model
from .tools import ToolCall, ToolRun, use_tools

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
