"""Adversarial checks of steady cycles: loops that change after they went steady, at every position
of their period, must be analysed exactly as the full path analyses them (see test_steady.py)."""

from __future__ import annotations

import gc
import threading
import warnings
import weakref
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import autograd_lens as lens

from helpers import one_thread  # noqa: F401  (a fixture)
from test_steady import _run, _same

pytestmark = pytest.mark.usefixtures("one_thread")


class Stop(Exception):
    pass


def _pairs(fn: Any) -> tuple[int, list[Any], list[Any]]:
    """Run ``fn(w, seen)`` with and without steady cycles (``_same``); what each run put in ``seen``."""
    seen: list[Any] = []
    marks: list[int] = []

    def loop(w: lens.Watch) -> None:
        marks.append(len(seen))
        fn(w, seen)

    periods = _same(loop)
    full, fast = seen[marks[0]:marks[1]], seen[marks[1]:]
    return periods, full, fast


# ----------------------------------------------------------------------------------------------
# a classifier: the period is [backward, step, zero_grad]; it goes steady at iteration 6
# ----------------------------------------------------------------------------------------------


def classifier(w: lens.Watch, iters: int = 30, at: int = -1, change: str = "", seen: list | None = None) -> None:
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 1))
    opt = torch.optim.SGD(model.parameters(), lr=1e-2)
    extra = nn.Linear(8, 1)
    x, y = torch.randn(16, 4), torch.randn(16, 1)
    for i in range(iters):
        now = change if i == at else ""
        if now == "exit_before_zero":
            return
        if now == "module_zero":
            model.zero_grad()
        elif now == "zero_keep":
            opt.zero_grad(set_to_none=False)
        elif now != "skip_zero":
            opt.zero_grad()
        if now == "report_after_zero":
            seen is not None and seen.append(w.report.to_dict())
        if now == "exit_after_zero":
            return
        if now == "freeze":
            model[0].requires_grad_(False)
        xb = x[: 8 + (i % 3) * 4]  # varying batch sizes
        h = model[1](model[0](xb))
        out = model[2](h)
        loss = F.mse_loss(out, y[: len(xb)])
        if now == "hook_raise":
            def boom(g: torch.Tensor) -> torch.Tensor:
                raise Stop("raised in a backward hook")
            h.register_hook(boom)
        if now == "report_in_hook":
            h.register_hook(lambda g: seen.append(w.report.to_dict()) if seen is not None else None)  # type: ignore[func-returns-value]
        if now == "thread_in_hook":
            other = nn.Linear(3, 1)

            def other_backward(g: torch.Tensor) -> None:
                t = threading.Thread(target=lambda: other(torch.randn(2, 3)).sum().backward())
                t.start()
                t.join()
            h.register_hook(other_backward)
        if now == "grad_call":
            torch.autograd.grad(loss, out, retain_graph=True)
        try:
            loss.backward(retain_graph=(now == "retain"))
        except Stop:
            continue
        if now == "report_after_backward":
            seen is not None and seen.append(w.report.to_dict())
        if now == "exit_after_backward":
            return
        if now == "raise_after_backward":
            raise ValueError("the loop's own error")
        if now == "add_group":
            opt.add_param_group({"params": list(extra.parameters())})
        if now == "closure":
            opt.step(lambda: None)
        elif now != "skip_step":
            opt.step()
        if now == "report_after_step":
            seen is not None and seen.append(w.report.to_dict())
        if now == "exit_after_step":
            return


CLASSIFIER_CHANGES = [
    "exit_before_zero", "exit_after_zero", "exit_after_backward", "exit_after_step", "module_zero", "zero_keep",
    "skip_zero", "report_after_zero", "report_after_backward", "report_after_step", "freeze", "hook_raise",
    "grad_call", "retain", "raise_after_backward", "add_group", "closure", "skip_step",
]


def test_the_classifier_goes_steady() -> None:
    assert _same(lambda w: classifier(w)) > 0


@pytest.mark.parametrize("change", CLASSIFIER_CHANGES)
@pytest.mark.parametrize("at", [6, 7, 20])
def test_a_classifier_that_changes(change: str, at: int) -> None:
    _same(lambda w: classifier(w, at=at, change=change))


@pytest.mark.parametrize("change", ["report_after_zero", "report_after_backward", "report_after_step"])
def test_reports_read_mid_loop_are_the_same(change: str) -> None:
    periods, full, fast = _pairs(lambda w, seen: classifier(w, at=20, change=change, seen=seen))
    assert full == fast and len(full) == 1


def test_a_report_read_inside_a_backward_hook_is_the_same() -> None:
    periods, full, fast = _pairs(lambda w, seen: classifier(w, at=20, change="report_in_hook", seen=seen))
    assert len(full) == 1 and full == fast


def test_a_backward_in_another_thread_started_from_a_hook() -> None:
    _same(lambda w: classifier(w, at=20, change="thread_in_hook"))


