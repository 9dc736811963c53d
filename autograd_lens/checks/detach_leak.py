"""A backward wrote gradient into a network upstream of its own, across a tensor that should have
been detached.

## What it does
For each backward, marks the part of the graph that leads to the parameters it is for. Where the
graph continues from there into the forward of another network (the discriminator's loss entering
the generator through `fake`; a distillation loss entering the frozen teacher), it names that
tensor, the line that made it, and the network it leaks into. Gradient that only passes *through*
a network to reach its owner (the generator's loss through the discriminator) is not a leak.

Ops belong to the module whose forward ran them: a discriminator whose forward begins with
`img.view(img.size(0), -1)`, `torch.cat((img, labels), -1)`, `torch.flatten` or an input
normalisation is entered by `gen_imgs`, and the leak is named there. In one network under one
optimizer (actor and critic heads), an output that another term regresses towards a target (the
critic's value) and that enters the policy term as a factor (`advantage = returns - values`) is a
leak into that part: it is named with the line that computes it and the fix
`advantage = (returns - values).detach()`.

## Why is this bad?
The backward computes and accumulates gradient that nobody should use: wasted work at best, and a
stray update as soon as that network is not zeroed before its own step (see `stray-grad`).

## Example
```python
fake = netG(noise)
errD = criterion(netD(fake), fake_label)   # the graph of errD continues into netG
errD.backward()
```

## Use instead
```python
errD = criterion(netD(fake.detach()), fake_label)
errD.backward()
```
Or, when gradient must flow through a network that should not learn, freeze it:
`teacher.requires_grad_(False)`.
"""

from __future__ import annotations

RULE = "detach-leak"
SEVERITY = "warning"
SUMMARY = "a backward wrote gradient into another network across a tensor that should have been detached"

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .. import source
from ..findings import Finding, Label, Site
from ..graph import Highlight
from ..graph import INPUT, PARAM
from ..intent import Analysis, Crossing, crossings, range_unit, units_of_opts
from ._text import call_at, call_text, code, detach_fix, net_count_text, opts_text, param_names, units_text

if TYPE_CHECKING:
    from ..events import BackwardCall
    from ..context import Context


@dataclass
class Leak:
    """Where a backward leaked: the crossing tensor and what it wrote."""

    var: str | None
    producer_net: str | None
    consumer_net: str | None
    produced_at: Any
    enters_at: Any
    pids: set[int]
    producer: int
    consumer: int
    #: the term of the loss that carries it as a baseline (an advantage), when it is one
    baseline_of: Any = None


def leaks(ctx: Context, call: BackwardCall, a: Analysis) -> list[Leak]:
    graph = a.graph
    out: list[Leak] = []
    terms = ctx.terms(call)
    if terms:
        parts = [(t.for_units, graph.upstream([t.root])) for t in terms if t.for_units]
    else:
        units = units_of_opts(ctx, call.reached, ctx.for_opts(call) or frozenset())
        parts = [(units, None)] if units else []
    seen: set[int] = set()
    baselines = {(side, m): t for t in terms or () for _u, side, m in t.baselines}
    found = [c for groups, within in parts for c in crossings(ctx, a, groups, within) if c.kind == "leak"]
    # a baseline's factor may also reach a trunk the term trains: it is where the leak is all the same
    found += [Crossing(side, m, "leak", a.reach[side]) for side, m in baselines if not any(
        c.producer == side and c.consumer == m for c in found)]
    unit_of = {side: u for t in terms or () for u, side, _m in t.baselines}
    for c in found:
        baseline_of = baselines.get((c.producer, c.consumer))
        baseline_unit = unit_of.get(c.producer)
        producer, consumer = _network_output(ctx, a, c.producer, c.consumer, named_first=baseline_of is not None)
        if producer in seen:
            continue
        seen.add(producer)
        c = Crossing(producer, consumer, c.kind, c.groups)
        below = graph.upstream([c.producer])
        pids = {a.leaf_ids[j] for j in below if j in a.leaf_ids}
        pids &= call.reached if call.reached else pids
        if baseline_of is not None:  # only the unit it is a baseline of, not the trunk below
            pids = {p for p in pids if ctx.reg.unit_of(p) == baseline_unit}
        node = graph.nodes[c.producer]
        prange = ctx.range_of_seq(node.seq)
        crange = ctx.range_of_seq(graph.nodes[c.consumer].seq)
        # a network's parts called on their own are named as such (`model.generator`)
        punit = range_unit(ctx, node.seq, inner=True) if prange else None
        cunit = range_unit(ctx, graph.nodes[c.consumer].seq, inner=True) if crange else None
        out.append(Leak(
            var=a.var_of_node.get(c.producer),
            producer_net=punit or ctx.net_name(prange.net) if prange else None,
            consumer_net=cunit or ctx.net_name(crange.net) if crange else None,
            produced_at=prange.site if prange else None,
            enters_at=crange.site if crange and (not prange or crange.net != prange.net or punit != cunit) else None,
            pids=pids,
            producer=c.producer,
            consumer=c.consumer,
            baseline_of=baseline_of,
        ))
    return out


