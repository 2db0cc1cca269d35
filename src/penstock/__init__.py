"""Penstock: a self-hosted, OpenAI-compatible LLM service measured stage by stage."""

__version__ = "0.1.0"
