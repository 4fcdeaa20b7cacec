"""The local, read-only web UI over the journal (``coordinator ui``).

:mod:`~coordinator.ui.source` opens a run for reading, :mod:`~coordinator.ui.charts` turns a
series downsampled by :mod:`coordinator.journal.downsample` into chart columns,
:mod:`~coordinator.ui.query` reads the request's parameters, :mod:`~coordinator.ui.api` answers each page's JSON and
:mod:`~coordinator.ui.server` serves it with the static page (``static/``: the page, its script
and the vendored uPlot). docs/ui.md describes the endpoints.
"""

from __future__ import annotations

__all__: list[str] = []
