"""The only place that touches PyTorch's global state.

Every hook or patch the lens installs goes through a :class:`HookSet` and comes back as a handle;
``HookSet.remove()`` takes all of them off (idempotent, also on exceptions).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import torch

from .patches import BACKWARD_ENGINE_AVAILABLE

__all__ = ["HookSet", "BACKWARD_ENGINE_AVAILABLE"]


class _Patch:
    """Replaces ``owner.name`` by ``value`` and puts the original back on ``remove()``.

    Watches may end out of order (two threads, an ``ExitStack``): a patch removed while another
    one sits on top of it stays in the chain as a pass-through (the watch behind it is closed), and
    the patch on top, when removed, skips every removed patch below it.
    """

    def __init__(self, owner: Any, name: str, value: Any) -> None:
        self.owner = owner
        self.name = name
        self.original = owner.__dict__[name] if isinstance(owner, type) else getattr(owner, name)
        try:
            value.__autograd_lens_patch__ = self
        except AttributeError:
            pass
        setattr(owner, name, value)
        self.value = value
        self.removed = False

    def _current(self) -> Any:
        if isinstance(self.owner, type):
            return self.owner.__dict__.get(self.name)
        return getattr(self.owner, self.name, None)

    def remove(self) -> None:
        if self.removed:
            return
        self.removed = True
        if self._current() is not self.value:
            return  # another patch is on top: it will skip this one when it goes
        target = self.original
        below = getattr(target, "__autograd_lens_patch__", None)
        # (a user's functools.wraps copy of a lens wrapper carries the attribute too: not ours)
        while below is not None and below.removed and below.value is target:
            target = below.original
            below = getattr(target, "__autograd_lens_patch__", None)
        setattr(self.owner, self.name, target)


_ACTIVE_LOCK = threading.Lock()


class HookSet:
    """A set of installed hooks and patches that come off together."""

    def __init__(self) -> None:
        self._handles: list[Any] = []
        self._removed = False

    def patch(self, owner: Any, name: str, value: Any) -> Any:
        """Set ``owner.name = value``; returns the original."""
        p = _Patch(owner, name, value)
        self._handles.append(p)
        return p.original

    def add(self, handle: Any) -> Any:
        """Track a handle that has a ``remove()`` method (e.g. ``torch.utils.hooks.RemovableHandle``)."""
        self._handles.append(handle)
        return handle

    def on_remove(self, fn: Callable[[], None]) -> None:
        class _Fn:
            def remove(self_inner) -> None:  # noqa: N805
                fn()

        self._handles.append(_Fn())

    def remove(self) -> None:
        """Remove everything, last installed first. Safe to call more than once."""
        if self._removed:
            return
        self._removed = True
        errors = []
        while self._handles:
            h = self._handles.pop()
            try:
                h.remove()
            except Exception as exc:  # keep removing the rest
                errors.append(exc)
        if errors:
            raise errors[0]

    @property
    def removed(self) -> bool:
        return self._removed

    def __len__(self) -> int:
        return len(self._handles)

    def __enter__(self) -> HookSet:
        return self

    def __exit__(self, *exc: object) -> None:
        self.remove()


#: torch.compile's warning about global module hooks: while the lens's are on, it is the lens's
#: doing, not the user's (the lens takes the compiled module's extra hook call as its network's)
_COMPILE_HOOKS_WARNING = r"Using `torch\.compile\(module\)` when there are global hooks on modules"


def register_global_module_hooks(hooks: HookSet, pre: Callable, post: Callable) -> None:
    import warnings

    from torch.nn.modules import module as _m

    hooks.add(_m.register_module_forward_pre_hook(pre))
    hooks.add(_m.register_module_forward_hook(post, always_call=True))
    warnings.filterwarnings("ignore", message=_COMPILE_HOOKS_WARNING, category=UserWarning)
    quiet = warnings.filters[0]

    def unquiet() -> None:
        try:
            warnings.filters.remove(quiet)
        except ValueError:  # (the program reset the filters meanwhile)
            pass
        mutated = getattr(warnings, "_filters_mutated", None)
        if mutated is not None:
            mutated()  # (warnings already seen are looked at again)

    hooks.on_remove(unquiet)


def register_global_optimizer_hooks(hooks: HookSet, pre: Callable, post: Callable | None) -> Any:
    """Step pre- and post-hooks of every optimizer; returns the post-hook's handle (None without one)."""
    from torch.optim import optimizer as _o

    hooks.add(_o.register_optimizer_step_pre_hook(pre))
    return register_step_post_hook(hooks, post) if post is not None else None


def register_step_post_hook(hooks: HookSet, post: Callable) -> Any:
    """A step post-hook of every optimizer (taken off and put back while a loop runs steady)."""
    from torch.optim import optimizer as _o

    return hooks.add(_o.register_optimizer_step_post_hook(post))


def patch_zero_grad(hooks: HookSet, make_zero: Callable[[Callable[[Any, bool], Any]], Callable[..., Any]]) -> None:
    """Replace ``Optimizer.zero_grad`` and ``Module.zero_grad`` by ``make_zero(original)``, which
    reports each call and runs the original."""
    for owner in (torch.optim.Optimizer, torch.nn.Module):
        orig = owner.__dict__["zero_grad"]
        wrapper = make_zero(orig)
        wrapper.__wrapped__ = orig  # type: ignore[attr-defined]
        hooks.patch(owner, "zero_grad", wrapper)


def patch_optimizer_init(hooks: HookSet, on_new: Callable[[Any], None]) -> None:
    """Report each optimizer made while the hooks are installed (after it is made)."""
    orig = torch.optim.Optimizer.__init__

    def init(self: torch.optim.Optimizer, *args: Any, **kwargs: Any) -> None:
        orig(self, *args, **kwargs)
        on_new(self)

    init.__wrapped__ = orig  # type: ignore[attr-defined]
    hooks.patch(torch.optim.Optimizer, "__init__", init)


def watch_warnings(hooks: HookSet, on_warning: Callable[[Warning | str, str, int], None]) -> None:
    """Report warnings as Python shows them (then show them as usual)."""
    import warnings

    original = warnings.showwarning

    def showwarning(message: Warning | str, category: type, filename: str, lineno: int, file: Any = None, line: str | None = None) -> None:
        try:
            on_warning(message, filename, lineno)
        finally:
            original(message, category, filename, lineno, file, line)

    hooks.patch(warnings, "showwarning", showwarning)
