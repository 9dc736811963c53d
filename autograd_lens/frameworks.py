"""What the lens knows of the frameworks people train with: PyTorch Lightning, Lightning Fabric,
HuggingFace accelerate, DistributedDataParallel.

- Their frames are not the user's: a finding's site is the user's line that called into them
  (``self.manual_backward(errD)``, ``accelerator.backward(loss)``, ``opt_d.step()``). Users add
  packages of their own to skip with ``watch(skip=...)``, ``lens trace --skip-package`` or
  ``[tool.autograd_lens] skip-packages`` in ``pyproject.toml``. Only named packages are skipped:
  a user's own pip-installed code keeps its lines.
- Their wrappers are seen through: a ``LightningOptimizer`` or an ``AcceleratedOptimizer`` is named
  by the variable that holds it; a ``DistributedDataParallel`` module's parameters are named
  without ``.module.``.

Imports nothing of the frameworks (they may be absent): everything is recognised by name.
"""

from __future__ import annotations

import ast
import inspect
import os
import re
import types
from collections.abc import Iterable
from pathlib import Path
from typing import Any

#: Packages whose frames are never the user's.
FRAMEWORKS: tuple[str, ...] = (
    "pytorch_lightning",
    "lightning",
    "lightning_fabric",
    "accelerate",
)

_extra: list[str] = []


def skipped() -> tuple[str, ...]:
    """Every package whose frames are not the user's: the frameworks and the user's additions."""
    return FRAMEWORKS + tuple(_extra)


def set_skipped(packages: Iterable[str]) -> list[str]:
    """Add ``packages`` to the skipped ones; returns the previous additions (to restore them)."""
    global _extra
    before = _extra
    _extra = list(dict.fromkeys([*_extra, *(p.strip() for p in packages if p and p.strip())]))
    if _extra != before:
        _SKIPPED.clear()
    return before


def restore_skipped(before: list[str]) -> None:
    global _extra
    if _extra != before:
        _SKIPPED.clear()
    _extra = before


_SKIPPED: dict[str, bool] = {}  # module name -> is_skipped (for the packages skipped now)


def is_skipped(module_name: str) -> bool:
    hit = _SKIPPED.get(module_name)
    if hit is None:
        hit = any(module_name == pkg or module_name.startswith(pkg + ".") for pkg in skipped())
        if len(_SKIPPED) < 8192:
            _SKIPPED[module_name] = hit
    return hit


def config_skip_packages(start: str | os.PathLike[str] | None = None) -> list[str]:
    """``skip-packages`` from ``[tool.autograd_lens]`` in the nearest ``pyproject.toml`` above
    ``start`` (the working directory by default); [] when there is none."""
    here = Path(start or os.getcwd()).resolve()
    for folder in (here, *here.parents):
        path = folder / "pyproject.toml"
        if path.is_file():
            try:
                import tomllib

                data = tomllib.loads(path.read_text())
            except (OSError, ValueError):
                return []
            table = data.get("tool", {}).get("autograd_lens", {})
            value = table.get("skip-packages", table.get("skip_packages", []))
            if isinstance(value, str):
                value = [value]
            return [str(v) for v in value if isinstance(v, str)]
    return []


# ----------------------------------------------------------------------------------------------
# wrappers
# ----------------------------------------------------------------------------------------------


def unwrap_optimizer(obj: Any, optimizer_type: type) -> Any | None:
    """The optimizer inside a framework's wrapper (``LightningOptimizer._optimizer``,
    ``AcceleratedOptimizer.optimizer``), read from the instance's own attributes only. (A
    LightningOptimizer takes the class of the optimizer it wraps: it is an optimizer by type.)"""
    if not isinstance(obj, optimizer_type) and not is_skipped(type(obj).__module__ or ""):
        return None  # a user's object that holds an optimizer (`agent.optimizer`) is not a wrapper
    d = getattr(obj, "__dict__", None)
    if not isinstance(d, dict):
        return None
    for attr in ("_optimizer", "optimizer"):
        inner = d.get(attr)
        if isinstance(inner, optimizer_type):
            return inner
    return None


def is_parallel_wrapper(module: Any) -> bool:
    """``DistributedDataParallel`` or ``DataParallel``: the network is its ``.module``."""
    return type(module).__name__ in ("DistributedDataParallel", "DataParallel") and hasattr(module, "module")


