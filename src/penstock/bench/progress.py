"""How a benchmark reports where it is, without knowing who is watching."""

from __future__ import annotations

from typing import Protocol


class Progress(Protocol):
    def phase(self, name: str, total: int) -> None:
        """A new phase begins; `total` units (tokens, usually) will be advanced through it."""

    def advance(self, amount: int = 1) -> None: ...


class NoProgress:
    """Reports nothing: for tests and library callers."""

    def phase(self, name: str, total: int) -> None:
        pass

    def advance(self, amount: int = 1) -> None:
        pass
