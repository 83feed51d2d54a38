"""A sliding window of time-stamped snapshots."""

from __future__ import annotations

from collections import deque
from typing import Generic, TypeVar

T = TypeVar("T")


class SlidingWindow(Generic[T]):
    """Keeps the snapshots of the last `seconds`, plus one anchor at or before the window start,
    so that first→last spans the whole window once enough history exists."""

    def __init__(self, seconds: float):
        self.seconds = seconds
        self._items: deque[tuple[float, T]] = deque()

    def add(self, t: float, item: T) -> None:
        items = self._items
        if items and t < items[-1][0]:
            # The clock went backwards (or duplicate poll): start over rather than mix orders.
            items.clear()
        items.append((t, item))
        horizon = t - self.seconds
        while len(items) >= 2 and items[1][0] <= horizon:
            items.popleft()

    def reseed(self) -> None:
        """Forget history (counter reset, engine restart); the next add starts a new window."""
        self._items.clear()

    def __len__(self) -> int:
        return len(self._items)

    def first(self) -> tuple[float, T] | None:
        return self._items[0] if self._items else None

    def last(self) -> tuple[float, T] | None:
        return self._items[-1] if self._items else None
