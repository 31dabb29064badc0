"""LLM calls: an OpenAI-compatible client, and the scripted dev model for demos and tests."""

from .client import ChatResult, LLMClient
from .scripted import ScriptedModel, serve_model

__all__ = ["ChatResult", "LLMClient", "ScriptedModel", "serve_model"]
