"""Tests of ``autograd_lens.testing``: the assertions a project puts in its own test suite."""

from __future__ import annotations

import re

import pytest
import torch
import torch.nn as nn

import autograd_lens as lens
from autograd_lens import LensError
from autograd_lens.testing import (
    assert_does_not_reach,
    assert_gradcheck,
    assert_grads_only_for,
    assert_no_findings,
    assert_reaches,
    expect,
    expect_clean,
)


def make_gan() -> tuple[nn.Module, nn.Module]:
    torch.manual_seed(0)
    netG = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 6), nn.Tanh())
    netD = nn.Sequential(nn.Linear(6, 8), nn.LeakyReLU(0.2), nn.Linear(8, 1), nn.Sigmoid())
    return netG, netD


def make_training() -> tuple[nn.Module, nn.Module, torch.optim.Optimizer, torch.optim.Optimizer]:
    netG, netD = make_gan()
    return netG, netD, torch.optim.Adam(netD.parameters(), lr=1e-3), torch.optim.Adam(netG.parameters(), lr=1e-3)


def gan_step(netG: nn.Module, netD: nn.Module, optimizerD: torch.optim.Optimizer,
             optimizerG: torch.optim.Optimizer, fixed: bool) -> float:
    """One GAN step; without ``fixed`` it forgets `.detach()` and does not zero netG."""
    criterion = nn.BCELoss()
    ones, zeros = torch.ones(16, 1), torch.zeros(16, 1)
    netD.zero_grad()
    fake = netG(torch.randn(16, 4))
    errD = criterion(netD(fake.detach() if fixed else fake), zeros)
    errD.backward(retain_graph=not fixed)
    optimizerD.step()
    if fixed:
        netG.zero_grad()
    errG = criterion(netD(fake), ones)
    errG.backward()
    optimizerG.step()
    return errG.item()


# ----------------------------------------------------------------------------------------------
# assert_reaches / assert_does_not_reach
# ----------------------------------------------------------------------------------------------


def test_does_not_reach_passes_after_detach_and_reaches_passes_without() -> None:
    netG, netD = make_gan()
    criterion = nn.BCELoss()
    fake = netG(torch.randn(16, 4))
    errD = criterion(netD(fake.detach()), torch.zeros(16, 1))
    errG = criterion(netD(fake), torch.ones(16, 1))
    assert_does_not_reach(errD, netG)
    assert_reaches(errD, netD)
    assert_reaches(errG, netG)
    assert_reaches(errG, [netG, netD])


def test_does_not_reach_failure_shows_path_and_where_to_detach() -> None:
    netG, netD = make_gan()
    criterion = nn.BCELoss()
    fake = netG(torch.randn(16, 4))
    d_loss = criterion(netD(fake), torch.zeros(16, 1))
    with pytest.raises(AssertionError) as info:
        assert_does_not_reach(d_loss, netG)
    text = str(info.value)
    assert text.startswith("`d_loss` reaches 4 of 4 parameters of `netG`: `netG.0.weight`")
    path = next(line for line in text.splitlines() if line.strip().startswith("path:"))
    assert path.strip().startswith("path: d_loss ← BCELoss ← netD.3 (Sigmoid)")
    assert "netD.0 (Linear) ← fake ← netG.3 (Tanh) ← netG.2 (Linear) ← netG.2.bias" in path
    assert "`fake` is produced by `netG` and enters `netD` without `.detach()`" in text
    assert "help: detach `fake` where it enters `netD`: `netD(fake.detach())`" in text


def test_reach_checks_run_no_backward_and_leave_grad_alone() -> None:
    netG, netD = make_gan()
    fake = netG(torch.randn(16, 4))
    loss = netD(fake).mean()
    assert_reaches(loss, netG)
    with pytest.raises(AssertionError):
        assert_does_not_reach(loss, netG)
    assert all(p.grad is None for p in [*netG.parameters(), *netD.parameters()])
    loss.backward()  # the graph is intact: nothing was freed
    assert all(p.grad is not None for p in netG.parameters())


def test_reach_takes_tensor_list_generator_and_dict() -> None:
    netG, netD = make_gan()
    fake = netG(torch.randn(16, 4))
    loss = netD(fake.detach()).mean()
    first = netG[0].weight
    assert_does_not_reach(loss, first)
    assert_does_not_reach(loss, [first, netG[2].bias])
    assert_does_not_reach(loss, netG.parameters())
    assert_does_not_reach(loss, {"generator": netG})
    assert_reaches(loss, {"d_head": netD[2].weight})
    with pytest.raises(AssertionError) as info:
        assert_reaches(loss, {"g_first": first})
    text = str(info.value)
    assert text.startswith("`loss` does not reach the given parameter: `g_first`")
    assert "= note: `loss` reaches `netD` (4 parameters)" in text
    assert "help: look between those parameters and the output for `.detach()`" in text


