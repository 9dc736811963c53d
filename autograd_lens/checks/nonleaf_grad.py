"""`.grad` read on a tensor that is not a leaf.

## What it does
Reports reads of `.grad` on intermediate tensors, which are always `None` unless `retain_grad()`
was called (PyTorch only warns once).

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
