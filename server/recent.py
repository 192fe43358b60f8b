"""A dict that keeps only the keys set last: per-completion state held in memory stays bounded
however long a server runs."""

from __future__ import annotations

from collections import OrderedDict

SHOWN_CAPACITY = 1024  # completions remembered for accept/retention: far more than are shown before one is accepted


class Recent(OrderedDict):
    """A dict of the `capacity` keys set last."""

    def __init__(self, capacity: int) -> None:
        super().__init__()
        self.capacity = capacity

    def __setitem__(self, key, value) -> None:
        super().__setitem__(key, value)
        self.move_to_end(key)
        if len(self) > self.capacity:
            self.popitem(last=False)
