"""Names for parameters, modules and optimizers, as the user holds them.

A parameter is named by the variable that holds its module in the user's code plus its qualified
name inside that module: ``netG.main.0.weight``. Names come from what the user passes explicitly
or, when nothing is passed, from the modules found in the caller's frame (locals, then globals,
one attribute level deep: ``self.actor`` or ``agent.critic``).
"""

from __future__ import annotations

import sys
import types
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import torch

from . import frameworks

_PACKAGE_PREFIX = __name__.rsplit(".", 1)[0]


_NOT_USER: dict[str, bool] = {}
_NOT_USER_FOR: tuple[str, ...] = ()


def is_machinery(mod: str) -> bool:
    """Whether frames of module ``mod`` are machinery: the lens, torch, a training framework."""
    return _not_user(mod)


def _not_user(mod: str) -> bool:
    """Whether frames of module ``mod`` are machinery: the lens, torch, a training framework."""
    global _NOT_USER_FOR
    skipped = frameworks.skipped()
    if skipped != _NOT_USER_FOR:
        _NOT_USER.clear()
        _NOT_USER_FOR = skipped
    hit = _NOT_USER.get(mod)
    if hit is None:
        hit = (
            mod == _PACKAGE_PREFIX
            or mod.startswith(_PACKAGE_PREFIX + ".")
            or mod == "torch"
            or mod.startswith("torch.")
            or mod == "contextlib"
            or frameworks.is_skipped(mod)
        )
        if len(_NOT_USER) < 4096:
            _NOT_USER[mod] = hit
    return hit


def user_frame(skip_modules: tuple[str, ...] = ()) -> types.FrameType | None:
    """The innermost frame that belongs neither to the lens, nor to torch, nor to a training
    framework (nor to ``skip_modules``)."""
    frame = sys._getframe(1)
    while frame is not None:
        mod = frame.f_globals.get("__name__", "")
        if not (_not_user(mod) or mod in skip_modules):
            return frame
        frame = frame.f_back
    return None


def framework_frames(frame: types.FrameType | None) -> list[types.FrameType]:
    """The frames of training frameworks between the caller and ``frame`` (the user's)."""
    out = []
    f = sys._getframe(1)
    while f is not None and f is not frame:
        if frameworks.is_skipped(f.f_globals.get("__name__", "") or ""):
            out.append(f)
        f = f.f_back
    return out


_CO_OPTIMIZED = 0x0001


def local_items(frame: types.FrameType) -> list[tuple[str, Any]]:
    """The frame's local variables, without keeping any of them alive.

    Before Python 3.13, ``frame.f_locals`` of a function frame is a snapshot dict cached on the
    frame: it would keep every local it saw alive after the function deletes or rebinds it, until
    the frame ends. The snapshot is emptied after reading (it is rebuilt on every access, and the
    function's real variables live elsewhere). Module and class frames hold their real namespace
    in ``f_locals``, and 3.13's ``f_locals`` is a live view: both are only read.
    """
    snapshot = frame.f_locals
    items = list(snapshot.items())
    code = frame.f_code
    if (
        sys.version_info < (3, 13)
        and type(snapshot) is dict
        and code.co_flags & _CO_OPTIMIZED
        and snapshot is not frame.f_globals
        and frame.f_trace is None  # a tracer may copy the snapshot back into the frame
        # held by the frame, `snapshot` and getrefcount's argument only: nobody else has it (a
        # function that kept `locals()` holds this very dict, and keeps it as Python leaves it)
        and sys.getrefcount(snapshot) <= 3
    ):
        # only the entries Python rebuilds from the frame's variables; names that `exec` put in
        # the snapshot live nowhere else and stay
        for name in (*code.co_varnames, *code.co_cellvars, *code.co_freevars):
            snapshot.pop(name, None)
    return items


def _candidates(frame: types.FrameType | None, with_globals: bool = True,
                skip: tuple[type, ...] = ()) -> Iterable[tuple[str, Any]]:
    """(variable name, value) pairs visible from ``frame``: locals first, then the globals they do
    not shadow; values of the types ``skip`` are left out."""
    if frame is None:
        return
    seen: set[str] = set()
    for name, value in local_items(frame):
        if name.startswith("__") or name in seen:
            continue
        seen.add(name)
        if not isinstance(value, skip):
            yield name, value
    if with_globals:
        for name, value in list(frame.f_globals.items()):
            # (most of a program's globals are modules, functions and classes: skipped first)
            if not isinstance(value, skip) and name not in seen and not name.startswith("__"):
                yield name, value


def _is_plain_object(value: Any) -> bool:
    if isinstance(value, (type, types.ModuleType, types.FunctionType, torch.nn.Module, torch.optim.Optimizer)):
        return False
    try:
        return isinstance(vars(value), dict)
    except Exception:  # no __dict__, or a __getattr__ that raises
        return False