def test_frozen_then_unfrozen() -> None:
    def loop(w: lens.Watch) -> None:
        model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 1))
        opt = torch.optim.SGD(model.parameters(), lr=1e-2)
        x, y = torch.randn(16, 4), torch.randn(16, 1)
        for i in range(40):
            opt.zero_grad()
            model[0].requires_grad_(not 15 <= i < 28)
            F.mse_loss(model(x), y).backward()
            opt.step()
    assert _same(loop) > 0


# ----------------------------------------------------------------------------------------------
# gradient accumulation: k backward calls per step; a change at every position of the period
# ----------------------------------------------------------------------------------------------


def accumulate(w: lens.Watch, iters: int = 24, k: int = 3, at: int = -1, pos: int = -1, change: str = "") -> None:
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 1))
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    x, y = torch.randn(16, 4), torch.randn(16, 1)
    for i in range(iters):
        for j in range(k):
            now = change if (i, j) == (at, pos) else ""
            if now == "report_before":
                w.report
            if now == "exit_before":
                return
            if now == "eval":
                model.eval()
            if now == "freeze":
                model[2].requires_grad_(False)
            loss = F.mse_loss(model(x[j::k]), y[j::k]) / k
            if now == "skip":
                continue
            loss.backward(retain_graph=now == "retain")
            model.train()
            model[2].requires_grad_(True)
            if now == "twice":
                loss.backward()
            if now == "report_after":
                w.report
            if now == "exit_after":
                return
            if now == "grad_none":
                for p in model.parameters():
                    p.grad = None
        opt.step()
        if i == at and change == "zero_module":
            model.zero_grad()
        elif i == at and change == "zero_keep":
            opt.zero_grad(set_to_none=False)
        elif not (i == at and change == "no_zero"):
            opt.zero_grad()
        if i == at and change == "report_end":
            w.report
        if i == at and change == "exit_end":
            return


def test_accumulation_goes_steady() -> None:
    assert _same(lambda w: accumulate(w)) > 0
    assert _same(lambda w: accumulate(w, k=2, iters=30)) > 0


ACC_CHANGES = ["report_before", "exit_before", "eval", "freeze", "skip", "retain", "twice", "report_after",
               "exit_after"]


@pytest.mark.parametrize("change", ACC_CHANGES)
@pytest.mark.parametrize("pos", [0, 1, 2])
def test_accumulation_that_changes_inside_its_period(change: str, pos: int) -> None:
    _same(lambda w: accumulate(w, at=18, pos=pos, change=change))


@pytest.mark.parametrize("pos", [0, 1])
def test_accumulation_with_grad_set_to_none_by_hand_between_its_calls(pos: int) -> None:
    _same(lambda w: accumulate(w, at=18, pos=pos, change="grad_none"))


def test_grad_set_to_none_by_hand_right_before_the_step() -> None:
    # (each step's template checks that a parameter of each of its groups still holds gradient)
    _same(lambda w: accumulate(w, at=18, pos=2, change="grad_none"))


@pytest.mark.parametrize("change", ["zero_module", "zero_keep", "no_zero", "report_end", "exit_end"])
@pytest.mark.parametrize("at", [4, 5, 6, 18])
def test_accumulation_that_changes_its_zero_grad(change: str, at: int) -> None:
    _same(lambda w: accumulate(w, at=at, change=change))


@pytest.mark.parametrize("at", range(2, 10))
def test_accumulation_changes_around_going_steady(at: int) -> None:
    for change in ("retain", "eval", "skip"):
        for pos in (0, 2):
            _same(lambda w: accumulate(w, at=at, pos=pos, change=change))


# ----------------------------------------------------------------------------------------------
# WGAN with n_critic critic steps per generator step: a period of n_critic + 1 cycles
# ----------------------------------------------------------------------------------------------


def wgan(w: lens.Watch, iters: int = 12, n_critic: int = 5, at: tuple[int, int] = (-1, -1), change: str = "") -> None:
    netG = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 6))
    netD = nn.Sequential(nn.Linear(6, 8), nn.LeakyReLU(0.2), nn.Linear(8, 1))
    optD = torch.optim.RMSprop(netD.parameters(), lr=5e-5)
    optG = torch.optim.RMSprop(netG.parameters(), lr=5e-5)
    real = torch.randn(8, 6)
    for i in range(iters):
        for c in range(n_critic + 1):
            now = change if (i, c) == at else ""
            if c < n_critic:
                if now != "skip_zero":
                    optD.zero_grad()
                fake = netG(torch.randn(8, 4))
                if now != "no_detach":
                    fake = fake.detach()
                errD = netD(fake).mean() - netD(real).mean()
                if now == "report":
                    w.report
                errD.backward()
                if now == "exit":
                    return
                if now != "skip_step":
                    optD.step()
                for p in netD.parameters():
                    p.data.clamp_(-0.01, 0.01)
            else:
                if now != "skip_zero":
                    optG.zero_grad()
                errG = -netD(netG(torch.randn(8, 4))).mean()
                if now == "report":
                    w.report
                errG.backward()
                if now == "exit":
                    return
                if now != "skip_step":
                    optG.step()


def test_wgan_goes_steady() -> None:
    assert _same(lambda w: wgan(w)) > 0


