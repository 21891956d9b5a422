"""Name -> builder registries: the names are the API, and tests iterate over them.

Examples:
    >>> datasets = Registry("dataset")
    >>> @datasets.register("toy")
    ... def build_toy():
    ...     return [1, 2]
    >>> datasets.get("toy")()
    [1, 2]
    >>> datasets.names()
    ['toy']
"""

from __future__ import annotations

from typing import Callable, Iterator, TypeVar

from xtc.errors import UnknownNameError  # noqa: F401  (re-exported)

T = TypeVar("T", bound=Callable)


class Registry:
    def __init__(self, kind: str):
        self.kind = kind
        self._builders: dict[str, Callable] = {}

    def register(self, name: str) -> Callable[[T], T]:
        def decorator(builder: T) -> T:
            if name in self._builders:
                raise ValueError(f"{self.kind} '{name}' is registered twice")
            self._builders[name] = builder
            return builder

        return decorator

    def get(self, name: str) -> Callable:
        try:
            return self._builders[name]
        except KeyError:
            raise UnknownNameError(f"unknown {self.kind} '{name}'; choose one of "
                                   f"{self.names()}") from None

    def names(self) -> list[str]:
        return sorted(self._builders)

    def __contains__(self, name: str) -> bool:
        return name in self._builders

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())
