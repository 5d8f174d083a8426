"""A model loaded once per process, and again only when asked for another one.

Keyed by pid: a forked child never uses a model its parent loaded.
"""

import os
from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

T = TypeVar("T")


class PerProcess(Generic[T]):
    def __init__(self) -> None:
        self._loaded: dict[int, tuple[Hashable, T]] = {}

    def get(self, wanted: Hashable, load: Callable[[], T]) -> T:
        """The model loaded for ``wanted`` in this process; ``load()`` it first if needed."""
        loaded = self._loaded.get(os.getpid())
        if loaded is None or loaded[0] != wanted:
            self._loaded.clear()
            loaded = self._loaded[os.getpid()] = (wanted, load())
        return loaded[1]
