"""A step consumed gradient accumulated over several iterations without a zero_grad.

## What it does
Tracks which backward calls each parameter's `.grad` holds. When an optimizer steps with gradient
of a backward that an earlier step of the same optimizer already applied, it reports the step and
the parameters. Intentional accumulation (k backward calls, one step, then `zero_grad`) applies each
backward exactly once and is not a finding.

In-place work on `.grad` between backward and step keeps the gradient what it was: clipping
(`clip_grad_norm_`, `clip_grad_value_`), `GradScaler.unscale_`, `p.grad.mul_(...)`,
`p.grad.data.clamp_(...)`. A `.grad` zeroed by hand (`p.grad.zero_()`) is zeroed. A closure run by
`optimizer.step(closure)` (LBFGS) that does not call `zero_grad()` piles up the gradient of its
evaluations within one step; a manual update (`p.data.add_(p.grad, alpha=-lr)`) without zeroing
applies old gradient again, like an optimizer step.

## Why is this bad?
`.grad` accumulates: without `zero_grad()` every step also applies all earlier gradients again, so
the effective learning rate grows with the iteration count and the direction is dominated by stale
gradients.

## Example
```python
for x, y in loader:
    loss = criterion(model(x), y)
    loss.backward()
    optimizer.step()               # no optimizer.zero_grad() anywhere
```

## Use instead
```python
for x, y in loader:
    optimizer.zero_grad()
    loss = criterion(model(x), y)
    loss.backward()
    optimizer.step()
```
"""

from __future__ import annotations

RULE = "missing-zero-grad"
SEVERITY = "warning"
SUMMARY = "a step consumed gradient accumulated over several iterations without zero_grad"

from typing import TYPE_CHECKING

from ..findings import Finding, Label
from ._text import call_at, holder, param_names, step_text

if TYPE_CHECKING:
    from ..events import OptimizerStep
    from ..context import Context


def finding(ctx: Context, step: OptimizerStep) -> Finding | None:
    if not step.repeated:
        return None
    calls = sorted({cid for ids in step.repeated.values() for cid in ids})
    first = ctx.call(calls[0])
    names = param_names(ctx, step.repeated)
    what = call_at(first) if first is not None else "an earlier backward"
    n_params = f"{len(names)} parameter{'s' if len(names) != 1 else ''}"
    labels = []
    if step.closure:
        # the closure's evaluations piled up in .grad within one step
        n = len(calls) + 1
        if first is not None:
            labels.append(Label(first.site, f"adds its gradient to the previous evaluation's ({n} evaluations, no `zero_grad()`)"))
        labels.append(Label(step.site, "runs the closure and applies the sum", primary=True))
        return Finding(
            RULE, SEVERITY,
            f"{step_text(step)} applied gradient that piled up over the closure's evaluations: {what} "
            "ran again without `zero_grad()`",
            step.site, tuple(labels),
            (f"`.grad` of {n_params} held the gradient of earlier evaluations of the closure when the step read it",),
            f"call `{holder(step)}.zero_grad()` at the start of the closure, before {what}",
            params=names, optimizer=step.optimizer, backward=first.site if first is not None else None,
        )
    if first is not None:
        labels.append(Label(first.site, "its gradient stays in `.grad`"))
    labels.append(Label(step.site, "applies it again", primary=True))
    if step.manual:
        earlier = "the manual update of an earlier iteration"
        net = step.optimizer.removeprefix("manual update of ").split(" at ", 1)[0]
        help_ = f"zero the gradient after each manual update: `{net}.zero_grad()` (or `p.grad = None` for each parameter)"
    else:
        earlier = f"an earlier {step_text(step)}"  # (`scaler.step(optimizer)` as written)
        help_ = f"call `{holder(step)}.zero_grad()` once per step, before the backward calls that step consumes"
    return Finding(
        RULE, SEVERITY,
        f"{step_text(step)} applied gradient of {what} that {earlier} already applied",
        step.site, tuple(labels),
        (f"`.grad` of {n_params} holds gradient of "
         f"{len(calls)} backward call{'s' if len(calls) != 1 else ''} already stepped",),
        help_,
        params=names, optimizer=step.optimizer, backward=first.site if first is not None else None,
    )
