"""The journal: the run's SQLite store, the source of truth every reader and forwarder is fed from."""
