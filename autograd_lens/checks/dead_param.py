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
"""

from __future__ import annotations

RULE = "dead-param"
SEVERITY = "warning"
SUMMARY = "an optimizer stepped parameters that received no gradient"

from typing import TYPE_CHECKING

from ..findings import Finding, Label
from ._text import names_text

if TYPE_CHECKING:
    from ..watch import Watch


def findings(w: Watch) -> list[Finding]:
    out = []
    got: dict[int, set[int]] = {key: set(st.with_grad) for key, st in w.opts().items()}
    for s in w.steps:  # steps of the run not judged yet
        got.setdefault(s.optimizer_key, set()).update(s.provenance)
    for st in list(w.opts().values()):
        if st.steps == 0 or st.first_site is None:
            continue
        dead = []
        for pid in st.no_grad:
            ps = w.param_states().get(pid)
            if (ps is not None and ps.ever) or pid in got.get(st.key, ()) or pid in w.excluded:
                continue
            dead.append(w.param_name(pid))
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
