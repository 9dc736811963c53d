"""Steady cycles (a loop that repeats its events is compared with its period instead of recorded in
full) must leave the analysis exactly as the full path does: the same findings, counts, tables and
events, on every loop of the corpus run long enough to go steady, and on loops that change after they
went steady (a missing zero_grad, a missing detach, eval mode, `.grad` set by hand, a new optimizer,
an exception, a report read in the middle)."""

from __future__ import annotations

import inspect
import re
import warnings
from collections.abc import Callable
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import autograd_lens as lens

import test_corpus
import test_published_patterns
from helpers import one_thread  # noqa: F401  (a fixture)

pytestmark = pytest.mark.usefixtures("one_thread")


def _loops() -> list[Callable[..., None]]:
    out = []
    for mod in (test_corpus, test_published_patterns):
        for name, fn in vars(mod).items():
            if not inspect.isfunction(fn) or fn.__module__ != mod.__name__ or name.startswith(("test_", "_")):
                continue
            params = list(inspect.signature(fn).parameters.values())
            if params and params[0].name in ("iters", "episodes", "chunks", "steps") and isinstance(params[0].default, int):
                out.append(fn)
    return out


def _run(fn: Callable[[lens.Watch], None], steady: bool) -> tuple[lens.Watch, str | None, dict[str, Any]]:
    torch.manual_seed(0)
    error = None
    # (a warning is shown once per line of code and process: both runs must be shown theirs)
    with warnings.catch_warnings(record=True), lens.watch() as w:
        warnings.simplefilter("always")
        if not steady:
            w.recorder.steady.off = True
        try:
            fn(w)
        except Exception as exc:  # the loop's own error: the same in both runs
            error = f"{type(exc).__name__}: {str(exc).splitlines()[0]}"
    return w, error, w.report.to_dict()


def _same(fn: Callable[[lens.Watch], None]) -> int:
    """Run ``fn`` with and without steady cycles; everything the analysis keeps must be equal.
    Returns the periods run steady."""
    full, full_error, full_report = _run(fn, steady=False)
    fast, fast_error, fast_report = _run(fn, steady=True)
    assert fast.internal_errors == [] and full.internal_errors == []
    assert fast_error == full_error
    assert fast_report == full_report
    assert _calls(fast) == _calls(full)
    assert _steps(fast) == _steps(full)
    assert fast.log.n_calls == full.log.n_calls and fast.log.n_steps == full.log.n_steps
    assert [(s.site, s.count, s.last) for s in fast.recorder.sites()] == [(s.site, s.count, s.last) for s in full.recorder.sites()]
    assert fast.recorder.iteration == full.recorder.iteration
    return fast.recorder.steady.periods


def _names(w: lens.Watch, pids: Any) -> tuple[str, ...]:
    # (a tensor of no network is named by its id, which differs between the runs)
    return tuple(sorted(re.sub(r"^param@[0-9a-f]+$", "param@", w.reg.param_name(p)) for p in pids))


def _calls(w: lens.Watch) -> list[tuple[Any, ...]]:
    return [(c.id, c.site, c.kind, c.roots, c.retain_graph, c.occurrence, c.prev, c.iteration, c.eval_nets, c.all_eval,
             _names(w, c.reached), c.networks, c.error, w.reg.opt_name(c.within) if c.within else None, c.detailed,
             c.site_key) for c in w.log.calls]


def _steps(w: lens.Watch) -> list[tuple[Any, ...]]:
    return [(s.index, s.optimizer, s.site, s.n_params, s.closure, s.manual, s.sources, _names(w, s.stepped),
             {w.reg.param_name(p): v for p, v in s.provenance.items()}) for s in w.log.steps]


LOOPS = _loops()


def test_the_corpus_has_loops_to_compare() -> None:
    assert len(LOOPS) > 60


@pytest.mark.parametrize("loop", LOOPS, ids=lambda fn: f"{fn.__module__}.{fn.__name__}")
def test_a_corpus_loop_run_long_is_analysed_the_same_with_steady_cycles(loop: Callable[..., None]) -> None:
    _same(lambda w: loop(14))


