"""Every tunable default, with its unit in the name."""

from __future__ import annotations

__all__ = [
    "ACK_TIMEOUT_S",
    "AGGREGATOR_START_TIMEOUT_S",
    "ARTIFACT_MAX_COPY_BYTES",
    "CLOSE_TIMEOUT_S",
    "DIR_NAME",
    "FLUSH_INTERVAL_S",
    "GROUP_TIMEOUT_S",
    "HEARTBEAT_INTERVAL_S",
    "LIVENESS_TIMEOUT_S",
    "MAX_AGGREGATOR_RESTARTS",
    "MAX_BATCH_POINTS",
    "MAX_BUFFER_POINTS",
    "MAX_FIELD_STR_BYTES",
    "MAX_FRAME_BYTES",
    "MAX_KEYS_PER_RUN",
    "MAX_KEY_CHARS",
    "MAX_SPOOL_BYTES",
    "MAX_WINDOW_BATCHES",
    "RENDEZVOUS_TIMEOUT_S",
    "SPOOL_SEGMENT_BYTES",
    "SQLITE_BUSY_TIMEOUT_S",
    "STOP_GRACE_S",
    "STRAGGLER_LAG_S",
]

ARTIFACT_MAX_COPY_BYTES = 100 * 1024 * 1024
"""Files up to this size are copied into the run by upload(); larger ones are logged as references."""
DIR_NAME = ".coordinator"
"""Store directory created in the working directory when nothing else is configured."""

FLUSH_INTERVAL_S = 0.005
"""How often the sender thread swaps the buffer out and sends it."""
MAX_BATCH_POINTS = 65_536
"""Most points in one wire batch; a larger flush is split."""
MAX_BUFFER_POINTS = 2_000_000
"""Points a rank may hold unacknowledged (buffered, in flight) before log() blocks."""
MAX_SPOOL_BYTES = 4 * 1024**3
"""Disk a rank's spool may use before log() blocks (policy ``spool``)."""
SPOOL_SEGMENT_BYTES = 64 * 1024**2
"""Size at which the spool starts a new segment file (acknowledged segments are deleted)."""
MAX_WINDOW_BATCHES = 64
"""Batches in flight without an ack; past it the sender stops sending."""
ACK_TIMEOUT_S = 10.0
"""An unacked batch older than this is sent again (the aggregator drops duplicates)."""
HEARTBEAT_INTERVAL_S = 1.0
"""Idle senders ping this often; the aggregator records liveness from it."""
LIVENESS_TIMEOUT_S = 30.0
"""A rank silent for this long is reported as lost by the aggregator."""
STRAGGLER_LAG_S = 0.05
"""A rank that reaches steps this much later than the fastest one is reported as a straggler."""
GROUP_TIMEOUT_S = 10.0
"""A (key, step) group waits at most this long for ranks that never logged the key."""
CLOSE_TIMEOUT_S = 120.0
"""Default deadline for stop(): drain, say goodbye, and (rank 0) wait for the aggregator."""
STOP_GRACE_S = 30.0
"""After rank 0 said goodbye, the aggregator waits this long for ranks that never connected."""
MAX_AGGREGATOR_RESTARTS = 5
"""How often rank 0 restarts an aggregator that died before the run ended."""
AGGREGATOR_START_TIMEOUT_S = 30.0
"""Rank 0 waits this long for the aggregator process to bind its socket."""
RENDEZVOUS_TIMEOUT_S = 120.0
"""Other ranks wait this long for rank 0 to publish the aggregator endpoint."""
SQLITE_BUSY_TIMEOUT_S = 30.0
"""How long a store connection waits on a lock held by another connection."""

MAX_FRAME_BYTES = 64 * 1024 * 1024
"""Largest frame the aggregator accepts (ZMQ_MAXMSGSIZE); larger peers are disconnected."""
MAX_KEY_CHARS = 512
"""Longest metric key or field path."""
MAX_FIELD_STR_BYTES = 64 * 1024
"""Longest string value of a field."""
MAX_KEYS_PER_RUN = 100_000
"""Distinct metric keys one rank may create; more raises ValueError (cardinality cap)."""
