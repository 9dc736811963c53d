"""What the lens must never do: change a number of training, keep tensors alive, leave hooks behind."""

from __future__ import annotations

import gc
from pathlib import Path
import warnings
import weakref

import pytest
import torch
from torch import nn

import autograd_lens as lens


class G(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.main = nn.Sequential(
            nn.ConvTranspose2d(8, 8, 4, 1, 0, bias=False),
            nn.BatchNorm2d(8),
            nn.ReLU(True),
            nn.ConvTranspose2d(8, 3, 4, 2, 1, bias=False),
            nn.Tanh(),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.main(x)


class D(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.main = nn.Sequential(
            nn.Conv2d(3, 8, 4, 2, 1, bias=False),
            nn.LeakyReLU(0.2, inplace=True),
            nn.Conv2d(8, 1, 4, 1, 0, bias=False),
            nn.Sigmoid(),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.main(x).view(-1)


def train(steps: int, *, watched: bool, detach: bool = True, fused: bool = False) -> list[torch.Tensor]:
    torch.manual_seed(0)
    netG, netD = G(), D()
    optimizerD = torch.optim.Adam(netD.parameters(), lr=2e-4, fused=fused or None)
    optimizerG = torch.optim.Adam(netG.parameters(), lr=2e-4, fused=fused or None)
    criterion = nn.BCELoss()

    def step() -> None:
        real = torch.randn(4, 3, 8, 8)
        noise = torch.randn(4, 8, 1, 1)
        netD.zero_grad()
        errD_real = criterion(netD(real), torch.ones(4))
        errD_real.backward()
        fake = netG(noise)
        errD_fake = criterion(netD(fake.detach() if detach else fake), torch.zeros(4))
        errD_fake.backward(retain_graph=not detach)
        optimizerD.step()
        if detach:
            netG.zero_grad()
        errG = criterion(netD(fake), torch.ones(4))
        errG.backward()
        optimizerG.step()

    if watched:
        with lens.watch():
            for _ in range(steps):
                step()
    else:
        for _ in range(steps):
            step()
    return [p.detach().clone() for p in (*netG.parameters(), *netD.parameters())] + [
        p.grad.clone() for p in (*netG.parameters(), *netD.parameters())
    ]


@pytest.mark.parametrize("detach", [True, False], ids=["correct", "no-detach"])
def test_parameters_and_gradients_bitwise_equal_after_20_steps(detach: bool) -> None:
    bare = train(20, watched=False, detach=detach)
    seen = train(20, watched=True, detach=detach)
    assert len(bare) == len(seen)
    for a, b in zip(bare, seen):
        assert torch.equal(a, b)


def _live_tensors() -> int:
    gc.collect()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # isinstance() touches deprecated torch.distributed names
        return sum(1 for o in gc.get_objects() if isinstance(o, torch.Tensor))


def test_memory_does_not_grow_over_50_steps() -> None:
    torch.manual_seed(0)
    netG, netD = G(), D()
    optimizerD = torch.optim.Adam(netD.parameters())
    optimizerG = torch.optim.Adam(netG.parameters())
    criterion = nn.BCELoss()
    counts = []
    refs: list[weakref.ref] = []
    with lens.watch() as w:
        for i in range(50):
            netD.zero_grad()
            fake = netG(torch.randn(4, 8, 1, 1))
            errD = criterion(netD(fake.detach()), torch.zeros(4))
            errD.backward()
            optimizerD.step()
            netG.zero_grad()
            errG = criterion(netD(fake), torch.ones(4))
            errG.backward()
            optimizerG.step()
            refs.append(weakref.ref(fake))
            del fake, errD, errG
            if i in (9, 49):
                counts.append(_live_tensors())
        # every step's tensors died with the step, while the lens was still watching
        assert all(r() is None for r in refs)
    assert counts[1] <= counts[0], counts
    assert len(w.calls) == 100 and len(w.steps) == 100


def _tensors_reachable_from(obj: object, limit: int = 200_000) -> list[torch.Tensor]:
    seen = {id(obj)}
    stack = [obj]
    found = []
    while stack and len(seen) < limit:
        o = stack.pop()
        for r in gc.get_referents(o):
            if id(r) in seen or isinstance(r, (type, type(gc))):
                continue
            seen.add(id(r))
            if isinstance(r, torch.Tensor):
                found.append(r)
                continue
            if isinstance(r, (torch.nn.Module, torch.optim.Optimizer)):
                found.append(r)  # type: ignore[arg-type]
                continue
            stack.append(r)
    return found


def test_watch_keeps_no_tensor_module_or_optimizer_alive() -> None:
    torch.manual_seed(0)
    net = nn.Linear(3, 1)
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    with lens.watch() as w:
        for _ in range(3):
            opt.zero_grad()
            net(torch.randn(2, 3)).sum().backward()
            opt.step()
    assert _tensors_reachable_from(w) == []
    assert _tensors_reachable_from(w.report) == []


def _global_state() -> tuple:
    from torch.nn.modules import module as m
    from torch.optim import optimizer as o

    return (
        torch.autograd.backward,
        torch.autograd.grad,
        torch.autograd.graph._engine_run_backward,
        torch.autograd._engine_run_backward,
        torch.optim.Optimizer.zero_grad,
        torch.nn.Module.zero_grad,
        warnings.showwarning,
        len(m._global_forward_hooks),
        len(m._global_forward_pre_hooks),
        len(o._global_optimizer_pre_hooks),
        len(o._global_optimizer_post_hooks),
    )


def test_hooks_come_off_on_exit() -> None:
    before = _global_state()
    net = nn.Linear(3, 1)
    with lens.watch():
        assert _global_state() != before
        net(torch.randn(2, 3)).sum().backward()
    assert _global_state() == before
    # no post-accumulate hook is left on the parameter
    assert not net.weight._post_accumulate_grad_hooks


def test_hooks_come_off_when_the_body_raises() -> None:
    before = _global_state()
    net = nn.Linear(3, 1)
    with pytest.raises(ZeroDivisionError, match="boom"):
        with lens.watch():
            net(torch.randn(2, 3)).sum().backward()
            raise ZeroDivisionError("boom")
    assert _global_state() == before


def test_user_autograd_error_propagates_unchanged_with_a_note() -> None:
    x = torch.randn(3, requires_grad=True)
    with pytest.raises(RuntimeError) as info:
        with lens.watch() as w:
            y = (x * x).sum()
            y.backward()
            y.backward()
    assert type(info.value) is RuntimeError
    assert str(info.value).startswith("Trying to backward through the graph a second time")
    notes = "\n".join(getattr(info.value, "__notes__", []))
    assert "error[second-backward]" in notes
    assert [f.rule for f in w.report.findings] == ["second-backward"]


@pytest.mark.parametrize("reentrant", [True, False])
def test_checkpointed_model_is_watched_without_findings(reentrant: bool) -> None:
    from torch.utils.checkpoint import checkpoint

    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 1))
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    with lens.watch() as w:
        for _ in range(3):
            opt.zero_grad()
            loss = checkpoint(net, torch.randn(5, 4, requires_grad=True), use_reentrant=reentrant).sum()
            loss.backward()
            opt.step()
    assert w.report.findings == ()
    assert len(w.calls) == 3  # the recomputation's inner backward belongs to the outer call
    assert w.internal_errors == []


def test_a_failure_inside_the_lens_never_reaches_the_users_code(monkeypatch: pytest.MonkeyPatch) -> None:
    import autograd_lens.recorder

    def broken(*args: object, **kwargs: object) -> None:
        raise ValueError("lens bug")

    monkeypatch.setattr(autograd_lens.recorder, "walk_graph", broken)
    bare = train(3, watched=False)
    with pytest.warns(RuntimeWarning, match="autograd_lens: internal error.*lens bug"):
        seen = train(3, watched=True)
    assert all(torch.equal(a, b) for a, b in zip(bare, seen))


def test_watches_that_end_out_of_order_leave_nothing_behind() -> None:
    import contextlib

    before = _global_state()
    net = nn.Linear(3, 1)
    a, b = lens.watch(), lens.watch()
    stack_a, stack_b = contextlib.ExitStack(), contextlib.ExitStack()
    stack_a.enter_context(a)
    stack_b.enter_context(b)
    net(torch.randn(2, 3)).sum().backward()
    stack_a.close()  # the outer one ends first
    net(torch.randn(2, 3)).sum().backward()  # b still watches, a passes through
    stack_b.close()
    assert _global_state() == before
    assert len(a.calls) == 1 and len(b.calls) == 2


def test_long_runs_fold_old_events_into_totals(monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    monkeypatch.setattr(sys.modules["autograd_lens.events"], "WINDOW", 40)
    net = nn.Linear(3, 1)
    opt = torch.optim.SGD(net.parameters(), lr=0.01)
    with lens.watch() as w:
        for _ in range(150):
            opt.zero_grad()
            net(torch.randn(2, 3)).sum().backward()
            opt.step()
    assert len(w.calls) <= 40 and len(w.steps) <= 41
    report = w.report
    [b] = report.backwards
    [s] = report.steps
    assert b.count == 150 and b.networks == {"net": "reached"}
    assert s.count == 150 and list(s.sources.values()) == [150]
    assert report.findings == ()


def test_reentrant_checkpoint_of_one_of_two_networks_is_not_stray() -> None:
    from torch.utils.checkpoint import checkpoint

    torch.manual_seed(0)
    G = nn.Sequential(nn.Linear(4, 8), nn.ReLU())
    D = nn.Linear(8, 1)
    oG = torch.optim.SGD(G.parameters(), lr=0.1)
    oD = torch.optim.SGD(D.parameters(), lr=0.1)
    with lens.watch() as w:
        for _ in range(3):
            h = checkpoint(G, torch.randn(5, 4, requires_grad=True), use_reentrant=True)
            loss = D(h).mean()
            oG.zero_grad()
            oD.zero_grad()
            loss.backward()
            oG.step()
            oD.step()
    report = w.report
    assert report.findings == ()
    assert report.backwards[0].networks == {"G": "reached", "D": "reached"}


def test_a_bug_repeated_every_iteration_is_one_counted_finding() -> None:
    torch.manual_seed(0)
    netG, netD = G(), D()
    optimizerG = torch.optim.Adam(netG.parameters())
    optimizerD = torch.optim.Adam(netD.parameters())
    criterion = nn.BCELoss()
    with lens.watch() as w:
        for _ in range(30):
            netD.zero_grad()
            fake = netG(torch.randn(4, 8, 1, 1))
            criterion(netD(fake), torch.zeros(4)).backward(retain_graph=True)
            optimizerD.step()
            criterion(netD(fake), torch.ones(4)).backward()
            optimizerG.step()
    assert len(w.findings) == len({f.key for f in w.findings}) <= 4
    [stray] = w.report.by_rule("stray-grad")
    assert stray.count == 30 and stray.optimizer == "optimizerG"


def test_networks_made_anew_at_the_same_site_are_judged_anew() -> None:
    import runpy

    ns = runpy.run_path(str(Path(__file__).parents[1] / "examples" / "actor_critic.py"), run_name="actor_critic")
    with lens.watch() as w:
        for _ in range(3):  # three trials, fresh networks and optimizers each, same lines
            ns["main"]()
    assert [(f.rule, f.count) for f in w.report.findings] == [("stray-grad", 9)]


def test_autograd_grad_does_not_hide_dead_parameters() -> None:
    torch.manual_seed(0)

    class Model(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.body = nn.Linear(3, 3)
            self.unused = nn.Linear(3, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.body(x)

    model = Model()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with lens.watch() as w:
        for _ in range(2):
            opt.zero_grad()
            x = torch.randn(2, 3, requires_grad=True)
            torch.autograd.grad(model.unused(x).sum(), [x])  # a saliency map through `unused`
            model(x).sum().backward()
            opt.step()
    [dead] = w.report.by_rule("dead-param")
    assert dead.params == ("model.unused.bias", "model.unused.weight")