def lightning_module_of(frames: Iterable[types.FrameType]) -> Any | None:
    """The LightningModule being trained, from the variables of the frameworks' frames."""
    for f in frames:
        local = f.f_locals
        for name in ("pl_module", "lightning_module", "model", "module", "self"):
            obj = local.get(name)
            if obj is not None and _is_lightning_module(obj):
                return obj
        trainer = local.get("trainer")
        lm = getattr(trainer, "lightning_module", None) if trainer is not None else None
        if lm is not None and _is_lightning_module(lm):
            return lm
    return None


def _is_lightning_module(obj: Any) -> bool:
    return any(c.__name__ == "LightningModule" for c in type(obj).__mro__)


def optimizer_place(frames: Iterable[types.FrameType], opt: Any) -> str | None:
    """``configure_optimizers()[1]`` for the second optimizer of the LightningModule being trained."""
    lm = lightning_module_of(frames)
    trainer = getattr(lm, "_trainer", None) if lm is not None else None
    optimizers = getattr(trainer, "optimizers", None) if trainer is not None else None
    if not optimizers:
        return None
    for i, o in enumerate(optimizers):
        if o is opt or unwrap_optimizer(o, type(opt)) is opt:
            return f"configure_optimizers()[{i}]"
    return None


def training_step_site(frames: Iterable[types.FrameType]) -> tuple[str, int, str] | None:
    """Where the user's ``training_step`` returns its loss, for a backward that Lightning runs
    after ``training_step`` returned (automatic optimization)."""
    lm = lightning_module_of(frames)
    if lm is None:
        return None
    fn = getattr(type(lm), "training_step", None)
    if fn is None or is_skipped(getattr(fn, "__module__", "") or ""):
        return None
    try:
        lines, start = inspect.getsourcelines(fn)
        file = inspect.getsourcefile(fn)
    except (OSError, TypeError):
        return None
    if file is None:
        return None
    try:
        tree = ast.parse("".join(_dedent(lines)))
    except SyntaxError:
        return (file, start, fn.__name__)
    returns = [n.lineno for n in ast.walk(tree) if isinstance(n, ast.Return) and n.value is not None]
    return (file, start - 1 + (returns[-1] if returns else 1), fn.__name__)


def _dedent(lines: list[str]) -> list[str]:
    import textwrap

    return textwrap.dedent("".join(lines)).splitlines(keepends=True)


def rank() -> tuple[int, int] | None:
    """(rank, world size) of this process in a torchrun / torch.distributed launch, else None."""
    try:
        r = int(os.environ["RANK"])
        n = int(os.environ["WORLD_SIZE"])
    except (KeyError, ValueError):
        return None
    return (r, n) if n > 1 else None


def frames_between(inner: types.FrameType | None, outer: types.FrameType | None) -> list[types.FrameType]:
    """The frames from ``inner`` out to (not including) ``outer``."""
    out = []
    f = inner
    while f is not None and f is not outer:
        out.append(f)
        f = f.f_back
    return out


def module_name_of(frame: types.FrameType) -> str:
    return frame.f_globals.get("__name__", "") or ""


# ----------------------------------------------------------------------------------------------
# DistributedDataParallel's failure for parameters that did not take part in the loss
# ----------------------------------------------------------------------------------------------

DDP_UNUSED = "Expected to have finished reduction in the prior iteration"
_DDP_INDICES = re.compile(r"Parameter indices which did not receive grad for rank (\d+):\s*([\d ]+)")
_DDP_NAMES = re.compile(r"Parameters which did not receive grad for rank (\d+):\s*([^\n]+)")


def ddp_unused(exc: BaseException) -> tuple[Any, list[Any], int | None] | None:
    """(the DDP module, its parameters that did not receive grad, the rank) from DDP's error."""
    text = str(exc)
    if DDP_UNUSED not in text:
        return None
    ddp = None
    tb = exc.__traceback__
    while tb is not None:
        obj = tb.tb_frame.f_locals.get("self")
        if obj is not None and is_parallel_wrapper(obj):
            ddp = obj
        tb = tb.tb_next
    if ddp is None:
        return None
    ignore = set(getattr(ddp, "parameters_to_ignore", ()) or ())
    managed = [(n, p) for n, p in ddp.module.named_parameters() if p.requires_grad and n not in ignore]
    rank_no: int | None = None
    unused: list[Any] = []
    m = _DDP_NAMES.search(text)
    if m:
        rank_no = int(m.group(1))
        wanted = {n.strip() for n in m.group(2).split(",")}
        unused = [p for n, p in managed if n in wanted]
    if not unused:
        m = _DDP_INDICES.search(text)
        if m:
            rank_no = int(m.group(1))
            for i in m.group(2).split():
                if i.isdigit() and int(i) < len(managed):
                    unused.append(managed[int(i)][1])
    return ddp, unused, rank_no