@pytest.mark.parametrize("change", ["skip_zero", "no_detach", "report", "exit", "skip_step"])
@pytest.mark.parametrize("c", [0, 2, 4, 5])
def test_wgan_that_changes_inside_its_period(change: str, c: int) -> None:
    _same(lambda w: wgan(w, at=(7, c), change=change))


# ----------------------------------------------------------------------------------------------
# two backward calls per step (two losses, two lines), and one graph gone through twice
# ----------------------------------------------------------------------------------------------


def two_losses(w: lens.Watch, iters: int = 30, at: int = -1, change: str = "") -> None:
    enc = nn.Linear(4, 8)
    head_a, head_b = nn.Linear(8, 1), nn.Linear(8, 1)
    opt = torch.optim.SGD([*enc.parameters(), *head_a.parameters(), *head_b.parameters()], lr=1e-2)
    x, y = torch.randn(16, 4), torch.randn(16, 1)
    for i in range(iters):
        now = change if i == at else ""
        opt.zero_grad()
        h = torch.relu(enc(x))
        la = F.mse_loss(head_a(h), y)
        lb = F.mse_loss(head_b(h if now != "detach_b" else h.detach()), y)
        la.backward(retain_graph=True)
        if now == "report":
            w.report
        if now == "swap":
            la, lb = lb, la
        lb.backward()
        if now == "again":
            lb.backward()
        opt.step()


def test_two_losses_go_steady() -> None:
    assert _same(lambda w: two_losses(w)) > 0


@pytest.mark.parametrize("change", ["detach_b", "report", "again"])
@pytest.mark.parametrize("at", [5, 6, 7, 20])
def test_two_losses_that_change(change: str, at: int) -> None:
    _same(lambda w: two_losses(w, at=at, change=change))


def retain_loop(w: lens.Watch, iters: int = 30, at: int = -1, change: str = "") -> None:
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 1))
    opt = torch.optim.SGD(model.parameters(), lr=1e-2)
    x, y = torch.randn(16, 4), torch.randn(16, 1)
    for i in range(iters):
        now = change if i == at else ""
        opt.zero_grad()
        loss = F.mse_loss(model(x), y)
        loss.backward(retain_graph=True)
        if now == "again":
            loss.backward()
        if now == "again_retain":
            loss.backward(retain_graph=True)
        opt.step()


def test_retain_graph_loop_goes_steady() -> None:
    assert _same(lambda w: retain_loop(w)) > 0


@pytest.mark.parametrize("change", ["again", "again_retain"])
def test_retain_graph_loop_that_goes_through_its_graph_again(change: str) -> None:
    _same(lambda w: retain_loop(w, at=20, change=change))


# ----------------------------------------------------------------------------------------------
# an error raised by a backward call that is not the period's next event
# ----------------------------------------------------------------------------------------------


def test_a_failing_backward_that_is_not_the_next_event_runs_once() -> None:
    runs: list[int] = []

    def loop(w: lens.Watch) -> None:
        runs.append(0)
        model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 1))
        aux = nn.Linear(4, 1)
        opt = torch.optim.SGD(model.parameters(), lr=1e-2)
        x, y = torch.randn(16, 4), torch.randn(16, 1)
        for i in range(30):
            opt.zero_grad()
            F.mse_loss(model(x), y).backward()
            if i == 20:
                h = aux(x)

                def boom(g: torch.Tensor) -> None:
                    runs[-1] += 1
                    raise Stop("raised in a backward hook")
                h.register_hook(boom)
                try:
                    h.sum().backward()  # a new site: not the period's next event (the step is)
                except Stop:
                    pass
            opt.step()

    _run(loop, steady=False)
    _run(loop, steady=True)
    assert runs == [1, 1]  # the hook ran once in each run (with steady cycles: twice, the backward ran twice)
    _same(loop)


# ----------------------------------------------------------------------------------------------
# closures, param groups, zero_grad of modules, loops in functions
# ----------------------------------------------------------------------------------------------


def test_lbfgs_closure_loop() -> None:
    def loop(w: lens.Watch) -> None:
        model = nn.Linear(4, 1)
        opt = torch.optim.LBFGS(model.parameters(), max_iter=2)
        x, y = torch.randn(16, 4), torch.randn(16, 1)

        def closure() -> torch.Tensor:
            opt.zero_grad()
            loss = F.mse_loss(model(x), y)
            loss.backward()
            return loss
        for i in range(20):
            opt.step(closure)
    _same(loop)


def test_sgd_loop_with_an_lbfgs_step_in_the_middle() -> None:
    def loop(w: lens.Watch) -> None:
        model = nn.Linear(4, 1)
        opt = torch.optim.SGD(model.parameters(), lr=1e-2)
        x, y = torch.randn(16, 4), torch.randn(16, 1)

        def closure() -> torch.Tensor:
            opt.zero_grad()
            loss = F.mse_loss(model(x), y)
            loss.backward()
            return loss
        for i in range(30):
            if i in (15, 16, 22):
                opt.step(closure)
                continue
            opt.zero_grad()
            F.mse_loss(model(x), y).backward()
            opt.step()
    assert _same(loop) > 0