def test_steady_cycles_run_on_most_corpus_loops() -> None:
    steady = sum(1 for loop in LOOPS[::4] if _same(lambda w, loop=loop: loop(14)) > 0)
    assert steady >= len(LOOPS[::4]) // 3, steady


# ----------------------------------------------------------------------------------------------
# loops that change after they went steady
# ----------------------------------------------------------------------------------------------


def gan(w: lens.Watch, iters: int = 24, at: int = -1, change: str = "") -> None:
    netG = nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Linear(16, 6))
    netD = nn.Sequential(nn.Linear(6, 16), nn.LeakyReLU(0.2), nn.Linear(16, 1))
    optimizerD = torch.optim.Adam(netD.parameters(), lr=1e-3)
    optimizerG = torch.optim.Adam(netG.parameters(), lr=1e-3)
    real = torch.randn(8, 6)
    ones, zeros = torch.ones(8, 1), torch.zeros(8, 1)
    for i in range(iters):
        now = change if i == at else ""
        if now != "skip_zero_d":
            netD.zero_grad()
        if now == "grad_none_by_hand":
            for p in netG.parameters():
                p.grad = None
        fake = netG(torch.randn(8, 4))
        d_in = fake if now == "no_detach" else fake.detach()
        errD = F.binary_cross_entropy_with_logits(netD(real), ones) + F.binary_cross_entropy_with_logits(netD(d_in), zeros)
        errD.backward()
        if now == "raise":
            raise ValueError("the loop's own error")
        if now == "report":
            assert w.report.findings == ()
        optimizerD.step()
        if now == "new_optimizer":
            optimizerD = torch.optim.Adam(netD.parameters(), lr=1e-3)
        if now != "skip_zero_g":
            netG.zero_grad()
        if now == "eval_d":
            netD.eval()
        errG = F.binary_cross_entropy_with_logits(netD(fake), ones)
        if now == "grad_call":
            torch.autograd.grad(errG, fake, retain_graph=True)
        if now == "second_backward":
            errG.backward(retain_graph=True)
        errG.backward()
        netD.train()
        if now == "clip":
            torch.nn.utils.clip_grad_norm_(netG.parameters(), 0.1)
        if now != "skip_step_g":
            optimizerG.step()


def mlp(w: lens.Watch, iters: int = 30, at: int = -1, change: str = "") -> None:
    model = nn.Sequential(nn.Linear(5, 8), nn.ReLU(), nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 1))
    opt = torch.optim.SGD(model.parameters(), lr=1e-2)
    x, y = torch.randn(16, 5), torch.randn(16, 1)
    for i in range(iters):
        now = change if i >= at >= 0 and (i == at or change.endswith("_on")) else ""
        if now not in ("skip_zero", "skip_zero_on"):
            opt.zero_grad()
        if now == "freeze":
            model[2].requires_grad_(False)
        out = model(x)
        loss = F.mse_loss(out, y)
        if now == "zero_by_hand":
            for p in model.parameters():
                if p.grad is not None:
                    p.grad.zero_()
        loss.backward()
        model[2].requires_grad_(True)
        if now == "step_twice":
            opt.step()
        opt.step()


CHANGES_GAN = ["skip_zero_d", "skip_zero_g", "no_detach", "eval_d", "grad_none_by_hand", "grad_call", "second_backward",
               "clip", "skip_step_g", "new_optimizer", "report", "raise"]


def test_the_unchanged_loops_go_steady() -> None:
    assert _same(lambda w: gan(w)) > 0
    assert _same(lambda w: mlp(w)) > 0


@pytest.mark.parametrize("change", CHANGES_GAN)
@pytest.mark.parametrize("at", [16, 19])
def test_a_gan_that_changes_after_it_went_steady_is_analysed_the_same(change: str, at: int) -> None:
    _same(lambda w: gan(w, at=at, change=change))


