"""The autograd graph as plain data, and its capture from ``grad_fn`` chains.

``capture`` walks ``grad_fn.next_functions`` iteratively (a 100,000-node chain is fine) and builds a
``Graph``: an immutable snapshot that holds no reference to any tensor or autograd node. It works
before and after backward; after a backward that did not retain the graph, nodes whose buffers
were released are marked ``freed``. Its records (``Node``, ``SavedTensor``, ``Output``,
``Highlight``) and the node kinds are defined with the graph file format in
:mod:`autograd_lens.graphfile` and importable from here.

Imports :mod:`~autograd_lens.errors`, :mod:`~autograd_lens.graphfile` and
:mod:`~autograd_lens.naming` at load; its views (``to_dot``, ``save``, ``__str__``, the notebook
HTML) import :mod:`autograd_lens.render.dot`, :mod:`~autograd_lens.render.tree` and
:mod:`~autograd_lens.render.fragment` when called. None of these imports this module.
"""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import json
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from .errors import LensError, describe
from .graphfile import (
    COMPILED,
    CUSTOM,
    INPUT,
    OP,
    PARAM,
    SCHEMA,
    Highlight,
    Node,
    Output,
    SavedTensor,
    common_module,
    graph_parts,
)
from .graphfile import HIGHLIGHTS, KINDS, parse_text  # noqa: F401  the names of a graph file, importable from here
from .naming import ParamNames

# Ops that only re-view their single input: a parameter seen through them still belongs to the
# module of that parameter (``AddmmBackward0 <- TBackward0 <- weight``).
_VIEW_OPS = frozenset(
    {
        "TBackward0",
        "ViewBackward0",
        "ExpandBackward0",
        "PermuteBackward0",
        "TransposeBackward0",
        "UnsqueezeBackward0",
        "SqueezeBackward0",
        "SqueezeBackward1",
        "ReshapeAliasBackward0",
        "UnsafeViewBackward0",
        "ToCopyBackward0",
    }
)


