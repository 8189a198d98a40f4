"""LLM backends behind one small interface (`offline_seg.llm.base.LLM`)."""

from offline_seg.llm.base import LLM, ChatMessage
from offline_seg.llm.registry import load_llm

__all__ = ["LLM", "ChatMessage", "load_llm"]
