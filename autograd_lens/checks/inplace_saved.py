"""A tensor saved for backward was modified in place before the backward that needs it.

## What it does
Finds a parameter (or tensor) that an autograd node saved during the forward and that was then
changed in place, typically by `optimizer.step()`, before the backward that uses it. Names the
tensor (`netD.main.2.weight`), the call that changed it, and the versions. It also catches the case
PyTorch misses: `fused=True` optimizers (and `p.data` updates) do not bump the version counter, so
the backward runs without error and computes its gradient from the new weights.

## Why is this bad?
The gradient of the loss is computed from the weights the forward used. After the step those
weights are gone: PyTorch refuses ("modified by an inplace operation ... is at version 2;
expected version 1") or, with fused optimizers, silently returns a wrong gradient.

## Example
```python
d_loss.backward(retain_graph=True)
optimizerD.step()                  # changes netD's weights in place
g_loss.backward()                  # g_loss's graph saved netD's old weights
```

## Use instead
```python
d_loss.backward(retain_graph=True)
g_loss.backward()                  # both backward calls before any step
optimizerD.step()
optimizerG.step()
```
Or recompute the forward after the step: `g_loss = criterion(netD(fake), real_label)`.
"""

from __future__ import annotations

RULE = "inplace-saved"
SEVERITY = "error"
SUMMARY = "a tensor saved for backward was modified in place (e.g. by optimizer.step()) before backward"

import re
from typing import TYPE_CHECKING

import torch

from ..findings import Finding, Label
from ..graph import _saved_attrs
from ._text import call_text, code, step_text

if TYPE_CHECKING:
    from ..events import BackwardCall
    from ..walk import StaleSaved
    from ..context import Context

_VERSIONS = re.compile(r"is at version (\d+); expected version (\d+)")


def from_stale(ctx: Context, call: BackwardCall, stale: list[StaleSaved], failed: bool, exc_text: str | None = None) -> list[Finding]:
    """Findings for saved parameters that a step modified before this backward."""
    by_step: dict[int, list[StaleSaved]] = {}
    for s in stale:
        by_step.setdefault(s.step_index, []).append(s)
    out = []
    for step_index, items in by_step.items():
        step = ctx.step(step_index)
        if step is None:
            continue
        names = sorted({ctx.param_name(s.pid) for s in items})
        first = items[0]
        opt = ctx.opts().get(step.optimizer_key)
        optimizer = opt.ref() if opt is not None else None
        fused = bool(optimizer is not None and optimizer.defaults.get("fused"))
        rng = ctx.range_of_seq(first.node_seq)
        labels = []
        if rng is not None and rng.site is not None:
            labels.append(Label(rng.site, f"the forward saves {code(names[0])} for backward (`{first.op}`)"))
        labels.append(Label(step.site, f"modifies {code(names[0])} in place"))
        labels.append(Label(call.site, "computes its gradient from the saved weights", primary=True))
        notes = []
        if failed:
            m = _VERSIONS.search(exc_text or "")
            if m:
                notes.append(f"the saved tensor is at version {m.group(1)}; the graph expected version {m.group(2)}")
        else:
            why = f"`{step.optimizer}` is fused and does not bump the version counter" if fused else (
                "the update did not bump the version counter (fused kernel or `.data`)")
            notes.append(f"PyTorch raised no error: {why}, so the gradient was computed from the updated weights")
        if len(names) > 1:
            notes.append(f"{len(names)} saved parameters are affected: " + ", ".join(code(n) for n in names[:6]))
        out.append(Finding(
            RULE, SEVERITY,
            f"{code(names[0])} was saved for backward, then modified in place by {step_text(step)} "
            f"(line {step.site.line}) before {call_text(call)}",
            call.site, tuple(labels), tuple(notes),
            f"run every backward that needs the old weights before {step_text(step)} (e.g. "
            f"{call_text(call)} before line {step.site.line}), or recompute the forward after the step",
            params=tuple(names), optimizer=step.optimizer, backward=call.site,
            extra={"step": step.site.to_dict(), "fused": fused, "silent": not failed},
        ))
    return out


def find_culprit(roots: list[torch.Tensor], ctx: Context) -> tuple[str, str, str | None] | None:
    """(op, saved name, parameter name) of a saved tensor that fails its version check."""
    seen: set[int] = set()
    stack = [t.grad_fn for t in roots if t.grad_fn is not None]
    while stack:
        fn = stack.pop()
        if id(fn) in seen:
            continue
        seen.add(id(fn))
        for attr in _saved_attrs(type(fn)):
            getter = "_saved_" + attr[11:]
            try:
                getattr(fn, getter)
            except RuntimeError as exc:
                if "inplace" in str(exc):
                    raw = getattr(fn, attr)
                    data = raw.data if not isinstance(raw, (list, tuple)) else None
                    if not isinstance(data, torch.Tensor):
                        data = None
                    pname = None
                    if data is not None:
                        pname = ctx.names.name_of(data) or ctx.names.name_of_storage(data)
                    return type(fn).__name__, attr[11:], pname
            except Exception:
                pass
        for nxt, _ in fn.next_functions:
            if nxt is not None:
                stack.append(nxt)
    return None


def explain_plain(ctx: Context, call: BackwardCall, roots: list[torch.Tensor], exc_text: str) -> Finding:
    """An in-place error not caused by an optimizer step (an in-place op in the user's code)."""
    culprit = find_culprit(roots, ctx)
    m = _VERSIONS.search(exc_text)
    notes = []
    if m:
        notes.append(f"the saved tensor is at version {m.group(1)}; the graph expected version {m.group(2)}")
    if culprit is not None:
        op, saved, pname = culprit
        what = code(pname) if pname else f"the tensor `{saved}` saved by `{op}`"
        message = f"{what} was modified by an in-place operation before {call_text(call)}"
        notes.append(f"`{op}` saved it as `{saved}`")
    else:
        pname = None
        message = f"a tensor saved for {call_text(call)} was modified by an in-place operation"
    notes.append(f"PyTorch: {exc_text}")
    return Finding(
        RULE, SEVERITY, message, call.site, (), tuple(notes),
        "find the in-place change between the forward and this backward (`x += ...`, `x.relu_()`, "
        "`nn.ReLU(inplace=True)`, `.copy_()`, an optimizer step) and make it out of place, or move it "
        "after the backward",
        params=(pname,) if pname else (), backward=call.site,
    )
