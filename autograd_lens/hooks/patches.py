"""Interception of every backward call.

``torch.autograd.graph._engine_run_backward`` (also bound as ``torch.autograd._engine_run_backward``)
sees every ``.backward()``, ``torch.autograd.backward()`` and ``torch.autograd.grad()``. It is
private, so it is feature-detected; without it the public functions are wrapped instead.
``torch.autograd.backward`` / ``grad`` are wrapped as well to explain errors raised before the engine
runs (e.g. a non-scalar root without ``gradient=``).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch
import torch.autograd
import torch.autograd.graph

if TYPE_CHECKING:
    from . import HookSet

BACKWARD_ENGINE_AVAILABLE = callable(getattr(torch.autograd.graph, "_engine_run_backward", None))

# on_engine(run, t_outputs, args, kwargs, accumulate_grad) -> result
EngineHandler = Callable[[Callable[..., Any], Any, tuple, dict, bool], Any]
# on_api(run, kind, args, kwargs) -> result
ApiHandler = Callable[[Callable[..., Any], str, tuple, dict], Any]


def patch_backward(hooks: HookSet, on_engine: EngineHandler, on_api: ApiHandler) -> None:
    if BACKWARD_ENGINE_AVAILABLE:
        orig = torch.autograd.graph._engine_run_backward

        @functools.wraps(orig)
        def engine(t_outputs: Any, *args: Any, **kwargs: Any) -> Any:
            return on_engine(orig, t_outputs, args, kwargs, bool(kwargs.get("accumulate_grad", True)))

        hooks.patch(torch.autograd.graph, "_engine_run_backward", engine)
        if getattr(torch.autograd, "_engine_run_backward", None) is orig:
            hooks.patch(torch.autograd, "_engine_run_backward", engine)

    orig_backward = torch.autograd.backward
    orig_grad = torch.autograd.grad

    @functools.wraps(orig_backward)
    def backward(*args: Any, **kwargs: Any) -> Any:
        return on_api(orig_backward, "backward", args, kwargs)

    @functools.wraps(orig_grad)
    def grad(*args: Any, **kwargs: Any) -> Any:
        return on_api(orig_grad, "grad", args, kwargs)

    hooks.patch(torch.autograd, "backward", backward)
    hooks.patch(torch.autograd, "grad", grad)
