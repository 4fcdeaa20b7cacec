"""``python -m coordinator.aggregator --run ID ...``: the aggregator process rank 0 starts."""

import sys

from coordinator.aggregator.main import main

sys.exit(main())