def test_reaches_names_frozen_parameters() -> None:
    netG, netD = make_gan()
    netG[0].requires_grad_(False)
    loss = netD(netG(torch.randn(2, 4))).sum()
    with pytest.raises(AssertionError) as info:
        assert_reaches(loss, netG)
    text = str(info.value)
    assert "does not reach 2 of 4 parameters of `netG`: `netG.0.weight` and `netG.0.bias`" in text
    assert "have `requires_grad=False`" in text


def test_reaches_fails_plainly_on_an_output_without_graph() -> None:
    netG, _ = make_gan()
    with torch.no_grad():
        out = netG(torch.randn(2, 4)).sum()
    with pytest.raises(AssertionError, match="it has no `grad_fn` and does not require grad"):
        assert_reaches(out, netG)
    assert_does_not_reach(out, netG)


def test_long_path_is_abbreviated_and_modules_named_by_type() -> None:
    torch.manual_seed(0)
    layers: list[nn.Module] = []
    for _ in range(6):
        layers += [nn.Conv2d(2, 2, 3, padding=1), nn.BatchNorm2d(2), nn.ReLU()]
    netG = nn.Sequential(nn.Sequential(*layers), nn.Tanh())
    netD = nn.Sequential(nn.Conv2d(2, 1, 3), nn.Flatten(), nn.Sigmoid())
    fake = netG(torch.randn(2, 2, 5, 5))
    errD = nn.BCELoss()(netD(fake), torch.zeros(2, 9))
    with pytest.raises(AssertionError) as info:
        assert_does_not_reach(errD, netG)
    path = next(line for line in str(info.value).splitlines() if "path:" in line)
    assert "netD.0 (Conv2d) ← fake ← netG.1 (Tanh)" in path
    assert " ← … ← " in path
    assert path.count("←") <= 9


def test_reach_bad_input_raises_lens_error() -> None:
    netG, _ = make_gan()
    with pytest.raises(LensError, match="takes the output tensor .* got float 1.0"):
        assert_reaches(1.0, netG)  # type: ignore[arg-type]
    loss = netG(torch.randn(2, 4)).sum()
    with pytest.raises(LensError, match="takes tensors or modules in its list of parameters; item 1 is str"):
        assert_reaches(loss, [netG[0].weight, "netG.0.bias"])
    with pytest.raises(LensError, match="got no parameters"):
        assert_reaches(loss, [])
    with pytest.raises(LensError, match="dict of names to tensors or modules; 'x' is int"):
        assert_reaches(loss, {"x": 3})


# ----------------------------------------------------------------------------------------------
# runtime expectations
# ----------------------------------------------------------------------------------------------


def test_assert_no_findings_passes_on_fixed_step_and_returns_result() -> None:
    assert isinstance(assert_no_findings(gan_step, *make_training(), True), float)


def test_assert_no_findings_fails_with_the_finding_text() -> None:
    with pytest.raises(AssertionError) as info:
        assert_no_findings(gan_step, *make_training(), False)
    text = str(info.value)
    assert text.startswith("autograd_lens found 1 error, 1 warning in `gan_step()`:")
    assert "error[stray-grad]: `optimizerG.step()` applied gradient that came from `errD.backward(" in text
    assert "warning[detach-leak]" in text
    with pytest.raises(AssertionError, match="found 1 error, 0 warnings"):
        assert_no_findings(gan_step, *make_training(), False, ignore=["detach-leak"])
    assert_no_findings(gan_step, *make_training(), False, ignore=["detach-leak", "stray-grad"])


def test_unknown_rule_or_level_is_a_lens_error() -> None:
    with pytest.raises(LensError, match="unknown rule 'bogus'; known rules: second-backward"):
        assert_no_findings(lambda: None, ignore=["bogus"])
    with pytest.raises(LensError, match="unknown rule"):
        with expect_clean(ignore=["nope"]):
            pass
    with pytest.raises(LensError, match="fail_on must be one of 'error', 'warning'"):
        assert_no_findings(lambda: None, fail_on="info")
    with pytest.raises(LensError, match="takes a function to run; got int"):
        assert_no_findings(3)  # type: ignore[arg-type]


