"""Every example runs under the lens and produces exactly the finding it is about; every corrected
twin produces none."""

from __future__ import annotations

import subprocess
import sys

import pytest

from helpers import by_rule, example, line_of, rules, run_example

NETG = ("netG.main.0.bias", "netG.main.0.weight", "netG.main.2.bias", "netG.main.2.weight")
SECOND_TIME = "Trying to backward through the graph a second time"


@pytest.mark.parametrize(
    ("name", "args"),
    [
        ("two_nets_detach_fixed.py", ()),
        ("two_losses_shared_graph_fixed.py", ()),
        ("two_losses_shared_graph_fixed.py", ("--sum",)),
        ("gan_fixed.py", ()),
        ("srgan_fixed.py", ()),
        ("srgan_fixed.py", ("--order",)),
        ("srgan_fixed.py", ("--fused",)),
        ("tbptt_fixed.py", ()),
        ("actor_critic_fixed.py", ()),
        ("distillation_fixed.py", ()),
        ("distillation_fixed.py", ("--no-grad",)),
        ("grad_accumulation_fixed.py", ()),
        ("grad_accumulation_fixed.py", ("--accum", "1")),
        ("custom_function_ctx.py", ("--fixed",)),
    ],
)
def test_corrected_examples_are_silent(name: str, args: tuple[str, ...]) -> None:
    w, _ = run_example(name, *args)
    assert w.report.findings == ()
    assert w.report.status == "ok"
    assert w.report.backwards, "the example made no backward call the lens saw"


def test_two_nets_detach_explains_second_backward() -> None:
    path = example("two_nets_detach.py")
    w, exc = run_example("two_nets_detach.py", raises=RuntimeError)
    assert type(exc) is RuntimeError
    assert str(exc).startswith(SECOND_TIME)
    f = by_rule(w.report.findings, "second-backward")
    assert f.severity == "error"
    assert f.site.line == line_of(path, "loss_a.backward()")
    assert f.backward is not None and f.backward.line == line_of(path, "loss_b.backward()")
    assert f.tensor == "output1"
    assert "`loss_b.backward()`" in f.message
    assert "output1.detach()" in f.fix
    text = f.text()
    assert "output1 = a_net(input)" in text
    assert any(lab.site.line == line_of(path, "output1 = a_net(input)") for lab in f.labels)
    notes = "\n".join(exc.__notes__)
    assert "error[second-backward]" in notes and "loss_b.backward()" in notes and "output1 = a_net(input)" in notes
    # loss_b also wrote into a_net across output1 (what the corrected version detaches)
    leak = by_rule(w.report.findings, "detach-leak")
    assert leak.tensor == "output1"
    assert set(leak.params) == {"a_net.0.weight", "a_net.0.bias", "a_net.2.weight", "a_net.2.bias"}
    assert rules(w.report.findings) == {"second-backward", "detach-leak"}


def test_two_losses_shared_graph() -> None:
    path = example("two_losses_shared_graph.py")
    w, exc = run_example("two_losses_shared_graph.py", raises=RuntimeError)
    assert str(exc).startswith(SECOND_TIME)
    f = by_rule(w.report.findings, "second-backward")
    assert f.site.line == line_of(path, "z.sum().backward()")
    assert f.backward is not None and f.backward.line == line_of(path, "z.mean().backward()")
    assert f.tensor == "z"
    assert "retain_graph=True" in f.fix
    assert "error[second-backward]" in "\n".join(exc.__notes__)
    assert rules(w.report.findings) == {"second-backward"}


def test_gan_without_detach_steps_generator_with_discriminator_gradient() -> None:
    path = example("gan_no_detach.py")
    w, _ = run_example("gan_no_detach.py")
    f = by_rule(w.report.findings, "stray-grad")
    assert f.severity == "error"
    assert f.site.line == line_of(path, "optimizerG.step()")
    assert f.optimizer == "optimizerG"
    assert f.params == NETG
    assert f.tensor == "fake"
    assert f.backward is not None and f.backward.line == line_of(path, "errD_fake.backward(retain_graph=True)")
    assert f.extra["for"] == ["optimizerD"]
    assert f.count == 3  # every optimizerG.step(), reported once
    assert "`errD_fake.backward(retain_graph=True)`" in f.message
    assert "netD(fake.detach())" in f.fix
    leak = by_rule(w.report.findings, "detach-leak")
    assert leak.site.line == line_of(path, "errD_fake = criterion(netD(fake), fake_label)")
    assert leak.params == NETG and leak.tensor == "fake"
    # netG is never zeroed: its .grad also carries every earlier iteration
    mzg = by_rule(w.report.findings, "missing-zero-grad")
    assert mzg.optimizer == "optimizerG" and mzg.site.line == line_of(path, "optimizerG.step()")
    assert rules(w.report.findings) == {"stray-grad", "detach-leak", "missing-zero-grad"}


def test_gan_without_detach_but_zeroed_is_a_leak_only() -> None:
    path = example("gan_no_detach.py")
    w, _ = run_example("gan_no_detach.py", "--zero-g")
    [f] = w.report.findings
    assert (f.rule, f.severity) == ("detach-leak", "warning")
    assert f.site.line == line_of(path, "errD_fake = criterion(netD(fake), fake_label)")
    assert f.backward is not None and f.backward.line == line_of(path, "errD_fake.backward(retain_graph=True)")
    assert f.params == NETG
    assert f.tensor == "fake"
    assert f.extra["for"] == ["optimizerD"]
    assert f.count == 3  # one per iteration, reported once


