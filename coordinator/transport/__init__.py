"""Transport: from a rank's buffer to the aggregator's socket (sender, wire format, spool, discovery, launcher)."""
