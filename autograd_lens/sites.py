"""Where the user's code is: the site (file, line, function) of the user's frame that made a call.

A frame is the user's when it belongs neither to the lens, nor to torch, nor to a training framework
(:func:`naming.is_machinery`, with the packages to skip from :mod:`frameworks`). The answers are
cached by file and by (file, line, function), so a site found once costs a dictionary lookup.

Imports :mod:`findings` (``Site``), :mod:`naming` and :mod:`frameworks`; nothing of the runtime.
"""

from __future__ import annotations

import sys
import types

from . import frameworks
from .findings import Site
from .naming import is_machinery, user_frame

_MACHINERY_FILES: dict[str, bool] = {}
_STEP_SITES: dict[tuple[str, int, str], Site] = {}


_MACHINERY_FOR: list[tuple[str, ...]] = [()]  # the packages skipped when the cache was filled


def forget_machinery() -> None:
    """The packages to skip may have changed (a new watch with other ``skip=``): the cache goes
    when they did."""
    now = frameworks.skipped()
    if now != _MACHINERY_FOR[0]:
        _MACHINERY_FILES.clear()
        _MACHINERY_FOR[0] = now


def frame_site(frame: types.FrameType | None) -> Site:
    if frame is None:
        return Site("<unknown>", 0, "")
    return Site(frame.f_code.co_filename, frame.f_lineno, frame.f_code.co_name)


def machinery_frame(frame: types.FrameType) -> bool:
    """Whether the frame is the lens's, torch's or a framework's (cached by file)."""
    file = frame.f_code.co_filename
    hit = _MACHINERY_FILES.get(file)
    if hit is None:
        hit = is_machinery(frame.f_globals.get("__name__", "") or "")
        if len(_MACHINERY_FILES) < 8192:
            _MACHINERY_FILES[file] = hit
    return hit


def first_user_frame(frame: types.FrameType | None) -> types.FrameType | None:
    """``frame`` or the first of its callers that is the user's."""
    while frame is not None and machinery_frame(frame):
        frame = frame.f_back
    return frame


def call_site() -> Site:
    """The user's line that (through the lens, torch or a framework) called the caller."""
    frame = first_user_frame(sys._getframe(1))
    try:
        if frame is None:
            return Site("<unknown>", 0, "")
        code = frame.f_code  # (code objects compare by content: equal code in two files is equal)
        key = (code.co_filename, frame.f_lineno, code.co_name)
        s = _STEP_SITES.get(key)
        if s is None:
            s = frame_site(frame)
            if len(_STEP_SITES) < 4096:
                _STEP_SITES[key] = s
        return s
    finally:
        del frame


def module_caller_site() -> Site:
    """The line that called a module (the frames of ``torch.nn.modules.module`` skipped)."""
    frame = user_frame(("torch.nn.modules.module",))
    try:
        return frame_site(frame)
    finally:
        del frame


def site_from_traceback(exc: BaseException) -> Site | None:
    """The innermost line of the user's code in the traceback of ``exc``."""
    tb = exc.__traceback__
    last = None
    while tb is not None:
        mod = tb.tb_frame.f_globals.get("__name__", "")
        if not (mod.startswith("torch") or mod.startswith("autograd_lens")):
            last = Site(tb.tb_frame.f_code.co_filename, tb.tb_lineno, tb.tb_frame.f_code.co_name)
        tb = tb.tb_next
    return last


def exc_text(exc: BaseException | None) -> str | None:
    """``TypeName: first line of the message``."""
    if exc is None:
        return None
    first = str(exc).split("\n", 1)[0]
    return f"{type(exc).__name__}: {first}"
