"""An optimizer stepped parameters that never received a gradient.

## What it does
Lists, per optimizer, the parameters that require grad but whose `.grad` no backward call ever
wrote while the lens watched: cut off by `.detach()`, `torch.no_grad()` or `.data`, or simply unused
in the forward. Manual updates without an optimizer object count as steps of their network.

## Why is this bad?
Those parameters never learn (apart from weight decay), usually without anyone noticing: a layer
left out of `forward`, a branch computed under `no_grad`, a `.data` that cut the graph.

## Example
```python
class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Linear(8, 8)
        self.head = nn.Linear(8, 1)     # never used in forward
    def forward(self, x):
        return self.body(x).sum(dim=1)
```

## Use instead
```python
    def forward(self, x):
        return self.head(self.body(x))
```
Or freeze parameters that must not train (`p.requires_grad_(False)`) and leave them out of the
optimizer.

The same rule reports a step that finds no gradient because a `zero_grad()` between the backward
and the step discarded it (`loss.backward(); optimizer.zero_grad(); optimizer.step()`): the
gradient was written, then dropped before any step applied it, and the model does not train.
"""

from __future__ import annotations

RULE = "dead-param"
SEVERITY = "warning"
SUMMARY = "an optimizer stepped parameters that received no gradient"

from typing import TYPE_CHECKING

from .. import source
from ..findings import Finding, Label, Site
from ._text import call_at, code, names_text, param_names, step_text

if TYPE_CHECKING:
    from ..context import Context
    from ..events import OptimizerStep


def findings(ctx: Context) -> list[Finding]:
    out = []
    got: dict[int, set[int]] = {key: set(st.with_grad) for key, st in ctx.opts().items()}
    for s in ctx.log.steps:  # steps whose run is not judged yet still carry their provenance
        got.setdefault(s.optimizer_key, set()).update(s.provenance)
    ever = ctx.reg.ever_grad
    for st in list(ctx.opts().values()):
        if st.steps == 0 or st.first_site is None:
            continue
        dead = []
        for pid in st.no_grad:
            if pid in ever or pid in got.get(st.key, ()) or pid in ctx.excluded:
                continue
            dead.append(ctx.param_name(pid))
        if not dead:
            continue
        dead.sort()
        out.append(Finding(
            RULE, SEVERITY,
            f"`{st.name}.step()` stepped {len(dead)} parameter{'s' if len(dead) != 1 else ''} that never "
            f"received a gradient: {names_text(dead)}",
            st.first_site, (Label(st.first_site, "steps them without gradient", primary=True),),
            (f"{st.steps} step{'s' if st.steps != 1 else ''} watched; no backward wrote `.grad` of these parameters",),
            "check that the forward uses them and that no `.detach()`, `torch.no_grad()` or `.data` cuts "
            "the graph before them; freeze them with `requires_grad_(False)` if they must not train",
            params=tuple(dead), optimizer=st.name,
        ))
    return out


def discarded(ctx: Context, step: OptimizerStep) -> Finding | None:
    """A step that found no gradient in parameters whose gradient a `zero_grad()` discarded after
    the backward that wrote it and before any step applied it (no backward ran after the
    `zero_grad()`). Reported at the `zero_grad()`, the line to move."""
    if not step.discarded:
        return None
    pids = list(step.discarded)
    zero_site, calls = step.discarded[pids[0]]
    names = param_names(ctx, pids)
    labels = []
    call = next((c for c in (ctx.log.call(i) for i in reversed(calls)) if c is not None), None)
    if call is not None:
        labels.append(Label(call.site, "writes their `.grad`"))
    zero = code(source.call_text(zero_site.file, zero_site.line, "zero_grad") or "zero_grad()")
    labels.append(Label(zero_site, "discards it before any step applied it", primary=True))
    labels.append(Label(step.site, "finds no gradient to apply"))
    n = len(names)
    written = f"the gradient {call_at(call)} wrote" if call is not None else "their gradient"
    return Finding(
        RULE, SEVERITY,
        f"{step_text(step)} stepped {n} parameter{'s' if n != 1 else ''} without gradient: {zero} "
        f"(line {zero_site.line}) discarded {written}",
        zero_site, tuple(labels),
        (f"{names_text(names)}: `.grad` was emptied after the backward and before the step, so the step "
         "applies nothing (or zeros)",),
        f"call {zero} before the backward (or after the step), not between them",
        params=names, optimizer=step.optimizer, backward=call.site if call is not None else None,
    )


def ddp_unused(
    names: list[str], site: Site | None, forward: Site | None, net: str, rank: int | None, exc_text: str
) -> Finding:
    """DistributedDataParallel's "Expected to have finished reduction in the prior iteration",
    with the parameters it counts by index named."""
    shown = names_text(names, limit=4) if names else "parameters of the network"
    labels = []
    if forward is not None and site is not None and (forward.file, forward.line) != (site.file, site.line):
        labels.append(Label(forward, f"the previous forward of `{net}`: its loss did not use {shown}"))
    if site is not None:
        labels.append(Label(site, "DDP stops here, at the next forward, waiting for their gradients", primary=True))
    on = f" on rank {rank}" if rank is not None else ""
    notes = [
        f"{len(names)} parameter{'s' if len(names) != 1 else ''} of `{net}` received no gradient{on}: "
        f"{', '.join(f'`{n}`' for n in names)}" if names else f"parameters of `{net}` received no gradient{on}",
        "DDP waits for a gradient of every parameter it manages before the next forward; the loss "
        "did not depend on these (PyTorch names them by index only)",
        f"PyTorch: {exc_text.split(': ', 1)[-1].split('. ', 1)[0]}",
    ]
    return Finding(
        RULE, SEVERITY,
        f"`{net}`'s forward did not use {shown}, so DistributedDataParallel never received their gradients",
        site or forward, tuple(labels), tuple(notes),
        "use them in `forward` (or remove them, or freeze them with `requires_grad_(False)` before "
        "wrapping), or pass `find_unused_parameters=True` to `DistributedDataParallel` if some iterations "
        "rightly leave them out",
        params=tuple(names), extra={"ddp": True},
    )
