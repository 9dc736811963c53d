"""``assert_gradcheck``: ``torch.autograd.gradcheck`` for custom ``autograd.Function``\\ s, with a
failure that names the input, the element and both values, and what the difference looks like.

It imports the graph capture (for the names of custom functions), naming and :mod:`.common`.
"""

from __future__ import annotations

import inspect
import math
import re
from collections.abc import Callable, Mapping
from typing import Any

import torch

from ..errors import LensError, describe
from ..graph import CUSTOM, capture
from ..naming import tensor_names, user_frame
from .common import claim_caller, plural

__all__ = ["assert_gradcheck"]


_WRONG_COUNT = re.compile(r"function (\w+) returned an incorrect number of gradients \(expected (\d+), got (\d+)\)")
_WRONG_SHAPE = re.compile(
    r"Function (\w+) returned an invalid gradient at index (\d+) - got \[([^\]]*)\] but expected shape "
    r"compatible with \[([^\]]*)\]"
)
_WRONG_OTHER = re.compile(r"Function (\w+) returned an invalid gradient at index (\d+) - (.*)")


def assert_gradcheck(
    fn: Callable[..., Any],
    inputs: Any,
    *,
    eps: float = 1e-6,
    atol: float = 1e-5,
    rtol: float = 1e-3,
    allow_ctx_tensors: bool = False,
    **gradcheck_kwargs: Any,
) -> None:
    """Check the backward of ``fn`` (a custom ``autograd.Function``\\ 's ``apply``, usually)
    against finite differences, and explain a failure element by element.

    Wraps :func:`torch.autograd.gradcheck`. On failure the message names the input, the element
    (its index), the analytical and numerical values and the largest error, instead of whole
    Jacobians. It also fails when the Function keeps tensors on ``ctx`` instead of
    ``ctx.save_for_backward`` (unless ``allow_ctx_tensors``), and when ``backward`` returns the
    wrong number of gradients or gradients of the wrong shape.

    Args:
        fn: the function to check, e.g. ``Linear.apply``.
        inputs: a tensor or a tuple of arguments; those that require grad are checked and must be
            double precision.
        eps, atol, rtol: as in ``torch.autograd.gradcheck``.
        allow_ctx_tensors: do not fail on tensors kept on ``ctx``.
        gradcheck_kwargs: passed on to ``torch.autograd.gradcheck``.

    Example::

        x = torch.randn(4, 3, dtype=torch.double, requires_grad=True)
        w = torch.randn(2, 3, dtype=torch.double, requires_grad=True)
        assert_gradcheck(Linear.apply, (x, w))
    """
    __tracebackhide__ = True
    if not callable(fn):
        raise LensError(f"assert_gradcheck() takes a function to check; got {describe(fn)}")
    claim_caller()  # the backward calls made here are the check's own, not the test's
    args = (inputs,) if isinstance(inputs, torch.Tensor) else tuple(inputs) if isinstance(inputs, (list, tuple)) else None
    if args is None:
        raise LensError(f"assert_gradcheck() takes a tensor or a tuple of inputs; got {describe(inputs)}")
    diff = [i for i, a in enumerate(args) if isinstance(a, torch.Tensor) and a.requires_grad]
    if not diff:
        raise LensError(
            "assert_gradcheck(): none of the inputs requires grad, so there is nothing to check; "
            "create them with `requires_grad=True`, e.g. `torch.randn(3, dtype=torch.double, requires_grad=True)`"
        )
    frame = user_frame()
    try:
        local = tensor_names(frame)
    finally:
        del frame
    fn_name, arg_names = _function_names(fn)
    fallback = {i: local[id(a)] for i, a in enumerate(args) if id(a) in local}

    def input_name(i: int) -> str:
        name = arg_names[i] if i < len(arg_names) else fallback.get(i)
        return f"input {i} (`{name}`)" if name else f"input {i}"

    for i in diff:
        if args[i].dtype not in (torch.float64, torch.complex128):
            raise LensError(
                f"assert_gradcheck(): {input_name(i)} is {args[i].dtype}; finite differences need double "
                f"precision: pass `x.double()` (or create it with `dtype=torch.double`)"
            )

    outs = _outputs(fn(*args), "assert_gradcheck()")
    diff_outs = [o for o in outs if o.requires_grad]
    if not diff_outs:
        raise AssertionError(
            f"assert_gradcheck(): no output of `{fn_name}` requires grad; the inputs that require grad "
            "do not reach the outputs through autograd"
        )
    problems: list[str] = []
    graph = capture(diff_outs, saved=False)
    for n in graph.nodes:
        if n.kind == CUSTOM and n.ctx_tensors:
            name = n.op[:-8] if n.op.endswith("Backward") else n.op
            fn_name = name if fn_name == "fn" else fn_name
            attrs = ", ".join(f"`ctx.{a}`" for a in n.ctx_tensors)
            problems.append(
                f"`{name}.forward` keeps tensors on ctx: {attrs}\n"
                "  = note: tensors on ctx are never version-checked and never freed by backward\n"
                f"help: use `ctx.save_for_backward(...)` in `{name}.forward` and `ctx.saved_tensors` in "
                f"`{name}.backward`"
            )
    if allow_ctx_tensors:
        problems = []
    try:
        grads = torch.autograd.grad(
            diff_outs, [args[i] for i in diff], [torch.ones_like(o) for o in diff_outs], allow_unused=True
        )
    except RuntimeError as exc:
        raise AssertionError(_backward_error(exc, fn_name, input_name)) from None
    unused = [input_name(i) for i, g in zip(diff, grads) if g is None]
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ok = torch.autograd.gradcheck(
            fn, args, eps=eps, atol=atol, rtol=rtol, raise_exception=False, **gradcheck_kwargs
        )
    if not ok:
        problems.insert(0, _explain_mismatch(fn, args, diff, eps, atol, rtol, fn_name, input_name, unused, gradcheck_kwargs))
    if problems:
        raise AssertionError("\n\n".join(problems))


