"""The registry: what is known of the networks, optimizers and parameters a ``watch()`` sees.

Plain data that the runtime fills and the checks read, and the only source of names:
- networks (top-level modules that hold parameters) under the variable that holds them (``netG``),
  with the qualified path of each of their submodules (``netG.main.0``);
- optimizers under their variable (``optimizerD``), and the parameters each steps; a parameter may
  belong to several optimizers (an auxiliary optimizer over ``chain(G.parameters(), D.parameters())``);
- parameters named as the user holds them (``netG.main.0.weight``), and optimized tensors that belong
  to no network under their own variable (``log_alpha``);
- forward ranges: which autograd sequence numbers each module's forward created, so that an op
  belongs to the module whose forward ran it, parameters or not.

Everything is held by id, name and weak reference: the registry keeps no tensor, module or
optimizer alive. It imports only :mod:`naming`, :mod:`findings` and torch; it never installs a hook.
"""

from __future__ import annotations

import bisect
import types
import weakref
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import torch

from . import frameworks
from .findings import Site
from .naming import ParamNames, find_all_in_frame, is_machinery, local_items

#: Forward ranges kept; the oldest half is dropped beyond this (they are needed for the graphs of
#: the current iteration only).
MAX_RANGES = 16_384

#: An optimizer whose parameters span more sub-networks than this is not judged per sub-network.
MAX_UNITS = 16

_SELF = "self"


_CONTAINERS = (torch.nn.Sequential, torch.nn.ModuleList, torch.nn.ModuleDict)


class NetInfo:
    """A network: a top-level module with parameters, named by the variable that holds it."""

    __slots__ = ("key", "ref", "name", "pids", "paths", "children")

    def __init__(self, module: torch.nn.Module, name: str, params: list[torch.Tensor] | None = None) -> None:
        self.key = id(module)
        self.ref = weakref.ref(module)
        self.name = name
        self.pids: set[int] = {id(p) for p in (module.parameters() if params is None else params)}
        # a DistributedDataParallel wrapper: the network is its `.module` (names without it)
        inner = module.module if frameworks.is_parallel_wrapper(module) else module
        # id(submodule) -> qualified path inside the network ("" for the network itself)
        self.paths: dict[int, str] = {id(m): path for path, m in inner.named_modules(remove_duplicate=True)}
        self.paths[id(module)] = ""
        # direct children that hold parameters: path -> ids of their parameters. A container of
        # plain layers (`nn.Sequential(Linear, ReLU, Linear)`) is one network: its layers are not
        # parts that could train with objectives of their own (an agent's actor and critic are)
        children = [(path, child) for path, child in inner.named_children() if next(iter(child.parameters()), None) is not None]
        layers_only = isinstance(inner, _CONTAINERS) and all(next(iter(c.children()), None) is None for _, c in children)
        self.children: dict[str, frozenset[int]] = {} if layers_only else {
            path: frozenset(id(p) for p in child.parameters()) for path, child in children
        }

    def qualified(self, path: str) -> str:
        if not path:
            return self.name
        return f"{self.name}.{path}" if self.name else path


class OptInfo:
    """An optimizer, or the manual updates of one network (``p.data.add_(p.grad, alpha=-lr)``)."""

    __slots__ = ("key", "ref", "name", "pids", "pidset", "steps", "first_site", "no_grad", "with_grad", "manual",
                 "n_groups", "n_listed")

    def __init__(self, key: int, ref: Callable[[], Any], name: str, *, manual: bool = False) -> None:
        self.key = key
        self.ref = ref
        self.name = name
        self.pids: list[int] = []
        self.pidset: set[int] = set()
        self.steps = 0
        self.first_site: Site | None = None
        # parameters that require grad and were stepped with `.grad` None (the optimizer may be
        # gone by the time dead parameters are judged, on exit)
        self.no_grad: set[int] = set()
        self.with_grad: set[int] = set()  # parameters it stepped with a gradient, at any time
        self.manual = manual
        self.n_groups = 0  # param groups and parameters when last read (a change means: read again)
        self.n_listed = 0


