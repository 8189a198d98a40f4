"""Engines that run the chain over many images: the local stage-major runner, its stage keys, and Ray."""