def _function_names(fn: Callable[..., Any]) -> tuple[str, list[str]]:
    """The Function's name and the names of its forward's inputs (after ``ctx``)."""
    owner = getattr(fn, "__self__", None)
    if isinstance(owner, type) and issubclass(owner, torch.autograd.Function):
        try:
            params = list(inspect.signature(owner.forward).parameters)
        except (TypeError, ValueError):
            params = []
        if params and params[0] == "ctx":
            params = params[1:]
        return owner.__name__, [p for p in params if not p.startswith("*")]
    return getattr(fn, "__name__", "fn"), []


def _outputs(out: Any, who: str) -> list[torch.Tensor]:
    if isinstance(out, torch.Tensor):
        return [out]
    if isinstance(out, (list, tuple)) and all(isinstance(o, torch.Tensor) for o in out) and out:
        return list(out)
    raise LensError(f"{who}: the function must return a tensor or a tuple of tensors; it returned {describe(out)}")


def _backward_error(exc: RuntimeError, fn_name: str, input_name: Callable[[int], str]) -> str:
    text = str(exc).split("\n", 1)[0]
    m = _WRONG_COUNT.search(text)
    if m:
        name, expected, got = m.group(1), int(m.group(2)), int(m.group(3))
        name = name[:-8] if name.endswith("Backward") else name
        return (
            f"`{name}.backward` returned {plural(got, 'gradient')}, but `{name}.forward` takes "
            f"{plural(expected, 'input')} (after ctx)\n"
            f"  = note: PyTorch: {text}\n"
            f"help: return exactly one gradient per input of forward, in order, and `None` for inputs "
            f"that need no gradient"
        )
    m = _WRONG_SHAPE.search(text)
    if m:
        name, index = m.group(1), int(m.group(2))
        name = name[:-8] if name.endswith("Backward") else name
        got = f"({m.group(3)})"
        want = f"({m.group(4)})"
        return (
            f"`{name}.backward` returned a gradient of shape {got} for {input_name(index)}, whose shape "
            f"is {want}\n"
            f"  = note: PyTorch: {text}\n"
            f"help: the gradient of each input must have that input's shape (check the order of the "
            f"returned gradients and any transpose)"
        )
    m = _WRONG_OTHER.search(text)
    if m:
        name = m.group(1)[:-8] if m.group(1).endswith("Backward") else m.group(1)
        return f"`{name}.backward` returned a wrong gradient for {input_name(int(m.group(2)))}: {m.group(3)}"
    return f"backward of `{fn_name}` raised {type(exc).__name__}: {text}"


def _explain_mismatch(
    fn: Callable[..., Any],
    args: tuple[Any, ...],
    diff: list[int],
    eps: float,
    atol: float,
    rtol: float,
    fn_name: str,
    input_name: Callable[[int], str],
    unused: list[str],
    gradcheck_kwargs: Mapping[str, Any],
) -> str:
    analytical = _analytical(fn, args, diff)
    numerical = _numerical(fn, args, diff, eps)
    parts: list[str] = []
    n_outs = len({oi for oi, _ in analytical})
    for (oi, j), a in analytical.items():
        n = numerical[(oi, j)]
        if a.is_complex() or n.is_complex():
            continue
        err = (a - n).abs()
        tol = atol + rtol * n.abs()
        bad = err > tol
        if not bool(bad.any()):
            continue
        x = args[j]
        out_shape = n.shape[: n.dim() - x.dim()]
        flat_err = err.reshape(-1)
        worst = int(flat_err.argmax())
        idx = _unravel(worst, tuple(n.shape))
        out_idx, in_idx = idx[: len(out_shape)], idx[len(out_shape):]
        av, nv = float(a.reshape(-1)[worst]), float(n.reshape(-1)[worst])
        name = input_name(j)
        short = name.split("`")[1] if "`" in name else f"input{j}"
        out_name = "output" if n_outs == 1 else f"output {oi}"
        out_text = f"{out_name}[{', '.join(map(str, out_idx))}]" if out_idx else out_name
        lines = [
            f"`{fn_name}` backward disagrees with finite differences for {name}, shape {tuple(x.shape)}:",
            f"  worst at {short}[{', '.join(map(str, in_idx))}] for {out_text}: analytical {_num(av)}, "
            f"numerical {_num(nv)}, error {_num(abs(av - nv))} (allowed {_num(atol + rtol * abs(nv))})",
            f"  {int(bad.sum())} of {bad.numel()} Jacobian entries differ (atol={atol:g}, rtol={rtol:g})",
        ]
        hint = _hint(a[bad], n[bad], a)
        if name in unused:
            lines.append(f"  = note: `{fn_name}.backward` returns `None` for {name}, which requires grad")
        elif hint:
            lines.append(f"  = note: {hint}")
        parts.append("\n".join(lines))
    if not parts:
        try:
            with __import__("warnings").catch_warnings():
                __import__("warnings").simplefilter("ignore")
                torch.autograd.gradcheck(fn, args, eps=eps, atol=atol, rtol=rtol, raise_exception=True, **gradcheck_kwargs)
        except Exception as exc:  # gradcheck's own reason, first lines
            head = "\n".join(str(exc).strip().split("\n")[:6])
            return f"`{fn_name}` failed gradcheck:\n  {head}"
        return f"`{fn_name}` failed gradcheck (no Jacobian entry differs; check the gradcheck options)"
    return "\n\n".join(parts)