def groups_loop(w: lens.Watch, iters: int = 30, at: int = -1, change: str = "") -> None:
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 1))
    extra = nn.Linear(4, 1)
    opt = torch.optim.SGD([{"params": model[0].parameters()}, {"params": model[2].parameters(), "lr": 1e-3}], lr=1e-2)
    x, y = torch.randn(16, 4), torch.randn(16, 1)
    used_extra = False
    for i in range(iters):
        now = change if i == at else ""
        if now == "module_zero":
            model.zero_grad()
        elif now == "module_part_zero":
            model[2].zero_grad()
        else:
            opt.zero_grad()
        if now == "add_group":
            opt.add_param_group({"params": list(extra.parameters())})
            used_extra = True
        if now == "swap_param":
            opt.param_groups[1]["params"][1] = extra.bias  # same count, another parameter
        if now == "requires_grad_off":
            extra.requires_grad_(False)
        loss = F.mse_loss(model(x), y)
        if used_extra:
            loss = loss + extra(x).pow(2).mean()
        loss.backward()
        opt.step()


def test_param_groups_go_steady() -> None:
    assert _same(lambda w: groups_loop(w)) > 0


@pytest.mark.parametrize("change", ["module_zero", "module_part_zero", "add_group", "swap_param"])
def test_param_groups_that_change(change: str) -> None:
    _same(lambda w: groups_loop(w, at=18, change=change))


def _step_fn(model: nn.Module, opt: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor) -> None:
    opt.zero_grad()
    F.mse_loss(model(x), y).backward()
    opt.step()


def test_a_step_function_called_from_two_lines() -> None:
    def loop(w: lens.Watch) -> None:
        model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 1))
        opt = torch.optim.SGD(model.parameters(), lr=1e-2)
        x, y = torch.randn(16, 4), torch.randn(16, 1)
        for i in range(40):
            if i % 7 == 3 or 20 <= i < 24:
                _step_fn(model, opt, x, y)
            else:
                _step_fn(model, opt, x, y)
    assert _same(loop) > 0


def test_the_same_loop_body_in_a_lambda_and_a_function() -> None:
    def loop(w: lens.Watch) -> None:
        model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 1))
        opt = torch.optim.SGD(model.parameters(), lr=1e-2)
        x, y = torch.randn(16, 4), torch.randn(16, 1)
        steps = [lambda: F.mse_loss(model(x), y).backward(), lambda: F.mse_loss(model(x), y).backward()]  # one line
        for i in range(40):
            opt.zero_grad()
            steps[i >= 20]()
            opt.step()
    _same(loop)


def test_module_and_optimizer_zero_grad_alternate() -> None:
    def loop(w: lens.Watch) -> None:
        model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 1))
        opt = torch.optim.SGD(model.parameters(), lr=1e-2)
        x, y = torch.randn(16, 4), torch.randn(16, 1)
        for i in range(40):
            (model if i % 2 else opt).zero_grad(set_to_none=i % 4 < 2)
            F.mse_loss(model(x), y).backward()
            opt.step()
    assert _same(loop) > 0


# ----------------------------------------------------------------------------------------------
# the module hooks stay on (a backward site called once): steps after a forward, then a new site
# ----------------------------------------------------------------------------------------------


def stale_loop(w: lens.Watch, iters: int = 30, at: int = 20) -> None:
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 1))
    opt = torch.optim.SGD(model.parameters(), lr=1e-2)
    x, y = torch.randn(16, 4), torch.randn(16, 1)
    F.mse_loss(model(x), y).backward()  # a sanity check, once: its site never has all its detail
    for i in range(iters):
        opt.zero_grad()
        loss = F.mse_loss(model(x), y)
        if i == at:
            later = F.mse_loss(model(x * 2), y)  # its graph saves the weights the step changes
        loss.backward()
        opt.step()
        if i == at:
            later.backward()  # modified by an inplace operation (the step)


def test_a_loop_after_a_backward_site_called_once_goes_steady() -> None:
    # a site with one call never finishes its detail; once stale it no longer keeps detail on
    assert _same(lambda w: stale_loop(w, at=-1)) > 0


def test_a_step_that_made_saved_weights_stale_is_explained_the_same() -> None:
    _same(lambda w: stale_loop(w))


# ----------------------------------------------------------------------------------------------
# a second watch, and threads
# ----------------------------------------------------------------------------------------------


def test_a_second_watch_inside_a_steady_loop() -> None:
    inner: list[dict] = []

    def loop(w: lens.Watch) -> None:
        model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 1))
        opt = torch.optim.SGD(model.parameters(), lr=1e-2)
        x, y = torch.randn(16, 4), torch.randn(16, 1)
        for i in range(40):
            if i == 15:
                w2 = lens.watch()
                w2.__enter__()
                if w.recorder.steady.off:
                    w2.recorder.steady.off = True
            opt.zero_grad()
            F.mse_loss(model(x), y).backward()
            opt.step()
            if i == 32:
                w2.__exit__(None, None, None)
                assert w2.internal_errors == []
                inner.append(w2.report.to_dict())
    _same(loop)
    assert inner[0] == inner[1]


