"""Engines that run the chain over many images: the local stage-major runner and its SQLite store."""
