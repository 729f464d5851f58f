"""Progress reporting without a UI dependency in the library: the CLI passes a printer."""

from __future__ import annotations

from typing import Callable


class Progress:
    """``step`` announces a long step; ``advance`` ticks a counted loop."""

    def __init__(self, step: Callable[[str], None] | None = None,
                 advance: Callable[[str, int, int], None] | None = None):
        self._step = step
        self._advance = advance

    def step(self, text: str) -> None:
        if self._step:
            self._step(text)

    def advance(self, label: str, done: int, total: int) -> None:
        if self._advance:
            self._advance(label, done, total)


SILENT = Progress()