def test_the_loop_steady_in_the_inner_watch_only() -> None:
    inner: list[Any] = []

    def loop(w: lens.Watch) -> None:
        model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 1))
        opt = torch.optim.SGD(model.parameters(), lr=1e-2)
        x, y = torch.randn(16, 4), torch.randn(16, 1)
        w.recorder.steady.off = True  # the outer watch: full path
        with lens.watch() as w2:
            if len(inner) % 2 == 0:
                w2.recorder.steady.off = True
            for i in range(30):
                opt.zero_grad()
                F.mse_loss(model(x), y).backward()
                if i == 20:
                    opt.zero_grad()  # skipped step: the outer watch sees its events too
                opt.step()
        inner.append((w2.internal_errors, w2.report.to_dict(), w2.recorder.steady.periods))

    _same(loop)
    (e1, r1, p1), (e2, r2, p2) = inner[:2]
    assert e1 == e2 == [] and r1 == r2
    assert p1 == 0 and p2 > 0


def test_threads_each_with_their_own_loop() -> None:
    def loop(w: lens.Watch) -> None:
        keep: list[nn.Module] = []

        def train(seed: int) -> None:
            torch.manual_seed(seed)
            model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 1))
            opt = torch.optim.SGD(model.parameters(), lr=1e-2)
            keep.append(model)  # no parameter id reused by the other thread's model
            x, y = torch.randn(16, 4), torch.randn(16, 1)
            for i in range(30):
                opt.zero_grad()
                F.mse_loss(model(x), y).backward()
                opt.step()

        train(0)  # the main thread first, alone: it goes steady
        t = threading.Thread(target=train, args=(1,))
        t.start()
        t.join()

    _same(loop)


def test_two_threads_interleaved_in_lockstep() -> None:
    def loop(w: lens.Watch) -> None:
        turn = [0]
        cond = threading.Condition()

        def train(me: int) -> None:
            torch.manual_seed(me)
            model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 1))
            opt = torch.optim.SGD(model.parameters(), lr=1e-2)
            x, y = torch.randn(16, 4), torch.randn(16, 1)
            for i in range(30):
                with cond:
                    cond.wait_for(lambda: turn[0] % 2 == me)
                opt.zero_grad()
                F.mse_loss(model(x), y).backward()
                opt.step()
                with cond:
                    turn[0] += 1
                    cond.notify_all()

        ts = [threading.Thread(target=train, args=(k,)) for k in (0, 1)]
        for t in ts:
            t.start()
        for t in ts:
            t.join()

    _same(loop)


def stale_loop2(w: lens.Watch, iters: int = 30, at: int = 20, once: bool = True) -> None:
    """As ``stale_loop``, the stale backward made right after a zero_grad (where a call is the next
    event of the period: it fails once, in the full path)."""
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 1))
    opt = torch.optim.SGD(model.parameters(), lr=1e-2)
    x, y = torch.randn(16, 4), torch.randn(16, 1)
    if once:
        F.mse_loss(model(x), y).backward()  # a sanity check, once: its site never has all its detail
    later = None
    for i in range(iters):
        opt.zero_grad()
        if later is not None:
            try:
                later.backward()  # modified by an inplace operation (the step)
            except RuntimeError:
                pass
            later = None
        loss = F.mse_loss(model(x), y)
        if i == at:
            later = F.mse_loss(model(x * 2), y)  # its graph saves the weights the step changes
        loss.backward()
        opt.step()


@pytest.mark.parametrize("once", [True, False])
def test_a_stale_backward_right_after_zero_grad_is_explained_the_same(once: bool) -> None:
    _same(lambda w: stale_loop2(w, once=once))


# ----------------------------------------------------------------------------------------------
# loops longer than the log's window (512 calls): periods counted in the totals only
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("change", ["", "skip_zero", "report_after_backward", "exit_after_backward", "retain"])
def test_a_classifier_run_past_the_window(change: str) -> None:
    _same(lambda w: classifier(w, iters=560, at=540, change=change))


@pytest.mark.parametrize("pos", [0, 1, 2])
def test_accumulation_run_past_the_window(pos: int) -> None:
    _same(lambda w: accumulate(w, iters=200, at=190, pos=pos, change="report_after"))


def test_wgan_run_past_the_window() -> None:
    _same(lambda w: wgan(w, iters=100, at=(95, 3), change="skip_zero"))


# ----------------------------------------------------------------------------------------------
# graphs kept alive after the loop went steady, warnings, clipping, two optimizers, zero_grad kept
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("how", ["sum", "list", "retain"])
def test_graphs_kept_alive_from_the_middle_of_a_steady_loop(how: str) -> None:
    def loop(w: lens.Watch) -> None:
        model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 1))
        opt = torch.optim.SGD(model.parameters(), lr=1e-2)
        x, y = torch.randn(16, 4), torch.randn(16, 1)
        total: Any = 0.0
        history = []
        for i in range(40):
            opt.zero_grad()
            loss = F.mse_loss(model(x), y)
            loss.backward(retain_graph=how == "retain" and i >= 20)
            if i >= 20 and how == "sum":
                total = total + loss
            if i >= 20 and how in ("list", "retain"):
                history.append(loss)
            opt.step()
    _same(loop)