def find_in_frame(
    frame: types.FrameType | None, kind: type, unwrap: Callable[[Any, type], Any] | None = None
) -> dict[str, Any]:
    """Objects of ``kind`` held by variables of ``frame`` (or one attribute deep), by name.

    Every object appears once, under the first (shortest-path) name that holds it. With
    ``unwrap``, a wrapper that holds one (``unwrap(value, kind)``) names it too.
    """
    return find_all_in_frame(frame, (kind,), (unwrap,))[0]


#: Values that are never a module, an optimizer or a wrapper of one, nor hold one as an attribute
#: (a program's globals are mostly these: imported modules, functions, classes, constants).
_NEVER_HOLDS = (types.ModuleType, types.FunctionType, types.BuiltinFunctionType, types.MethodType, type, int, float,
                str, bytes, bool, type(None))


def find_all_in_frame(
    frame: types.FrameType | None,
    kinds: tuple[type, ...],
    unwraps: tuple[Callable[[Any, type], Any] | None, ...],
    seen_globals: set[int] | None = None,
) -> list[dict[str, Any]]:
    """:func:`find_in_frame` for several kinds in one pass over the frame's variables: for each
    kind (with its ``unwrap``), the objects of that kind by name. ``seen_globals``: ids of global
    namespaces read already (a caller's frame in the same module): only the locals are read then."""
    found: list[dict[str, Any]] = [{} for _ in kinds]
    ids: set[int] = set()
    nested: list[tuple[str, Any]] = []
    pairs = list(zip(kinds, unwraps, found))

    def take(name: str, value: Any) -> bool:
        if isinstance(value, _NEVER_HOLDS):
            return False
        for kind, unwrap, out in pairs:
            if unwrap is not None:
                inner = unwrap(value, kind)
                if inner is not None:
                    value = inner
            if isinstance(value, kind):
                if id(value) not in ids:
                    ids.add(id(value))
                    out[name] = value
                return True
        return False

    with_globals = True
    if seen_globals is not None and frame is not None:
        with_globals = id(frame.f_globals) not in seen_globals
        seen_globals.add(id(frame.f_globals))
    for name, value in _candidates(frame, with_globals, _NEVER_HOLDS):
        if take(name, value):
            if isinstance(value, torch.nn.Module):
                nested.append((name, value))  # the optimizer it keeps (`maml.meta_optim`)
            continue
        if isinstance(value, (list, tuple)) and len(value) <= 64:
            for i, item in enumerate(value):
                take(f"{name}[{i}]", item)
        elif isinstance(value, dict) and len(value) <= 64:
            for key, item in value.items():
                if isinstance(key, str):
                    take(f"{name}[{key!r}]", item)
        elif _is_plain_object(value):
            nested.append((name, value))
    for name, obj in nested:
        try:
            attrs = vars(obj)
        except Exception:
            continue
        module = isinstance(obj, torch.nn.Module)
        for attr, item in list(attrs.items()):
            if module and attr[0] == "_":
                continue  # (a module's own state: `_parameters`, `_modules`, its hooks)
            take(f"{name}.{attr}", item)  # (`trainer.opt`, also as prepared by a framework)
    return found


