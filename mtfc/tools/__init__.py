"""Tools that compile and run (inspect's XLA figures and partitioner comparison,
later bisect and the layout search's measurements): above the runtime."""