def test_a_warning_in_the_middle_of_a_steady_loop() -> None:
    def loop(w: lens.Watch) -> None:
        model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 1))
        opt = torch.optim.SGD(model.parameters(), lr=1e-2)
        x, y = torch.randn(16, 4), torch.randn(16, 1)
        for i in range(40):
            opt.zero_grad()
            h = model[0](x)
            loss = F.mse_loss(model[2](model[1](h)), y)
            loss.backward()
            if i == 20:
                with warnings.catch_warnings():
                    warnings.simplefilter("always")  # (shown in both runs)
                    h.grad  # a non-leaf's .grad: PyTorch warns
            opt.step()
    _same(loop)


def test_clipping_and_two_optimizers_on_one_loss() -> None:
    def loop(w: lens.Watch) -> None:
        enc, head = nn.Linear(4, 8), nn.Linear(8, 1)
        opt_a = torch.optim.SGD(enc.parameters(), lr=1e-2)
        opt_b = torch.optim.Adam(head.parameters(), lr=1e-3)
        x, y = torch.randn(16, 4), torch.randn(16, 1)
        for i in range(40):
            loss = F.mse_loss(head(torch.relu(enc(x))), y)
            loss.backward()
            torch.nn.utils.clip_grad_norm_([*enc.parameters(), *head.parameters()], 0.5)
            if i == 20:
                opt_b.step()
                opt_a.step()
                opt_b.zero_grad()
                opt_a.zero_grad()
            elif i == 25:
                opt_a.step()
                opt_a.zero_grad()  # head's gradient is kept: the next step applies it again
            else:
                opt_a.step()
                opt_b.step()
                opt_a.zero_grad()
                opt_b.zero_grad()
    assert _same(loop) > 0


@pytest.mark.parametrize("change", ["", "skip", "set_to_none"])
def test_zero_grad_that_keeps_the_tensors(change: str) -> None:
    def loop(w: lens.Watch) -> None:
        model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 1))
        opt = torch.optim.Adam(model.parameters(), lr=1e-3)
        x, y = torch.randn(16, 4), torch.randn(16, 1)
        for i in range(40):
            if not (i == 20 and change == "skip"):
                opt.zero_grad(set_to_none=i == 20 and change == "set_to_none")
            F.mse_loss(model(x), y).backward()
            opt.step()
    assert _same(loop) > 0


def test_a_graph_gone_through_twice_every_iteration() -> None:
    def loop(w: lens.Watch) -> None:
        model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 1))
        opt = torch.optim.SGD(model.parameters(), lr=1e-2)
        x, y = torch.randn(16, 4), torch.randn(16, 1)
        for i in range(40):
            opt.zero_grad()
            loss = F.mse_loss(model(x), y)
            loss.backward(retain_graph=True)
            if i != 20:
                loss.backward()
            opt.step()
    _same(loop)


def test_an_iteration_under_a_dispatch_mode() -> None:
    from torch.utils.flop_counter import FlopCounterMode

    sizes: list[int] = []

    def loop(w: lens.Watch) -> None:
        model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 1))
        opt = torch.optim.SGD(model.parameters(), lr=1e-2)
        x, y = torch.randn(16, 4), torch.randn(16, 1)
        for i in range(40):
            if i in (20, 21, 22):
                with FlopCounterMode(display=False):
                    opt.zero_grad()
                    F.mse_loss(model(x), y).backward()
                    opt.step()
                sizes.append(len(w.recorder.steady.acc))
                continue
            opt.zero_grad()
            F.mse_loss(model(x), y).backward()
            opt.step()
    _same(loop)
    assert max(sizes) == 0, sizes  # parameters appended while nothing was watched


def test_gradscaler_loop() -> None:
    def loop(w: lens.Watch) -> None:
        model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 1))
        opt = torch.optim.SGD(model.parameters(), lr=1e-2)
        scaler = torch.amp.GradScaler("cpu")
        x, y = torch.randn(16, 4), torch.randn(16, 1)
        for i in range(40):
            opt.zero_grad()
            loss = F.mse_loss(model(x), y)
            if i == 20:
                loss = loss * float("inf")  # the scaler skips this step
            scaler.scale(loss).backward()
            scaler.unscale_(opt)
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            scaler.step(opt)
            scaler.update()
    _same(loop)