def test_expect_clean_is_exported_and_fails_with_report() -> None:
    assert lens.expect_clean is expect_clean and lens.expect is expect
    with lens.expect_clean() as w:
        gan_step(*make_training(), True)
    assert w.report.findings == ()
    with pytest.raises(AssertionError) as info:
        with lens.expect_clean(ignore=["detach-leak"]):
            gan_step(*make_training(), False)
    assert "in the `expect_clean()` block" in str(info.value)
    assert "error[stray-grad]" in str(info.value) and "detach-leak" not in str(info.value)
    with lens.expect_clean(fail_on="error", ignore=["stray-grad"]):
        gan_step(*make_training(), False)


def test_expect_passes_when_the_rule_fires_and_matches() -> None:
    netG, netD, optimizerD, optimizerG = make_training()
    with lens.expect("stray-grad", optimizer=optimizerG, params=netG) as w:
        gan_step(netG, netD, optimizerD, optimizerG, False)
    assert w.report.by_rule("stray-grad")[0].optimizer == "optimizerG"
    netG, netD, optimizerD, optimizerG = make_training()
    with lens.expect("stray-grad", optimizer="optimizerG", params=["netG.0.weight"]):
        gan_step(netG, netD, optimizerD, optimizerG, False)


def test_expect_fails_when_the_rule_does_not_fire_or_does_not_match() -> None:
    with pytest.raises(AssertionError, match=r"expected a `stray-grad` finding .* found none \(rules found: none\)"):
        with lens.expect("stray-grad"):
            gan_step(*make_training(), True)
    netG, netD, optimizerD, optimizerG = make_training()
    with pytest.raises(AssertionError, match="about `optimizerD`, but the `stray-grad` findings are about `optimizerG`"):
        with lens.expect("stray-grad", optimizer=optimizerD):
            gan_step(netG, netD, optimizerD, optimizerG, False)
    netG, netD, optimizerD, optimizerG = make_training()
    with pytest.raises(AssertionError, match="naming `netD.0.weight`, but no such finding names `netD.0.weight`"):
        with lens.expect("stray-grad", params=[netD[0].weight]):
            gan_step(netG, netD, optimizerD, optimizerG, False)


def test_assert_grads_only_for_passes_on_fixed_step() -> None:
    netG, netD, optimizerD, optimizerG = make_training()
    assert_grads_only_for(gan_step, netG, netD, optimizerD, optimizerG, True, optimizers=[optimizerD, optimizerG])
    netG, netD, optimizerD, optimizerG = make_training()
    assert_grads_only_for(optimizerG, gan_step, netG, netD, optimizerD, optimizerG, True)


def test_assert_grads_only_for_lists_optimizer_params_and_backward_site() -> None:
    netG, netD, optimizerD, optimizerG = make_training()
    with pytest.raises(AssertionError) as info:
        assert_grads_only_for([optimizerD, optimizerG], gan_step, netG, netD, optimizerD, optimizerG, False)
    text = str(info.value)
    first = text.splitlines()[1]
    assert re.search(
        r"- `optimizerG.step\(\)` at tests/test_testing.py:\d+ applied gradient from "
        r"`errD.backward\(retain_graph=not fixed\)` \(tests/test_testing.py:\d+\), which is meant for "
        r"`optimizerD`, in 4 parameters: `netG.0.bias`, `netG.0.weight`, `netG.2.bias` and `netG.2.weight`",
        first,
    ), first
    assert "error[stray-grad]" in text
    netG, netD, optimizerD, optimizerG = make_training()  # only the optimizers asked about are judged
    assert_grads_only_for(optimizerD, gan_step, netG, netD, optimizerD, optimizerG, False)


def test_assert_grads_only_for_fails_when_nothing_stepped() -> None:
    with pytest.raises(AssertionError, match="no optimizer stepped in `<lambda>\\(\\)`; nothing was checked"):
        assert_grads_only_for(lambda: None)
    with pytest.raises(LensError, match="takes the training step to run; got nothing"):
        assert_grads_only_for(make_training()[2])


# ----------------------------------------------------------------------------------------------
# assert_gradcheck
# ----------------------------------------------------------------------------------------------


class Linear(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias):  # type: ignore[override]
        ctx.save_for_backward(x, weight)
        return x @ weight.t() + bias

    @staticmethod
    def backward(ctx, grad):  # type: ignore[override]
        x, weight = ctx.saved_tensors
        return grad @ weight, grad.t() @ x, grad.sum(0)


