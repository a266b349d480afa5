"""Files: atomic writes and module reading, below `emit/` and `runtime/`."""