# ----------------------------------------------------------------------------------------------
# nothing kept alive
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("steady", [False, True])
def test_a_steady_loop_keeps_no_model_alive(steady: bool) -> None:
    torch.manual_seed(0)
    with lens.watch() as w:
        w.recorder.steady.off = not steady
        model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 1))
        opt = torch.optim.SGD(model.parameters(), lr=1e-2)
        x, y = torch.randn(16, 4), torch.randn(16, 1)
        for i in range(30):
            opt.zero_grad()
            loss = F.mse_loss(model(x), y)
            loss.backward()
            opt.step()
        assert w.recorder.steady.on == steady
        refs = [weakref.ref(model), weakref.ref(opt), weakref.ref(loss), *map(weakref.ref, model.parameters())]
        del model, opt, loss, i
        gc.collect()
        alive_inside = [r for r in refs if r() is not None]
    gc.collect()
    assert [r for r in refs if r() is not None] == []
    assert alive_inside == []


# ----------------------------------------------------------------------------------------------
# a GAN (a period of two cycles): a report read or the watch left at every position of its period,
# and changes around the iteration where it goes steady
# ----------------------------------------------------------------------------------------------

GAN_POSITIONS = ["before_zero_d", "after_zero_d", "after_backward_d", "after_step_d", "after_zero_g",
                 "after_backward_g", "after_step_g"]


def gan_at(w: lens.Watch, iters: int = 24, at: int = -1, where: str = "", what: str = "report") -> None:
    netG = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 6))
    netD = nn.Sequential(nn.Linear(6, 8), nn.LeakyReLU(0.2), nn.Linear(8, 1))
    optD = torch.optim.Adam(netD.parameters(), lr=1e-3)
    optG = torch.optim.Adam(netG.parameters(), lr=1e-3)
    real = torch.randn(8, 6)
    ones, zeros = torch.ones(8, 1), torch.zeros(8, 1)

    def here(name: str, i: int) -> bool:
        if i != at or where != name:
            return False
        if what == "report":
            w.report
            return False
        return True  # leave the loop (and the watch) here

    for i in range(iters):
        if here("before_zero_d", i):
            return
        netD.zero_grad()
        if here("after_zero_d", i):
            return
        fake = netG(torch.randn(8, 4))
        errD = F.binary_cross_entropy_with_logits(netD(real), ones) + F.binary_cross_entropy_with_logits(netD(fake.detach()), zeros)
        errD.backward()
        if here("after_backward_d", i):
            return
        optD.step()
        if here("after_step_d", i):
            return
        netG.zero_grad()
        if here("after_zero_g", i):
            return
        netD.eval()
        errG = F.binary_cross_entropy_with_logits(netD(fake), ones)
        errG.backward()
        netD.train()
        if here("after_backward_g", i):
            return
        optG.step()
        if here("after_step_g", i):
            return


def test_the_positional_gan_goes_steady() -> None:
    assert _same(lambda w: gan_at(w)) > 0


@pytest.mark.parametrize("what", ["report", "exit"])
@pytest.mark.parametrize("where", GAN_POSITIONS)
@pytest.mark.parametrize("at", [5, 6, 7, 8, 17])
def test_a_gan_read_or_left_at_every_position(where: str, at: int, what: str) -> None:
    _same(lambda w: gan_at(w, at=at, where=where, what=what))


@pytest.mark.parametrize("change", ["skip_zero_d", "eval_d", "report", "second_backward", "skip_step_g", "no_detach",
                                    "grad_none_by_hand", "clip", "raise"])
def test_a_gan_that_changes_around_going_steady(change: str) -> None:
    from test_steady import gan

    for at in range(3, 12):
        _same(lambda w: gan(w, iters=16, at=at, change=change))


@pytest.mark.parametrize("change", ["skip_zero", "no_detach", "report", "exit", "skip_step"])
def test_wgan_that_changes_around_going_steady(change: str) -> None:
    for i in (1, 2, 3):
        for c in (0, 5):
            _same(lambda w: wgan(w, iters=6, at=(i, c), change=change))


def test_keyboard_interrupt_in_a_backward_hook() -> None:
    def loop(w: lens.Watch) -> None:
        model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 1))
        opt = torch.optim.SGD(model.parameters(), lr=1e-2)
        x, y = torch.randn(16, 4), torch.randn(16, 1)
        for i in range(30):
            opt.zero_grad()
            h = model[0](x)
            if i == 20:
                def stop(g: torch.Tensor) -> None:
                    raise KeyboardInterrupt
                h.register_hook(stop)
            try:
                F.mse_loss(model[2](model[1](h)), y).backward()
            except KeyboardInterrupt:
                raise ValueError("interrupted") from None
            opt.step()
    _same(loop)


@pytest.mark.parametrize("once", [True, False])
def test_an_extra_forward_in_a_steady_loop(once: bool) -> None:
    """A forward without a backward (a metric computed with grad on) in the middle of the loop."""
    def loop(w: lens.Watch) -> None:
        model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 1))
        opt = torch.optim.SGD(model.parameters(), lr=1e-2)
        x, y = torch.randn(16, 4), torch.randn(16, 1)
        if once:
            F.mse_loss(model(x), y).backward()  # a sanity check, once: the module hooks stay on
        for i in range(30):
            opt.zero_grad()
            F.mse_loss(model(x), y).backward()
            opt.step()
            if i == 20:
                model(x).mean().item()  # a metric, with grad on
    assert _same(loop) > 0