def _network_output(ctx: Context, a: Analysis, producer: int, consumer: int, *, named_first: bool = False) -> tuple[int, int]:
    """The output of the network below a crossing made by ops outside any network.

    ``softmax(t_logits / T)`` entering a distillation loss crosses at the softmax; the tensor to
    detach is the teacher's output ``t_logits``. Follows single inputs that lead to parameters
    down to a node made inside a network's forward; where there is none, the first named tensor on
    the way. Returns (producer, consumer).
    """
    graph = a.graph
    i, above = producer, consumer
    # ops the consumer's forward ran before it met its weights (`img.view(img.size(0), -1)`,
    # `torch.cat((img, labels), -1)`): the tensor to detach is the one that entered that forward
    inside = _part_of_seq(ctx, graph.nodes[consumer].seq)
    for _ in range(32):
        if inside is None or _part_of_seq(ctx, graph.nodes[i].seq) != inside:
            break
        ins = [j for j in dict.fromkeys(graph.inputs_of(i)) if a.reach[j]]
        if len(ins) != 1:
            break
        i, above = ins[0], i
    # a tensor that enters another network, or a factor of the loss (an advantage), is named by
    # the first variable that holds it; what enters the loss's own arithmetic (a teacher's logits
    # under a softmax) by the network output below it
    named_first = named_first or inside is not None
    named: tuple[int, int] | None = None
    for _ in range(32):
        if ctx.range_of_seq(graph.nodes[i].seq) is not None:
            return i, above  # the network's output (`t_logits`), past what the loss made of it
        if i in a.var_of_node and named is None:
            named = (i, above)  # `soft_targets`: used when no network's output lies below
            if named_first:
                return named
        ins = [j for j in dict.fromkeys(graph.inputs_of(i)) if a.reach[j]]
        if len(ins) != 1 or graph.nodes[ins[0]].kind in (PARAM, INPUT):
            break
        i, above = ins[0], i
    return named or (producer, consumer)


def findings(ctx: Context, call: BackwardCall, found: list[Leak]) -> list[Finding]:
    out = []
    for lk in found:
        if not lk.pids:
            continue
        if lk.baseline_of is not None:
            out.append(_baseline_finding(ctx, call, lk))
            continue
        names = param_names(ctx, lk.pids)
        owners = {o for p in lk.pids for o in ctx.reg.opts_of(p)}
        nets = units_text(ctx, lk.pids)
        into = code(nets[0]) if len(nets) == 1 else (", ".join(code(n) for n in nets) or "another network")
        tensor = code(lk.var) if lk.var else (f"the output of {code(lk.producer_net)}" if lk.producer_net else "a tensor")
        enters = f", which enters {code(lk.consumer_net)} without `.detach()`" if lk.consumer_net else " without `.detach()`"
        labels = []
        # the culprit: where the tensor enters another network; else (it enters the loss's own
        # arithmetic: a target network's output, a teacher's logits) where it is produced, by the
        # forward that made it or, without one recorded, by the line that assigns it
        made = lk.produced_at
        if made is None and lk.var:
            at = source.assignment_line(call.site.file, call.site.line, lk.var)
            if at is not None:
                made = Site(call.site.file, at, call.site.function)
        primary = lk.enters_at or made or call.site
        if made is not None:
            what = f"{tensor} is produced by {code(lk.producer_net)} with its graph" if lk.producer_net else (
                f"{tensor} is computed here with the graph of {into}")
            labels.append(Label(made, what, primary=lk.enters_at is None))
        if lk.enters_at is not None:
            labels.append(Label(lk.enters_at, f"{tensor} enters {code(lk.consumer_net)} without `.detach()`", primary=True))
        labels.append(Label(call.site, f"writes `.grad` on {net_count_text(ctx, lk.pids)}", primary=primary is call.site))
        notes = [f"{call_text(call)} is for {opts_text(ctx, ctx.for_opts(call) or ())}"]
        differentiated = _differentiated(ctx, call, lk.var)
        det = f"{lk.var}.detach()" if lk.var else f"{_producer_call(lk) or '…'}.detach()"
        if differentiated is not None:
            # a gradient penalty differentiates with respect to it: a detached copy must require grad
            det += ".requires_grad_()"
            notes.append(f"{tensor} is an input of {call_at(differentiated)}: "
                         "its detached copy must require grad again")
        fix = f"`{lk.consumer_net}({det})`" if lk.consumer_net and lk.var else f"`{det}`"
        help_ = f"detach it where the loss for {opts_text(ctx, ctx.for_opts(call) or ())} uses it: {fix}"
        if differentiated is None:
            help_ += (f"; if gradient must flow through {into} without training it, use "
                      f"`{nets[0] if nets else 'net'}.requires_grad_(False)`")
        out.append(Finding(
            RULE, SEVERITY,
            f"{call_text(call)} writes gradient into {into} through {tensor}{enters}",
            primary, tuple(labels),
            tuple(notes),
            help_,
            params=names,
            optimizer=ctx.opt_name(next(iter(owners))) if len(owners) == 1 else None,
            tensor=lk.var, backward=call.site, graph=call.graph_key,
            extra={"networks": nets, "for": sorted(ctx.opt_name(k) for k in ctx.for_opts(call) or ())},
        ))
    return out


