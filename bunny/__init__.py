"""Bunny: lightweight multimodal models (vision tower -> projector -> small LLM) on native transformers classes."""

__version__ = "1.0.0"
