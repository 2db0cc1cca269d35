"""Which of the quoted passages the answer actually cites, by its [n] markers."""

from __future__ import annotations

import re
from collections.abc import Iterable

_MARKER = re.compile(r"\[(\d{1,3})\]")


def cited(texts: Iterable[str], passages: int) -> set[int]:
    """The passage numbers (1-based) the texts cite; markers past the last passage are no citation."""
    return {n for text in texts for n in map(int, _MARKER.findall(text)) if 1 <= n <= passages}