@pytest.mark.parametrize("change", ["skip_zero", "skip_zero_on", "freeze", "zero_by_hand", "step_twice"])
def test_an_mlp_that_changes_after_it_went_steady_is_analysed_the_same(change: str) -> None:
    _same(lambda w: mlp(w, at=20, change=change))


@pytest.mark.parametrize("change", ["skip_zero", "freeze", "zero_by_hand", "step_twice"])
@pytest.mark.parametrize("at", [1, 2, 3, 4])
def test_an_mlp_that_changes_while_its_period_is_guessed_is_analysed_the_same(change: str, at: int) -> None:
    # iteration 1 is the last detailed call, 2 the cycle captured on the guess, 3 the first steady call
    _same(lambda w: mlp(w, iters=12, at=at, change=change))


@pytest.mark.parametrize("change", ["skip_zero_d", "no_detach", "eval_d", "second_backward"])
@pytest.mark.parametrize("at", [1, 2, 3])
def test_a_gan_that_changes_while_its_period_is_guessed_is_analysed_the_same(change: str, at: int) -> None:
    _same(lambda w: gan(w, iters=12, at=at, change=change))


def test_a_classifier_loop_goes_steady_with_its_fourth_backward_call() -> None:
    # the first two calls of its site take the detail; the second one's cycle is judged clean (not
    # known to the memo: its call was detailed), which is enough to guess that it is a period, so
    # the next cycle is captured; the fourth call finds the guess right and is the first steady one
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 1))
    opt = torch.optim.SGD(model.parameters(), lr=1e-2)
    x, y = torch.randn(16, 4), torch.randn(16, 1)
    with lens.watch() as w:
        for i in range(1, 8):
            opt.zero_grad()
            F.mse_loss(model(x), y).backward()
            assert w.recorder.steady.on == (i >= 4), i
            opt.step()
    assert w.recorder.steady.enters == 0 and w.report.findings == () and w.internal_errors == []


def test_a_gan_goes_steady_with_its_fourth_iteration() -> None:
    # its period is two cycles (the discriminator's call, the generator's), found from the detailed
    # iterations' cycles and captured in the third
    for iters, on in ((3, False), (4, True)):
        torch.manual_seed(0)
        with lens.watch() as w:
            gan(w, iters=iters)
            assert w.recorder.steady.on == on, iters
        assert w.recorder.steady.enters == 0 and w.report.findings == () and w.internal_errors == []


def test_a_failed_guess_of_the_period_does_not_count_against_the_loop() -> None:
    # after the GAN changes once (a probe with autograd.grad), its first clean cycle is guessed to be
    # a period of one; the guess fails (the cycles alternate) and the period of two is found where it
    # would have been without it; no capture counts as failed
    torch.manual_seed(0)
    with lens.watch() as w:
        gan(w, iters=14, at=6, change="grad_call")
    steady = w.recorder.steady
    assert steady.leaves == 2 and steady.enters == 0 and steady.periods >= 5
    assert w.report.findings == () and w.internal_errors == []


def test_a_missing_zero_grad_after_the_loop_went_steady_is_found() -> None:
    torch.manual_seed(0)
    with lens.watch() as w:
        mlp(w, at=20, change="skip_zero")
    assert w.recorder.steady.periods > 0
    (f,) = w.report.findings
    assert f.rule == "missing-zero-grad" and f.optimizer == "opt"


def test_a_loop_that_changes_at_each_epochs_end_keeps_going_steady() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 1))
    opt = torch.optim.SGD(model.parameters(), lr=1e-2)
    x, y = torch.randn(16, 4), torch.randn(16, 1)
    with lens.watch() as w:
        for _ in range(24):
            for _ in range(12):
                opt.zero_grad()
                F.mse_loss(model(x), y).backward()
                opt.step()
            torch.autograd.grad(F.mse_loss(model(x), y), list(model.parameters()))  # a probe at the epoch's end
    steady = w.recorder.steady
    assert steady.leaves >= 20 and not steady.off and steady.periods > 150
    assert w.report.findings == () and w.internal_errors == []