class ForwardRange:
    """The autograd sequence numbers a module's forward created (``start``..``end``).

    ``net`` is the key of the network the module belongs to, ``path`` its qualified path inside it
    ("" for the network itself), ``depth`` how deep the call was nested, ``parent`` the range of the
    call it ran in. ``detached_from`` holds the networks whose outputs came in detached.
    """

    __slots__ = ("start", "end", "net", "path", "depth", "site", "detached_from", "parent", "carried")

    def __init__(
        self,
        start: int,
        net: int,
        path: str,
        depth: int,
        site: Site | None,
        detached_from: frozenset[int] = frozenset(),
        parent: ForwardRange | None = None,
    ) -> None:
        self.start = start
        self.end = 1 << 62  # open until the forward returns
        self.net = net
        self.path = path
        self.depth = depth
        self.site = site
        self.detached_from = detached_from
        self.parent = parent
        # inputs that came with a graph: (argument position, sequence number of their grad_fn,
        # length of the tuple they came in, or 1)
        self.carried: tuple[tuple[int, int, int], ...] = ()

    def contains(self, seq: int) -> bool:
        return self.start <= seq <= self.end


class Registry:
    """Networks, optimizers, parameters, names and forward ranges of one watch."""

    def __init__(
        self,
        *,
        on_param: Callable[[torch.Tensor], Any] | None = None,
        on_change: Callable[[], None] | None = None,
    ) -> None:
        self.names = ParamNames()
        self.nets: dict[int, NetInfo] = {}
        self.opts: dict[int, OptInfo] = {}
        self.param_net: dict[int, int] = {}  # pid -> network key
        self.param_opt: dict[int, int] = {}  # pid -> first optimizer key (the owner named first)
        self.param_opts: dict[int, tuple[int, ...]] = {}  # pid -> every optimizer key holding it
        self.tensors: dict[int, str] = {}  # optimized tensors of no network -> variable name
        self.ever_grad: set[int] = set()  # parameters some backward ever wrote `.grad` of
        # optimizers whose parameters a backward through networks in training mode reached
        self.trained_opts: set[int] = set()
        self.not_networks: weakref.WeakSet[torch.nn.Module] = weakref.WeakSet()
        self.ranges: list[ForwardRange] = []  # ordered by start
        self._starts: list[int] = []
        self._module_of: dict[int, tuple[int, str]] = {}  # id(submodule) -> (network key, path)
        self._on_param = on_param
        self._on_change = on_change
        self._manual_serial = 0
        self._split_cache: dict[int, bool] = {}
        # answers that depend only on what is registered: cleared when anything is registered
        self._unit_cache: dict[int, str | None] = {}
        self._opts_cache: dict[int, tuple[int, ...]] = {}
        self.generation = 0
        self._columns: tuple[int, tuple[str, ...]] | None = None
        #: sequence numbers from here on were made while forward ranges were recorded
        self.first_seq: int | None = None

    def _touch(self) -> None:
        """Something was registered: answers computed from the registry are recomputed."""
        self.generation += 1
        self._split_cache.clear()
        self._unit_cache.clear()
        self._opts_cache.clear()

    def bind(
        self, *, on_param: Callable[[torch.Tensor], Any] | None = None, on_change: Callable[[], None] | None = None
    ) -> None:
        """Say whom to tell of each new parameter (the recorder hooks it) and of each registration
        (before it is made)."""
        self._on_param = on_param
        self._on_change = on_change

    # ------------------------------------------------------------------------------------------
    # networks and optimizers
    # ------------------------------------------------------------------------------------------
    @staticmethod
    def known(states: Mapping[int, Any], obj: Any) -> bool:
        """Whether ``obj`` itself (not a dead object that had its id) is registered."""
        st = states.get(id(obj))
        return st is not None and st.ref() is obj

    def _changing(self) -> None:
        """Tell of a registration before it is made: what is pending is judged with the networks and
        optimizers it belongs to (a new one can take the id of a dead one and replace its entry)."""
        if self._on_change is not None:
            self._on_change()

    def add_net(self, mod: torch.nn.Module, name: str) -> NetInfo:
        self._changing()
        # the names of live networks are taken; a dead one's name can be given again
        used = {n.name for n in self.nets.values() if n.ref() is not None}
        base, i = name, 2
        while name in used:
            name, i = f"{base}#{i}", i + 1
        params = list(mod.parameters())
        net = NetInfo(mod, name, params)
        self.nets[net.key] = net
        self._touch()
        for mid, path in net.paths.items():
            old = self._module_of.get(mid)
            if old is None or old[0] not in self.nets or self.nets[old[0]].ref() is None or not path:
                self._module_of[mid] = (net.key, path)
        self.names.add_module(name, mod.module if frameworks.is_parallel_wrapper(mod) else mod, force=True)
        for pid in net.pids:
            if not self.owns(self.nets, self.param_net.get(pid), pid):
                self.param_net[pid] = net.key
            self.tensors.pop(pid, None)
        self._touch()
        if self._on_param is not None:
            for p in params:
                self._on_param(p)  # also for leaves a walk cannot see (reentrant checkpointing)
        return net

    def add_opt(self, opt: torch.optim.Optimizer, name: str) -> OptInfo:
        self._changing()
        st = OptInfo(id(opt), weakref.ref(opt), name)
        self.opts[st.key] = st
        self.refresh_opt(st, opt)
        return st

    def add_manual(self, name: str, pids: Iterable[int]) -> OptInfo:
        """Manual updates (no optimizer object) of the parameters ``pids``, as a step-taking unit."""
        self._changing()
        self._manual_serial += 1
        marker = _Manual()
        st = OptInfo(id(marker), lambda: marker, name, manual=True)
        st.pids = list(pids)
        st.pidset = set(st.pids)
        self.opts[st.key] = st
        for pid in st.pids:
            self._own(pid, st)
        self._touch()
        return st

    def refresh_opt(self, st: OptInfo, opt: torch.optim.Optimizer) -> None:
        pids = []
        for g, group in enumerate(opt.param_groups):
            for i, p in enumerate(group["params"]):
                pid = id(p)
                pids.append(pid)
                self.names.add(f"{st.name}.param_groups[{g}].params[{i}]", p, st.name, weak=True)
                if self._on_param is not None:
                    self._on_param(p)
        st.pids = pids
        st.pidset = set(pids)
        st.n_groups = len(opt.param_groups)
        st.n_listed = len(pids)
        self._touch()
        for pid in pids:
            self._own(pid, st)

    def _own(self, pid: int, st: OptInfo) -> None:
        if not self.owns(self.opts, self.param_opt.get(pid), pid, st):
            self.param_opt[pid] = st.key
        owners = [k for k in self.param_opts.get(pid, ()) if self.owns(self.opts, k, pid) and k != st.key]
        self.param_opts[pid] = (*owners, st.key) if self.param_opt[pid] != st.key else (st.key, *owners)

    @staticmethod
    def owns(owners: Mapping[int, Any], key: int | None, pid: int, asking: Any = None, *, alive: bool = True) -> bool:
        """Whether network/optimizer ``key`` holds parameter ``pid`` (and, with ``alive``, still
        exists). Ids are reused once objects die: a new parameter can have a dead one's id, a new
        optimizer a dead one's; a registration is only replaced by a live owner that holds it."""
        owner = owners.get(key) if key is not None else None
        if owner is None or owner is asking or (alive and owner.ref() is None):
            return False
        held = owner.pidset if isinstance(owner, OptInfo) else owner.pids
        return pid in held

    # ------------------------------------------------------------------------------------------
    # names from the user's variables
    # ------------------------------------------------------------------------------------------
    def scan_frame(self, frame: types.FrameType | None, *, depth: int = 4, calling: torch.nn.Module | None = None) -> None:
        """Name networks and optimizers from the variables of ``frame`` and its callers.

        A module is named by the variable that holds it; ``self`` is a last resort: inside a
        method (``agent.get_action_and_value`` calling ``self.actor``) the caller's name for the
        same object (``agent``) wins, and a module known only as ``self`` (a LightningModule) lends
        its attribute names to its parts (``netG``, not ``self.netG``).
        """
        frames = []
        while frame is not None and len(frames) < depth:
            if not is_machinery(frame.f_globals.get("__name__", "") or ""):
                frames.append(frame)  # a framework's own variables (`pl_module`) are not names
            frame = frame.f_back
        found_mods: dict[int, tuple[str, torch.nn.Module]] = {}
        found_opts: dict[int, tuple[str, torch.optim.Optimizer]] = {}
        tensors: list[tuple[str, torch.Tensor]] = []
        seen_globals: set[int] = set()  # a module's globals are read once, with its first frame
        for f in frames:
            code = f.f_code
            me = code.co_varnames[0] if code.co_argcount and code.co_varnames else None
            mods, opts = find_all_in_frame(f, (torch.nn.Module, torch.optim.Optimizer), (None, frameworks.unwrap_optimizer),
                                           seen_globals)
            for name, mod in mods.items():
                if me is not None and me != _SELF and (name == me or name.startswith(me + ".")):
                    name = _SELF + name[len(me):]  # the method's instance, whatever it is called
                prev = found_mods.get(id(mod))
                if prev is None or _is_self_name(prev[0]) and not _is_self_name(name):
                    found_mods[id(mod)] = (name, mod)
            for name, opt in opts.items():
                if me is not None and me != _SELF and name.startswith(me + "."):
                    name = _SELF + name[len(me):]
                prev = found_opts.get(id(opt))
                if prev is None or _is_self_name(prev[0]) and not _is_self_name(name):
                    found_opts[id(opt)] = (name, opt)
            for name, value in local_items(f):
                if isinstance(value, torch.Tensor) and not name.startswith("_"):
                    tensors.append((name, value))
        inner = {id(sub) for _, m in found_mods.values() for sub in m.modules() if sub is not m}
        alone = self._called_alone(calling, found_mods, inner, found_opts)
        if alone is not None:
            inner.discard(id(alone))
        for name, mod in found_mods.values():
            if self.known(self.nets, mod) or id(mod) in inner or not is_network(mod):
                continue
            if alone is not None and mod is not alone and any(sub is alone for sub in mod.modules()):
                continue
            if name == _SELF:
                # known only as `self`: its parts are the networks, named by their attributes
                parts = [(n, c) for n, c in mod.named_children() if is_network(c)]
                if parts and next(mod.parameters(recurse=False), None) is None:
                    for n, c in parts:
                        if not self.known(self.nets, c):
                            self.add_net(c, n)
                    continue
                name = type(mod).__name__
            self.add_net(mod, _strip_self(name))
        for name, opt in found_opts.values():
            if not self.known(self.opts, opt):
                self.add_opt(opt, _strip_self(name))
        # a parameter of no network kept in a variable (`log_alpha` of SAC): named by it
        for name, value in tensors:
            key = id(value)
            if key in self.param_opt and key not in self.param_net:
                if key not in self.names.by_id or key in self.names.weak:
                    self.names.add(name, value, name)
                    self.tensors[key] = name
                    self._touch()

    def _called_alone(self, calling: torch.nn.Module | None, found_mods: dict[int, tuple[str, torch.nn.Module]],
                      inner: set[int], found_opts: dict[int, tuple[str, torch.optim.Optimizer]]) -> torch.nn.Module | None:
        """The module being called, when it is the network rather than the modules found that hold
        it: held by a name of its own, inside a module with parameters that no optimizer steps (an
        EMA wrapper's `online_model` next to its averaged copy). A module whose parameters the
        optimizers step (`for layer in model: h = layer(h)`) stays one network."""
        if calling is None or id(calling) not in inner or id(calling) not in found_mods:
            return None
        if _is_self_name(found_mods[id(calling)][0]):
            return None
        stepped = {id(p) for _, o in found_opts.values() for g in o.param_groups for p in g["params"]}
        for st in self.opts.values():
            stepped |= st.pidset
        if not stepped:
            return None
        own = {id(p) for p in calling.parameters()}
        for _, mod in found_mods.values():
            if mod is not calling and any(sub is calling for sub in mod.modules()):
                if all(id(p) in stepped or id(p) in own for p in mod.parameters()):
                    return None  # (a network the optimizers step whole)
        return calling

    # ------------------------------------------------------------------------------------------
    # queries
    # ------------------------------------------------------------------------------------------
    def param_name(self, pid: int) -> str:
        return self.names.by_id.get(pid) or f"param@{pid:x}"

    def opt_name(self, key: int | None) -> str:
        st = self.opts.get(key) if key is not None else None
        return st.name if st else "(no optimizer)"

    def net_name(self, key: int | None) -> str:
        n = self.nets.get(key) if key is not None else None
        return n.name if n else "(unknown)"

    def opt_of(self, pid: int) -> int | None:
        """The optimizer that steps parameter ``pid`` (the first of several; None if none, or gone)."""
        key = self.param_opt.get(pid)
        return key if self.owns(self.opts, key, pid, alive=False) else None

    def opts_of(self, pid: int) -> tuple[int, ...]:
        """Every optimizer that steps parameter ``pid``."""
        got = self._opts_cache.get(pid)
        if got is None:
            keys = self.param_opts.get(pid)
            got = tuple(k for k in keys if self.owns(self.opts, k, pid, alive=False)) if keys else ()
            self._opts_cache[pid] = got
        return got

    def net_of_param(self, pid: int) -> int | None:
        """The network holding parameter ``pid`` (None if it is none, or is gone)."""
        key = self.param_net.get(pid)
        return key if self.owns(self.nets, key, pid, alive=False) else None

    def group_of(self, pid: int) -> tuple[str, int] | None:
        """The owner a parameter's gradient is for: its optimizer, else its network."""
        o = self.opt_of(pid)
        if o is not None:
            return ("opt", o)
        n = self.net_of_param(pid)
        if n is not None:
            return ("net", n)
        return None

    def unit_of(self, pid: int) -> str | None:
        """The unit that parameter ``pid`` trains with: its network or, when the network has several
        children with parameters and every optimizer over it covers it alone (actor and critic
        under one Adam), the child (``agent.critic``); an optimized tensor of no network by name."""
        got = self._unit_cache.get(pid, _MISSING)
        if got is _MISSING:
            got = self._unit_cache[pid] = self._unit_of(pid)
        return got  # type: ignore[return-value]

    def _unit_of(self, pid: int) -> str | None:
        key = self.net_of_param(pid)
        if key is None:
            return self.tensors.get(pid)
        net = self.nets[key]
        if self.is_split(net):
            for path, pids in net.children.items():
                if pid in pids:
                    return net.qualified(path)
        return net.name

    def is_split(self, net: NetInfo) -> bool:
        """Whether the network's parts are its units (:meth:`unit_of`)."""
        return 1 < len(net.children) <= MAX_UNITS and self._split(net)

    def _split(self, net: NetInfo) -> bool:
        got = self._split_cache.get(net.key)
        if got is None:
            owners = {o for p in net.pids for o in self.opts_of(p)}
            got = bool(owners) and all(
                self.opts[o].pidset <= net.pids for o in owners
            )
            self._split_cache[net.key] = got
        return got

    def is_joint(self, opt_key: int) -> bool:
        """An optimizer all of whose parameters other optimizers also step (an auxiliary loss over
        `chain(G.parameters(), D.parameters())`): a declared joint objective."""
        st = self.opts.get(opt_key)
        if st is None or not st.pidset:
            return False
        return all(len(self.opts_of(p)) > 1 for p in st.pidset)

    def network_names(self) -> list[str]:
        """Columns of the flow table: networks, then optimized tensors of no network (``log_alpha``),
        then optimizers whose parameters are in no known network. A network made anew under the same
        variable (one per trial) keeps its name: one column."""
        return list(self.columns())

    def columns(self) -> tuple[str, ...]:
        """:meth:`network_names` as a tuple, computed once per registration."""
        got = self._columns
        if got is None or got[0] != self.generation:
            got = self._columns = (self.generation, tuple(self._network_names()))
        return got[1]

    def _network_names(self) -> list[str]:
        names = list(dict.fromkeys(n.name for n in self.nets.values()))
        for name in self.tensors.values():
            if name not in names:
                names.append(name)
        for o in self.opts.values():
            if o.manual:
                continue
            loose = [p for p in o.pids if p not in self.param_net and p not in self.tensors]
            if loose and o.name not in names:
                names.append(o.name)
        return names

    def column_of(self, pid: int) -> str | None:
        """The flow-table column of parameter ``pid``."""
        key = self.net_of_param(pid)
        if key is not None:
            return self.nets[key].name
        name = self.tensors.get(pid)
        if name is not None:
            return name
        o = self.opt_of(pid)
        return self.opts[o].name if o is not None else None

    # ------------------------------------------------------------------------------------------
    # forward ranges
    # ------------------------------------------------------------------------------------------
    def module_of(self, module: torch.nn.Module) -> tuple[int, str] | None:
        """(network key, path) of a module that is part of a known network."""
        hit = self._module_of.get(id(module))
        if hit is None:
            return None
        net = self.nets.get(hit[0])
        if net is None or net.ref() is None:
            return None
        return hit

    def open_range(self, r: ForwardRange) -> None:
        """Record a forward as it starts (forwards start in sequence order on a thread)."""
        if self._starts and r.start < self._starts[-1]:
            i = bisect.bisect_right(self._starts, r.start)
            self.ranges.insert(i, r)
            self._starts.insert(i, r.start)
        else:
            self.ranges.append(r)
            self._starts.append(r.start)
        if len(self.ranges) > MAX_RANGES:
            del self.ranges[: MAX_RANGES // 2]
            del self._starts[: MAX_RANGES // 2]

    def range_of_seq(self, seq: int | None) -> ForwardRange | None:
        """The innermost forward that created the node with sequence number ``seq``."""
        if seq is None or not self.ranges:
            return None
        i = bisect.bisect_right(self._starts, seq) - 1
        if i < 0:
            return None
        r: ForwardRange | None = self.ranges[i]
        # the innermost range that contains seq is the last one starting before it, or a parent
        while r is not None and not r.contains(seq):
            r = r.parent
        return r

    def top_range_of_seq(self, seq: int | None) -> ForwardRange | None:
        """The network-level (outermost) forward that created the node ``seq``."""
        r = self.range_of_seq(seq)
        while r is not None and r.parent is not None:
            r = r.parent
        return r

    def net_of_seq(self, seq: int | None) -> int | None:
        """The network whose forward created the node with sequence number ``seq``."""
        r = self.range_of_seq(seq)
        return r.net if r is not None else None

    def module_name_of_seq(self, seq: int | None) -> str | None:
        """``netD.main.0`` for a node created by that module's forward; "" for a node made outside
        every network's forward while the watch recorded them (a loss, a criterion); None when the
        registry cannot tell (made before the watch began)."""
        r = self.range_of_seq(seq)
        if r is None:
            return "" if seq is not None and self.first_seq is not None and seq >= self.first_seq else None
        net = self.nets.get(r.net)
        return net.qualified(r.path) if net is not None else None


_MISSING = object()


class _Manual:
    """The stand-in object of a manual-update unit (its key is this object's id)."""


def is_network(mod: torch.nn.Module) -> bool:
    # containers of no parameters (e.g. a loss module) are not networks
    return next(iter(mod.parameters()), None) is not None


def _is_self_name(name: str) -> bool:
    return name == _SELF or name.startswith(_SELF + ".") or name.startswith(_SELF + "[")


def _strip_self(name: str) -> str:
    """``self.netG`` -> ``netG``; ``self`` alone -> "" (its parts are named by their attributes)."""
    if name == _SELF:
        return ""
    if name.startswith(_SELF + "."):
        return name[len(_SELF) + 1 :]
    return name