class HalfWeightGrad(Linear):
    @staticmethod
    def backward(ctx, grad):  # type: ignore[override]
        x, weight = ctx.saved_tensors
        return grad @ weight, 0.5 * (grad.t() @ x), grad.sum(0)


class FlippedBias(Linear):
    @staticmethod
    def backward(ctx, grad):  # type: ignore[override]
        x, weight = ctx.saved_tensors
        return grad @ weight, grad.t() @ x, -grad.sum(0)


class TwoGrads(Linear):
    @staticmethod
    def backward(ctx, grad):  # type: ignore[override]
        x, weight = ctx.saved_tensors
        return grad @ weight, grad.t() @ x


class Transposed(Linear):
    @staticmethod
    def backward(ctx, grad):  # type: ignore[override]
        x, weight = ctx.saved_tensors
        return grad @ weight, x.t() @ grad, grad.sum(0)


class OnCtx(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias):  # type: ignore[override]
        ctx.x, ctx.weight = x, weight
        return x @ weight.t() + bias

    @staticmethod
    def backward(ctx, grad):  # type: ignore[override]
        return grad @ ctx.weight, grad.t() @ ctx.x, grad.sum(0)


def linear_inputs() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    x = torch.randn(5, 3, dtype=torch.double, requires_grad=True)
    w = torch.randn(2, 3, dtype=torch.double, requires_grad=True)
    b = torch.randn(2, dtype=torch.double, requires_grad=True)
    return x, w, b


def test_gradcheck_passes_for_a_correct_function() -> None:
    assert_gradcheck(Linear.apply, linear_inputs())


def test_gradcheck_names_input_element_and_values() -> None:
    with pytest.raises(AssertionError) as info:
        assert_gradcheck(HalfWeightGrad.apply, linear_inputs())
    lines = str(info.value).splitlines()
    assert lines[0] == "`HalfWeightGrad` backward disagrees with finite differences for input 1 (`weight`), shape (2, 3):"
    assert re.fullmatch(
        r"  worst at weight\[\d, \d\] for output\[\d, \d\]: analytical -?[\d.]+, numerical -?[\d.]+, "
        r"error [\d.]+ \(allowed [\d.e-]+\)",
        lines[1],
    ), lines[1]
    assert lines[2] == "  30 of 60 Jacobian entries differ (atol=1e-05, rtol=0.001)"
    assert lines[3] == "  = note: analytical = 0.5 × numerical wherever they differ: a missing or extra factor in `backward`"
    assert len(lines) == 4  # no whole Jacobians


def test_gradcheck_sees_a_flipped_sign() -> None:
    with pytest.raises(AssertionError, match="(?s)input 2 \\(`bias`\\).*a sign is flipped"):
        assert_gradcheck(FlippedBias.apply, linear_inputs())


def test_gradcheck_rephrases_wrong_number_and_shape_of_gradients() -> None:
    with pytest.raises(AssertionError) as info:
        assert_gradcheck(TwoGrads.apply, linear_inputs())
    assert str(info.value).startswith("`TwoGrads.backward` returned 2 gradients, but `TwoGrads.forward` takes 3 inputs")
    assert "help: return exactly one gradient per input of forward" in str(info.value)
    with pytest.raises(AssertionError) as info:
        assert_gradcheck(Transposed.apply, linear_inputs())
    assert str(info.value).startswith(
        "`Transposed.backward` returned a gradient of shape (3, 2) for input 1 (`weight`), whose shape is (2, 3)"
    )


def test_gradcheck_reports_tensors_kept_on_ctx() -> None:
    with pytest.raises(AssertionError) as info:
        assert_gradcheck(OnCtx.apply, linear_inputs())
    assert str(info.value).startswith("`OnCtx.forward` keeps tensors on ctx: `ctx.weight`, `ctx.x`")
    assert "help: use `ctx.save_for_backward(...)`" in str(info.value)
    assert_gradcheck(OnCtx.apply, linear_inputs(), allow_ctx_tensors=True)


def test_gradcheck_bad_input_raises_lens_error() -> None:
    x, w, b = linear_inputs()
    with pytest.raises(LensError, match=r"input 0 \(`x`\) is torch.float32; finite differences need double precision"):
        assert_gradcheck(Linear.apply, (x.float(), w, b))
    with pytest.raises(LensError, match="must return a tensor or a tuple of tensors; it returned str"):
        assert_gradcheck(lambda t: "no", (x,))
    with pytest.raises(LensError, match="none of the inputs requires grad"):
        assert_gradcheck(Linear.apply, (x.detach(), w.detach(), b.detach()))