def test_srgan_step_between_backward_calls() -> None:
    path = example("srgan_retain_graph.py")
    w, exc = run_example("srgan_retain_graph.py", raises=RuntimeError)
    assert "modified by an inplace operation" in str(exc)
    f = by_rule(w.report.findings, "inplace-saved")
    assert f.severity == "error"
    assert f.site.line == line_of(path, "g_loss.backward()")
    assert f.optimizer == "optimizerD"
    assert "netD.main.0.weight" in f.params
    assert all(p.startswith("netD.main.") for p in f.params)
    assert f.extra["step"]["line"] == line_of(path, "optimizerD.step()")
    assert f.extra["silent"] is False
    assert "error[inplace-saved]" in "\n".join(exc.__notes__)
    assert rules(w.report.findings) == {"inplace-saved", "detach-leak"}


def test_srgan_fused_is_silent_in_pytorch_but_not_in_the_lens() -> None:
    path = example("srgan_retain_graph.py")
    w, _ = run_example("srgan_retain_graph.py", "--fused")
    f = by_rule(w.report.findings, "inplace-saved")
    assert f.site.line == line_of(path, "g_loss.backward()")
    assert f.optimizer == "optimizerD"
    assert "netD.main.0.weight" in f.params
    assert f.extra["step"]["line"] == line_of(path, "optimizerD.step()")
    assert f.extra["silent"] is True and f.extra["fused"] is True
    assert rules(w.report.findings) == {"inplace-saved", "detach-leak"}


def test_tbptt_hidden_state_carried_across_chunks() -> None:
    path = example("tbptt_hidden_state.py")
    w, exc = run_example("tbptt_hidden_state.py", raises=RuntimeError)
    assert str(exc).startswith(SECOND_TIME)
    f = by_rule(w.report.findings, "second-backward")
    assert f.site.line == line_of(path, "loss.backward(retain_graph=args.retain)")
    assert f.extra["same_site"] is True
    assert "hidden = hidden.detach()" in f.fix
    assert any(lab.site.line == line_of(path, "pred, hidden = model(x, hidden)") for lab in f.labels)
    assert rules(w.report.findings) == {"second-backward"}


def test_tbptt_retain_graph_is_a_retained_graph_warning() -> None:
    path = example("tbptt_hidden_state.py")
    w, _ = run_example("tbptt_hidden_state.py", "--retain")
    [f] = w.report.findings
    assert (f.rule, f.severity) == ("retained-graph", "warning")
    assert f.site.line == line_of(path, "loss.backward(retain_graph=args.retain)")
    assert "hidden = hidden.detach()" in f.fix
    # chunk 2 reaches back (chunk 3 too, past the site's detailed occurrences, where graphs are not
    # walked: the finding counts the occurrences it was seen in)
    assert f.count >= 1


def test_examples_run_as_scripts() -> None:
    code = (
        "import runpy, sys\n"
        f"for a in {[str(example(n)) for n in ('gan_no_detach.py', 'gan_fixed.py', 'tbptt_fixed.py')]!r}:\n"
        "    sys.argv = [a]\n"
        "    runpy.run_path(a, run_name='__main__')\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
    done = subprocess.run(
        [sys.executable, str(example("two_nets_detach.py"))], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 1 and SECOND_TIME in done.stderr
    assert "autograd_lens" not in done.stderr  # no lens without watch()



def test_actor_critic_summed_loss() -> None:
    path = example("actor_critic.py")
    w, _ = run_example("actor_critic.py")
    [f] = w.report.findings
    assert (f.rule, f.severity) == ("stray-grad", "error")
    assert f.site.line == line_of(path, "critic_opt.step()")
    assert f.optimizer == "critic_opt"
    assert f.params == ("critic.net.0.bias", "critic.net.0.weight", "critic.net.2.bias", "critic.net.2.weight")
    assert f.backward is not None and f.backward.line == line_of(path, "loss.backward()")
    assert "`actor_loss`" in f.fix and "critic.requires_grad_(False)" in f.fix
    assert f.count == 3


def test_distillation_teacher_leak() -> None:
    path = example("distillation.py")
    w, _ = run_example("distillation.py")
    [f] = w.report.findings
    assert (f.rule, f.severity) == ("detach-leak", "warning")
    assert f.params == ("teacher.0.bias", "teacher.0.weight", "teacher.2.bias", "teacher.2.weight")
    assert f.tensor == "t_logits"
    assert f.site.line == line_of(path, "t_logits = teacher(x)")
    assert any(lab.site.line == line_of(path, "loss.backward()") for lab in f.labels)
    assert f.extra["for"] == ["optimizer"]


def test_missing_zero_grad_example() -> None:
    path = example("missing_zero_grad.py")
    w, _ = run_example("missing_zero_grad.py")
    [f] = w.report.findings
    assert (f.rule, f.severity) == ("missing-zero-grad", "warning")
    assert f.site.line == line_of(path, "optimizer.step()")
    assert f.optimizer == "optimizer"
    assert f.params == ("model.0.bias", "model.0.weight", "model.2.bias", "model.2.weight")
    assert f.count == 3


def test_dead_param_example() -> None:
    path = example("dead_param.py")
    w, _ = run_example("dead_param.py")
    [f] = w.report.findings
    assert (f.rule, f.severity) == ("dead-param", "warning")
    assert f.params == ("model.head.bias", "model.head.weight")
    assert f.optimizer == "optimizer"
    assert f.site.line == line_of(path, "optimizer.step()")


def test_custom_function_ctx_example() -> None:
    path = example("custom_function_ctx.py")
    w, _ = run_example("custom_function_ctx.py")
    [f] = w.report.findings
    assert (f.rule, f.severity) == ("ctx-tensor", "warning")
    assert f.tensor == "y"
    assert f.extra["function"] == "ScaledTanh"
    assert f.site.line == line_of(path, "loss.backward()")
