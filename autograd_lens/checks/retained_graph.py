"""Graphs kept alive across iterations: by carried state, or by loss tensors kept around.

## What it does
Reports graphs of earlier iterations that stay alive:
- a backward whose graph reaches into the graph of an earlier call at the same site (the previous
  iteration) that was kept with `retain_graph=True`: state such as an RNN hidden state is carried
  across iterations without `.detach()`, and `retain_graph=True` silenced the error;
- a variable that keeps the loss tensors of every iteration, and with them their graphs
  (`epoch_loss += loss`, `history.append(loss)`, `running = running + loss`): it names the variable
  and the line that adds to it, counts the iterations whose graphs are alive, and the bytes of
  saved tensors they hold (all of them with `retain_graph=True`) and the growth per iteration.

## Why is this bad?
Memory grows with every iteration until the process runs out of it (the first memory leak in
PyTorch's FAQ). With carried state, every iteration also backpropagates through all earlier ones:
time grows too, and the gradient of old iterations is applied again and again.

## Example
```python
epoch_loss = 0
for x, y in loader:
    loss = criterion(model(x), y)
    loss.backward(retain_graph=True)
    optimizer.step()
    epoch_loss += loss                # keeps every iteration's graph
```

## Use instead
```python
epoch_loss = 0.0
for x, y in loader:
    loss = criterion(model(x), y)
    loss.backward()
    optimizer.step()
    epoch_loss += loss.item()         # a number, not a graph
```
For carried state, detach it at each iteration (`hidden = hidden.detach()`) and drop
`retain_graph=True`.
"""

from __future__ import annotations

RULE = "retained-graph"
SEVERITY = "warning"
SUMMARY = "graphs kept alive across iterations: retain_graph=True, state not detached, losses kept"

from typing import TYPE_CHECKING

from ..findings import Finding, Label
from ._text import call_text, code

if TYPE_CHECKING:
    from ..events import BackwardCall, HeldGraphs
    from ..walk import WalkResult
    from ..context import Context


def finding(ctx: Context, call: BackwardCall, walk: WalkResult) -> Finding | None:
    olds = []
    for cid in walk.prev:
        c = ctx.call(cid)
        if c is None or c.id == call.id or not c.retain_graph:
            continue
        # an earlier iteration: the same site, and a network ran forward again since then (calls of
        # one iteration over a shared graph, e.g. one per task in a comprehension, are intended)
        if (c.site.file, c.site.line) == (call.site.file, call.site.line) and c.iteration < call.iteration:
            olds.append(c)
    if not olds:
        return None
    n = sum(walk.prev[c.id] for c in olds)
    return Finding(
        RULE, SEVERITY,
        f"{call_text(call)} goes back through the graphs of {len(olds)} earlier iteration"
        f"{'s' if len(olds) != 1 else ''}, kept alive by `retain_graph=True`",
        call.site, (Label(call.site, "backpropagates into earlier iterations", primary=True),),
        (f"{n} autograd nodes of earlier iterations are part of this graph; it grows every iteration",),
        "detach the state carried across iterations (e.g. `hidden = hidden.detach()`) and drop "
        "`retain_graph=True`",
        backward=call.site,
    )


def _size(n: int) -> str:
    for unit, scale in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n} bytes"


def held(call: BackwardCall, h: HeldGraphs, alive: int, retained: bool) -> Finding:
    """A variable keeps the graphs of earlier iterations alive."""
    name = code(h.name)
    where = h.site or call.site
    what = "appends the loss tensor" if h.kind in ("list", "deque") else "adds the loss tensor"
    labels = []
    if h.site is not None:
        labels.append(Label(h.site, f"{what} to {name}, and with it the whole graph of the iteration", primary=True))
    labels.append(Label(call.site, "`retain_graph=True` keeps the saved tensors of each graph" if retained else
                        "frees the saved tensors, not the graph", primary=h.site is None))
    if h.saved_bytes:
        size = f"their saved tensors hold {_size(h.saved_bytes)}, about {_size(h.saved_bytes // max(1, h.graphs))} more per iteration"
    else:
        size = "their saved tensors were freed by the backward, but the graphs themselves keep growing"
    fix = f"`{h.name} += loss.item()`" if h.kind == "Tensor" else f"`{h.name}.append(loss.item())`"
    help_ = f"keep a number, not the tensor: {fix} (or `loss.detach()`)"
    if retained:
        help_ += ", and drop `retain_graph=True` from " + call_text(call)
    return Finding(
        RULE, SEVERITY,
        f"{name} keeps the graphs of earlier iterations alive: at least {alive} graphs of {call_text(call)} were "
        "still alive at its next call",
        where, tuple(labels),
        (f"{name} reaches {h.graphs} of the graphs that the lens tracks (one call in four of {call_text(call)}, "
         f"then one in sixteen); {size}",),
        help_,
        tensor=h.name, backward=call.site,
        extra={"holder": h.name, "graphs": h.graphs, "saved_bytes": h.saved_bytes, "retained": retained},
    )
