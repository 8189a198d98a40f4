"""Reading inputs and writing outputs: images, per-image result files, the run's SQLite store, exports."""
