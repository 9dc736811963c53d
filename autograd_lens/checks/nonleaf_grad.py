"""`.grad` read on a tensor that is not a leaf.

## What it does
Reports reads of `.grad` on intermediate tensors, which are always `None` unless `retain_grad()`
was called (PyTorch only warns once).

It also reports an optimizer that holds parameters that are no longer leaves, at the user's
`zero_grad()` or `step()` line, with their names: an in-place update of a parameter outside
`torch.no_grad()` with a tensor that requires grad (an EMA or momentum update of a target network,
`t.mul_(m).add_(o, alpha=1 - m)`) records it in a graph. PyTorch's own warning then points inside
`torch/optim`.

## Why is this bad?
Autograd populates `.grad` only for leaves. Code that inspects or clips `.grad` of an intermediate
tensor silently sees `None`.

## Example
```python
h = layer(x)
loss = h.sum()
loss.backward()
print(h.grad)                      # None
```

## Use instead
```python
h = layer(x)
h.retain_grad()
loss = h.sum()
loss.backward()
print(h.grad)
```
"""

from __future__ import annotations

RULE = "nonleaf-grad"
SEVERITY = "warning"
SUMMARY = ".grad read on a non-leaf tensor; use retain_grad()"

from ..findings import NONLEAF_GRAD_WARNING, Finding, Label, Site
from ._text import names_text

MARKER = NONLEAF_GRAD_WARNING


def from_warning(message: object, filename: str, lineno: int, *, optimizer: str | None = None,
                 params: tuple[str, ...] = (), op: str | None = None, function: str = "") -> Finding | None:
    """A finding for PyTorch's non-leaf ``.grad`` warning, at the line that read ``.grad``: the
    user's, or the user's call that led to the read (an optimizer step, whose ``optimizer`` holds
    ``params`` that are no longer leaves)."""
    if MARKER not in str(message):
        return None
    site = Site(filename, lineno, function)
    if optimizer is not None and params:
        shown = names_text(params)
        made = f" (`{op}`)" if op else ""
        return Finding(
            RULE, SEVERITY,
            f"`{optimizer}` holds {len(params)} parameter{'s' if len(params) > 1 else ''} that "
            f"{'are no longer leaves' if len(params) > 1 else 'is no longer a leaf'}: {shown}",
            site, (Label(site, "reads their `.grad`, which autograd never fills", primary=True),),
            (f"an operation recorded by autograd{made} produced them: an in-place update of a parameter "
             "outside `torch.no_grad()` with a tensor that requires grad (an EMA or momentum update of "
             "a target network), or a parameter replaced by the result of an operation",
             "they get no gradient and every step skips them; each update adds to their graph"),
            "make the update under `torch.no_grad()` (or on `p.data`), so that the parameter stays a leaf",
            params=params, optimizer=optimizer,
        )
    return Finding(
        RULE, SEVERITY,
        "`.grad` was read on a tensor that is not a leaf: it is always `None` there",
        site, (Label(site, "reads `.grad` of an intermediate tensor", primary=True),),
        ("autograd fills `.grad` only for leaves (parameters, inputs created by the user)",),
        "call `.retain_grad()` on the tensor before backward, or read the gradient with "
        "`torch.autograd.grad(loss, tensor)` or a tensor hook",
    )