@dataclass(frozen=True)
class Graph:
    """An immutable snapshot of an autograd graph.

    ``edges`` run in the direction data flows forward: ``(producer, consumer)``, i.e. from a node
    in ``consumer.next_functions`` to ``consumer``. ``nodes[i].id == i``.
    """

    nodes: tuple[Node, ...]
    edges: tuple[tuple[int, int], ...]
    outputs: tuple[Output, ...]
    title: str = ""
    highlights: tuple[Highlight, ...] = ()
    #: ``(module name, type name)`` of the modules that nodes belong to, and of those containing
    #: them (``("netD.main", "Sequential")``), in the order the networks hold them
    modules: tuple[tuple[str, str], ...] = ()
    #: default render options (``max_nodes``, ``collapse``...), given to ``draw``; not serialised
    options: Mapping[str, Any] = field(default_factory=dict, compare=False, repr=False)
    _index: dict[str, Any] = field(default_factory=dict, init=False, repr=False, compare=False)

    # ----- queries -------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.nodes)

    @property
    def params(self) -> tuple[Node, ...]:
        return tuple(n for n in self.nodes if n.kind == PARAM)

    @property
    def param_names(self) -> tuple[str, ...]:
        return tuple(n.name for n in self.nodes if n.kind == PARAM and n.name)

    @property
    def module_types(self) -> dict[str, str]:
        """Module name -> type name (``{"netD.main": "Sequential"}``)."""
        return dict(self.modules)

    @property
    def freed_nodes(self) -> tuple[Node, ...]:
        return tuple(n for n in self.nodes if n.freed)

    def find(self, op_or_name: str) -> list[Node]:
        """Nodes whose op or name equals ``op_or_name``."""
        return [n for n in self.nodes if n.op == op_or_name or n.name == op_or_name]

    def inputs_of(self, node_id: int) -> list[int]:
        """Producers feeding ``node_id`` (its ``next_functions``)."""
        idx = self._index.get("inputs")
        if idx is None:
            idx = [[] for _ in self.nodes]
            for src, dst in self.edges:
                idx[dst].append(src)
            self._index["inputs"] = idx
        return idx[node_id]

    def consumers_of(self, node_id: int) -> list[int]:
        idx = self._index.get("consumers")
        if idx is None:
            idx = [[] for _ in self.nodes]
            for src, dst in self.edges:
                idx[src].append(dst)
            self._index["consumers"] = idx
        return idx[node_id]

    def upstream(self, start: Iterable[int]) -> set[int]:
        """All nodes reachable from ``start`` towards the leaves (``start`` included)."""
        seen = set(start)
        stack = list(seen)
        while stack:
            for nxt in self.inputs_of(stack.pop()):
                if nxt not in seen:
                    seen.add(nxt)
                    stack.append(nxt)
        return seen

    def path(self, from_node: int, to_node: int) -> list[int] | None:
        """A shortest path from a root side node down to a leaf side node, or None."""
        prev: dict[int, int] = {from_node: -1}
        frontier = [from_node]
        while frontier:
            nxt_frontier = []
            for n in frontier:
                if n == to_node:
                    out = [n]
                    while prev[out[-1]] != -1:
                        out.append(prev[out[-1]])
                    return out[::-1]
                for m in self.inputs_of(n):
                    if m not in prev:
                        prev[m] = n
                        nxt_frontier.append(m)
            frontier = nxt_frontier
        return None

    def with_highlights(self, *highlights: Highlight) -> Graph:
        return dataclasses.replace(self, highlights=self.highlights + tuple(highlights))

    def with_title(self, title: str) -> Graph:
        return dataclasses.replace(self, title=title)

    # ----- views ------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        data = {
            "schema": SCHEMA,
            "title": self.title,
            "nodes": [
                {
                    "id": n.id,
                    "op": n.op,
                    "kind": n.kind,
                    "name": n.name,
                    "module": n.module,
                    "shape": list(n.shape) if n.shape is not None else None,
                    "dtype": n.dtype,
                    "saved": [
                        {
                            "name": s.name,
                            "shape": list(s.shape) if s.shape is not None else None,
                            "dtype": s.dtype,
                            "nbytes": s.nbytes,
                            "freed": s.freed,
                            "param": s.param,
                        }
                        for s in n.saved
                    ],
                    "freed": n.freed,
                    "seq": n.seq,
                    "ctx_tensors": list(n.ctx_tensors),
                }
                for n in self.nodes
            ],
            "edges": [list(e) for e in self.edges],
            "outputs": [
                {"name": o.name, "node": o.node, "shape": list(o.shape), "dtype": o.dtype}
                for o in self.outputs
            ],
            "highlights": [
                {"tag": h.tag, "node": h.node, "edge": list(h.edge) if h.edge else None, "label": h.label}
                for h in self.highlights
            ],
        }
        if self.modules:  # module types, for cluster labels (older files have none)
            data["modules"] = dict(self.modules)
        return data

    def to_json(self, *, indent: int | None = None) -> str:
        return json.dumps(self.to_dict(), indent=indent)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Graph:
        """A graph from the data of a graph file (``to_dict``), checked against the graph schema
        (types, node ids, index ranges, sizes; see :mod:`autograd_lens.graphfile`).

        Raises:
            LensError: one line naming the first field that breaks the schema.
        """
        nodes, edges, outputs, title, highlights = graph_parts(data)
        return cls(nodes, edges, outputs, title, highlights, _modules_of(data))

    @classmethod
    def from_json(cls, text_or_path: str | Path) -> Graph:
        """A graph from JSON text or from the path of a ``.json`` file written by ``save``."""
        text = str(text_or_path)
        if isinstance(text_or_path, Path) or not text.lstrip().startswith("{"):
            path = Path(text)
            try:
                text = path.read_text(encoding="utf-8")
            except OSError as exc:
                raise LensError(f"cannot read graph file {str(path)!r}: {exc.strerror or exc}") from None
            except UnicodeDecodeError:
                raise LensError(f"graph file {str(path)!r} is not text (expected the JSON of a saved graph)") from None
        return cls.from_dict(parse_text(text))

    def to_dot(self, **options: Any) -> str:
        from .render.dot import to_dot

        return to_dot(self, **options)

    def to_svg(self, **options: Any) -> str:
        from .render.dot import render

        return render(self, "svg", **options).decode("utf-8")

    def save(self, path: str | Path, **options: Any) -> Path:
        """Write the graph; the format follows the extension: .svg .png .pdf .dot .gv .json."""
        from .render.dot import save

        return save(self, path, **options)

    def _repr_mimebundle_(self, include: Any = None, exclude: Any = None) -> dict[str, str]:
        """In a notebook: the drawing inline (pan, zoom, folded parts open on click), or the
        terminal tree when Graphviz is missing."""
        from .render.fragment import graph_html

        return {"text/html": graph_html(self), "text/plain": f"<autograd_lens.Graph: {len(self)} nodes>"}

    def __rich__(self) -> Any:
        from .render.tree import to_tree

        return to_tree(self)

    def __str__(self) -> str:
        from .render.tree import to_text

        return to_text(self)


