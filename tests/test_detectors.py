"""Each rule on a small loop that has the bug, and on the correct loops it must stay silent on."""

from __future__ import annotations

import contextlib
import inspect
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import autograd_lens as lens
from helpers import by_rule, rules


def line(fn: object, text: str) -> int:
    """The line of the one statement of ``fn`` that starts with ``text``."""
    src, start = inspect.getsourcelines(fn)  # type: ignore[arg-type]
    hits = [start + i for i, s in enumerate(src) if s.strip().startswith(text)]
    assert len(hits) == 1, f"{text!r} at {hits}"
    return hits[0]


def mlp(i: int, o: int, h: int = 8) -> nn.Sequential:
    return nn.Sequential(nn.Linear(i, h), nn.Tanh(), nn.Linear(h, o))


class Gen(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.main = mlp(4, 6)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.main(z)


class Disc(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.main = mlp(6, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.main(x)


class Critic(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.q = mlp(5, 1)

    def forward(self, s: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
        return self.q(torch.cat([s, a], dim=1))


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


# ----------------------------------------------------------------------------------------------
# second-backward
# ----------------------------------------------------------------------------------------------


def test_silent_double_backward() -> None:
    def body() -> torch.Tensor:
        a = torch.randn(3, requires_grad=True)
        loss = (a + 1).sum()
        loss.backward()
        loss.backward()
        return a

    with lens.watch() as w:
        a = body()
    assert torch.equal(a.grad, torch.full((3,), 2.0))  # PyTorch doubled it without a word
    f = by_rule(w.report.findings, "second-backward")
    assert f.severity == "error"
    assert f.extra["silent"] is True
    lines = [i for i, s in enumerate(inspect.getsourcelines(body)[0]) if s.strip() == "loss.backward()"]
    start = inspect.getsourcelines(body)[1]
    assert f.site.line == start + lines[1]
    assert f.backward is not None and f.backward.line == start + lines[0]


def test_double_backward_with_retain_graph_is_intended() -> None:
    a = torch.randn(3, requires_grad=True)
    with lens.watch() as w:
        loss = (a * a).sum()
        loss.backward(retain_graph=True)
        loss.backward()
    assert w.report.findings == ()


# ----------------------------------------------------------------------------------------------
# missing-zero-grad and gradient accumulation
# ----------------------------------------------------------------------------------------------


def missing_zero_grad_loop() -> None:
    model = mlp(3, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    for _ in range(3):
        loss = model(torch.randn(4, 3)).pow(2).mean()
        loss.backward()
        optimizer.step()


def test_missing_zero_grad() -> None:
    with lens.watch() as w:
        missing_zero_grad_loop()
    f = by_rule(w.report.findings, "missing-zero-grad")
    assert f.severity == "warning"
    assert f.site.line == line(missing_zero_grad_loop, "optimizer.step()")
    assert f.optimizer == "optimizer"
    assert set(f.params) == {"model.0.weight", "model.0.bias", "model.2.weight", "model.2.bias"}
    assert f.backward is not None and f.backward.line == line(missing_zero_grad_loop, "loss.backward()")
    assert f.count == 2
    assert rules(w.report.findings) == {"missing-zero-grad"}


@pytest.mark.parametrize("set_to_none", [True, False])
def test_gradient_accumulation_is_silent(set_to_none: bool) -> None:
    model = mlp(3, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    with lens.watch() as w:
        for _ in range(2):
            for _ in range(4):
                loss = model(torch.randn(4, 3)).pow(2).mean() / 4
                loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=set_to_none)
    assert w.report.findings == ()


def test_zero_grad_by_hand_is_silent() -> None:
    model = mlp(3, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    with lens.watch() as w:
        for _ in range(3):
            for p in model.parameters():
                p.grad = None
            model(torch.randn(4, 3)).pow(2).mean().backward()
            optimizer.step()
    assert w.report.findings == ()


# ----------------------------------------------------------------------------------------------
# dead-param, ctx-tensor, nonscalar-backward, no-grad-path
# ----------------------------------------------------------------------------------------------


class WithUnusedHead(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Linear(3, 4)
        self.head = nn.Linear(4, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x).sum(dim=1)


def dead_param_loop() -> None:
    net = WithUnusedHead()
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-3)
    for _ in range(2):
        optimizer.zero_grad()
        net(torch.randn(2, 3)).mean().backward()
        optimizer.step()


def test_dead_param() -> None:
    with lens.watch() as w:
        dead_param_loop()
    [f] = w.report.findings
    assert (f.rule, f.severity) == ("dead-param", "warning")
    assert f.params == ("net.head.bias", "net.head.weight")
    assert f.optimizer == "optimizer"
    assert f.site.line == line(dead_param_loop, "optimizer.step()")


class Scale(torch.autograd.Function):
    @staticmethod
    def forward(ctx: object, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        ctx.w = w  # type: ignore[attr-defined]
        return x * w

    @staticmethod
    def backward(ctx: object, g: torch.Tensor) -> tuple[torch.Tensor, None]:
        return g * ctx.w, None  # type: ignore[attr-defined]


class ScaleSaved(torch.autograd.Function):
    @staticmethod
    def forward(ctx: object, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(w)  # type: ignore[attr-defined]
        return x * w

    @staticmethod
    def backward(ctx: object, g: torch.Tensor) -> tuple[torch.Tensor, None]:
        (w,) = ctx.saved_tensors  # type: ignore[attr-defined]
        return g * w, None


def test_ctx_tensor() -> None:
    x = torch.randn(3, requires_grad=True)
    with lens.watch() as w:
        loss = Scale.apply(x, torch.full((3,), 2.0)).sum()
        loss.backward()
    [f] = w.report.findings
    assert (f.rule, f.severity) == ("ctx-tensor", "warning")
    assert f.tensor == "w"
    assert f.extra["function"] == "Scale"
    assert f.site.line == line(test_ctx_tensor, "loss.backward()")


def test_save_for_backward_is_silent() -> None:
    x = torch.randn(3, requires_grad=True)
    with lens.watch() as w:
        ScaleSaved.apply(x, torch.full((3,), 2.0)).sum().backward()
    assert w.report.findings == ()


def test_nonscalar_backward() -> None:
    model = mlp(3, 2)
    with lens.watch() as w:
        loss = F.mse_loss(model(torch.randn(4, 3)), torch.zeros(4, 2), reduction="none")
        with pytest.raises(RuntimeError, match="grad can be implicitly created only for scalar outputs") as info:
            loss.backward()
    f = by_rule(w.report.findings, "nonscalar-backward")
    assert f.severity == "error"
    assert f.tensor == "loss"
    assert "[4, 2]" in f.message
    assert "loss.mean().backward()" in f.fix
    assert f.site.line == line(test_nonscalar_backward, "loss.backward()")
    assert "error[nonscalar-backward]" in "\n".join(info.value.__notes__)


def test_no_grad_path() -> None:
    model = mlp(3, 1)
    with lens.watch() as w:
        with torch.no_grad():
            pred = model(torch.randn(4, 3))
        loss = F.mse_loss(pred, torch.zeros(4, 1))
        with pytest.raises(RuntimeError, match="does not require grad") as info:
            loss.backward()
    f = by_rule(w.report.findings, "no-grad-path")
    assert w.internal_errors == []  # the graph of a root without grad_fn is drawn too
    assert f.severity == "error"
    assert f.tensor == "loss"
    assert f.site.line == line(test_no_grad_path, "loss.backward()")
    assert "error[no-grad-path]" in "\n".join(info.value.__notes__)


# ----------------------------------------------------------------------------------------------
# intent: GAN, WGAN, actor-critic, distillation, multi-task
# ----------------------------------------------------------------------------------------------


def gan_step_order_swapped(netG: Gen, netD: Disc, optimizerG: torch.optim.Optimizer, optimizerD: torch.optim.Optimizer) -> None:
    for _ in range(2):
        optimizerD.zero_grad()
        errD = F.softplus(netD(netG(torch.randn(8, 4)))).mean() + F.softplus(-netD(torch.randn(8, 6))).mean()
        errD.backward()
        optimizerG.step()
        optimizerD.step()


def test_explicit_intent() -> None:
    netG, netD = Gen(), Disc()
    optimizerG = torch.optim.SGD(netG.parameters(), lr=0.01)
    optimizerD = torch.optim.SGD(netD.parameters(), lr=0.01)
    with lens.watch(intent={"errD": optimizerD}) as w:
        gan_step_order_swapped(netG, netD, optimizerG, optimizerD)
    f = by_rule(w.report.findings, "stray-grad")
    assert f.optimizer == "optimizerG"
    assert f.site.line == line(gan_step_order_swapped, "optimizerG.step()")
    assert f.backward is not None and f.backward.line == line(gan_step_order_swapped, "errD.backward()")
    assert f.extra["for"] == ["optimizerD"]
    assert set(f.params) == {"netG.main.0.weight", "netG.main.0.bias", "netG.main.2.weight", "netG.main.2.bias"}
    assert "stray-grad" not in {g.rule for g in w.report.findings if g.optimizer == "optimizerD"}


def test_explicit_intent_by_site() -> None:
    netG, netD = Gen(), Disc()
    optimizerG = torch.optim.SGD(netG.parameters(), lr=0.01)
    optimizerD = torch.optim.SGD(netD.parameters(), lr=0.01)
    site = f"{__file__}:{line(gan_step_order_swapped, 'errD.backward()')}"
    with lens.watch(intent={site: optimizerD}) as w:
        gan_step_order_swapped(netG, netD, optimizerG, optimizerD)
    assert by_rule(w.report.findings, "stray-grad").optimizer == "optimizerG"


def test_bad_intent_is_a_lens_error() -> None:
    with pytest.raises(lens.LensError, match="errD"):
        with lens.watch(intent={"errD": "optimizerD"}):
            pass


def wgan(n_critic: int, iters: int) -> None:
    netG, netD = Gen(), Disc()
    optimizerD = torch.optim.RMSprop(netD.parameters(), lr=5e-5)
    optimizerG = torch.optim.RMSprop(netG.parameters(), lr=5e-5)
    for _ in range(iters):
        for _ in range(n_critic):
            optimizerD.zero_grad()
            real = torch.randn(8, 6)
            fake = netG(torch.randn(8, 4)).detach()
            lossD = -(netD(real).mean() - netD(fake).mean())
            lossD.backward()
            optimizerD.step()
            for p in netD.parameters():
                p.data.clamp_(-0.01, 0.01)
        optimizerG.zero_grad()
        lossG = -netD(netG(torch.randn(8, 4))).mean()
        lossG.backward()
        optimizerG.step()


def test_wgan_n_critic_is_silent() -> None:
    with lens.watch() as w:
        wgan(n_critic=5, iters=3)
    assert w.report.findings == ()


def wgan_gp(iters: int) -> None:
    netG, netD = Gen(), Disc()
    optimizerD = torch.optim.Adam(netD.parameters(), lr=1e-4, betas=(0.0, 0.9))
    optimizerG = torch.optim.Adam(netG.parameters(), lr=1e-4, betas=(0.0, 0.9))
    for _ in range(iters):
        for _ in range(3):
            netD.zero_grad()
            real = torch.randn(8, 6)
            fake = netG(torch.randn(8, 4)).detach()
            alpha = torch.rand(8, 1)
            mixed = (alpha * real + (1 - alpha) * fake).requires_grad_(True)
            grads = torch.autograd.grad(netD(mixed).sum(), mixed, create_graph=True)[0]
            gp = ((grads.norm(2, dim=1) - 1) ** 2).mean()
            lossD = netD(fake).mean() - netD(real).mean() + 10 * gp
            lossD.backward()
            optimizerD.step()
        netG.zero_grad()
        lossG = -netD(netG(torch.randn(8, 4))).mean()
        lossG.backward()
        optimizerG.step()


def test_wgan_gp_is_silent() -> None:
    with lens.watch() as w:
        wgan_gp(iters=2)
    assert w.report.findings == ()


def dcgan_summed_errD(iters: int) -> None:
    netG, netD = Gen(), Disc()
    optimizerD = torch.optim.Adam(netD.parameters(), lr=2e-4)
    optimizerG = torch.optim.Adam(netG.parameters(), lr=2e-4)
    for _ in range(iters):
        fake = netG(torch.randn(8, 4))
        optimizerD.zero_grad()
        errD = F.softplus(-netD(torch.randn(8, 6))).mean() + F.softplus(netD(fake.detach())).mean()
        errD.backward()
        optimizerD.step()
        optimizerG.zero_grad()
        errG = F.softplus(-netD(fake)).mean()
        errG.backward()
        optimizerG.step()


def test_gan_with_summed_discriminator_loss_is_silent() -> None:
    with lens.watch() as w:
        dcgan_summed_errD(iters=3)
    assert w.report.findings == ()


def actor_critic_summed(iters: int) -> None:
    actor = nn.Sequential(mlp(3, 2), nn.Tanh())
    critic = Critic()
    actor_opt = torch.optim.Adam(actor.parameters(), lr=1e-3)
    critic_opt = torch.optim.Adam(critic.parameters(), lr=1e-3)
    for _ in range(iters):
        s, a_taken, target = torch.randn(8, 3), torch.rand(8, 2), torch.randn(8, 1)
        actor_opt.zero_grad()
        critic_opt.zero_grad()
        critic_loss = F.mse_loss(critic(s, a_taken), target)
        actor_loss = -critic(s, actor(s)).mean()
        loss = actor_loss + critic_loss
        loss.backward()
        actor_opt.step()
        critic_opt.step()


def test_actor_critic_summed_loss_steps_critic_with_actor_gradient() -> None:
    with lens.watch() as w:
        actor_critic_summed(iters=3)
    f = by_rule(w.report.findings, "stray-grad")
    assert f.severity == "error"
    assert f.optimizer == "critic_opt"
    assert f.site.line == line(actor_critic_summed, "critic_opt.step()")
    assert f.backward is not None and f.backward.line == line(actor_critic_summed, "loss.backward()")
    assert set(f.params) == {"critic.q.0.weight", "critic.q.0.bias", "critic.q.2.weight", "critic.q.2.bias"}
    assert f.count == 3
    assert "`actor_loss`" in f.fix
    assert "stray-grad" not in {g.rule for g in w.report.findings if g.optimizer == "actor_opt"}


def actor_critic_separate(iters: int) -> None:
    actor = nn.Sequential(mlp(3, 2), nn.Tanh())
    critic = Critic()
    actor_opt = torch.optim.Adam(actor.parameters(), lr=1e-3)
    critic_opt = torch.optim.Adam(critic.parameters(), lr=1e-3)
    for _ in range(iters):
        s, a_taken, target = torch.randn(8, 3), torch.rand(8, 2), torch.randn(8, 1)
        critic_opt.zero_grad()
        critic_loss = F.mse_loss(critic(s, a_taken), target)
        critic_loss.backward()
        critic_opt.step()
        actor_opt.zero_grad()
        actor_loss = -critic(s, actor(s)).mean()
        actor_loss.backward()
        actor_opt.step()


def test_actor_critic_separate_losses_are_silent() -> None:
    with lens.watch() as w:
        actor_critic_separate(iters=3)
    assert w.report.findings == ()


def ddpg(iters: int) -> None:
    actor, actor_target = nn.Sequential(mlp(3, 2), nn.Tanh()), nn.Sequential(mlp(3, 2), nn.Tanh())
    critic, critic_target = Critic(), Critic()
    actor_target.load_state_dict(actor.state_dict())
    critic_target.load_state_dict(critic.state_dict())
    actor_optimizer = torch.optim.Adam(actor.parameters(), lr=1e-3)
    critic_optimizer = torch.optim.Adam(critic.parameters(), lr=1e-3)
    for _ in range(iters):
        s, a, r, s2 = torch.randn(8, 3), torch.rand(8, 2), torch.randn(8, 1), torch.randn(8, 3)
        with torch.no_grad():
            target_q = r + 0.99 * critic_target(s2, actor_target(s2))
        critic_loss = F.mse_loss(critic(s, a), target_q)
        critic_optimizer.zero_grad()
        critic_loss.backward()
        critic_optimizer.step()
        actor_loss = -critic(s, actor(s)).mean()
        actor_optimizer.zero_grad()
        actor_loss.backward()
        actor_optimizer.step()
        with torch.no_grad():
            for p, tp in zip(actor.parameters(), actor_target.parameters()):
                tp.mul_(0.995).add_(0.005 * p)
            for p, tp in zip(critic.parameters(), critic_target.parameters()):
                tp.mul_(0.995).add_(0.005 * p)


def test_ddpg_is_silent() -> None:
    with lens.watch() as w:
        ddpg(iters=3)
    assert w.report.findings == ()


def distillation(iters: int, fix: str | None) -> None:
    teacher = mlp(5, 3, h=16)
    student = mlp(5, 3, h=4)
    if fix == "frozen":
        teacher.requires_grad_(False)
    optimizer = torch.optim.Adam(student.parameters(), lr=1e-3)
    for _ in range(iters):
        x, y = torch.randn(8, 5), torch.randint(0, 3, (8,))
        optimizer.zero_grad()
        with torch.no_grad() if fix == "no_grad" else contextlib.nullcontext():
            t_logits = teacher(x)
        s_logits = student(x)
        soft = F.kl_div(F.log_softmax(s_logits / 2, dim=1), F.softmax(t_logits / 2, dim=1), reduction="batchmean")
        loss = soft + F.cross_entropy(s_logits, y)
        loss.backward()
        optimizer.step()


def test_distillation_teacher_not_detached_is_a_leak() -> None:
    with lens.watch() as w:
        distillation(iters=3, fix=None)
    f = by_rule(w.report.findings, "detach-leak")
    assert f.severity == "warning"
    assert set(f.params) == {"teacher.0.weight", "teacher.0.bias", "teacher.2.weight", "teacher.2.bias"}
    assert f.tensor == "t_logits"
    assert f.backward is not None and f.backward.line == line(distillation, "loss.backward()")
    assert f.extra["for"] == ["optimizer"]
    # the culprit is where the teacher's output is made with its graph; the backward is a label
    assert f.site.line == line(distillation, "t_logits = teacher(x)")
    assert any(lab.site.line == line(distillation, "loss.backward()") for lab in f.labels)
    assert f.count == 3
    assert "teacher.requires_grad_(False)" in f.fix
    assert rules(w.report.findings) == {"detach-leak"}


@pytest.mark.parametrize("fix", ["frozen", "no_grad"])
def test_distillation_with_frozen_teacher_is_silent(fix: str) -> None:
    with lens.watch() as w:
        distillation(iters=3, fix=fix)
    assert w.report.findings == ()


def multi_task(iters: int) -> None:
    trunk, head_a, head_b = mlp(4, 8), nn.Linear(8, 2), nn.Linear(8, 1)
    optimizer = torch.optim.SGD([*trunk.parameters(), *head_a.parameters(), *head_b.parameters()], lr=0.01)
    for _ in range(iters):
        x = torch.randn(8, 4)
        h = trunk(x)
        loss = F.cross_entropy(head_a(h), torch.randint(0, 2, (8,))) + 0.5 * F.mse_loss(head_b(h), torch.randn(8, 1))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()


def test_multi_task_summed_loss_is_silent() -> None:
    with lens.watch() as w:
        multi_task(iters=3)
    assert w.report.findings == ()


def multi_task_two_optimizers(iters: int) -> None:
    trunk, head_a, head_b = mlp(4, 8), nn.Linear(8, 2), nn.Linear(8, 1)
    opt_a = torch.optim.SGD([*trunk.parameters(), *head_a.parameters()], lr=0.01)
    opt_b = torch.optim.SGD(head_b.parameters(), lr=0.01)
    for _ in range(iters):
        x = torch.randn(8, 4)
        h = trunk(x)
        loss_a = F.cross_entropy(head_a(h), torch.randint(0, 2, (8,)))
        loss_b = F.mse_loss(head_b(h.detach()), torch.randn(8, 1))
        opt_a.zero_grad()
        opt_b.zero_grad()
        (loss_a + loss_b).backward()
        opt_a.step()
        opt_b.step()


def test_multi_task_two_optimizers_summed_loss_is_silent() -> None:
    with lens.watch() as w:
        multi_task_two_optimizers(iters=3)
    assert w.report.findings == ()


# ----------------------------------------------------------------------------------------------
# the lens itself: hooks come off, errors keep their type and message, numbers unchanged
# ----------------------------------------------------------------------------------------------


def _global_state() -> tuple:
    from torch.nn.modules import module as m
    from torch.optim import optimizer as o

    return (
        torch.autograd.backward,
        torch.autograd.grad,
        getattr(torch.autograd.graph, "_engine_run_backward", None),
        getattr(torch.autograd, "_engine_run_backward", None),
        torch.optim.Optimizer.__dict__["zero_grad"],
        torch.nn.Module.__dict__["zero_grad"],
        len(m._global_forward_pre_hooks),
        len(m._global_forward_hooks),
        len(o._global_optimizer_pre_hooks),
        len(o._global_optimizer_post_hooks),
    )


def test_hooks_come_off_on_exit() -> None:
    before = _global_state()
    with lens.watch():
        assert _global_state() != before
        missing_zero_grad_loop()
    assert _global_state() == before


def test_hooks_come_off_when_the_body_raises() -> None:
    before = _global_state()
    with pytest.raises(ValueError, match="boom"):
        with lens.watch():
            missing_zero_grad_loop()
            raise ValueError("boom")
    assert _global_state() == before


def test_autograd_error_keeps_type_and_message() -> None:
    def fail() -> None:
        x = torch.randn(3, requires_grad=True)
        y = (x.exp() * 2).sum()
        y.backward()
        y.backward()

    with pytest.raises(RuntimeError) as bare:
        fail()
    before = _global_state()
    with pytest.raises(RuntimeError) as watched:
        with lens.watch() as w:
            fail()
    assert _global_state() == before
    assert type(watched.value) is type(bare.value)
    assert str(watched.value) == str(bare.value)
    assert not getattr(bare.value, "__notes__", None)
    [note] = watched.value.__notes__
    f = by_rule(w.report.findings, "second-backward")
    assert f.text() in note
    assert w.report.status == "error"


def test_training_is_bitwise_unchanged() -> None:
    def train() -> list[torch.Tensor]:
        torch.manual_seed(1)
        netG, netD = Gen(), Disc()
        optimizerD = torch.optim.Adam(netD.parameters(), lr=1e-2)
        optimizerG = torch.optim.Adam(netG.parameters(), lr=1e-2)
        for _ in range(3):
            fake = netG(torch.randn(8, 4))
            optimizerD.zero_grad()
            errD = F.softplus(netD(fake)).mean() + F.softplus(-netD(torch.randn(8, 6))).mean()
            errD.backward(retain_graph=True)
            optimizerD.step()
            errG = F.softplus(-netD(fake)).mean()
            errG.backward()
            optimizerG.step()
        return [p.detach().clone() for p in [*netG.parameters(), *netD.parameters()]] + [
            p.grad.clone() for p in netG.parameters()
        ]

    bare = train()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with lens.watch():
            watched = train()
    assert all(torch.equal(a, b) for a, b in zip(bare, watched, strict=True))


def a2c_two_optimizers(iters: int) -> None:
    actor, critic = mlp(4, 3), mlp(4, 1)
    actor_opt = torch.optim.Adam(actor.parameters(), lr=1e-3)
    critic_opt = torch.optim.Adam(critic.parameters(), lr=1e-3)
    for _ in range(iters):
        s, ret = torch.randn(8, 4), torch.randn(8, 1)
        dist = torch.distributions.Categorical(logits=actor(s))
        a = dist.sample()
        value = critic(s)
        advantage = ret - value
        actor_loss = -(dist.log_prob(a) * advantage.detach().squeeze(1)).mean()
        critic_loss = advantage.pow(2).mean()
        actor_opt.zero_grad()
        critic_opt.zero_grad()
        (actor_loss + 0.5 * critic_loss - 0.01 * dist.entropy().mean()).backward()
        actor_opt.step()
        critic_opt.step()


def test_a2c_summed_loss_with_two_optimizers_is_silent() -> None:
    with lens.watch() as w:
        a2c_two_optimizers(iters=3)
    assert w.report.findings == ()


def sac(iters: int) -> None:
    policy, q1 = mlp(3, 4), Critic()
    log_alpha = torch.zeros(1, requires_grad=True)
    policy_opt = torch.optim.Adam(policy.parameters(), lr=3e-4)
    q_opt = torch.optim.Adam(q1.parameters(), lr=3e-4)
    alpha_opt = torch.optim.Adam([log_alpha], lr=3e-4)
    for _ in range(iters):
        s, a, target = torch.randn(8, 3), torch.rand(8, 2), torch.randn(8, 1)
        q_loss = F.mse_loss(q1(s, a), target)
        q_opt.zero_grad()
        q_loss.backward()
        q_opt.step()
        mu, log_std = policy(s).chunk(2, dim=1)
        normal = torch.distributions.Normal(mu, log_std.clamp(-5, 2).exp())
        x = normal.rsample()
        a_new = torch.tanh(x)
        logp = (normal.log_prob(x) - torch.log(1 - a_new.pow(2) + 1e-6)).sum(1, keepdim=True)
        alpha = log_alpha.exp().detach()
        policy_loss = (alpha * logp - q1(s, a_new)).mean()
        policy_opt.zero_grad()
        policy_loss.backward()
        policy_opt.step()
        alpha_loss = -(log_alpha * (logp + 2.0).detach()).mean()
        alpha_opt.zero_grad()
        alpha_loss.backward()
        alpha_opt.step()


def test_sac_is_silent() -> None:
    with lens.watch() as w:
        sac(iters=3)
    assert w.report.findings == ()


def gan_zero_at_top(iters: int) -> None:
    netG, netD = Gen(), Disc()
    optimizerD = torch.optim.Adam(netD.parameters(), lr=2e-4)
    optimizerG = torch.optim.Adam(netG.parameters(), lr=2e-4)
    for _ in range(iters):
        optimizerD.zero_grad()
        optimizerG.zero_grad()
        fake = netG(torch.randn(8, 4))
        errD = F.softplus(netD(fake)).mean() + F.softplus(-netD(torch.randn(8, 6))).mean()
        errD.backward()
        optimizerD.step()
        errG = F.softplus(-netD(netG(torch.randn(8, 4)))).mean()
        errG.backward()
        optimizerG.step()


def test_gan_zeroed_only_at_the_top_steps_generator_with_discriminator_gradient() -> None:
    with lens.watch() as w:
        gan_zero_at_top(iters=3)
    f = by_rule(w.report.findings, "stray-grad")
    assert f.optimizer == "optimizerG"
    assert f.site.line == line(gan_zero_at_top, "optimizerG.step()")
    assert f.backward is not None and f.backward.line == line(gan_zero_at_top, "errD.backward()")
    assert f.tensor == "fake"
    assert f.count == 3
    assert "missing-zero-grad" not in rules(w.report.findings)


def encoder_decoder_two_optimizers(iters: int) -> None:
    encoder, decoder = mlp(6, 3), mlp(3, 6)
    enc_opt = torch.optim.Adam(encoder.parameters(), lr=1e-3)
    dec_opt = torch.optim.SGD(decoder.parameters(), lr=1e-2)
    for _ in range(iters):
        x = torch.randn(8, 6)
        loss = F.mse_loss(decoder(encoder(x)), x)
        enc_opt.zero_grad()
        dec_opt.zero_grad()
        loss.backward()
        enc_opt.step()
        dec_opt.step()


def test_one_loss_through_two_networks_with_their_own_optimizers_is_silent() -> None:
    # backbone/head fine-tuning with two optimizers has the same shape: one loss trains both
    with lens.watch() as w:
        encoder_decoder_two_optimizers(iters=3)
    assert w.report.findings == ()


def multi_task_shared_trunk(iters: int) -> None:
    trunk, head_a, head_b = mlp(4, 8), nn.Linear(8, 2), nn.Linear(8, 1)
    opt_a = torch.optim.SGD([*trunk.parameters(), *head_a.parameters()], lr=0.01)
    opt_b = torch.optim.SGD(head_b.parameters(), lr=0.01)
    for _ in range(iters):
        h = trunk(torch.randn(8, 4))
        loss = F.cross_entropy(head_a(h), torch.randint(0, 2, (8,))) + F.mse_loss(head_b(h), torch.randn(8, 1))
        opt_a.zero_grad()
        opt_b.zero_grad()
        loss.backward()
        opt_a.step()
        opt_b.step()


def test_multi_task_heads_with_their_own_optimizer_are_silent() -> None:
    with lens.watch() as w:
        multi_task_shared_trunk(iters=3)
    assert w.report.findings == ()


def nonleaf_grad_read() -> torch.Tensor | None:
    layer = nn.Linear(3, 2)
    h = layer(torch.randn(2, 3))
    h.sum().backward()
    return h.grad


def test_nonleaf_grad() -> None:
    with lens.watch() as w:
        assert nonleaf_grad_read() is None
    [f] = w.report.findings
    assert (f.rule, f.severity) == ("nonleaf-grad", "warning")
    assert f.site.line == line(nonleaf_grad_read, "return h.grad")