def _part_of_seq(ctx: Context, seq: int | None) -> tuple[int, str | None] | None:
    """The network whose forward made node ``seq``, with its part where the parts are units."""
    net = ctx.net_of_seq(seq)
    return (net, range_unit(ctx, seq)) if net is not None else None


def _producer_call(lk: Leak) -> str | None:
    """The call that made the tensor, where no variable holds it (`generator(z)` in
    `discriminator(generator(z))`)."""
    if lk.producer_net is None or lk.produced_at is None:
        return None
    for name in (lk.producer_net.rsplit(".", 1)[-1], "self"):  # (`self(z)` in a LightningModule)
        text = source.call_text(lk.produced_at.file, lk.produced_at.line, name)
        if text:
            return text if len(text) <= 50 else None
    return None


def _differentiated(ctx: Context, call: BackwardCall, var: str | None) -> BackwardCall | None:
    """The ``autograd.grad`` call since the previous call at ``call``'s site that took the variable
    ``var`` as an input (a gradient penalty: `autograd.grad(d_out, fake_imgs, create_graph=True)`),
    if any."""
    if not var:
        return None
    for c in ctx.log.recent_calls():
        if call.prev < c.id < call.id and c.kind == "grad" and var in c.inputs:
            return c
    return None


def _baseline_finding(ctx: Context, call: BackwardCall, lk: Leak) -> Finding:
    """A unit's output used as a factor (an advantage) in a term meant for another unit."""
    term = lk.baseline_of
    names = param_names(ctx, lk.pids)
    owners = {o for p in lk.pids for o in ctx.reg.opts_of(p)}
    into = units_text(ctx, lk.pids)
    into_text = ", ".join(code(n) for n in into)
    trains = ", ".join(code(u) for u in sorted(term.for_units)) or "another unit"
    var = lk.var
    tensor = code(var) if var else "a factor of the loss"
    term_text = code(term.name) if term.name else "a term of the loss"
    at = source.assignment_line(call.site.file, call.site.line, var) if var else None
    labels = []
    if at is not None:
        labels.append(Label(Site(call.site.file, at, call.site.function),
                            f"{tensor} is computed from {into_text}'s output and keeps its graph", primary=True))
    labels.append(Label(call.site, f"writes `.grad` on {net_count_text(ctx, lk.pids)} through {tensor}", primary=at is None))
    fix = detach_fix(call, var)
    if fix:
        pass
    elif var:
        fix = f"`{var}.detach()` where {term_text} uses it"
    else:
        fix = "`.detach()` on the factor"
    return Finding(
        RULE, SEVERITY,
        f"{call_text(call)} trains {into_text} through {tensor}, a factor of {term_text}, which is for {trains}",
        Site(call.site.file, at, call.site.function) if at is not None else call.site, tuple(labels),
        (f"{term_text} weighs {trains}'s output by {tensor}; {into_text} learns from its own term, and the "
         f"gradient of {term_text} through {tensor} pushes it the wrong way",),
        f"detach the factor where it is computed: {fix}",
        params=names,
        optimizer=ctx.opt_name(next(iter(owners))) if len(owners) == 1 else None,
        tensor=var, backward=call.site, graph=call.graph_key,
        extra={"networks": into, "for": sorted(term.for_units), "baseline": True},
    )


def highlights(found: list[Leak]) -> list[Highlight]:
    return [Highlight("leak", edge=(lk.producer, lk.consumer), label=f"{lk.var or 'tensor'}: detach here") for lk in found]
