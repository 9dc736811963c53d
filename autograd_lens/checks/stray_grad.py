"""An optimizer step applied gradient that came from a backward meant for another optimizer.

## What it does
Follows every gradient into `optimizer.step()`: which backward call wrote it. When a step consumes
gradient from a backward that is for another optimizer (by time: the first optimizer to step after
it among those it reached; by structure when time cannot tell), it names the step, the backward,
the optimizer and the parameters. A backward through networks that were all in eval mode (a
validation loss, a saliency map) is an evaluation: it is for none of the optimizers that train
those networks in train mode, so a step that applies its gradient is reported too.

It sees through what training loops do around the step:
- a parameter may belong to several optimizers: an auxiliary optimizer over
  `itertools.chain(G.parameters(), D.parameters())` (InfoGAN's information loss) is for its own
  loss, and a step of `optimizer_G` that still holds that loss's gradient is reported;
- one optimizer over several networks, or over the parts of one network (actor and critic heads
  under one Adam), is judged per part: a part with a loss of its own (a discriminator) that
  another loss only passes through is stray when that optimizer steps it with that gradient; a
  critic's output used as an advantage that is not detached trains the critic on the policy term;
- the backward calls a closure makes inside `optimizer.step(closure)` (LBFGS) are for that step;
- updates without an optimizer object (`p.data.add_(p.grad, alpha=-lr)`,
  `with torch.no_grad(): p -= lr * p.grad`) are steps named after their network and line
  (`manual update of model at train.py:198`).

## Why is this bad?
The parameters move in a direction computed for another objective. In a GAN that forgets
`.detach()` and does not zero the generator, the generator takes a step on the discriminator's
loss: it learns to make the discriminator's job easier. Nothing fails; training is just wrong.

## Example
```python
fake = netG(noise)
errD = criterion(netD(fake), fake_label)   # no detach: errD writes .grad into netG
errD.backward()
optimizerD.step()
errG = criterion(netD(fake), real_label)
errG.backward()                            # netG.zero_grad() never called
optimizerG.step()                          # steps with errD's gradient too
```

## Use instead
```python
errD = criterion(netD(fake.detach()), fake_label)
errD.backward()
optimizerD.step()
netG.zero_grad()
errG = criterion(netD(fake), real_label)
errG.backward()
optimizerG.step()
```
"""

from __future__ import annotations

RULE = "stray-grad"
SEVERITY = "error"
SUMMARY = "an optimizer.step() applied gradient from a backward meant for another optimizer"

from typing import TYPE_CHECKING, Any

from ..findings import Finding, Label
from ._text import between, call_at, call_text, code, detach_fix, holder, net_count_text, opts_text, param_names, step_text, units_text

if TYPE_CHECKING:
    from ..events import BackwardCall, OptimizerStep
    from ..context import Context


def finding(ctx: Context, step: OptimizerStep, call: BackwardCall, pids: list[int], leak: Any = None) -> Finding:
    names = param_names(ctx, pids)
    n_opt = len(ctx.opts()[step.optimizer_key].pids) if step.optimizer_key in ctx.opts() else len(pids)
    for_opts = ctx.for_opts(call) or frozenset()
    own_step = step.optimizer_key in for_opts  # the call is for this optimizer too
    labels = []
    if leak is not None and leak.enters_at is not None:
        labels.append(Label(leak.enters_at, f"`{leak.var or 'tensor'}` enters `{leak.consumer_net}` without `.detach()`"))
    labels.append(Label(call.site, f"writes `.grad` on {net_count_text(ctx, set(pids))}"))
    labels.append(Label(step.site, f"steps with that gradient still in `{names[0]}`" + (f" and {len(names) - 1} more" if len(names) > 1 else ""), primary=True))
    notes = [f"{call_text(call)} is for {opts_text(ctx, for_opts)}"]
    if not own_step:
        notes.append(f"no `zero_grad()` on these parameters {between(call.site, step.site)}")
    if call.all_eval and call.eval_nets:
        nets = ", ".join(code(n) for n in call.eval_nets)
        notes[0] = (
            f"{call_text(call)} ran with {nets} in eval mode: an evaluation, not a training step of "
            f"`{step.optimizer}`, which trains {nets} in train mode"
        )
    into = units_text(ctx, set(pids))
    units = {ctx.reg.unit_of(p) for p in pids}
    passing = [t for t in ctx.terms(call) or () if t.leaves & set(pids) and t.for_units and not units <= t.for_units]
    baseline = next((t for t in passing if any(u in units for u, _s, _m in t.baselines)), None)
    if baseline is not None:
        term = code(baseline.name) if baseline.name else "a term"
        var = leak.var if leak is not None and leak.var else None
        factor = code(var) if var else "a factor"
        trains = ", ".join(code(u) for u in sorted(baseline.for_units))
        notes[0] = (
            f"{term} of the loss of {call_text(call)} is for {trains}; it reaches "
            f"{', '.join(code(n) for n in into)} through {factor}, which is not detached"
        )
        fix = detach_fix(call, var) or (f"`{var}.detach()`" if var else None)
        help_ = (
            f"detach {factor} where it is computed: {fix}, so that only its own term trains "
            f"{', '.join(code(n) for n in into)}" if fix else
            f"detach the factor of {term} that comes from {', '.join(code(n) for n in into)}"
        )
    elif passing and (leak is None or not leak.var):
        t = passing[0]
        term = code(t.name) if t.name else "a term"
        owners = ", ".join(code(u) for u in sorted(t.for_units))
        notes[0] = (
            f"{term} of the loss of {call_text(call)} is for {owners}; it reaches "
            f"{', '.join(code(n) for n in into)} only on its way there (pass-through), and "
            f"{', '.join(code(n) for n in into)} has a loss of its own"
        )
        frozen = f"`{into[0]}.requires_grad_(False)`" if len(into) == 1 else "`requires_grad_(False)` on them"
        if own_step:
            help_ = (
                f"give {', '.join(code(n) for n in into)} an optimizer of its own, or compute {term} with {frozen} "
                f"(and `requires_grad_(True)` again before its own loss)"
            )
        else:
            help_ = (
                f"backward {term} on its own and call `{holder(step)}.zero_grad()` before the backward meant "
                f"for `{step.optimizer}`, or compute {term} with {frozen}"
            )
    elif leak is not None and leak.var:
        help_ = (
            f"detach `{leak.var}` in the loss for {opts_text(ctx, for_opts)}: "
            f"`{leak.consumer_net}({leak.var}.detach())`; or call `{holder(step)}.zero_grad()` before the "
            f"backward meant for `{step.optimizer}`"
        )
    elif call.all_eval and call.eval_nets:
        help_ = (
            f"compute gradients for evaluation with `torch.autograd.grad(...)` (it leaves `.grad` alone), or "
            f"call `{holder(step)}.zero_grad()` before the backward calls that `{holder(step)}.step()` consumes"
        )
    else:
        help_ = (
            f"call `{holder(step)}.zero_grad()` after {call_text(call)} and before the backward meant for "
            f"`{step.optimizer}`, or keep {call_text(call)} out of `{step.optimizer}`'s parameters "
            "(`.detach()` or `requires_grad_(False)`)"
        )
    return Finding(
        RULE, SEVERITY,
        f"{step_text(step)} applied gradient that came from {call_at(call)}",
        step.site, tuple(labels), tuple(notes), help_,
        params=names, optimizer=step.optimizer, tensor=leak.var if leak is not None else None,
        backward=call.site, graph=call.graph_key,
        extra={"for": sorted(ctx.opt_name(k) for k in for_opts), "of": n_opt},
    )
