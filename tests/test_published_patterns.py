"""The patterns of published training loops (GAN zoos, RL agents, language-model trainers).

Each loop here is written the way such code is commonly written; each buggy one has a correct twin.
The correct ones must leave the lens silent and train bit for bit as without it; the buggy ones
must give the right finding: rule, line, parameter names, optimizer.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import autograd_lens as lens
from autograd_lens import Finding

from test_corpus import line, mlp, pnames


@pytest.fixture(autouse=True, scope="module")
def _one_thread() -> Iterator[None]:
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def watched(fn: Callable[[], None], raises: type[BaseException] | None = None) -> tuple[Finding, ...]:
    torch.manual_seed(0)
    with lens.watch() as w:
        if raises is None:
            fn()
        else:
            with pytest.raises(raises):
                fn()
    assert w.internal_errors == []
    return w.report.findings


def short(findings: tuple[Finding, ...]) -> list[str]:
    return [f"{f.rule}:{f.site.line if f.site else None}:{f.optimizer}:{sorted(f.params)}" for f in findings]


@dataclass
class Expect:
    rule: str
    at: str  # the statement the finding points at (its first characters)
    params: Callable[[], set[str]] | None = None
    optimizer: str | None = None
    backward: str | None = None  # the statement of the backward call it names
    tensor: str | None = None


def body(fn: Callable[[], None]) -> Callable[[], None]:
    """The function that holds the loop: ``fn`` itself, or the twin it calls with the bug switched on."""
    src = inspect.getsource(fn).split("\n", 1)[1]
    called = [v for k, v in globals().items() if inspect.isfunction(v) and v is not fn and f"{k}(" in src]
    return called[0] if len(called) == 1 and len(src.strip().splitlines()) == 1 else fn


def check(fn: Callable[[], None], expected: list[Expect], raises: type[BaseException] | None = None) -> tuple[Finding, ...]:
    findings = watched(fn, raises)
    assert sorted(f.rule for f in findings) == sorted(e.rule for e in expected), short(findings)
    code = body(fn)
    for e in expected:
        [f] = [f for f in findings if f.rule == e.rule]
        assert f.site is not None and f.site.line == line(code, e.at), (e.rule, short(findings))
        if e.params is not None:
            assert set(f.params) == e.params(), (e.rule, f.params)
        assert f.optimizer == e.optimizer, (e.rule, f.optimizer)
        if e.backward is not None:
            assert f.backward is not None and f.backward.line == line(code, e.backward), (e.rule, f.backward)
        if e.tensor is not None:
            assert f.tensor == e.tensor, (e.rule, f.tensor)
    return findings


def trains_the_same(fn: Callable[[], None]) -> None:
    """Parameters after the loop are bitwise equal with and without the lens."""

    def final() -> list[torch.Tensor]:
        torch.manual_seed(0)
        params: list[torch.Tensor] = []
        orig = nn.Module.__init__

        def record(self: nn.Module, *a: object, **k: object) -> None:
            orig(self, *a, **k)
            params.append(self)  # type: ignore[arg-type]

        nn.Module.__init__ = record  # type: ignore[method-assign]
        try:
            fn()
        finally:
            nn.Module.__init__ = orig  # type: ignore[method-assign]
        return [p.detach().clone() for m in params for p in m.parameters(recurse=False)]  # type: ignore[attr-defined]

    bare = final()
    with lens.watch():
        under = final()
    assert len(bare) == len(under) > 0
    assert all(torch.equal(a, b) for a, b in zip(bare, under))


# ----------------------------------------------------------------------------------------------
# 1. in-place work on .grad between backward and step
# ----------------------------------------------------------------------------------------------


class CharLSTM(nn.Module):
    def __init__(self, vocab: int = 11, hidden: int = 8) -> None:
        super().__init__()
        self.encoder = nn.Embedding(vocab, hidden)
        self.rnn = nn.LSTM(hidden, hidden, batch_first=True)
        self.decoder = nn.Linear(hidden, vocab)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, _ = self.rnn(self.encoder(x))
        return self.decoder(out)


def lm_clip(iters: int = 3, zero: bool = True) -> None:
    model = CharLSTM()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    for _ in range(iters):
        x = torch.randint(0, 11, (4, 6))
        if zero:
            optimizer.zero_grad()
        logits = model(x[:, :-1])
        loss = F.cross_entropy(logits.reshape(-1, 11), x[:, 1:].reshape(-1))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 0.25)
        optimizer.step()


def lm_clip_no_zero_grad(iters: int = 3) -> None:
    lm_clip(iters, zero=False)


def rl_clip_value_and_hand_zeroing(iters: int = 3) -> None:
    policy = mlp(4, 2)
    optimizer = torch.optim.RMSprop(policy.parameters(), lr=1e-3)
    for it in range(iters):
        if it:
            for p in policy.parameters():
                p.grad.data.zero_()  # zeroing by hand, as older code does
        obs = torch.randn(8, 4)
        logp = torch.log_softmax(policy(obs), -1)[:, 0]
        loss = -(logp * torch.randn(8)).mean()
        loss.backward()
        for p in policy.parameters():
            p.grad.data.clamp_(-1, 1)
        torch.nn.utils.clip_grad_value_(policy.parameters(), 0.5)
        optimizer.step()


def rl_grad_mul_no_zero(iters: int = 3) -> None:
    policy = mlp(4, 2)
    optimizer = torch.optim.RMSprop(policy.parameters(), lr=1e-3)
    for _ in range(iters):
        obs = torch.randn(8, 4)
        logp = torch.log_softmax(policy(obs), -1)[:, 0]
        loss = -(logp * torch.randn(8)).mean()
        loss.backward()
        for p in policy.parameters():
            p.grad.mul_(0.5)
        optimizer.step()


def gpt_accumulate_amp(iters: int = 2, micro: int = 2, zero: bool = True) -> None:
    model = nn.Sequential(nn.Embedding(11, 8), nn.Linear(8, 11))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.1)
    scaler = torch.amp.GradScaler("cpu", init_scale=256.0)
    for _ in range(iters):
        for _ in range(micro):
            x = torch.randint(0, 11, (4, 5))
            with torch.autocast("cpu", dtype=torch.bfloat16):
                logits = model(x[:, :-1])
            loss = F.cross_entropy(logits.float().reshape(-1, 11), x[:, 1:].reshape(-1)) / micro
            scaler.scale(loss).backward()
        scaler.unscale_(optimizer)
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        scaler.step(optimizer)
        scaler.update()
        if zero:
            optimizer.zero_grad(set_to_none=True)


def gpt_accumulate_amp_no_zero_grad(iters: int = 2) -> None:
    gpt_accumulate_amp(iters, zero=False)


# ----------------------------------------------------------------------------------------------
# 4. networks whose forward begins with an op that has no parameters
# ----------------------------------------------------------------------------------------------


class CondGenerator(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.label_emb = nn.Embedding(3, 3)
        self.model = nn.Sequential(nn.Linear(7, 16), nn.LeakyReLU(0.2), nn.Linear(16, 16), nn.Tanh())

    def forward(self, noise: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        gen_input = torch.cat((self.label_emb(labels), noise), -1)
        img = self.model(gen_input)
        return img.view(img.size(0), 1, 4, 4)


class CondDiscriminator(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.label_embedding = nn.Embedding(3, 3)
        self.model = nn.Sequential(nn.Linear(19, 16), nn.LeakyReLU(0.2), nn.Linear(16, 1))

    def forward(self, img: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        d_in = torch.cat((img.view(img.size(0), -1), self.label_embedding(labels)), -1)
        return self.model(d_in)


class FlatDiscriminator(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.model = nn.Sequential(nn.Linear(16, 16), nn.LeakyReLU(0.2), nn.Linear(16, 1), nn.Sigmoid())

    def forward(self, img: torch.Tensor) -> torch.Tensor:
        x = (img - 0.5) / 0.5
        return self.model(torch.flatten(x, 1))


def cgan_d_first(iters: int = 3, detach: bool = True) -> None:
    generator, discriminator = CondGenerator(), CondDiscriminator()
    optimizer_G = torch.optim.Adam(generator.parameters(), lr=2e-4)
    optimizer_D = torch.optim.Adam(discriminator.parameters(), lr=2e-4)
    adversarial_loss = nn.MSELoss()
    for _ in range(iters):
        real_imgs, labels = torch.randn(8, 1, 4, 4), torch.randint(0, 3, (8,))
        valid, fake = torch.ones(8, 1), torch.zeros(8, 1)
        z, gen_labels = torch.randn(8, 4), torch.randint(0, 3, (8,))
        optimizer_D.zero_grad()
        gen_imgs = generator(z, gen_labels)
        d_real_loss = adversarial_loss(discriminator(real_imgs, labels), valid)
        d_fake_loss = adversarial_loss(discriminator(gen_imgs.detach() if detach else gen_imgs, gen_labels), fake)
        d_loss = (d_real_loss + d_fake_loss) / 2
        d_loss.backward()
        optimizer_D.step()
        optimizer_G.zero_grad()
        gen_imgs = generator(z, gen_labels)
        g_loss = adversarial_loss(discriminator(gen_imgs, gen_labels), valid)
        g_loss.backward()
        optimizer_G.step()


def cgan_d_first_no_detach(iters: int = 3) -> None:
    cgan_d_first(iters, detach=False)


def gan_flat_d(iters: int = 3, detach: bool = True) -> None:
    netG, netD = mlp(4, 16), FlatDiscriminator()
    optimizerG = torch.optim.Adam(netG.parameters(), lr=2e-4)
    optimizerD = torch.optim.Adam(netD.parameters(), lr=2e-4)
    criterion = nn.BCELoss()
    for _ in range(iters):
        real = torch.rand(8, 1, 4, 4)
        netD.zero_grad()
        fake = torch.tanh(netG(torch.randn(8, 4))).view(8, 1, 4, 4)
        errD = criterion(netD(real), torch.ones(8, 1)) + criterion(netD(fake.detach() if detach else fake), torch.zeros(8, 1))
        errD.backward(retain_graph=True)
        optimizerD.step()
        netG.zero_grad()
        errG = criterion(netD(fake), torch.ones(8, 1))
        errG.backward()
        optimizerG.step()


def gan_flat_d_no_detach(iters: int = 3) -> None:
    gan_flat_d(iters, detach=False)


CORRECT = [lm_clip, rl_clip_value_and_hand_zeroing, gpt_accumulate_amp, cgan_d_first, gan_flat_d]


@pytest.mark.parametrize("fn", CORRECT, ids=lambda fn: fn.__name__)
def test_correct_loop_is_silent(fn: Callable[[], None]) -> None:
    findings = watched(fn)
    assert findings == (), short(findings)


@pytest.mark.parametrize("fn", CORRECT, ids=lambda fn: fn.__name__)
def test_correct_loop_trains_the_same_under_the_lens(fn: Callable[[], None]) -> None:
    trains_the_same(fn)


def test_clipping_between_backward_and_step_keeps_the_provenance_of_grad() -> None:
    check(lm_clip_no_zero_grad, [
        Expect("missing-zero-grad", "optimizer.step()", lambda: pnames("model", CharLSTM()), "optimizer",
               "loss.backward()"),
    ])


def test_in_place_scaling_of_grad_by_hand_keeps_its_provenance() -> None:
    check(rl_grad_mul_no_zero, [
        Expect("missing-zero-grad", "optimizer.step()", lambda: pnames("policy", mlp(4, 2)), "optimizer",
               "loss.backward()"),
    ])


def test_unscale_and_clip_under_grad_scaler_with_accumulation_keep_provenance() -> None:
    check(gpt_accumulate_amp_no_zero_grad, [
        Expect("missing-zero-grad", "scaler.step(optimizer)",
               lambda: pnames("model", nn.Sequential(nn.Embedding(11, 8), nn.Linear(8, 11))), "optimizer",
               "scaler.scale(loss).backward()"),
    ])


def test_leak_into_the_generator_through_a_discriminator_that_begins_with_view_and_cat() -> None:
    [f] = check(cgan_d_first_no_detach, [
        Expect("detach-leak", "d_fake_loss = ", lambda: pnames("generator", CondGenerator()), "optimizer_G",
               "d_loss.backward()", "gen_imgs"),
    ])
    assert "discriminator(gen_imgs.detach())" in f.help


def test_leak_through_a_discriminator_that_normalises_and_flattens_first() -> None:
    check(gan_flat_d_no_detach, [
        Expect("detach-leak", "errD = ", lambda: pnames("netG", mlp(4, 16)), "optimizerG",
               "errD.backward(retain_graph=True)", "fake"),
    ])


def test_graph_nodes_belong_to_the_module_whose_forward_made_them() -> None:
    netG, netD = mlp(4, 16), FlatDiscriminator()
    with lens.watch() as w:
        fake = torch.tanh(netG(torch.randn(8, 4))).view(8, 1, 4, 4)
        loss = nn.BCELoss()(netD(fake), torch.ones(8, 1))
        loss.backward()
    [g] = w.graphs.values()
    module: dict[str, set[str | None]] = {}
    for n in g.nodes:
        if n.kind == "op":
            module.setdefault(n.op, set()).add(n.module)
    assert module["SubBackward0"] == {"netD"}  # the input normalisation, before any parameter
    assert module["ViewBackward0"] == {None, "netD"}  # `.view` on netG's output; netD's flatten
    assert module["SigmoidBackward0"] == {"netD.model.3"}
    assert module["LeakyReluBackward0"] == {"netD.model.1"}
    assert module["ReluBackward0"] == {"netG.1"}
    assert module["BinaryCrossEntropyBackward0"] == {None}  # the criterion runs outside every network
    assert module["TanhBackward0"] == {None}  # torch.tanh on netG's output, outside its forward
