"""The rank-0 aggregator: ingest, dedupe, reduce, commit to the journal, ack, serve state.

This package's public interface (what the CLI, the tests and the benchmarks import) is exported
here: the :class:`Aggregator` core and its :class:`AggregatorConfig`; :func:`serve` and
:func:`main`, the aggregator process; :func:`replay_spools`, to ingest
an offline run's or a crashed job's spools after the job; and the final report's names
(:class:`Report`, :class:`Counters`, :data:`HEADLINE`, :data:`PROBLEMS`).

Modules, along the data path: ``config``; ``senders`` (handshake, exactly-once, fencing),
``fields``, ``reduce``, ``health``, ``liveness``; ``outbox`` (the open transaction), ``core``
(the :class:`Aggregator` composing them); ``recovery`` (spools), ``report`` and ``counters``
(the run's end); ``server`` (the socket loop), ``forwarding``, ``lock``, ``main``.
"""

from coordinator.aggregator.config import AggregatorConfig
from coordinator.aggregator.core import Aggregator
from coordinator.aggregator.counters import HEADLINE, PROBLEMS, Counters, Report
from coordinator.aggregator.main import main
from coordinator.aggregator.recovery import replay_spools
from coordinator.aggregator.server import serve

__all__ = [
    "HEADLINE",
    "PROBLEMS",
    "Aggregator",
    "AggregatorConfig",
    "Counters",
    "Report",
    "main",
    "replay_spools",
    "serve",
]