class ParamNames:
    """Maps parameter tensors (by identity and by storage) to user-facing names.

    Holds the names and ``id``/storage keys only; no reference to any tensor or module.
    """

    def __init__(self, *, storages: bool = True) -> None:
        self.by_id: dict[int, str] = {}
        # data_ptr -> (device, name): for tensors that share a parameter's storage without being
        # a view of it (``p.data``). Off for a drawing, which finds views by their base.
        self.by_ptr: dict[int, tuple[str, str]] = {}
        self.storages = storages
        self.module_of: dict[str, str] = {}
        self.module_types: dict[str, str] = {}  # module name -> type name (``Sequential``)
        self.weak: set[int] = set()  # ids named only as a fallback; a module's name replaces them

    def __len__(self) -> int:
        return len(self.by_id)

    def add(
        self, name: str, tensor: torch.Tensor, module: str | None = None, *, weak: bool = False, force: bool = False
    ) -> None:
        """Name ``tensor``. The first name sticks, unless it was given with ``weak=True``, or this
        one comes with ``force=True`` (a new module whose parameters may reuse dead ones' ids)."""
        key = id(tensor)
        if key in self.by_id:
            if not force and (key not in self.weak or weak):
                return
            self.weak.discard(key)
            old = self.by_id[key]
            self.module_of.pop(old, None)
            for ptr, (dev, n) in list(self.by_ptr.items()):
                if n == old:
                    del self.by_ptr[ptr]
        if weak:
            self.weak.add(key)
        self.by_id[key] = name
        self.module_of[name] = module if module is not None else name.rsplit(".", 1)[0]
        ptr = storage_ptr(tensor) if self.storages else None
        if ptr is not None:
            self.by_ptr[ptr] = (str(tensor.device), name)

    def add_module(self, prefix: str, module: torch.nn.Module, *, force: bool = False) -> None:
        """Name the parameters of ``module`` ``prefix.<qualified name>``, and record the type of each
        submodule, in one pass over its modules (a parameter shared by two submodules keeps its
        first name, as ``named_parameters`` gives it)."""
        types = self.module_types
        seen: set[int] = set()
        seen_add = seen.add
        add = self.add
        by_id, by_ptr, module_of, storages = self.by_id, self.by_ptr, self.module_of, self.storages
        devices: dict[Any, str] = {}
        stack = [(prefix, module)]
        pop, push = stack.pop, stack.append
        visited: set[int] = set()
        while stack:  # named_modules' order (depth first, children in order), without recursion
            qual, mod = pop()
            key = id(mod)
            if key in visited:
                continue
            visited.add(key)
            types[qual] = type(mod).__name__
            params = mod._parameters
            if params:
                for pname, p in params.items():
                    if p is None:
                        continue
                    key = id(p)
                    if key in seen:
                        continue
                    seen_add(key)
                    name = f"{qual}.{pname}"
                    if key in by_id:  # named before: the rules of `add`
                        add(name, p, qual, force=force)
                        continue
                    by_id[key] = name
                    module_of[name] = qual
                    if storages:
                        ptr = storage_ptr(p)
                        if ptr is not None:
                            dev = p.device
                            by_ptr[ptr] = (devices.get(dev) or devices.setdefault(dev, str(dev)), name)
            children = mod._modules
            if children:
                for k, c in reversed(children.items()):
                    if c is not None:
                        push((f"{qual}.{k}", c))

    def name_of(self, tensor: torch.Tensor) -> str | None:
        return self.by_id.get(id(tensor))

    def name_of_storage(self, tensor: torch.Tensor) -> str | None:
        if not self.by_ptr:
            return None
        ptr = storage_ptr(tensor)
        hit = self.by_ptr.get(ptr) if ptr is not None else None
        return hit[1] if hit is not None and hit[0] == str(tensor.device) else None

    @classmethod
    def build(cls, params: Any = None, frame: types.FrameType | None = None, *, storages: bool = True) -> ParamNames:
        """Names from ``params`` (dict of tensors or modules, a module, a list of modules) or,
        when ``params`` is None, from the modules held in ``frame``."""
        names = cls(storages=storages)
        if params is None:
            for var, mod in find_in_frame(frame, torch.nn.Module).items():
                names.add_module(var, mod)
            return names
        if isinstance(params, torch.nn.Module):
            names.add_module(_var_name_for(params, frame) or type(params).__name__.lower(), params)
            return names
        if isinstance(params, Mapping):
            for key, value in params.items():
                if isinstance(value, torch.nn.Module):
                    names.add_module(str(key), value)
                elif isinstance(value, torch.Tensor):
                    names.add(str(key), value, str(key).rsplit(".", 1)[0] if "." in str(key) else "")
            return names
        if isinstance(params, (list, tuple)):
            for i, m in enumerate(params):
                if isinstance(m, torch.nn.Module):
                    names.add_module(_var_name_for(m, frame) or f"{type(m).__name__.lower()}{i}", m)
                elif isinstance(m, torch.Tensor):
                    names.add(f"param{i}", m, "")
            return names
        from .errors import LensError, describe

        raise LensError(
            f"params= takes a module, a list of modules, or a dict of names to modules/tensors; "
            f"got {describe(params)}"
        )


def _var_name_for(obj: Any, frame: types.FrameType | None) -> str | None:
    for name, value in find_in_frame(frame, type(obj)).items():
        if value is obj:
            return name
    return None


def tensor_names(frame: types.FrameType | None, *, grad_fns: bool = False) -> dict[int, str]:
    """``id(tensor) -> variable name`` for the tensors held by the frame's locals; with
    ``grad_fns``, also ``id(tensor.grad_fn) -> name``. Names starting with ``_`` are skipped."""
    out: dict[int, str] = {}
    if frame is None:
        return out
    for name, value in local_items(frame):
        if isinstance(value, torch.Tensor) and not name.startswith("_"):
            out.setdefault(id(value), name)
            if grad_fns and value.grad_fn is not None:
                out.setdefault(id(value.grad_fn), name)
    return out


def storage_ptr(t: torch.Tensor) -> int | None:
    """``t.data_ptr()``, or None for tensors whose data must not be touched (fake, meta, no storage)."""
    if t.is_meta or type(t).__name__ == "FakeTensor":
        return None
    try:
        return t.data_ptr()
    except RuntimeError:
        return None


def tensors_in(obj: Any) -> list[torch.Tensor]:
    """The tensors in ``obj``: a tensor, a list or tuple, a dict's values (else none)."""
    if isinstance(obj, torch.Tensor):
        return [obj]
    if isinstance(obj, dict):
        obj = list(obj.values())
    if isinstance(obj, (list, tuple)):
        return [t for t in obj if isinstance(t, torch.Tensor)]
    return []
