from collections.abc import Callable
from typing import Any

class Rows:
    def __init__(
        self, log: object, writer: object, plain: tuple[type, ...], fallback: Callable[[dict[str, Any], int], bool]
    ) -> None: ...
    def row(self, data: dict[str, Any], step: int) -> bool: ...
