"""Reading inputs and writing outputs: images, per-image result files."""
