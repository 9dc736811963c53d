"""A backward needs buffers that an earlier backward already freed.

## What it does
Finds the backward call whose graph shares nodes with an earlier backward that ran without
`retain_graph=True`, names that earlier call and the shared part of the graph (for example
`output1 = a_net(input)`), and explains PyTorch's "Trying to backward through the graph a second
time". It also catches the silent variant PyTorch misses: a loss backwarded a second time through
nodes that save nothing (`(a + 1).sum().backward()` twice) adds its gradient twice, without error.

## Why is this bad?
A backward frees the buffers its graph saved for the gradient computation. A second backward
through the same nodes either fails, or, where the nodes saved nothing, silently applies the same
gradient again. Typical causes: two losses that share a forward (`z.mean()` and `z.sum()`), a loss
on network B that also flows back into network A before A's own update, or a hidden state carried
from one iteration to the next without `.detach()` (truncated BPTT).

## Example
```python
output1 = a_net(input)
loss_b = criterion(b_net(output1), target)
loss_b.backward()                 # frees the graph of a_net's forward too
loss_a = criterion_a(output1)
loss_a.backward()                 # error: the shared part was freed
```

## Use instead
```python
output1 = a_net(input)
loss_b = criterion(b_net(output1.detach()), target)   # B's loss must not train A
loss_b.backward()
loss_a = criterion_a(output1)
loss_a.backward()
```
Or keep the graph for the second call (`loss_b.backward(retain_graph=True)`), sum the losses and
call backward once, or recompute the forward before the second backward. In truncated BPTT, detach
the carried state at each iteration: `hidden = hidden.detach()`.
"""

from __future__ import annotations

RULE = "second-backward"
SEVERITY = "error"
SUMMARY = "a backward needs buffers that an earlier backward freed"

from typing import TYPE_CHECKING

from ..findings import Finding, Label
from ._text import call_text, code

if TYPE_CHECKING:
    from ..events import BackwardCall
    from ..walk import WalkResult
    from ..watch import Watch


def _earlier(w: Watch, call: BackwardCall, walk: WalkResult) -> BackwardCall | None:
    cands = [w.call(cid) for cid in walk.prev if cid != call.id]
    freed = [c for c in cands if c is not None and not c.retain_graph]
    return max(freed, key=lambda c: c.id) if freed else None


def explain(w: Watch, call: BackwardCall, walk: WalkResult, exc_text: str) -> Finding:
    """The error PyTorch raised, with the earlier call that freed the buffers and the shared part."""
    earlier = _earlier(w, call, walk)
    here = call_text(call)
    if earlier is None:
        return Finding(
            RULE, SEVERITY,
            f"{here} needs buffers that were already freed (by a backward outside the lens, or by "
            "accessing saved tensors after backward)",
            call.site,
            fix="call backward once per graph, or pass `retain_graph=True` to the earlier backward",
            backward=call.site,
        )
    top = (walk.tops.get(earlier.id) or [None])[0]
    rng = w.range_of_seq(top.seq) if top is not None else None
    net = w.net_name(rng.net) if rng is not None else None
    var = top.var if top is not None else None
    shared = code(var) if var else (f"the output of {code(net)}" if net else f"`{top.op}`" if top else "part of the graph")
    # the same line in an earlier iteration: a network forward ran in between (not a loop over
    # several losses, nor `y.backward(); y.backward()` on one line)
    same_site = (
        earlier.site.file == call.site.file
        and earlier.site.line == call.site.line
        and earlier.forwards < call.forwards
    )
    labels = [] if same_site else [Label(earlier.site, "frees the graph it went through (no `retain_graph=True`)")]
    if rng is not None and rng.site is not None:
        what = f"{shared} is produced here by {code(net)}" if var else f"{code(net)} runs here"
        labels.append(Label(rng.site, f"{what}; both graphs go through it"))
    labels.append(Label(
        call.site,
        "needs the buffers that the previous iteration's backward here freed" if same_site else "needs the freed buffers",
        primary=True,
    ))
    notes = [
        f"the graph of {here} shares {walk.prev.get(earlier.id, 0)} autograd nodes with the graph of "
        f"{call_text(earlier)} (line {earlier.site.line}), from {shared} down"
    ]
    if same_site:
        message = (
            f"{here} reaches into the graph of its previous iteration, which that iteration's backward "
            "freed: state is carried across iterations without `.detach()`"
        )
        if net:
            notes.append(f"the state comes from {code(net)} in an earlier iteration")
        help_ = (
            "detach the state carried from one iteration to the next before the forward "
            "(e.g. `hidden = hidden.detach()`), so each backward stays within its own iteration"
        )
    else:
        message = f"{here} needs buffers that {call_text(earlier)} (line {earlier.site.line}) already freed"
        if var and net:
            first = f"if {call_text(earlier)} must not train {code(net)}, use `{var}.detach()` in that loss; "
        else:
            first = ""
        help_ = (
            f"{first}{'otherwise pass' if first else 'pass'} `retain_graph=True` to {call_text(earlier)}, "
            "sum the losses and call backward once, or recompute the forward before the second backward"
        )
    notes.append(f"PyTorch: {exc_text}")
    return Finding(
        RULE, SEVERITY, message, call.site, tuple(labels), tuple(notes), help_,
        tensor=var, backward=earlier.site,
        extra={"earlier": earlier.site.to_dict(), "network": net, "same_site": same_site},
    )


def silent(w: Watch, call: BackwardCall, walk: WalkResult) -> Finding | None:
    """A loss backwarded again through nodes that saved nothing: gradient added twice, no error."""
    earlier_ids = [cid for cid in walk.root_reused if cid != call.id]
    if not earlier_ids:
        return None
    earlier = w.call(max(earlier_ids))
    if earlier is None:
        return None
    here = call_text(call)
    return Finding(
        RULE, SEVERITY,
        f"{here} ran through the graph of {call_text(earlier)} (line {earlier.site.line}) a second time: "
        "its gradient was added twice, without an error",
        call.site,
        (Label(earlier.site, "first backward through this graph (not retained)"),
         Label(call.site, "second backward through the same graph", primary=True)),
        ("the nodes on this graph save no tensors, so PyTorch cannot tell that they were already used",),
        "call backward once per loss; if a second pass is intended, say so with `retain_graph=True` "
        "on the first call",
        backward=earlier.site,
        extra={"silent": True},
    )
