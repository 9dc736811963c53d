"""What the user's source says at a site: the call on a line, where a variable is assigned, which
statements update parameters by hand, which statements keep loss tensors across iterations.

Pure functions of file text (read through ``linecache``, parsed once per file and cached); no
torch, no runtime state. Every function answers None or an empty result when the source cannot be
read or parsed (a notebook cell that is gone, a compiled file), never raises.
"""

from __future__ import annotations

import ast
import functools
import io
import linecache
import tokenize
from dataclasses import dataclass


@functools.lru_cache(maxsize=64)
def _tree(filename: str, size: int) -> ast.Module | None:
    text = "".join(linecache.getlines(filename))
    if not text:
        return None
    try:
        return ast.parse(text)
    except (SyntaxError, ValueError):
        return None


def tree(filename: str) -> ast.Module | None:
    """The parsed module of ``filename`` (cached on its size, so an edited file is parsed again)."""
    lines = linecache.getlines(filename)
    return _tree(filename, sum(len(s) for s in lines)) if lines else None


def _functions(mod: ast.Module) -> list[ast.AST]:
    return [n for n in ast.walk(mod) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))]


def enclosing(filename: str, line: int) -> ast.AST | None:
    """The innermost function (or the module) whose body holds ``line``."""
    mod = tree(filename)
    if mod is None:
        return None
    best: ast.AST = mod
    best_span = 1 << 30
    for fn in _functions(mod):
        end = getattr(fn, "end_lineno", None) or fn.lineno
        if fn.lineno <= line <= end and end - fn.lineno < best_span:
            best, best_span = fn, end - fn.lineno
    return best


def statement_at(filename: str, line: int) -> ast.stmt | None:
    """The innermost simple statement that spans ``line``."""
    scope = enclosing(filename, line)
    if scope is None:
        return None
    best = None
    for node in ast.walk(scope):
        if isinstance(node, ast.stmt) and not isinstance(node, _COMPOUND):
            end = getattr(node, "end_lineno", None) or node.lineno
            if node.lineno <= line <= end and (best is None or node.lineno >= best.lineno):
                best = node
    return best


_COMPOUND = (
    ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.For, ast.AsyncFor, ast.While, ast.If,
    ast.With, ast.AsyncWith, ast.Try,
)


def call_text(filename: str, line: int, method: str) -> str | None:
    """The text of the call to ``.method(...)`` (or ``method(...)``) on ``line``, without what
    surrounds it on the line: ``errD.backward()`` from ``errD.backward()  # D step``, or
    ``d_loss.backward()`` from ``opt.zero_grad(); d_loss.backward(); opt.step()``."""
    scope = enclosing(filename, line)
    if scope is None:
        return None
    best = None
    for node in ast.walk(scope):
        if isinstance(node, ast.Call):
            f = node.func
            name = f.attr if isinstance(f, ast.Attribute) else f.id if isinstance(f, ast.Name) else None
            end = getattr(node, "end_lineno", None) or node.lineno
            if name == method and node.lineno <= line <= end:
                # the outermost such call (`scaler.scale(loss).backward()`, not `loss.backward`)
                if best is None or (node.lineno, -(end)) < (best.lineno, -(best.end_lineno or best.lineno)):
                    best = node
    if best is None:
        return None
    seg = ast.get_source_segment("".join(linecache.getlines(filename)), best)
    return " ".join(seg.split()) if seg is not None else None


def strip_comment(text: str) -> str:
    """``text`` without a trailing ``# comment`` (strings that contain ``#`` are kept)."""
    if "#" not in text:
        return text.strip()
    try:
        toks = list(tokenize.generate_tokens(io.StringIO(text).readline))
    except (tokenize.TokenError, IndentationError, SyntaxError):
        return text.strip()
    for tok in toks:
        if tok.type == tokenize.COMMENT:
            return text[: tok.start[1]].rstrip()
    return text.strip()


def assignment_line(filename: str, line: int, name: str, *, keeps_graph: bool = True) -> int | None:
    """The line where ``name`` was last assigned before ``line``, in the function that holds
    ``line`` (the first assignment of the function when none comes before, e.g. in a loop). With
    ``keeps_graph``, assignments that cut the graph (``x = x.detach()``) are not it."""
    scope = enclosing(filename, line)
    if scope is None:
        return None
    hits = sorted(
        node.lineno
        for node in ast.walk(scope)
        if isinstance(node, (ast.Assign, ast.AugAssign, ast.AnnAssign)) and _assigns(node, name)
        and not (keeps_graph and _cuts_graph(getattr(node, "value", None)))
    )
    if not hits:
        return None
    before = [h for h in hits if h <= line]
    return before[-1] if before else hits[0]


def assigned_expr(filename: str, line: int, name: str) -> str | None:
    """The right-hand side of the assignment to ``name`` on ``line`` (``returns - values``)."""
    stmt = statement_at(filename, line)
    if not isinstance(stmt, ast.Assign) or not _assigns(stmt, name):
        return None
    seg = ast.get_source_segment("".join(linecache.getlines(filename)), stmt.value)
    return " ".join(seg.split()) if seg is not None else None


