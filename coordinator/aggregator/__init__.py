"""The rank-0 aggregator: ingest, dedupe, reduce, commit to the journal, ack, serve state."""