def _modules_of(data: Mapping[str, Any]) -> tuple[tuple[str, str], ...]:
    """The ``modules`` of a graph file (module name -> type name); absent in older files."""
    raw = data.get("modules") or {}
    if not isinstance(raw, Mapping) or not all(isinstance(k, str) and isinstance(v, str) for k, v in raw.items()):
        raise LensError("malformed autograd_lens graph JSON: modules: expected an object of module names to type names")
    return tuple(raw.items())


def read_text(path: Path, what: str, expected: str) -> str:
    """The text of the file at ``path``; a ``LensError`` that names ``what`` it was to be
    (``"graph file"``) and what was ``expected`` when it is missing, unreadable or not text."""
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise LensError(f"{what} {str(path)!r} does not exist") from None
    except IsADirectoryError:
        raise LensError(f"{what} {str(path)!r} is a folder (expected {expected})") from None
    except OSError as exc:
        raise LensError(f"cannot read {what} {str(path)!r}: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise LensError(f"{what} {str(path)!r} is not text (expected {expected})") from None


def read_json(path: Path, what: str, expected: str) -> Any:
    """The JSON content of the file at ``path`` (see :func:`read_text`), or a ``LensError``."""
    text = read_text(path, what, expected)
    try:
        return json.loads(text)
    except RecursionError:
        raise LensError(f"{what} {str(path)!r} is not valid: its JSON is nested too deeply") from None
    except ValueError as exc:  # JSONDecodeError, or an integer too long to convert
        raise LensError(f"{what} {str(path)!r} is not valid JSON: {' '.join(str(exc).split())}") from None


# ----------------------------------------------------------------------------------------------
# Capture
# ----------------------------------------------------------------------------------------------

_SAVED_ATTRS: dict[type, tuple[str, ...]] = {}


_TYPE_INFO: dict[type, tuple[str, str, tuple[tuple[str, str], ...]]] = {}


def _type_info(tp: type) -> tuple[str, str, tuple[tuple[str, str], ...]]:
    """``(op name, kind, ((raw saved attribute, label), ...))`` of an autograd node type."""
    info = _TYPE_INFO.get(tp)
    if info is None:
        op = tp.__name__
        if issubclass(tp, torch.autograd.function.BackwardCFunction):
            kind = COMPILED if op.startswith("CompiledFunction") else CUSTOM
        else:
            kind = OP
        info = _TYPE_INFO[tp] = (op, kind, tuple((a, a[11:]) for a in _saved_attrs(tp)))
    return info


def _saved_attrs(tp: type) -> tuple[str, ...]:
    attrs = _SAVED_ATTRS.get(tp)
    if attrs is None:
        attrs = tuple(a for a in dir(tp) if a.startswith("_raw_saved_"))
        _SAVED_ATTRS[tp] = attrs
    return attrs


_DTYPE_NAMES: dict[torch.dtype, str] = {}


def _dtype(dt: torch.dtype) -> str:
    name = _DTYPE_NAMES.get(dt)
    if name is None:
        name = _DTYPE_NAMES[dt] = str(dt).removeprefix("torch.")
    return name


def _saved_of(node: Any, spec: tuple[tuple[str, str], ...], by_id: dict[int, str],
              by_ptr: dict[int, tuple[str, str]]) -> tuple[tuple[SavedTensor, ...], bool]:
    """Saved tensors of ``node`` (each read once) and whether its buffers were released.

    A saved tensor that reads ``None`` was either released by a backward or is an optional one
    never given (no affine weight). A backward releases all of a node's buffers at once, so only
    a node with nothing else readable is asked which it is.
    """
    tensor, parameter, new, dtypes = _TENSOR, _PARAMETER, _new, _DTYPE_NAMES
    out: list[SavedTensor] = []
    empty: list[tuple[str, str]] | None = None  # (name, attr) of the saved tensors that read None
    saved_variable = _SAVED_VARIABLE
    for attr, label in spec:
        sv = getattr(node, attr)
        if sv.__class__ is not saved_variable:  # a list of tensors (cat, stack)
            empty = empty if empty is not None else []
            for i, item in enumerate(sv):
                _saved_one(f"{label}[{i}]", attr, item.data, out, empty, by_id, by_ptr)
            continue
        data = sv.data
        if data is None:
            if not out:  # (needed only when nothing else is readable: see the end)
                if empty is None:
                    empty = []
                empty.append((label, attr))
        elif type(data) is tensor or type(data) is parameter:  # the common cases, inline
            # a parameter saved as it is, or seen through a view (`W.t()` saved by a matmul); a
            # plain tensor that is no view is no parameter's
            param = by_id.get(id(data)) if by_id else None
            if param is None and by_id and data._is_view():
                param = _view_param(data, by_id, by_ptr)
            dt = data.dtype
            out.append(new(SavedTensor, (label, data.shape, dtypes.get(dt) or _dtype(dt), data.nbytes, False, param)))
        else:
            empty = empty if empty is not None else []
            _saved_one(label, attr, data, out, empty, by_id, by_ptr)
    if empty and not out and _released(node, empty[0][1]):
        return tuple(new(SavedTensor, (name, None, None, 0, True, None)) for name, _ in empty), True
    return tuple(out), False


_TENSOR = torch.Tensor
_SAVED_VARIABLE = torch._C._autograd.SavedTensor
_PARAMETER = torch.nn.Parameter
_new = tuple.__new__


def _view_param(data: torch.Tensor, by_id: dict[int, str], by_ptr: dict[int, tuple[str, str]]) -> str | None:
    """The parameter ``data`` is a view of (``W.t()`` saved by a matmul, ``W[1:]``), if any: its
    base by identity, else by storage where the names know storages."""
    base = data._base
    param = by_id.get(id(base)) if base is not None else None
    return param if param is not None or not by_ptr else _param_by_ptr(data, by_ptr)


def _param_by_ptr(data: torch.Tensor, by_ptr: dict[int, tuple[str, str]]) -> str | None:
    """The parameter whose storage ``data`` shares (``W.t()`` saved by a matmul), if any."""
    try:
        hit = by_ptr.get(data.data_ptr())
    except RuntimeError:  # no storage (fake tensors under torch.compile)
        return None
    return hit[1] if hit is not None and hit[0] == str(data.device) else None


def _saved_one(name: str, attr: str, data: Any, out: list[SavedTensor], empty: list[tuple[str, str]],
               by_id: dict[int, str], by_ptr: dict[int, tuple[str, str]]) -> None:
    if data is None:
        empty.append((name, attr))
        return
    if not isinstance(data, _TENSOR):
        return  # packed by saved-tensor hooks (e.g. non-reentrant checkpointing)
    param = by_id.get(id(data)) if by_id else None
    if param is None and by_ptr:
        param = _param_by_ptr(data, by_ptr)
    dt = data.dtype
    out.append(_new(SavedTensor, (name, data.shape, _DTYPE_NAMES.get(dt) or _dtype(dt), data.nbytes, False, param)))


def saved_bytes(node: Any) -> int:
    """Bytes of the tensors ``node`` saved for backward and still holds (0 once freed)."""
    total = 0
    for attr in _saved_attrs(type(node)):
        try:
            raw = getattr(node, attr)
        except Exception:
            continue
        for sv in raw if type(raw) is list or type(raw) is tuple else (raw,):
            data = getattr(sv, "data", None)
            if isinstance(data, torch.Tensor):
                try:
                    total += data.nbytes
                except RuntimeError:
                    pass
    return total


def _released(node: Any, raw_attr: str) -> bool:
    getter = "_saved_" + raw_attr[11:]
    if raw_attr == "_raw_saved_tensors" and not hasattr(type(node), getter):
        getter = "saved_tensors"  # custom autograd.Function
    try:
        getattr(node, getter)
    except RuntimeError as exc:
        return "freed" in str(exc) or "second time" in str(exc)
    except Exception:
        return False
    return False


def _ctx_tensors(node: Any) -> tuple[str, ...]:
    """Tensors a user-defined ``autograd.Function`` keeps on ``ctx`` (torch's own are trusted)."""
    forward_cls = getattr(node, "_forward_cls", None)
    if forward_cls is not None and getattr(forward_cls, "__module__", "").startswith("torch."):
        return ()
    try:
        attrs = vars(node)
    except TypeError:
        return ()
    return tuple(sorted(k for k, v in attrs.items() if isinstance(v, torch.Tensor)))


def _accumulate_grad_type() -> type | None:
    """The type of the nodes that accumulate into leaves (no tensor is made to find it: a user's
    dispatch mode would see it)."""
    return getattr(getattr(torch._C, "_functions", None), "AccumulateGrad", None)


def _node_of(t: torch.Tensor) -> Any:
    """The autograd node a tensor's gradient flows into: ``grad_fn`` or the leaf's accumulator."""
    if t.grad_fn is not None:
        return t.grad_fn
    if t.requires_grad:
        # A leaf that requires grad: the AccumulateGrad node, as the engine would use it.
        return torch.autograd.graph.get_gradient_edge(t).node
    return None


def capture(
    tensors: Sequence[torch.Tensor],
    *,
    names: ParamNames | None = None,
    output_names: Sequence[str] | None = None,
    input_names: Mapping[int, str] | None = None,
    title: str = "",
    saved: bool = True,
    leaf_ids: dict[int, int] | None = None,
    node_index: dict[int, int] | None = None,
    module_of_seq: Callable[[int], str | None] | None = None,
) -> Graph:
    """Snapshot the graph behind ``tensors``. Iterative; holds no node or tensor afterwards.

    ``leaf_ids``, when given, is filled with ``graph node id -> id(leaf tensor)``, and
    ``node_index`` with ``id(autograd node) -> graph node id`` (ids only: nothing is kept alive).
    ``module_of_seq`` maps an op's autograd sequence number to the module whose forward made it
    (the runtime knows forward ranges); ops it does not place keep the module of their inputs.
    """
    with no_gc():
        return _capture(tensors, names, output_names, input_names, title, saved, leaf_ids, node_index, module_of_seq)


@contextlib.contextmanager
def no_gc() -> Iterator[None]:
    """The cyclic garbage collector paused: a capture makes hundreds of thousands of small
    records, and collections in the middle of it would cost a third of its time."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def _capture(
    tensors: Sequence[torch.Tensor],
    names: ParamNames | None,
    output_names: Sequence[str] | None,
    input_names: Mapping[int, str] | None,
    title: str,
    saved: bool,
    leaf_ids: dict[int, int] | None,
    node_index: dict[int, int] | None,
    module_of_seq: Callable[[int], str | None] | None = None,
) -> Graph:
    names = names if names is not None else ParamNames()
    input_get = (input_names or {}).get
    index: dict[int, int] = node_index if node_index is not None else {}  # id(node) -> graph id
    index_get = index.get
    nodes: list[Node] = []
    edges: list[tuple[int, int]] = []
    append_node = nodes.append
    append_edge = edges.append
    name_of = names.by_id.get
    module_of = names.module_of.get
    by_id, by_ptr = names.by_id, names.by_ptr
    parameter = torch.nn.Parameter
    dtypes = _DTYPE_NAMES
    type_info = _TYPE_INFO
    accumulate_grad = _accumulate_grad_type()
    no_accumulate_type = accumulate_grad is None
    new = tuple.__new__
    no_saved: tuple[SavedTensor, ...] = ()
    # (next_functions of a node, its graph id); nodes are held only while the walk runs. The roots
    # come first, as the inputs of a node -1 that is not drawn.
    roots = [_node_of(t) for t in tensors]
    pending: list[tuple[Any, int]] = [(tuple((r, 0) for r in roots if r is not None), -1)]
    root_ids: list[int] = []
    count = 0  # nodes made
    pop = pending.pop
    push = pending.append
    while pending:
        nexts, dst = pop()
        several = len(nexts) > 1
        if several:
            first_edge = len(edges)
            again = False  # an input met before: it may be this node's input twice (x * x)
        for fn, _ in nexts:
            if fn is None:
                continue
            key = id(fn)
            nid = index_get(key)
            if nid is None:
                nid = count
                count += 1
                index[key] = nid
                tp = type(fn)
                if tp is accumulate_grad or (no_accumulate_type and tp.__name__ == "AccumulateGrad"):
                    var = fn.variable
                    pname = name_of(id(var))
                    module = None
                    if pname is not None or isinstance(var, parameter):
                        kind = PARAM
                        module = module_of(pname) if pname else None
                    else:
                        kind = INPUT
                        pname = input_get(id(var))
                    dt = var.dtype
                    append_node(new(Node, (nid, "AccumulateGrad", kind, pname, module, var.shape,
                                           dtypes.get(dt) or _dtype(dt),
                                           no_saved, False, None, ())))
                    if leaf_ids is not None:
                        leaf_ids[nid] = id(var)
                else:
                    op, kind, spec = type_info.get(tp) or _type_info(tp)
                    saved_t, freed = _saved_of(fn, spec, by_id, by_ptr) if spec and saved else (no_saved, False)
                    if saved_t and saved_t[0][0] == "result" and not freed:
                        shape, dtype = saved_t[0][1], saved_t[0][2]  # the op's output, already read
                    else:
                        meta = fn._input_metadata
                        if meta:
                            m0 = meta[0]
                            dt = m0.dtype
                            shape, dtype = tuple(m0.shape), dtypes.get(dt) or _dtype(dt)  # a list
                        else:
                            shape = dtype = None
                    seq = fn._sequence_nr()
                    append_node(new(Node, (nid, op, kind, None, None, shape, dtype, saved_t, freed, seq,
                                           _ctx_tensors(fn) if kind == CUSTOM else ())))
                    push((fn.next_functions, nid))
            else:
                again = True  # (read only when `several`)
            append_edge((nid, dst))
        if dst < 0:
            root_ids = [nid for nid, _ in edges]
            edges.clear()
        elif several and again:
            mine = edges[first_edge:]
            if len(set(mine)) != len(mine):  # the same input twice (x * x): one edge
                edges[first_edge:] = list(dict.fromkeys(mine))
    fn = nexts = pending = roots = None  # no node object outlives the capture
    outputs: list[Output] = []
    it = iter(root_ids)
    for i, t in enumerate(tensors):
        oname = output_names[i] if output_names and i < len(output_names) else f"output{i if i else ''}"
        nid = next(it) if (t.grad_fn is not None or t.requires_grad) else None
        outputs.append(Output(oname, nid, tuple(t.shape), _dtype(t.dtype)))
    # the module whose forward made an op, where the runtime knows it (`module_of_seq`); else
    # (and for the ops it does not place) the module of the parameters and inputs an op consumes
    placed = [(i, module_of_seq(nd[9])) for i, nd in enumerate(nodes) if nd[9] is not None] if module_of_seq else None
    if names.by_id and (placed is None or any(m is None for _, m in placed)):
        _assign_modules(nodes, edges)
    for i, m in placed or ():
        if m is not None and m != nodes[i][4]:
            nodes[i] = nodes[i]._replace(module=m or None)  # "": made outside every module's forward
    # the types of every module of the networks that appear (for cluster labels and descriptions)
    types = names.module_types
    used_modules: list[tuple[str, str]] = []
    if types:
        tops = {m.partition(".")[0] for m in {n[4] for n in nodes} if m}
        used_modules = [(m, t) for m, t in types.items() if m.partition(".")[0] in tops]
    return Graph(tuple(nodes), tuple(edges), tuple(outputs), title, modules=tuple(used_modules))


def _assign_modules(nodes: list[Node], edges: list[tuple[int, int]]) -> None:
    """Attribute op nodes to modules, in place: the module of a parameter an op consumes (through
    view ops), else the common module of its inputs, in forward order."""
    n = len(nodes)
    inputs: list[list[int] | None] = [None] * n
    for src, dst in edges:
        ins = inputs[dst]
        if ins is None:
            inputs[dst] = [src]
        else:
            ins.append(src)
    mods: list[str | None] = [nd[4] for nd in nodes]
    # the module of a parameter node, or of the parameter an op views (`W.t()`): "direct" inputs
    direct: list[str | None] = [(nd[4] or None) if nd[2] == PARAM else None for nd in nodes]
    order = sorted([(nd[9], nd[0]) for nd in nodes if nd[9] is not None])
    new = tuple.__new__
    views = _VIEW_OPS
    for _, i in order:
        ins = inputs[i]
        if not ins:
            continue
        found: list[str] = []
        other: list[str] = []
        for src in ins:
            m = direct[src]
            if m is not None:
                found.append(m)
            else:
                m = mods[src]
                if m:
                    other.append(m)
        if len(found) == 1 and not other and nodes[i][1] in views:
            direct[i] = found[0]
        if mods[i]:
            continue
        if found:
            m = found[0] if len(found) == 1 else common_module(found)
        elif other:
            m = other[0] if len(other) == 1 else common_module(other)
        else:
            continue
        if not m:
            continue
        mods[i] = m
        nd = nodes[i]
        nodes[i] = new(Node, (nd[0], nd[1], nd[2], nd[3], m, nd[5], nd[6], nd[7], nd[8], nd[9], nd[10]))


def _as_tensor_list(tensors: tuple[Any, ...]) -> list[torch.Tensor]:
    if len(tensors) == 1 and isinstance(tensors[0], (list, tuple)):
        tensors = tuple(tensors[0])
    if not tensors:
        raise LensError("draw() needs at least one tensor with a grad_fn; got nothing (an empty list)")
    out = []
    for t in tensors:
        if isinstance(t, torch.Tensor):
            out.append(t)
        elif hasattr(t, "grad_fn") and hasattr(t, "backward"):
            out.append(t)  # tensor-like (subclass wrappers)
        else:
            raise LensError(
                f"draw() takes tensors that are part of an autograd graph; got {describe(t)}. "
                "Pass the loss or output tensor itself, e.g. `lens.draw(loss)`."
            )
    return out