_CUTS = frozenset({"detach", "item", "tolist", "numpy", "detach_"})


def _cuts_graph(value: ast.AST | None) -> bool:
    return isinstance(value, ast.Call) and isinstance(value.func, ast.Attribute) and value.func.attr in _CUTS


def _assigns(node: ast.AST, name: str) -> bool:
    targets = node.targets if isinstance(node, ast.Assign) else [node.target]  # type: ignore[attr-defined]
    for t in targets:
        for sub in ast.walk(t):
            if isinstance(sub, ast.Name) and sub.id == name:
                return True
    return False


def call_argument(filename: str, line: int, position: int) -> str | None:
    """The source of argument ``position`` of the first call on ``line`` that has that many
    positional arguments: ``hidden`` of ``output, hidden = model(data, hidden)``."""
    stmt = statement_at(filename, line)
    if stmt is None:
        return None
    text = "".join(linecache.getlines(filename))
    for node in ast.walk(stmt):
        if isinstance(node, ast.Call) and len(node.args) > position and node.lineno == line:
            return ast.get_source_segment(text, node.args[position])
    return None


# ----------------------------------------------------------------------------------------------
# statements that update parameters by hand, and statements that keep losses
# ----------------------------------------------------------------------------------------------

_INPLACE_UPDATES = frozenset({"add_", "sub_", "addcdiv_", "addcmul_", "copy_", "mul_", "div_"})


@dataclass(frozen=True)
class Update:
    """A statement that changes parameters by hand using their gradient."""

    line: int
    target: str  # the text of what it updates (`p`, `p.data`, `w`)
    text: str


def manual_updates(filename: str) -> tuple[Update, ...]:
    """Statements of the file that update a tensor in place from a gradient: ``p.data.add_(p.grad,
    alpha=-lr)``, ``p -= lr * p.grad``, ``p.data -= lr * p.grad.data``, ``w.data = w.data - lr * w.grad``."""
    mod = tree(filename)
    if mod is None:
        return ()
    text = "".join(linecache.getlines(filename))
    out = []
    for node in ast.walk(mod):
        target = None
        value: ast.AST | None = None
        if isinstance(node, ast.AugAssign) and isinstance(node.op, (ast.Sub, ast.Add)):
            target, value = node.target, node.value
        elif isinstance(node, ast.Assign) and len(node.targets) == 1 and _is_data(node.targets[0]):
            target, value = node.targets[0], node.value
        elif isinstance(node, ast.Expr) and isinstance(node.value, ast.Call):
            f = node.value.func
            if isinstance(f, ast.Attribute) and f.attr in _INPLACE_UPDATES:
                target, value = f.value, node.value
        if target is None or value is None or not _mentions_grad(value) or _mentions_grad(target):
            continue
        seg = ast.get_source_segment(text, node) or ""
        out.append(Update(node.lineno, ast.get_source_segment(text, target) or "", " ".join(seg.split())))
    return tuple(sorted(out, key=lambda u: u.line))


def _is_data(t: ast.AST) -> bool:
    return isinstance(t, ast.Attribute) and t.attr == "data"


def _mentions_grad(node: ast.AST) -> bool:
    return any(isinstance(n, ast.Attribute) and n.attr in ("grad", "_grad") for n in ast.walk(node))


def accumulations(filename: str, line: int, name: str) -> int | None:
    """The line of a statement in the function holding ``line`` that keeps adding to or appending
    to ``name`` (``epoch_loss += loss``, ``history.append(loss)``, ``running = running + loss``)."""
    scope = enclosing(filename, line)
    if scope is None:
        return None
    hits = []
    for node in ast.walk(scope):
        if isinstance(node, ast.AugAssign) and isinstance(node.target, ast.Name) and node.target.id == name:
            hits.append(node.lineno)
        elif isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == name for t in node.targets):
            if any(isinstance(n, ast.Name) and n.id == name for n in ast.walk(node.value)):
                hits.append(node.lineno)
        elif isinstance(node, ast.Expr) and isinstance(node.value, ast.Call):
            f = node.value.func
            if (
                isinstance(f, ast.Attribute)
                and f.attr in ("append", "extend", "insert")
                and isinstance(f.value, ast.Name)
                and f.value.id == name
            ):
                hits.append(node.lineno)
    return min(hits) if hits else None


def call_source(filename: str, line: int, methods: tuple[str, ...]) -> str:
    """The call to one of ``methods`` on ``line`` (``errD.backward()``), else the line itself
    without its comment; "" when the file cannot be read."""
    for m in methods:
        text = call_text(filename, line, m)
        if text:
            return text
    return strip_comment(linecache.getline(filename, line).strip())


BACKWARD_METHODS = ("backward", "manual_backward", "grad")
STEP_METHODS = ("step",)
