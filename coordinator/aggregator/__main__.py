"""``python -m coordinator.aggregator --run ID ...``: the aggregator process rank 0 starts."""

import sys

from coordinator.aggregator.core import main

sys.exit(main())
