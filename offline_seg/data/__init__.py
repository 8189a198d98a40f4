"""Bundled data: the demo photo (see offline_seg.demo for its credit and licence)."""