def _analytical(fn: Callable[..., Any], args: tuple[Any, ...], diff: list[int]) -> dict[tuple[int, int], torch.Tensor]:
    """Jacobians from backward: ``(output i, input j) -> tensor of shape out.shape + in.shape``."""
    xs = list(args)
    for j in diff:
        xs[j] = args[j].detach().clone().requires_grad_(True)
    outs = _outputs(fn(*xs), "assert_gradcheck()")
    result: dict[tuple[int, int], torch.Tensor] = {}
    for oi, o in enumerate(outs):
        rows: dict[int, list[torch.Tensor]] = {j: [] for j in diff}
        flat = o.reshape(-1)
        for k in range(flat.numel()):
            if o.requires_grad:
                gs = torch.autograd.grad(flat[k], [xs[j] for j in diff], retain_graph=True, allow_unused=True)
            else:
                gs = (None,) * len(diff)
            for j, g in zip(diff, gs):
                rows[j].append(torch.zeros_like(args[j]) if g is None else g.detach())
        for j in diff:
            stacked = torch.stack(rows[j]) if rows[j] else torch.zeros((0,) + tuple(args[j].shape), dtype=args[j].dtype)
            result[(oi, j)] = stacked.reshape(tuple(o.shape) + tuple(args[j].shape))
    return result


def _numerical(fn: Callable[..., Any], args: tuple[Any, ...], diff: list[int], eps: float) -> dict[tuple[int, int], torch.Tensor]:
    """Jacobians by central differences, same layout as :func:`_analytical`."""
    base = [a.detach().clone() if isinstance(a, torch.Tensor) else a for a in args]
    result: dict[tuple[int, int], torch.Tensor] = {}
    with torch.no_grad():
        shapes = [tuple(o.shape) for o in _outputs(fn(*base), "assert_gradcheck()")]
        for j in diff:
            x = base[j]
            flat = x.view(-1)
            cols: list[list[torch.Tensor]] = [[] for _ in shapes]
            for k in range(flat.numel()):
                orig = flat[k].item()
                flat[k] = orig + eps
                plus = [o.detach().clone() for o in _outputs(fn(*base), "assert_gradcheck()")]
                flat[k] = orig - eps
                minus = [o.detach().clone() for o in _outputs(fn(*base), "assert_gradcheck()")]
                flat[k] = orig
                for oi, (p, m) in enumerate(zip(plus, minus)):
                    cols[oi].append(((p - m) / (2 * eps)).reshape(-1))
            for oi, shape in enumerate(shapes):
                jac = torch.stack(cols[oi], dim=1) if cols[oi] else torch.zeros((math.prod(shape), 0), dtype=x.dtype)
                result[(oi, j)] = jac.reshape(shape + tuple(x.shape))
    return result


def _unravel(index: int, shape: tuple[int, ...]) -> tuple[int, ...]:
    out = []
    for size in reversed(shape):
        out.append(index % size if size else 0)
        index = index // size if size else 0
    return tuple(reversed(out))


def _num(v: float) -> str:
    return f"{v:.6g}"


def _hint(a: torch.Tensor, n: torch.Tensor, whole: torch.Tensor) -> str:
    """A plain-words guess at the pattern of a mismatch (zero, sign, constant factor)."""
    if bool((whole == 0).all()):
        return "the analytical gradient is zero everywhere: `backward` does not compute it"
    mask = n.abs() > 1e-8
    if not bool(mask.any()):
        return "the numerical gradient is zero there: the output does not depend on those elements"
    ratio = a[mask] / n[mask]
    c = float(ratio.mean())
    if bool(((ratio - c).abs() <= 1e-3 * max(1.0, abs(c))).all()):
        if abs(c + 1) < 1e-3:
            return "analytical = -numerical wherever they differ: a sign is flipped in `backward`"
        return f"analytical = {c:.4g} × numerical wherever they differ: a missing or extra factor in `backward`"
    return ""
