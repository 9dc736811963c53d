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

# make_engine(run) -> the function that replaces the engine's entry point `run` (and calls it)
EngineMaker = Callable[[Callable[..., Any]], Callable[..., Any]]
# on_api(run, kind, args, kwargs) -> result (without the engine entry point: the whole call)
ApiHandler = Callable[[Callable[..., Any], str, tuple, dict], Any]
# on_api_error(exc, kind, args, kwargs) (with it: an error raised before the engine ran)
ApiErrorHandler = Callable[[Exception, str, tuple, dict], None]


def patch_backward(hooks: HookSet, make_engine: EngineMaker, on_api: ApiHandler, on_api_error: ApiErrorHandler) -> None:
    orig_backward = torch.autograd.backward
    orig_grad = torch.autograd.grad

    if BACKWARD_ENGINE_AVAILABLE:
        orig = torch.autograd.graph._engine_run_backward
        engine = functools.update_wrapper(make_engine(orig), orig)
        hooks.patch(torch.autograd.graph, "_engine_run_backward", engine)
        if getattr(torch.autograd, "_engine_run_backward", None) is orig:
            hooks.patch(torch.autograd, "_engine_run_backward", engine)

        # the engine sees the calls: the public functions only report what fails before it runs
        @functools.wraps(orig_backward)
        def backward(*args: Any, **kwargs: Any) -> Any:
            try:
                return orig_backward(*args, **kwargs)
            except Exception as exc:
                on_api_error(exc, "backward", args, kwargs)
                raise

        @functools.wraps(orig_grad)
        def grad(*args: Any, **kwargs: Any) -> Any:
            try:
                return orig_grad(*args, **kwargs)
            except Exception as exc:
                on_api_error(exc, "grad", args, kwargs)
                raise
    else:

        @functools.wraps(orig_backward)
        def backward(*args: Any, **kwargs: Any) -> Any:
            return on_api(orig_backward, "backward", args, kwargs)

        @functools.wraps(orig_grad)
        def grad(*args: Any, **kwargs: Any) -> Any:
            return on_api(orig_grad, "grad", args, kwargs)

    hooks.patch(torch.autograd, "backward", backward)
    hooks.patch(torch.autograd, "grad", grad)
