"""The paper's prompt templates, shipped as package data (`offline_seg.prompts`)."""
