"""The parts of a graph and its file format: the records a :class:`~autograd_lens.graph.Graph`
is made of (:class:`Node`, :class:`SavedTensor`, :class:`Output`, :class:`Highlight`), the node
kinds and highlight tags, the schema name, the common module of the nodes' module paths, and
reading a saved graph (``Graph.save("g.json")``, ``lens-out/graphs/*.json``) safely.

A graph file may come from anywhere: an older version, a hand edit, a truncated copy, a hostile
upload. :func:`graph_parts` checks it against the graph schema before anything is built from it:
the type of every field, node ids equal to their index, every edge, output and highlight pointing
at a node that exists (no negative index counts from the end), highlighted edges that are edges,
no cycle (autograd graphs have none), known node kinds and highlight tags, and bounds on sizes and
numbers. A file that breaks any of these raises one :class:`~autograd_lens.errors.LensError` that
names the first offending field (``nodes[3].saved[0].shape[1]: expected a whole number ...``); it
never gives a graph that would be drawn differently from what the file says.

Imports only :mod:`autograd_lens.errors` from the package; :mod:`autograd_lens.graph` builds the
``Graph`` from what :func:`graph_parts` returns (and re-exports the names defined here).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, NamedTuple

from .errors import LensError

SCHEMA = "autograd_lens.graph/1"

#: Node kinds.
OP = "op"
PARAM = "param"
INPUT = "input"
CUSTOM = "custom"
COMPILED = "compiled"
KINDS = (OP, PARAM, INPUT, CUSTOM, COMPILED)

#: Highlight tags the renderers know.
HIGHLIGHTS = ("freed", "leak", "stray", "pass-through", "error", "focus", "crossing")


class SavedTensor(NamedTuple):
    """A tensor that an autograd node saved for its backward."""

    name: str
    shape: tuple[int, ...] | None
    dtype: str | None
    nbytes: int
    freed: bool
    param: str | None = None


class Node(NamedTuple):
    """One node of the graph: an autograd op, or a leaf (parameter or input).

    An immutable record (a named tuple: cheap to build for graphs of 100,000 nodes).
    """

    id: int
    op: str
    kind: str
    name: str | None = None
    module: str | None = None
    shape: tuple[int, ...] | None = None
    dtype: str | None = None
    saved: tuple[SavedTensor, ...] = ()
    freed: bool = False
    seq: int | None = None
    ctx_tensors: tuple[str, ...] = ()

    @property
    def label(self) -> str:
        """What a person calls this node: the parameter/input name, else the op."""
        return self.name or self.op

    @property
    def saved_bytes(self) -> int:
        return sum(s.nbytes for s in self.saved)


@dataclass(frozen=True, slots=True)
class Output:
    """A tensor the graph was drawn for (a root)."""

    name: str
    node: int | None
    shape: tuple[int, ...]
    dtype: str


@dataclass(frozen=True, slots=True)
class Highlight:
    """Something to point at in a drawing: a node or an edge, with a tag and a short label."""

    tag: str
    node: int | None = None
    edge: tuple[int, int] | None = None
    label: str = ""


#: Most nodes, edges and highlights a graph file may hold (graphs of 100,000 nodes are common).
MAX_NODES = 2_000_000
MAX_EDGES = 8_000_000
MAX_HIGHLIGHTS = 8_000_000
#: Most items in a node's lists (saved tensors, ctx tensors) and in ``outputs``.
MAX_ITEMS = 65_536
#: Most characters in one string, and most dimensions of one shape.
MAX_TEXT = 65_536
MAX_DIMS = 64
#: Sizes and byte counts are below 2**63 (int64), sequence numbers below 2**64.
MAX_SIZE = 2**63 - 1
MAX_SEQ = 2**64 - 1


class _Invalid(Exception):
    def __init__(self, where: str, problem: str) -> None:
        super().__init__(f"{where}: {problem}")


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "a whole number"
    if isinstance(value, float):
        return "a number with a fraction" if value == value and abs(value) != float("inf") else repr(value)
    if isinstance(value, str):
        return "a string"
    if isinstance(value, (list, tuple)):
        return "a list"
    if isinstance(value, Mapping):
        return "an object"
    return type(value).__name__


def _obj(value: Any, where: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise _Invalid(where, f"expected an object, got {_kind(value)}")
    return value


def _list(value: Any, where: str, limit: int) -> list[Any]:
    if not isinstance(value, (list, tuple)):
        raise _Invalid(where, f"expected a list, got {_kind(value)}")
    if len(value) > limit:
        raise _Invalid(where, f"has {len(value):,} items; at most {limit:,} are allowed")
    return list(value)


def _int(value: Any, where: str, lo: int, hi: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise _Invalid(where, f"expected a whole number, got {_kind(value)}")
    if not lo <= value <= hi:
        shown = str(value) if abs(value) < 10**30 else f"a number of {len(str(abs(value)))} digits"
        raise _Invalid(where, f"{shown} is out of range ({lo} to {hi})")
    return value


def _str(value: Any, where: str) -> str:
    if not isinstance(value, str):
        raise _Invalid(where, f"expected a string, got {_kind(value)}")
    if len(value) > MAX_TEXT:
        raise _Invalid(where, f"is {len(value):,} characters long; at most {MAX_TEXT:,} are allowed")
    return value


def _opt_str(value: Any, where: str) -> str | None:
    return None if value is None else _str(value, where)


def _bool(value: Any, where: str) -> bool:
    if not isinstance(value, bool):
        raise _Invalid(where, f"expected true or false, got {_kind(value)}")
    return value


def _shape(value: Any, where: str) -> tuple[int, ...]:
    dims = _list(value, where, MAX_DIMS)
    return tuple(_int(d, f"{where}[{i}]", 0, MAX_SIZE) for i, d in enumerate(dims))


def _opt_shape(value: Any, where: str) -> tuple[int, ...] | None:
    return None if value is None else _shape(value, where)


def _node_ref(value: Any, where: str, n: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise _Invalid(where, f"expected a node id, got {_kind(value)}")
    if not 0 <= value < n:
        shown = str(value) if abs(value) < 10**30 else f"a number of {len(str(abs(value)))} digits"
        raise _Invalid(where, f"{shown} is not a node id (the graph has {n} node{'s' if n != 1 else ''})")
    return value


def parse_text(text: str | bytes) -> Any:
    """JSON text to Python data; ``LensError`` for text that is not JSON, nested too deeply, or
    holding numbers Python will not convert."""
    try:
        return json.loads(text)
    except RecursionError:
        raise LensError("graph file is not a graph: its JSON is nested too deeply") from None
    except json.JSONDecodeError as exc:
        raise LensError(f"graph file is not valid JSON: {exc}") from None
    except (ValueError, UnicodeDecodeError) as exc:  # e.g. an integer of more than 4300 digits
        raise LensError(f"graph file is not valid JSON: {' '.join(str(exc).split())}") from None


def graph_parts(
    data: Any,
) -> tuple[tuple[Node, ...], tuple[tuple[int, int], ...], tuple[Output, ...], str, tuple[Highlight, ...]]:
    """``(nodes, edges, outputs, title, highlights)`` from the data of a graph file, checked.

    Raises:
        LensError: one line naming the first field that breaks the schema.
    """
    if not isinstance(data, Mapping) or data.get("schema") != SCHEMA:
        got = data.get("schema") if isinstance(data, Mapping) else _kind(data)
        if isinstance(got, str) and len(got) > 80:
            got = got[:80] + "..."
        raise LensError(f"not an autograd_lens graph: expected schema {SCHEMA!r}, got {got!r}")
    try:
        for key in ("nodes", "edges", "outputs"):
            if key not in data:
                raise _Invalid("the graph", f"has no {key!r}")
        title = _str(data.get("title", ""), "title")
        raw_nodes = _list(data["nodes"], "nodes", MAX_NODES)
        nodes: list[Node] = []
        for i, raw in enumerate(raw_nodes):
            where = f"nodes[{i}]"
            nd = _obj(raw, where)
            for key in ("id", "op", "kind"):
                if key not in nd:
                    raise _Invalid(where, f"has no {key!r}")
            nid = _int(nd["id"], f"{where}.id", 0, MAX_SIZE)
            if nid != i:
                raise _Invalid(f"{where}.id", f"is {nid}; node ids must equal their place in the list ({i})")
            kind = _str(nd["kind"], f"{where}.kind")
            if kind not in KINDS:
                raise _Invalid(f"{where}.kind", f"{kind[:40]!r} is not one of {', '.join(KINDS)}")
            saved = []
            for j, rs in enumerate(_list(nd.get("saved", ()), f"{where}.saved", MAX_ITEMS)):
                sw = f"{where}.saved[{j}]"
                s = _obj(rs, sw)
                if "name" not in s:
                    raise _Invalid(sw, "has no 'name'")
                saved.append(
                    SavedTensor(
                        name=_str(s["name"], f"{sw}.name"),
                        shape=_opt_shape(s.get("shape"), f"{sw}.shape"),
                        dtype=_opt_str(s.get("dtype"), f"{sw}.dtype"),
                        nbytes=_int(s.get("nbytes", 0), f"{sw}.nbytes", 0, MAX_SIZE),
                        freed=_bool(s.get("freed", False), f"{sw}.freed"),
                        param=_opt_str(s.get("param"), f"{sw}.param"),
                    )
                )
            seq = nd.get("seq")
            nodes.append(
                Node(
                    id=nid,
                    op=_str(nd["op"], f"{where}.op"),
                    kind=kind,
                    name=_opt_str(nd.get("name"), f"{where}.name"),
                    module=_opt_str(nd.get("module"), f"{where}.module"),
                    shape=_opt_shape(nd.get("shape"), f"{where}.shape"),
                    dtype=_opt_str(nd.get("dtype"), f"{where}.dtype"),
                    saved=tuple(saved),
                    freed=_bool(nd.get("freed", False), f"{where}.freed"),
                    seq=None if seq is None else _int(seq, f"{where}.seq", -MAX_SEQ, MAX_SEQ),
                    ctx_tensors=tuple(
                        _str(c, f"{where}.ctx_tensors[{k}]")
                        for k, c in enumerate(_list(nd.get("ctx_tensors", ()), f"{where}.ctx_tensors", MAX_ITEMS))
                    ),
                )
            )
        n = len(nodes)
        edges: list[tuple[int, int]] = []
        for i, raw in enumerate(_list(data["edges"], "edges", MAX_EDGES)):
            pair = _list(raw, f"edges[{i}]", MAX_ITEMS)
            if len(pair) != 2:
                raise _Invalid(f"edges[{i}]", f"expected [producer, consumer], got {len(pair)} item{'s' if len(pair) != 1 else ''}")
            a = _node_ref(pair[0], f"edges[{i}][0]", n)
            b = _node_ref(pair[1], f"edges[{i}][1]", n)
            edges.append((a, b))
        _acyclic(n, edges)
        outputs = []
        for i, raw in enumerate(_list(data["outputs"], "outputs", MAX_ITEMS)):
            where = f"outputs[{i}]"
            o = _obj(raw, where)
            for key in ("name", "shape", "dtype"):
                if key not in o:
                    raise _Invalid(where, f"has no {key!r}")
            node = o.get("node")
            outputs.append(
                Output(
                    _str(o["name"], f"{where}.name"),
                    None if node is None else _node_ref(node, f"{where}.node", n),
                    _shape(o["shape"], f"{where}.shape"),
                    _str(o["dtype"], f"{where}.dtype"),
                )
            )
        edge_set = set(edges)
        highlights = []
        for i, raw in enumerate(_list(data.get("highlights", ()), "highlights", MAX_HIGHLIGHTS)):
            where = f"highlights[{i}]"
            h = _obj(raw, where)
            if "tag" not in h:
                raise _Invalid(where, "has no 'tag'")
            tag = _str(h["tag"], f"{where}.tag")
            if tag not in HIGHLIGHTS:
                raise _Invalid(f"{where}.tag", f"{tag[:40]!r} is not one of {', '.join(HIGHLIGHTS)}")
            node = h.get("node")
            node_id = None if node is None else _node_ref(node, f"{where}.node", n)
            edge = h.get("edge")
            edge_pair: tuple[int, int] | None = None
            if edge is not None:
                pair = _list(edge, f"{where}.edge", MAX_ITEMS)
                if len(pair) != 2:
                    raise _Invalid(f"{where}.edge", "expected [producer, consumer]")
                edge_pair = (_node_ref(pair[0], f"{where}.edge[0]", n), _node_ref(pair[1], f"{where}.edge[1]", n))
                if edge_pair not in edge_set:
                    raise _Invalid(f"{where}.edge", f"{list(edge_pair)} is not an edge of the graph")
            if node_id is None and edge_pair is None:
                raise _Invalid(where, "marks neither a node nor an edge")
            highlights.append(Highlight(tag, node_id, edge_pair, _str(h.get("label", ""), f"{where}.label")))
    except _Invalid as exc:
        raise LensError(f"invalid autograd_lens graph: {exc}") from None
    return tuple(nodes), tuple(edges), tuple(outputs), title, tuple(highlights)


def _acyclic(n: int, edges: list[tuple[int, int]]) -> None:
    """An autograd graph has no cycle; a file whose edges form one is not a graph of autograd."""
    indegree = [0] * n
    out: list[list[int]] = [[] for _ in range(n)]
    for a, b in edges:
        out[a].append(b)
        indegree[b] += 1
    ready = [i for i in range(n) if indegree[i] == 0]
    seen = 0
    while ready:
        v = ready.pop()
        seen += 1
        for w in out[v]:
            indegree[w] -= 1
            if indegree[w] == 0:
                ready.append(w)
    if seen != n:
        stuck = next(i for i in range(n) if indegree[i] > 0)
        raise _Invalid("edges", f"form a cycle (through node {stuck}); an autograd graph has none")


def common_module(mods: list[str]) -> str | None:
    """The innermost module that holds all of ``mods`` (their common dotted prefix: ``netD.main``
    for ``netD.main.0`` and ``netD.main.2``), or None when they share no top module."""
    first = mods[0]
    if len(mods) == 1 or all(m == first for m in mods):
        return first
    parts = first.split(".")
    for m in mods[1:]:
        other = m.split(".")
        n = 0
        while n < len(parts) and n < len(other) and parts[n] == other[n]:
            n += 1
        parts = parts[:n]
        if not parts:
            return None
    return ".".join(parts)
