"""A backward needs buffers that an earlier backward already freed.

## What it does
Finds the backward call whose graph shares nodes with an earlier backward that ran without
`retain_graph=True`, names that earlier call and the shared part of the graph (for example
`output1 = a_net(input)`), and explains PyTorch's "Trying to backward through the graph a second
time". It also catches the silent variant PyTorch misses: a loss backwarded a second time through
nodes that save nothing (`(a + 1).sum().backward()` twice) adds its gradient twice, without error.
When the failure comes late in a run (a detach forgotten in one branch, one iteration in many), the
graph is read as it is after the failure: its released parts, the parameters below them and the
earlier backward that reached them.

The fix it gives goes into the loss that must not train the network the shared part comes from,
whichever step runs first: after the generator's step, `discriminator(gen_imgs.detach())` in the
discriminator's loss; after the discriminator's step, `netD(fake.detach())` in its own loss. It
suggests `retain_graph=True` only where both losses are meant for that network, never where it
would turn the error into a silent stray gradient. In truncated BPTT it names the state carried
from the previous iteration (`hidden`) and detaches it as its type needs
(`hidden = tuple(h.detach() for h in hidden)` for an LSTM's `(h, c)`).

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

from .. import source
from ..findings import Finding, Label, Site
from ._text import call_at, call_text, code

if TYPE_CHECKING:
    from ..events import BackwardCall
    from ..registry import ForwardRange
    from ..walk import SharedTop, WalkResult
    from ..context import Context


def _earlier(ctx: Context, call: BackwardCall, walk: WalkResult) -> BackwardCall | None:
    cands = [ctx.call(cid) for cid in walk.prev if cid != call.id]
    freed = [c for c in cands if c is not None and not c.retain_graph]
    return max(freed, key=lambda c: c.id) if freed else None


def unknown(site: Site | None, exc_text: str) -> Finding:
    """Saved tensors used after a backward freed them, outside any backward the lens watched."""
    return Finding(
        RULE, SEVERITY,
        "saved tensors were accessed after a backward freed them", site,
        notes=(f"PyTorch: {exc_text}",),
        fix="pass `retain_graph=True` to the earlier backward, or recompute the forward",
    )


def explain(ctx: Context, call: BackwardCall, walk: WalkResult, exc_text: str) -> Finding:
    """The error PyTorch raised, with the earlier call that freed the buffers and the shared part,
    and the fix where it belongs: the loss that must not train the network the shared part comes
    from gets the `.detach()`, whichever of the two runs first."""
    earlier = _earlier(ctx, call, walk)
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
    rng = ctx.range_of_seq(top.seq) if top is not None else None
    # the network it comes from: its forward range, else the network whose parameters lie below it
    net_key = rng.net if rng is not None else (top.net if top is not None else None)
    net = ctx.net_name(net_key) if net_key is not None else None
    var = top.var if top is not None else None
    # the same line in an earlier iteration: a network forward ran in between (not a loop over
    # several losses, nor `y.backward(); y.backward()` on one line)
    same_site = (
        earlier.site.file == call.site.file
        and earlier.site.line == call.site.line
        and earlier.iteration < call.iteration
    )
    carried = _carried(ctx, walk, earlier) if same_site else None
    if carried is not None and not var:
        var = carried[0]
    shared = code(var) if var else (f"the output of {code(net)}" if net else f"`{top.op}`" if top else "part of the graph")
    labels = [] if same_site else [Label(earlier.site, "frees the graph it went through (no `retain_graph=True`)")]
    if carried is not None:
        labels.append(Label(carried[2], f"{shared} comes in with the graph of the previous iteration"))
    elif rng is not None and rng.site is not None:
        what = f"{shared} is produced here by {code(net)}" if var else f"{code(net)} runs here"
        labels.append(Label(rng.site, f"{what}; both graphs go through it"))
    enters = ctx.range_of_seq(top.consumer_seq) if top is not None and top.consumer_seq is not None else None
    notes = []
    if same_site:
        earlier_text = f"the previous iteration's {here}"
        labels.append(Label(call.site, f"needs the buffers that {earlier_text} freed", primary=True))
        notes.append(f"the graph of {here} reaches {walk.prev.get(earlier.id, 0)} autograd nodes of the previous "
                     f"iteration's graph, from {shared} down")
        message = (
            f"{here} reaches into the graph of the previous iteration through {shared}, which {earlier_text} "
            "freed: state is carried across iterations without `.detach()`"
        )
        if net:
            notes.append(f"{shared} comes from {code(net)} in the previous iteration")
        if carried is not None:
            name, length, at = carried
            fix = f"`{name} = tuple(h.detach() for h in {name})`" if length > 1 else f"`{name} = {name}.detach()`"
            help_ = (
                f"detach the state before each forward: {fix} before line {at.line}, so each backward "
                "stays within its own iteration"
            )
        else:
            help_ = (
                "detach the state carried from one iteration to the next before the forward "
                "(e.g. `hidden = hidden.detach()`), so each backward stays within its own iteration"
            )
    else:
        notes.append(
            f"the graph of {here} shares {walk.prev.get(earlier.id, 0)} autograd nodes with the graph of "
            f"{call_at(earlier)}, from {shared} down"
        )
        message = f"{here} needs buffers that {call_at(earlier)} already freed"
        owner_opts = _opts_of_net(ctx, net_key) if net_key is not None else frozenset()
        earlier_trains = bool(owner_opts & _trains(ctx, earlier))
        others = _reached_opts(ctx, walk.leaves) - owner_opts  # what the later loss trains besides
        later_trains_others = bool(others)
        # networks below the shared part that the later loss trains: a `.detach()` would cut them off
        cut = _cut_below(ctx, top, others) if top is not None else []
        if var and net and owner_opts and earlier_trains and cut:
            # the later loss needs gradient through the shared part (a generator's loss through the
            # discriminator's output that its step just used): only a new forward gives it
            nets = [*cut, net]
            again = " and ".join(code(n) for n in nets)
            made = ""
            if rng is not None and rng.site is not None:
                stmt = source.call_source(rng.site.file, rng.site.line, ())
                made = f" (line {rng.site.line}" + (f": {code(stmt)})" if stmt and len(stmt) <= 60 else ")")
            help_ = (
                f"compute the loss of {here} from a new forward after {call_at(earlier)}: run {again} again "
                f"for it{made}; a `.detach()` of {shared} would also cut the gradient {here} needs for "
                f"{code(cut[0])}"
            )
        elif var and net and owner_opts and earlier_trains and later_trains_others:
            # the earlier loss was meant for the network that made the shared part (the generator's
            # step ran first): the later loss must not reach back into it
            into = code(ctx.net_name(enters.net)) if enters is not None else None
            if enters is not None and enters.site is not None:
                labels.append(Label(enters.site, f"{shared} enters {into} without `.detach()`"))
            where = f"`{ctx.net_name(enters.net)}({var}.detach())`" if enters is not None else f"`{var}.detach()`"
            help_ = (
                f"detach {shared} in the loss of {here}, which must not train {code(net)}: {where}"
                + (f" at line {enters.site.line}" if enters is not None and enters.site is not None else "")
            )
        elif var and net and owner_opts and not earlier_trains:
            # the earlier loss was not meant for that network (the discriminator's step ran first)
            help_ = (
                f"detach {shared} in the loss of {call_at(earlier)}, which must not "
                f"train {code(net)}: {_consumer_fix(ctx, rng, var, earlier)}; `retain_graph=True` would only hide "
                f"the error and let {call_text(earlier)} write gradient into {code(net)}"
            )
        else:
            help_ = (
                f"pass `retain_graph=True` to {call_text(earlier)}, sum the losses and call backward once, or "
                "recompute the forward before the second backward"
            )
        labels.append(Label(call.site, "needs the freed buffers", primary=True))
    notes.append(f"PyTorch: {exc_text}")
    return Finding(
        RULE, SEVERITY, message, call.site, tuple(labels), tuple(notes), help_,
        tensor=var, backward=earlier.site,
        extra={"earlier": earlier.site.to_dict(), "network": net, "same_site": same_site},
    )


def _cut_below(ctx: Context, top: SharedTop, others: frozenset[int]) -> list[str]:
    """The networks below the shared part ``top`` with parameters of the optimizers ``others``
    (those the later call trains besides the network that made it: the generator below a
    discriminator's output), by name."""
    keys = {ctx.reg.net_of_param(p) for p in top.below if others.intersection(ctx.reg.opts_of(p))}
    return sorted(ctx.net_name(k) for k in keys if k is not None)


def _trains(ctx: Context, call: BackwardCall) -> frozenset[int]:
    """The optimizers ``call``'s gradient is for: its decision, else (a call whose run of steps was
    not judged one by one, past the detailed calls) the optimizers whose recent steps took gradient
    from its site."""
    decided = ctx.for_opts(call)
    if decided is not None:
        return decided
    return frozenset(s.optimizer_key for s in ctx.log.steps if call.site_key in s.sources)


def _opts_of_net(ctx: Context, net_key: int) -> frozenset[int]:
    net = ctx.reg.nets.get(net_key)
    return frozenset(o for p in (net.pids if net is not None else ()) for o in ctx.reg.opts_of(p))


def _reached_opts(ctx: Context, leaves: set[int]) -> frozenset[int]:
    return frozenset(o for p in leaves for o in ctx.reg.opts_of(p))


def _consumer_fix(ctx: Context, produced: ForwardRange | None, var: str, earlier: BackwardCall) -> str:
    """`netD(fake.detach())`, for the network that consumed the shared part before ``earlier``
    (``fake.detach()`` where the forwards were not recorded)."""
    if produced is None:
        return f"`{var}.detach()`"
    for r in ctx.reg.ranges:
        if r.depth == 0 and r.net != produced.net and r.start > produced.end and r.site is not None:
            if r.site.line <= earlier.site.line or r.site.file != earlier.site.file:
                return f"`{ctx.net_name(r.net)}({var}.detach())` at line {r.site.line}"
    return f"`{var}.detach()`"


def _carried(ctx: Context, walk: WalkResult, earlier: BackwardCall) -> tuple[str, int, Site] | None:
    """The variable that carries the previous iteration's graph into a network's forward (the
    hidden state of a truncated-BPTT loop): (its name in the source, the length of its tuple or
    1, the forward's call site). It is an argument of a later forward of the network whose
    earlier forward made the shared part."""
    for top in walk.tops.get(earlier.id, []):
        before = ctx.reg.top_range_of_seq(top.seq)
        if before is None:
            continue
        for r in reversed(ctx.reg.ranges):
            if r.depth or r.site is None or r.net != before.net or r.start <= before.end:
                continue
            for pos, seq, length in r.carried:
                if before.start <= seq <= before.end:
                    name = source.call_argument(r.site.file, r.site.line, pos)
                    if name and name.isidentifier():
                        return name, length, r.site
    return None


def silent(ctx: Context, call: BackwardCall, walk: WalkResult) -> Finding | None:
    """A loss backwarded again through nodes that saved nothing: gradient added twice, no error."""
    earlier_ids = [cid for cid in walk.root_reused if cid != call.id]
    if not earlier_ids:
        return None
    earlier = ctx.call(max(earlier_ids))
    if earlier is None:
        return None
    here = call_text(call)
    return Finding(
        RULE, SEVERITY,
        f"{here} ran through the graph of {call_at(earlier)} a second time: "
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