@pytest.mark.parametrize("reentrant", [True, False])
def test_checkpointed_forward(reentrant: bool) -> None:
    from torch.utils.checkpoint import checkpoint

    def loop(w: lens.Watch) -> None:
        model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 1))
        opt = torch.optim.SGD(model.parameters(), lr=1e-2)
        x, y = torch.randn(16, 4, requires_grad=True), torch.randn(16, 1)
        for i in range(30):
            opt.zero_grad()
            if i == 20:
                model[2].requires_grad_(False)
            h = checkpoint(model[0], x, use_reentrant=reentrant)
            F.mse_loss(model[2](torch.relu(h)), y).backward()
            model[2].requires_grad_(True)
            opt.step()
    _same(loop)


def test_a_report_read_in_an_optimizer_hook() -> None:
    periods, full, fast = _pairs(lambda w, seen: _hooked_report(w, seen))
    assert full == fast and len(full) == 2


def _hooked_report(w: lens.Watch, seen: list) -> None:
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 1))
    opt = torch.optim.SGD(model.parameters(), lr=1e-2)
    x, y = torch.randn(16, 4), torch.randn(16, 1)
    for i in range(30):
        opt.zero_grad()
        F.mse_loss(model(x), y).backward()
        if i == 20:
            h1 = opt.register_step_pre_hook(lambda *a: seen.append(w.report.to_dict()))
            h2 = opt.register_step_post_hook(lambda *a: seen.append(w.report.to_dict()))
        opt.step()
        if i == 20:
            h1.remove()
            h2.remove()


@pytest.mark.parametrize("at", [-1, 20, 21])
@pytest.mark.parametrize("pattern", ["freeze", "eval", "module_zero"])
def test_a_loop_that_alternates_every_other_iteration(pattern: str, at: int) -> None:
    def loop(w: lens.Watch) -> None:
        model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 1))
        opt = torch.optim.SGD(model.parameters(), lr=1e-2)
        x, y = torch.randn(16, 4), torch.randn(16, 1)
        for i in range(36):
            odd = (i % 2 == 1) != (i == at)  # the change: the other phase's pattern once
            if pattern == "module_zero" and odd:
                model.zero_grad()
            else:
                opt.zero_grad()
            model[0].requires_grad_(not (pattern == "freeze" and odd))
            model.train(not (pattern == "eval" and odd))
            F.mse_loss(model(x), y).backward()
            opt.step()
    periods = _same(loop)
    if at == -1 and pattern != "eval":  # (a backward in eval mode every other iteration is a finding)
        assert periods > 0


@pytest.mark.parametrize("retain", [False, True])
def test_a_failing_backward_that_is_not_the_next_event_accumulates_once(retain: bool) -> None:
    """The backward that failed ran once: what it accumulated before it failed is in `.grad` once."""
    grads: list[torch.Tensor] = []

    def loop(w: lens.Watch) -> None:
        model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 1))
        head, tail = nn.Linear(4, 4), nn.Linear(4, 1)
        opt = torch.optim.SGD(model.parameters(), lr=1e-2)
        x, y = torch.randn(16, 4), torch.randn(16, 1)
        for i in range(30):
            opt.zero_grad()
            F.mse_loss(model(x), y).backward()
            if i == 20:
                h = head(x)
                h.register_hook(lambda g: (_ for _ in ()).throw(Stop("raised in a backward hook")))
                try:
                    tail(h).sum().backward(retain_graph=retain)  # tail's parameters get their gradient before the hook raises
                except Stop:
                    pass
                grads.append(tail.weight.grad.clone())
            opt.step()

    _, full_error, _ = _run(loop, steady=False)
    _, fast_error, _ = _run(loop, steady=True)
    assert fast_error == full_error  # with steady cycles: the backward ran again, and failed with another error
    assert torch.equal(grads[0], grads[1]), (grads[0][0], grads[1][0])


@pytest.mark.parametrize("owner", ["optimizer", "module"])
def test_a_zero_grad_that_fails_while_steady_raises_once_unchanged(owner: str) -> None:
    """The user's error inside ``zero_grad`` (a non-tensor slipped into a parameter list) reaches
    them unchanged, from one call of the original ``zero_grad``, and is no error of the lens."""
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 1))
    opt = torch.optim.SGD(model.parameters(), lr=1e-2)
    x, y = torch.randn(16, 4), torch.randn(16, 1)
    calls = []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with pytest.raises(AttributeError, match="grad") as raised:
            with lens.watch() as w:
                for i in range(30):
                    if i == 20:
                        assert w.recorder.steady.on
                        if owner == "optimizer":
                            opt.param_groups[0]["params"].append("not a tensor")
                        else:
                            model._parameters["bad"] = "not a tensor"  # type: ignore[assignment]
                    calls.append(i)
                    (opt if owner == "optimizer" else model).zero_grad()
                    F.mse_loss(model(x), y).backward()
                    opt.step()
    assert calls[-1] == 20
    assert isinstance(raised.value, AttributeError)
    assert not [m for m in caught if "internal error" in str(m.message)], [str(m.message) for m in caught]
