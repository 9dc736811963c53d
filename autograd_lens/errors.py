"""The one exception type the lens raises for its own failures."""

from __future__ import annotations


class LensError(Exception):
    """A problem the lens reports about its input or environment (not the user's autograd error).

    The message stands on its own: it says what was passed and what was expected. The CLI turns a
    ``LensError`` into one line on stderr and a non-zero exit status, never a traceback.
    """


def describe(obj: object) -> str:
    """A short description of ``obj`` for error messages: type, and shape/grad_fn for tensors."""
    try:
        import torch
    except ImportError:  # pragma: no cover - torch is a dependency
        torch = None  # type: ignore[assignment]
    if torch is not None and isinstance(obj, torch.Tensor):
        grad_fn = type(obj.grad_fn).__name__ if obj.grad_fn is not None else None
        return (
            f"a tensor of shape {tuple(obj.shape)} ({obj.dtype}, requires_grad={obj.requires_grad}, "
            f"grad_fn={grad_fn})"
        )
    text = repr(obj)
    if len(text) > 60:
        text = text[:57] + "..."
    return f"{type(obj).__name__} {text}"
