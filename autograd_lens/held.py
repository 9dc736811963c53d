"""Graphs kept alive across iterations (``epoch_loss += loss``, ``history.append(loss)``,
``retain_graph=True`` every step): found by tags that die with the graphs, and the variable that
holds them, found in the user's frames.

Each backward's root node gets a tag in its ``metadata``; the tracker keeps a weak reference to it
per backward site. When graphs of :data:`HELD_ITERATIONS` or more earlier iterations of the same
site are still alive, something holds them: the tracker looks once per site for the variable whose
tensors reach tagged graphs, and says what it found. It keeps no node and no tensor alive.

Imports :mod:`events`, :mod:`findings`, :mod:`graph` (``saved_bytes``), :mod:`naming` and
:mod:`source`; nothing of the runtime.
"""

from __future__ import annotations

import weakref
from collections import deque
from typing import Any

import torch

from . import source
from .events import BackwardCall, HeldGraphs
from .findings import Site
from .graph import saved_bytes
from .naming import local_items, user_frame

#: Graphs of this many earlier iterations of a backward site alive at once: something holds them.
HELD_ITERATIONS = 2

_UNSEEN = object()


def tagged(occurrence: int) -> bool:
    """Whether the graph of a backward site's call past its detail is tagged: one call in four, and
    past its 64th call one in sixteen (a held graph stays alive, so it is seen all the same)."""
    return not occurrence & (3 if occurrence < 64 else 15)


class _GraphTag:
    """Lives in a root node's metadata; a weak reference to it says whether the graph is alive."""

    __slots__ = ("__weakref__",)


class GraphTracker:
    """The graphs of each backward site still alive, by the tags of their roots."""

    def __init__(self, tag_key: str) -> None:
        self.tag_key = tag_key
        self._alive: dict[tuple[str, int], deque[tuple[int, int, bool, weakref.ref]]] = {}
        self._holders: dict[tuple[str, int], HeldGraphs | None] = {}

    def track(self, root: Any, call: BackwardCall) -> tuple[HeldGraphs, int, bool] | None:
        """Tag the graph of ``root`` (a node) for ``call``. When graphs of earlier iterations of
        its site are alive: what holds them, how many, and whether any was retained."""
        return self.tag(root, (call.site.file, call.site.line), call.id, call.iteration, call.retain_graph)

    def tag(self, root: Any, key: tuple[str, int], call_id: int, iteration: int,
            retained: bool) -> tuple[HeldGraphs, int, bool] | None:
        """:meth:`track` for the call ``call_id`` of site ``key`` (a steady call has no object)."""
        found = None
        alive = self._alive.get(key)
        if alive is None:
            alive = self._alive[key] = deque(maxlen=64)
        while alive and alive[0][3]() is None:
            alive.popleft()
        if len(alive) >= HELD_ITERATIONS:
            older = [e for e in alive if e[3]() is not None and e[1] < iteration]
            if len({e[1] for e in older}) >= HELD_ITERATIONS:
                held = self._holders.get(key, _UNSEEN)
                if held is _UNSEEN:
                    held = self._holders[key] = find_holder(self.tag_key)
                if held is not None:
                    found = (held, len(older), any(e[2] for e in older))
        tag = _GraphTag()
        root.metadata[self.tag_key] = tag
        alive.append((call_id, iteration, retained, weakref.ref(tag)))
        return found


def find_holder(tag_key: str) -> HeldGraphs | None:
    """The variable of the user's frames that keeps tagged graphs alive, the line that adds to it,
    and the saved bytes they hold."""
    frame = user_frame()
    try:
        frames = []
        f = frame
        while f is not None and len(frames) < 4:
            frames.append(f)
            f = f.f_back
        for f in frames:
            for name, value in [*local_items(f), *f.f_globals.items()]:
                if name.startswith("__"):
                    continue
                got = holds_tags(value, tag_key)
                if got is None:
                    continue
                nodes, saved = got
                line = source.accumulations(f.f_code.co_filename, f.f_lineno, name)
                site = Site(f.f_code.co_filename, line, f.f_code.co_name) if line else None
                return HeldGraphs(name, site, nodes, saved, type(value).__name__)
    finally:
        del frame
    return None


def holds_tags(value: Any, tag_key: str, limit: int = 20_000) -> tuple[int, int] | None:
    """(tagged graphs reached, bytes of saved tensors still held) when ``value`` (a tensor, or a
    list, tuple, deque or dict of tensors) reaches graphs tagged with ``tag_key``; else None."""
    if isinstance(value, torch.Tensor):
        starts = [value]
    elif isinstance(value, (list, tuple, deque)) and len(value) <= 100_000:
        starts = [v for v in value if isinstance(v, torch.Tensor)]
    elif isinstance(value, dict) and len(value) <= 10_000:
        starts = [v for v in value.values() if isinstance(v, torch.Tensor)]
    else:
        return None
    stack = [t.grad_fn for t in starts if t.grad_fn is not None]
    if not stack:
        return None
    seen: set[int] = set()
    tags = saved = 0
    while stack and len(seen) < limit:
        fn = stack.pop()
        if id(fn) in seen:
            continue
        seen.add(id(fn))
        try:
            if tag_key in fn.metadata:
                tags += 1
        except (AttributeError, RuntimeError):
            pass
        saved += saved_bytes(fn)
        stack.extend(n for n, _ in fn.next_functions if n is not None and id(n) not in seen)
    stack.clear()
    return (tags, saved) if tags else None
