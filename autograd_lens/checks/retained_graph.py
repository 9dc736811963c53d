"""Graphs kept alive across iterations by `retain_graph=True` or by carried state.

## What it does
Reports a backward whose graph reaches into the graph of an earlier call at the same site (the
previous iteration) that was kept with `retain_graph=True`: state such as an RNN hidden state is
carried across iterations without `.detach()`, and `retain_graph=True` silenced the error.

## Why is this bad?
Every iteration backpropagates through all earlier ones: time and memory grow with the iteration
count, and the gradient of old iterations is applied again and again.

## Example
```python
for x in batches:
    out, hidden = rnn(x, hidden)
    loss = criterion(out, y)
    loss.backward(retain_graph=True)
```

## Use instead
```python
for x in batches:
    hidden = hidden.detach()
    out, hidden = rnn(x, hidden)
    loss = criterion(out, y)
    loss.backward()
```
"""

from __future__ import annotations

RULE = "retained-graph"
SEVERITY = "warning"
SUMMARY = "graphs kept alive across iterations by retain_graph=True or state not detached"

from typing import TYPE_CHECKING

from ..findings import Finding, Label
from ._text import call_text

if TYPE_CHECKING:
    from ..events import BackwardCall
    from ..walk import WalkResult
    from ..watch import Watch


def finding(w: Watch, call: BackwardCall, walk: WalkResult) -> Finding | None:
    olds = []
    for cid in walk.prev:
        c = w.call(cid)
        if c is None or c.id == call.id or not c.retain_graph:
            continue
        # an earlier iteration: the same site, and a network ran forward again since then (calls of
        # one iteration over a shared graph, e.g. one per task in a comprehension, are intended)
        if (c.site.file, c.site.line) == (call.site.file, call.site.line) and c.forwards < call.forwards:
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
