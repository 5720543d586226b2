"""Where the DNS bridge gets its `View`: the narrow `ViewSource` seam.

`ViewSource` is what the bridge needs of the resolver: `view()` (cheap, never blocks)
and `subscribe(cb)` (cb called on the event loop after every new view). `serval dns`
gives it the merged `resolver.merge.Resolver` (the registry back-end first, then any
`--static` / `--lan` / `--dns-name` back-ends); `StaticSource` is one set by hand.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from resolver.model import EMPTY_VIEW, View


class ViewSource(Protocol):
    def view(self) -> View: ...

    def subscribe(self, listener: Callable[[], None]) -> None: ...


class StaticSource:
    """A `ViewSource` set by hand (tests, and the bridge before any source is wired)."""

    def __init__(self, view: View = EMPTY_VIEW) -> None:
        self._view = view
        self._listeners: list[Callable[[], None]] = []

    def view(self) -> View:
        return self._view

    def subscribe(self, listener: Callable[[], None]) -> None:
        self._listeners.append(listener)

    def publish(self, view: View) -> None:
        self._view = view
        for listener in self._listeners:
            listener()
