"""Name -> object registries for methods, tasks and models, with did-you-mean errors."""

from __future__ import annotations

import difflib
from typing import Callable, Generic, Iterable, Iterator, TypeVar

from zoft.errors import ZoftError

T = TypeVar("T")


def closest(word: str, choices: Iterable[str]) -> str | None:
    """The choice a typo most likely meant, or None."""
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return close[0] if close else None


class Registry(Generic[T]):
    """A named collection that plugins and built-ins add to with `@registry.register(name)`."""

    def __init__(self, kind: str):
        self.kind = kind
        self._items: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        def add(item: T) -> T:
            if name in self._items:
                raise ValueError(f"{self.kind} {name!r} is registered twice")
            self._items[name] = item
            return item

        return add

    def get(self, name: str, key: str) -> T:
        """The item called `name`; a ZoftError naming recipe `key` if there is none."""
        if name not in self._items:
            raise ZoftError(self.unknown(name, key))
        return self._items[name]

    def unknown(self, name: str, key: str) -> str:
        guess = closest(name, self.names())
        hint = f" (did you mean {guess!r}?)" if guess else ""
        return f"{key}: unknown {self.kind} {name!r}{hint}; choose one of: {', '.join(self.names())}"

    def names(self) -> list[str]:
        return sorted(self._items)

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())
