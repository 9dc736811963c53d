"""The patterns of published training loops (GAN zoos, RL agents, language-model trainers).

Each loop here is written the way such code is commonly written; each buggy one has a correct twin.
The correct ones must leave the lens silent and train bit for bit as without it; the buggy ones
must give the right finding: rule, line, parameter names, optimizer.
"""

from __future__ import annotations

import copy
import inspect
import re
from collections.abc import Callable

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import autograd_lens as lens
from autograd_lens import Finding

from helpers import Expect, by_rule, one_thread, rules, short, watched  # noqa: F401  (one_thread: a fixture)
from test_corpus import line, mlp, pnames, r1_penalty_gan


pytestmark = pytest.mark.usefixtures("one_thread")


def body(fn: Callable[[], None]) -> Callable[[], None]:
    """The function that holds the loop: ``fn`` itself, or the twin it calls with the bug switched on."""
    src = inspect.getsource(fn).split("\n", 1)[1]
    called = [v for k, v in globals().items() if inspect.isfunction(v) and v is not fn and re.search(rf"\b{k}\(", src)]
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
# 2. backward inside optimizer.step(closure)
# ----------------------------------------------------------------------------------------------


class Sequence(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lstm1 = nn.LSTMCell(1, 8)
        self.linear = nn.Linear(8, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = c = torch.zeros(x.size(0), 8)
        outputs = []
        for t in x.split(1, dim=1):
            h, c = self.lstm1(t, (h, c))
            outputs.append(self.linear(h))
        return torch.cat(outputs, dim=1)


def lbfgs_sequence(steps: int = 2, zero: bool = True) -> None:
    seq = Sequence()
    criterion = nn.MSELoss()
    optimizer = torch.optim.LBFGS(seq.parameters(), lr=0.5, max_iter=3)
    data = torch.sin(torch.linspace(0, 3, 24)).view(2, 12)
    inp, target = data[:, :-1], data[:, 1:]
    for _ in range(steps):
        def closure() -> torch.Tensor:
            if zero:
                optimizer.zero_grad()
            out = seq(inp)
            loss = criterion(out, target)
            loss.backward()
            return loss

        optimizer.step(closure)


def lbfgs_closure_without_zero_grad(steps: int = 2) -> None:
    lbfgs_sequence(steps, zero=False)


def sgd_closure(iters: int = 3) -> None:
    model = mlp(4, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    for _ in range(iters):
        x, y = torch.randn(8, 4), torch.randn(8, 1)
        optimizer.zero_grad()

        def closure() -> torch.Tensor:
            loss = F.mse_loss(model(x), y)
            loss.backward()
            return loss

        optimizer.step(closure)


# ----------------------------------------------------------------------------------------------
# 3. parameter updates without an optimizer object
# ----------------------------------------------------------------------------------------------


def manual_sgd_data_add(iters: int = 3, zero: bool = True) -> None:
    model = CharLSTM()
    lr = 20.0
    for _ in range(iters):
        x = torch.randint(0, 11, (4, 6))
        if zero:
            model.zero_grad()
        output = model(x[:, :-1])
        loss = F.cross_entropy(output.reshape(-1, 11), x[:, 1:].reshape(-1))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 0.25)
        for p in model.parameters():
            p.data.add_(p.grad, alpha=-lr)


def manual_sgd_without_zero_grad(iters: int = 3) -> None:
    manual_sgd_data_add(iters, zero=False)


def manual_sgd_no_grad(iters: int = 3, zero: bool = True) -> None:
    w1 = nn.Linear(4, 8)
    w2 = nn.Linear(8, 1)
    net = nn.Sequential(w1, nn.Tanh(), w2)
    learning_rate = 1e-2
    for _ in range(iters):
        loss = F.mse_loss(net(torch.randn(8, 4)), torch.randn(8, 1))
        loss.backward()
        with torch.no_grad():
            for param in net.parameters():
                param -= learning_rate * param.grad
                if zero:
                    param.grad.zero_()


def manual_sgd_no_grad_without_zeroing(iters: int = 3) -> None:
    manual_sgd_no_grad(iters, zero=False)


def manual_sgd_eval_backward(iters: int = 3, eval_every: int = 2) -> None:
    model = mlp(4, 2)
    lr = 0.05
    model.zero_grad()
    for it in range(iters):
        model.train()
        train_loss = F.cross_entropy(model(torch.randn(8, 4)), torch.randint(0, 2, (8,)))
        train_loss.backward()
        for p in model.parameters():
            p.data -= lr * p.grad.data
        model.zero_grad()
        if it % eval_every == 0:
            model.eval()
            x = torch.randn(4, 4, requires_grad=True)
            saliency_loss = model(x).max(dim=1).values.sum()
            saliency_loss.backward()  # for x.grad; also writes .grad of the parameters


def manual_sgd_dead_head(iters: int = 3) -> None:
    model = TwoHeadNet()
    for _ in range(iters):
        model.zero_grad()
        loss = F.mse_loss(model(torch.randn(8, 4)), torch.randn(8, 1))
        loss.backward()
        for p in model.parameters():
            if p.grad is not None:
                p.data.add_(p.grad, alpha=-0.1)


class TwoHeadNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Linear(4, 8)
        self.head = nn.Linear(8, 1)
        self.aux = nn.Linear(8, 3)  # never used in forward

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.body(x)))


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


# ----------------------------------------------------------------------------------------------
# 5. optimizers that share parameters
# ----------------------------------------------------------------------------------------------


class InfoDiscriminator(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Linear(16, 16), nn.LeakyReLU(0.2))
        self.adv_layer = nn.Linear(16, 1)
        self.aux_layer = nn.Linear(16, 3)
        self.latent_layer = nn.Linear(16, 2)

    def forward(self, img: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        out = self.body(img.view(img.size(0), -1))
        return self.adv_layer(out), self.aux_layer(out), self.latent_layer(out)


def infogan(iters: int = 3, zero_g: bool = True) -> None:
    import itertools

    generator, discriminator = mlp(7, 16), InfoDiscriminator()
    optimizer_G = torch.optim.Adam(generator.parameters(), lr=2e-4)
    optimizer_D = torch.optim.Adam(discriminator.parameters(), lr=2e-4)
    optimizer_info = torch.optim.Adam(itertools.chain(generator.parameters(), discriminator.parameters()), lr=2e-4)
    adversarial_loss, categorical_loss, continuous_loss = nn.MSELoss(), nn.CrossEntropyLoss(), nn.MSELoss()
    for _ in range(iters):
        real_imgs = torch.randn(8, 16)
        valid, fake = torch.ones(8, 1), torch.zeros(8, 1)
        z, labels, code = torch.randn(8, 2), torch.randint(0, 3, (8,)), torch.randn(8, 2)
        gen_input = torch.cat((z, F.one_hot(labels, 3).float(), code), -1)
        if zero_g:
            optimizer_G.zero_grad()
        gen_imgs = generator(gen_input)
        validity, _, _ = discriminator(gen_imgs)
        g_loss = adversarial_loss(validity, valid)
        g_loss.backward()
        optimizer_G.step()
        optimizer_D.zero_grad()
        real_pred, _, _ = discriminator(real_imgs)
        fake_pred, _, _ = discriminator(gen_imgs.detach())
        d_loss = (adversarial_loss(real_pred, valid) + adversarial_loss(fake_pred, fake)) / 2
        d_loss.backward()
        optimizer_D.step()
        optimizer_info.zero_grad()
        gen_imgs = generator(gen_input)
        _, pred_label, pred_code = discriminator(gen_imgs)
        info_loss = categorical_loss(pred_label, labels) + 0.1 * continuous_loss(pred_code, code)
        info_loss.backward()
        optimizer_info.step()


def infogan_generator_not_zeroed(iters: int = 3) -> None:
    infogan(iters, zero_g=False)


# ----------------------------------------------------------------------------------------------
# 6. one optimizer over several sub-networks
# ----------------------------------------------------------------------------------------------


class Agent(nn.Module):
    """Separate actor and critic heads, as single-file RL agents write them."""

    def __init__(self) -> None:
        super().__init__()
        self.critic = nn.Sequential(nn.Linear(4, 16), nn.Tanh(), nn.Linear(16, 1))
        self.actor = nn.Sequential(nn.Linear(4, 16), nn.Tanh(), nn.Linear(16, 2))

    def get_value(self, x: torch.Tensor) -> torch.Tensor:
        return self.critic(x)

    def get_action_and_value(self, x: torch.Tensor, action: torch.Tensor | None = None):  # noqa: ANN201
        probs = torch.distributions.Categorical(logits=self.actor(x))
        if action is None:
            action = probs.sample()
        return action, probs.log_prob(action), probs.entropy(), self.critic(x)


class TrunkAgent(nn.Module):
    """A shared trunk with policy and value heads (Atari-style agents)."""

    def __init__(self) -> None:
        super().__init__()
        self.network = nn.Sequential(nn.Linear(4, 16), nn.ReLU())
        self.actor = nn.Linear(16, 2)
        self.critic = nn.Linear(16, 1)

    def get_action_and_value(self, x: torch.Tensor, action: torch.Tensor | None = None):  # noqa: ANN201
        hidden = self.network(x)
        probs = torch.distributions.Categorical(logits=self.actor(hidden))
        if action is None:
            action = probs.sample()
        return action, probs.log_prob(action), probs.entropy(), self.critic(hidden)


def a2c(iters: int = 3, detach: bool = True, trunk: bool = False) -> None:
    agent = TrunkAgent() if trunk else Agent()
    optimizer = torch.optim.Adam(agent.parameters(), lr=7e-4)
    for _ in range(iters):
        obs, returns = torch.randn(8, 4), torch.randn(8)
        _, logprob, entropy, values = agent.get_action_and_value(obs)
        values = values.squeeze(-1)
        advantages = returns - values
        pg_loss = -(logprob * (advantages.detach() if detach else advantages)).mean()
        v_loss = advantages.pow(2).mean()
        loss = pg_loss + 0.5 * v_loss - 0.01 * entropy.mean()
        optimizer.zero_grad()
        loss.backward()
        nn.utils.clip_grad_norm_(agent.parameters(), 0.5)
        optimizer.step()


def a2c_advantage_not_detached(iters: int = 3) -> None:
    a2c(iters, detach=False)


def a2c_trunk(iters: int = 3) -> None:
    a2c(iters, trunk=True)


def a2c_trunk_advantage_not_detached(iters: int = 3) -> None:
    a2c(iters, detach=False, trunk=True)


def ppo_trunk(iters: int = 2, epochs: int = 2) -> None:
    agent = TrunkAgent()
    optimizer = torch.optim.Adam(agent.parameters(), lr=2.5e-4, eps=1e-5)
    for _ in range(iters):
        obs = torch.randn(16, 4)
        with torch.no_grad():
            actions, logprobs, _, values = agent.get_action_and_value(obs)
            returns = torch.randn(16)
            advantages = returns - values.squeeze(-1)
        for _ in range(epochs):
            _, newlogprob, entropy, newvalue = agent.get_action_and_value(obs, actions)
            ratio = (newlogprob - logprobs).exp()
            mb_advantages = (advantages - advantages.mean()) / (advantages.std() + 1e-8)
            pg_loss = torch.max(-mb_advantages * ratio, -mb_advantages * torch.clamp(ratio, 0.8, 1.2)).mean()
            v_loss = 0.5 * ((newvalue.squeeze(-1) - returns) ** 2).mean()
            loss = pg_loss - 0.01 * entropy.mean() + v_loss * 0.5
            optimizer.zero_grad()
            loss.backward()
            nn.utils.clip_grad_norm_(agent.parameters(), 0.5)
            optimizer.step()


class Policy(nn.Module):
    """An actor-critic that returns action scores and a state value from one module."""

    def __init__(self) -> None:
        super().__init__()
        self.affine1 = nn.Linear(4, 16)
        self.action_head = nn.Linear(16, 2)
        self.value_head = nn.Linear(16, 1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = F.relu(self.affine1(x))
        return F.softmax(self.action_head(x), dim=-1), self.value_head(x)


def episodic_actor_critic(episodes: int = 2, item: bool = True) -> None:
    model = Policy()
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-2)
    for _ in range(episodes):
        saved_actions, rewards = [], []
        for _ in range(5):
            probs, state_value = model(torch.randn(1, 4))
            m = torch.distributions.Categorical(probs)
            action = m.sample()
            saved_actions.append((m.log_prob(action), state_value))
            rewards.append(float(torch.rand(())))
        R, returns = 0.0, []
        for r in rewards[::-1]:
            R = r + 0.99 * R
            returns.insert(0, R)
        policy_losses, value_losses = [], []
        for (log_prob, value), R in zip(saved_actions, returns):
            advantage = R - value.item() if item else R - value
            policy_losses.append(-log_prob * advantage)
            value_losses.append(F.smooth_l1_loss(value, torch.tensor([[R]])))
        optimizer.zero_grad()
        loss = torch.stack(policy_losses).sum() + torch.stack(value_losses).sum()
        loss.backward()
        optimizer.step()


def episodic_actor_critic_without_item(episodes: int = 2) -> None:
    episodic_actor_critic(episodes, item=False)


def vae_one_optimizer(iters: int = 3) -> None:
    encoder, decoder = mlp(8, 4), mlp(2, 8)
    optimizer = torch.optim.Adam([*encoder.parameters(), *decoder.parameters()], lr=1e-3)
    for _ in range(iters):
        x = torch.randn(8, 8)
        mu, logvar = encoder(x).chunk(2, dim=-1)
        z = mu + torch.randn_like(mu) * (0.5 * logvar).exp()
        recon = F.mse_loss(decoder(z), x)
        kld = -0.5 * torch.mean(1 + logvar - mu.pow(2) - logvar.exp())
        loss = recon + kld
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()


def staged_fine_tune(iters: int = 2) -> None:
    model = nn.Sequential()
    model.add_module("backbone", mlp(4, 8))
    model.add_module("head", nn.Linear(8, 3))
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-2)
    model.backbone.requires_grad_(False)
    for _ in range(iters):
        optimizer.zero_grad()
        head_loss = F.cross_entropy(model(torch.randn(8, 4)), torch.randint(0, 3, (8,)))
        head_loss.backward()
        optimizer.step()
    model.backbone.requires_grad_(True)
    for _ in range(iters):
        optimizer.zero_grad()
        full_loss = F.cross_entropy(model(torch.randn(8, 4)), torch.randint(0, 3, (8,)))
        full_loss.backward()
        optimizer.step()


# ----------------------------------------------------------------------------------------------
# 7. names as the user holds them
# ----------------------------------------------------------------------------------------------


def sac_temperature(iters: int = 3) -> None:
    actor = mlp(4, 2)
    actor_optimizer = torch.optim.Adam(actor.parameters(), lr=3e-4)
    log_alpha = torch.zeros(1, requires_grad=True)
    a_optimizer = torch.optim.Adam([log_alpha], lr=3e-4)
    target_entropy = -2.0
    for _ in range(iters):
        obs = torch.randn(8, 4)
        log_pi = torch.log_softmax(actor(obs), -1)[:, 0]
        alpha = log_alpha.exp().item()
        actor_loss = (alpha * log_pi).mean()
        actor_optimizer.zero_grad()
        actor_loss.backward()
        actor_optimizer.step()
        with torch.no_grad():
            log_pi = torch.log_softmax(actor(obs), -1)[:, 0]
        alpha_loss = (-log_alpha.exp() * (log_pi + target_entropy)).mean()
        a_optimizer.zero_grad()
        alpha_loss.backward()
        a_optimizer.step()


# ----------------------------------------------------------------------------------------------
# 8. graphs kept alive by loss tensors carried across iterations
# ----------------------------------------------------------------------------------------------


def epoch_loss_sum(iters: int = 5, item: bool = True) -> None:
    model = mlp(4, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-2)
    epoch_loss = 0.0
    for _ in range(iters):
        optimizer.zero_grad()
        loss = F.mse_loss(model(torch.randn(8, 4)), torch.randn(8, 1))
        loss.backward(retain_graph=True)
        optimizer.step()
        epoch_loss += loss.item() if item else loss
    print(f"epoch loss {float(epoch_loss):.3f}")


def epoch_loss_keeps_graphs(iters: int = 5) -> None:
    epoch_loss_sum(iters, item=False)


def loss_history(iters: int = 5, item: bool = True) -> None:
    model = mlp(4, 1)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    history = []
    for _ in range(iters):
        optimizer.zero_grad()
        loss = F.mse_loss(model(torch.randn(8, 4)), torch.randn(8, 1))
        loss.backward()
        optimizer.step()
        history.append(loss.item() if item else loss)


def loss_history_keeps_graphs(iters: int = 5) -> None:
    loss_history(iters, item=False)


def running_loss(iters: int = 5, detach: bool = True) -> None:
    model = mlp(4, 1)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    running = torch.zeros(())
    for _ in range(iters):
        optimizer.zero_grad()
        loss = F.mse_loss(model(torch.randn(8, 4)), torch.randn(8, 1))
        loss.backward()
        optimizer.step()
        running = running + (loss.detach() if detach else loss)


def running_loss_keeps_graphs(iters: int = 5) -> None:
    running_loss(iters, detach=False)


# ----------------------------------------------------------------------------------------------
# messages that lead to the right fix
# ----------------------------------------------------------------------------------------------


def gan_g_step_first(iters: int = 2) -> None:
    generator, discriminator = mlp(4, 16), mlp(16, 1)
    optimizer_G = torch.optim.Adam(generator.parameters(), lr=2e-4)
    optimizer_D = torch.optim.Adam(discriminator.parameters(), lr=2e-4)
    adversarial_loss = nn.BCEWithLogitsLoss()
    for _ in range(iters):
        z, real_imgs = torch.randn(8, 4), torch.randn(8, 16)
        valid, fake = torch.ones(8, 1), torch.zeros(8, 1)
        optimizer_G.zero_grad()
        gen_imgs = generator(z)
        g_loss = adversarial_loss(discriminator(gen_imgs), valid)
        g_loss.backward()
        optimizer_G.step()
        optimizer_D.zero_grad()
        real_loss = adversarial_loss(discriminator(real_imgs), valid)
        fake_loss = adversarial_loss(discriminator(gen_imgs), fake)  # gen_imgs.detach() is missing
        d_loss = (real_loss + fake_loss) / 2
        d_loss.backward()
        optimizer_D.step()


def gan_d_step_first(iters: int = 2) -> None:
    netG, netD = mlp(4, 16), mlp(16, 1)
    optimizerG = torch.optim.Adam(netG.parameters(), lr=2e-4)
    optimizerD = torch.optim.Adam(netD.parameters(), lr=2e-4)
    criterion = nn.BCEWithLogitsLoss()
    for _ in range(iters):
        netD.zero_grad()
        fake = netG(torch.randn(8, 4))
        errD = criterion(netD(torch.randn(8, 16)), torch.ones(8, 1)) + criterion(netD(fake), torch.zeros(8, 1))
        errD.backward()
        optimizerD.step()
        netG.zero_grad()
        errG = criterion(netD(fake), torch.ones(8, 1))
        errG.backward()
        optimizerG.step()


def wgan_div(iters: int = 3, variant: str = "published") -> None:
    generator, discriminator = mlp(4, 16), mlp(16, 1)
    optimizer_G = torch.optim.Adam(generator.parameters(), lr=2e-4)
    optimizer_D = torch.optim.Adam(discriminator.parameters(), lr=2e-4)
    for _ in range(iters):
        real_imgs, z = torch.randn(8, 16, requires_grad=True), torch.randn(8, 4)
        optimizer_D.zero_grad()
        fake_imgs = generator(z)
        real_validity = discriminator(real_imgs)
        if variant == "fixed":  # as the finding's help says
            fake_imgs = fake_imgs.detach().requires_grad_()
        fake_validity = discriminator(fake_imgs)
        real_grad = torch.autograd.grad(real_validity, real_imgs, torch.ones_like(real_validity), create_graph=True, retain_graph=True)[0]
        fake_grad = torch.autograd.grad(fake_validity, fake_imgs, torch.ones_like(fake_validity), create_graph=True, retain_graph=True)[0]
        div_gp = (real_grad.pow(2).sum(1) ** 3).mean() + (fake_grad.pow(2).sum(1) ** 3).mean()
        d_loss = -torch.mean(real_validity) + torch.mean(fake_validity) + div_gp
        d_loss.backward()
        optimizer_D.step()
        optimizer_G.zero_grad()
        if variant != "reuse":  # the generator's step takes a new forward
            fake_validity = discriminator(generator(z))
        g_loss = -torch.mean(fake_validity)
        g_loss.backward()
        optimizer_G.step()


def wgan_div_reuses_the_discriminators_output() -> None:
    wgan_div(variant="reuse")


def wgan_div_detached_as_told() -> None:
    wgan_div(variant="fixed")


class WordLM(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.encoder = nn.Embedding(11, 8)
        self.rnn = nn.LSTM(8, 8, num_layers=2)
        self.decoder = nn.Linear(8, 11)

    def forward(self, x: torch.Tensor, hidden: tuple[torch.Tensor, torch.Tensor]):  # noqa: ANN201
        output, hidden = self.rnn(self.encoder(x), hidden)
        return self.decoder(output), hidden


def tbptt_lstm_without_repackage(chunks: int = 3) -> None:
    model = WordLM()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    hidden = (torch.zeros(2, 4, 8), torch.zeros(2, 4, 8))
    data = torch.randint(0, 11, (5 * chunks + 1, 4))
    for i in range(chunks):
        x, y = data[5 * i: 5 * i + 5], data[5 * i + 1: 5 * i + 6]
        model.zero_grad()
        output, hidden = model(x, hidden)
        loss = F.cross_entropy(output.view(-1, 11), y.reshape(-1))
        loss.backward()  # the next chunk's forward starts from this chunk's graph
        optimizer.step()


# ----------------------------------------------------------------------------------------------
# 9. meta-learning: inner loops of autograd.grad over fast weights
# ----------------------------------------------------------------------------------------------


class VarsLearner(nn.Module):
    """A learner that holds its weights in a ParameterList, returns that list from ``parameters()``
    and runs with the fast weights it is given (as published MAML learners do)."""

    def __init__(self) -> None:
        super().__init__()
        self.vars = nn.ParameterList([nn.Parameter(torch.randn(8, 4) * 0.3), nn.Parameter(torch.zeros(8)),
                                      nn.Parameter(torch.randn(2, 8) * 0.3), nn.Parameter(torch.zeros(2))])

    def forward(self, x: torch.Tensor, vars: list[torch.Tensor] | None = None) -> torch.Tensor:
        w1, b1, w2, b2 = self.vars if vars is None else vars
        return F.linear(F.relu(F.linear(x, w1, b1)), w2, b2)

    def parameters(self, recurse: bool = True) -> nn.ParameterList:  # type: ignore[override]
        return self.vars


class Meta(nn.Module):
    """First-order MAML: the meta step is taken inside the meta-learner's forward."""

    def __init__(self, zero: bool = True) -> None:
        super().__init__()
        self.net = VarsLearner()
        self.meta_optim = torch.optim.Adam(self.net.parameters(), lr=1e-3)
        self.zero = zero

    def forward(self, x_spt: torch.Tensor, y_spt: torch.Tensor, x_qry: torch.Tensor, y_qry: torch.Tensor) -> float:
        losses_q = 0
        for i in range(x_spt.size(0)):
            loss = F.cross_entropy(self.net(x_spt[i]), y_spt[i])
            grad = torch.autograd.grad(loss, self.net.parameters())
            fast_weights = [p - 0.4 * g for g, p in zip(grad, self.net.parameters())]
            losses_q = losses_q + F.cross_entropy(self.net(x_qry[i], fast_weights), y_qry[i])
        loss_q = losses_q / x_spt.size(0)
        if self.zero:
            self.meta_optim.zero_grad()
        loss_q.backward()
        self.meta_optim.step()
        return loss_q.item()


def maml_first_order(iters: int = 3, zero: bool = True) -> None:
    maml = Meta(zero)
    for _ in range(iters):
        x_spt, x_qry = torch.randn(2, 6, 4), torch.randn(2, 6, 4)
        y_spt, y_qry = torch.randint(0, 2, (2, 6)), torch.randint(0, 2, (2, 6))
        maml(x_spt, y_spt, x_qry, y_qry)


def maml_second_order(iters: int = 2, step_in_task: bool = False) -> None:
    model = mlp(4, 2)
    optimiser = torch.optim.Adam(model.parameters(), lr=1e-3)
    for _ in range(iters):
        task_losses = []
        for _task in range(2):
            x, y = torch.randn(6, 4), torch.randint(0, 2, (6,))
            fast_weights = dict(model.named_parameters())
            loss = F.cross_entropy(torch.func.functional_call(model, fast_weights, (x,)), y)
            gradients = torch.autograd.grad(loss, fast_weights.values(), create_graph=True)
            fast_weights = {n: p - 0.4 * g for (n, p), g in zip(fast_weights.items(), gradients)}
            loss = F.cross_entropy(torch.func.functional_call(model, fast_weights, (x,)), y)
            if step_in_task:
                loss.backward(retain_graph=True); optimiser.step()  # noqa: E702
            gradients = torch.autograd.grad(loss, fast_weights.values(), create_graph=True)
            task_losses.append(loss)
        optimiser.zero_grad()
        meta_batch_loss = torch.stack(task_losses).mean()
        meta_batch_loss.backward()
        optimiser.step()


def maml_step_in_every_task() -> None:
    maml_second_order(step_in_task=True)


# ----------------------------------------------------------------------------------------------
# 10. an agent object that keeps its optimizer; an optimizer that steps through another one
# ----------------------------------------------------------------------------------------------


class Preconditioned(torch.optim.Optimizer):
    """Reworks the gradient, then has an inner SGD over the same parameters apply it (as K-FAC)."""

    def __init__(self, model: nn.Module, lr: float = 0.1) -> None:
        super().__init__(model.parameters(), {})
        self.model = model
        self.optim = torch.optim.SGD(model.parameters(), lr=lr)

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> None:  # type: ignore[override]
        for p in self.model.parameters():
            p.grad.mul_(0.5)
        self.optim.step()


class A2CAgent:
    def __init__(self, actor_critic: nn.Module, precondition: bool) -> None:
        self.actor_critic = actor_critic
        self.optimizer = (Preconditioned(actor_critic) if precondition
                          else torch.optim.RMSprop(actor_critic.parameters(), lr=7e-4))

    def update(self, obs: torch.Tensor, returns: torch.Tensor, zero: bool) -> None:
        value_loss = (returns - self.actor_critic(obs)).pow(2).mean()
        if zero:
            self.optimizer.zero_grad()
        value_loss.backward()
        self.optimizer.step()


def a2c_agent_object(iters: int = 8, precondition: bool = False, zero: bool = True) -> None:
    actor_critic = mlp(4, 1)
    agent = A2CAgent(actor_critic, precondition)
    for _ in range(iters):
        agent.update(torch.randn(8, 4), torch.randn(8, 1), zero)


def a2c_preconditioned(iters: int = 8) -> None:
    a2c_agent_object(iters, precondition=True)


# ----------------------------------------------------------------------------------------------
# 11. a momentum (EMA) target network, as in BYOL and mean teachers
# ----------------------------------------------------------------------------------------------


def ema_target(iters: int = 4, no_grad: bool = True) -> None:
    online = mlp(4, 4)
    target = copy.deepcopy(online).requires_grad_(False)
    opt = torch.optim.Adam([*online.parameters(), *target.parameters()], lr=1e-3)
    for _ in range(iters):
        x = torch.randn(8, 4)
        with torch.no_grad():
            target_out = target(x)
        loss = F.mse_loss(online(x), target_out)
        opt.zero_grad()
        loss.backward()
        opt.step()
        with torch.set_grad_enabled(not no_grad):
            for t, o in zip(target.parameters(), online.parameters()):
                t.mul_(0.99).add_(o, alpha=0.01)


class EMAWrapper(nn.Module):
    """Holds the model being trained and its moving average (as ema_pytorch's `EMA` does)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.online_model = model
        self.ema_model = copy.deepcopy(model).requires_grad_(False)

    @torch.no_grad()
    def update(self) -> None:
        for e, p in zip(self.ema_model.parameters(), self.online_model.parameters()):
            e.lerp_(p, 0.01)


def ema_wrapper(iters: int = 4, zero: bool = True) -> None:
    model = mlp(4, 1)
    ema = EMAWrapper(model)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    for _ in range(iters):
        loss = model(torch.randn(8, 4)).pow(2).mean()
        if zero:
            opt.zero_grad()
        loss.backward()
        opt.step()
        ema.update()


def ema_target_with_grad(iters: int = 4) -> None:
    ema_target(iters, no_grad=False)


# ----------------------------------------------------------------------------------------------
# 12. a zero_grad between the backward and the step
# ----------------------------------------------------------------------------------------------


def zero_grad_placed(iters: int = 4, between: bool = False, set_to_none: bool = True) -> None:
    model = mlp(4, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    for _ in range(iters):
        if not between:
            optimizer.zero_grad(set_to_none=set_to_none)
        loss = model(torch.randn(8, 4)).pow(2).mean()
        loss.backward()
        if between:
            optimizer.zero_grad(set_to_none=set_to_none)
        optimizer.step()


def zero_grad_between_backward_and_step(iters: int = 4) -> None:
    zero_grad_placed(iters, between=True)


def zero_grad_to_zeros_between_backward_and_step(iters: int = 4) -> None:
    zero_grad_placed(iters, between=True, set_to_none=False)


# ----------------------------------------------------------------------------------------------
# 13. a generator and a discriminator that are parts of one module (as in a LightningModule)
# ----------------------------------------------------------------------------------------------


class GANModule(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.generator = mlp(4, 6)
        self.discriminator = mlp(6, 1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.generator(z)


def gan_parts(iters: int = 4, detach: bool = True, through_forward: bool = False) -> None:
    model = GANModule()
    opt_g = torch.optim.Adam(model.generator.parameters(), lr=1e-3)
    opt_d = torch.optim.Adam(model.discriminator.parameters(), lr=1e-3)
    for _ in range(iters):
        imgs, z = torch.randn(8, 6), torch.randn(8, 4)
        g_loss = F.binary_cross_entropy_with_logits(model.discriminator(model(z)), torch.ones(8, 1))
        opt_g.zero_grad()
        g_loss.backward()
        opt_g.step()
        fake_imgs = model(z) if through_forward else model.generator(z)
        real_loss = F.binary_cross_entropy_with_logits(model.discriminator(imgs), torch.ones(8, 1))
        fake_loss = F.binary_cross_entropy_with_logits(model.discriminator(fake_imgs.detach() if detach else fake_imgs), torch.zeros(8, 1))
        d_loss = (real_loss + fake_loss) / 2
        opt_d.zero_grad()
        d_loss.backward()
        opt_d.step()


def gan_parts_no_detach(iters: int = 4) -> None:
    gan_parts(iters, detach=False)


def gan_parts_no_detach_through_forward(iters: int = 4) -> None:
    gan_parts(iters, detach=False, through_forward=True)


# ----------------------------------------------------------------------------------------------
# 14. gradient surgery (PCGrad): per-task gradients combined and assigned to `.grad` by hand
# ----------------------------------------------------------------------------------------------


def pcgrad_like(iters: int = 3) -> None:
    model = mlp(4, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    for _ in range(iters):
        out = model(torch.randn(8, 4))
        grads = []
        for objective in (out[:, 0].pow(2).mean(), out[:, 1].pow(2).mean()):
            opt.zero_grad()
            objective.backward(retain_graph=True)
            grads.append([p.grad.clone() for p in model.parameters()])
        opt.zero_grad()
        for p, g1, g2 in zip(model.parameters(), *grads):
            p.grad = g1 + g2  # (the projection of conflicting gradients left out)
        opt.step()


CORRECT = [
    lm_clip, rl_clip_value_and_hand_zeroing, gpt_accumulate_amp, cgan_d_first, gan_flat_d, infogan, a2c, a2c_trunk,
    ppo_trunk, episodic_actor_critic, vae_one_optimizer, staged_fine_tune, sac_temperature, lbfgs_sequence,
    sgd_closure, manual_sgd_data_add, manual_sgd_no_grad, epoch_loss_sum, loss_history, running_loss,
    maml_first_order, maml_second_order, a2c_agent_object, a2c_preconditioned, ema_target,
    wgan_div_detached_as_told, zero_grad_placed, gan_parts, ema_wrapper, pcgrad_like,
]


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
    [f] = check(gpt_accumulate_amp_no_zero_grad, [
        Expect("missing-zero-grad", "scaler.step(optimizer)",
               lambda: pnames("model", nn.Sequential(nn.Embedding(11, 8), nn.Linear(8, 11))), "optimizer",
               "scaler.scale(loss).backward()"),
    ])
    assert "call `optimizer.zero_grad()`" in f.fix, f.fix  # (not the scaler's, which steps it)
    assert "that an earlier `scaler.step(optimizer)` already applied" in f.message, f.message


def test_leak_into_the_generator_through_a_discriminator_that_begins_with_view_and_cat() -> None:
    [f] = check(cgan_d_first_no_detach, [
        Expect("detach-leak", "d_fake_loss = ", lambda: pnames("generator", CondGenerator()), "optimizer_G",
               "d_loss.backward()", "gen_imgs"),
    ])
    assert "discriminator(gen_imgs.detach())" in f.fix


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


def test_a_third_optimizer_over_both_networks_is_for_its_own_loss_and_g_steps_are_judged() -> None:
    gen = lambda: pnames("generator", mlp(7, 16))  # noqa: E731
    # optimizer_info.zero_grad() zeroes the generator too: what optimizer_G.step() applies again is
    # the info loss's gradient of the iteration before, meant for optimizer_info
    [stray] = check(infogan_generator_not_zeroed, [
        Expect("stray-grad", "optimizer_G.step()", gen, "optimizer_G", "info_loss.backward()"),
    ])
    assert "`info_loss.backward()` is for `optimizer_info`" in stray.notes[0]
    assert "after line" in stray.notes[1] and "before the next line" in stray.notes[1]


def critic() -> set[str]:
    return pnames("agent.critic", Agent().critic)


def test_an_advantage_not_detached_trains_the_critic_on_the_policy_term() -> None:
    leak, stray = sorted(check(a2c_advantage_not_detached, [
        Expect("detach-leak", "advantages = returns - values", critic, "optimizer", "loss.backward()", "advantages"),
        Expect("stray-grad", "optimizer.step()", critic, "optimizer", "loss.backward()", "advantages"),
    ]), key=lambda f: f.rule)
    assert "`agent.critic`" in leak.message and "`pg_loss`" in leak.message and "`agent.actor`" in leak.message
    assert leak.fix.endswith("`advantages = (returns - values).detach()`")
    assert "`agent.critic`" in stray.notes[0]


def test_an_advantage_not_detached_through_a_shared_trunk() -> None:
    check(a2c_trunk_advantage_not_detached, [
        Expect("detach-leak", "advantages = returns - values", lambda: {"agent.critic.weight", "agent.critic.bias"},
               "optimizer", "loss.backward()", "advantages"),
        Expect("stray-grad", "optimizer.step()", lambda: {"agent.critic.weight", "agent.critic.bias"}, "optimizer",
               "loss.backward()", "advantages"),
    ])


def test_an_advantage_kept_as_a_tensor_in_an_episodic_actor_critic() -> None:
    value_head = lambda: {"model.value_head.weight", "model.value_head.bias"}  # noqa: E731
    check(episodic_actor_critic_without_item, [
        Expect("detach-leak", "advantage = R - value.item() if item else R - value", value_head, "optimizer",
               "loss.backward()", "advantage"),
        Expect("stray-grad", "optimizer.step()", value_head, "optimizer", "loss.backward()", "advantage"),
    ])


def test_a_temperature_tensor_is_named_by_its_variable_and_shown_as_reached() -> None:
    torch.manual_seed(0)
    with lens.watch() as w:
        sac_temperature()
    report = w.report
    assert report.networks == ("actor", "log_alpha")
    rows = {b.call: b.networks for b in report.backwards}
    assert rows["alpha_loss.backward()"] == {"actor": "not reached", "log_alpha": "reached"}
    assert rows["actor_loss.backward()"] == {"actor": "reached", "log_alpha": "not reached"}
    assert {s.optimizer for s in report.steps} == {"actor_optimizer", "a_optimizer"}


def test_a_network_called_through_its_own_method_is_named_by_the_callers_variable() -> None:
    torch.manual_seed(0)
    with lens.watch() as w:
        a2c_advantage_not_detached(1)
    assert w.report.networks == ("agent",)
    assert all(p.startswith("agent.critic.") for f in w.report.findings for p in f.params)


def test_a_closure_without_zero_grad_piles_up_gradient_over_its_evaluations() -> None:
    [f] = check(lbfgs_closure_without_zero_grad, [
        Expect("missing-zero-grad", "optimizer.step(closure)", lambda: pnames("seq", Sequence()), "optimizer",
               "loss.backward()"),
    ])
    assert "closure's evaluations" in f.message
    assert f.fix.startswith("call `optimizer.zero_grad()` at the start of the closure")


def manual(net: str, fn: Callable[[], None], stmt: str) -> str:
    return f"manual update of {net} at tests/test_published_patterns.py:{line(fn, stmt)}"


def test_a_manual_update_without_zero_grad_applies_old_gradient_again() -> None:
    [f] = check(manual_sgd_without_zero_grad, [
        Expect("missing-zero-grad", "p.data.add_(p.grad, alpha=-lr)", lambda: pnames("model", CharLSTM()),
               manual("model", manual_sgd_data_add, "p.data.add_(p.grad, alpha=-lr)"), "loss.backward()"),
    ])
    assert "the manual update `p.data.add_(p.grad, alpha=-lr)`" in f.message
    assert "`model.zero_grad()`" in f.fix


def test_a_manual_update_under_no_grad_without_zeroing() -> None:
    check(manual_sgd_no_grad_without_zeroing, [
        Expect("missing-zero-grad", "param -= learning_rate * param.grad", lambda: pnames("net", nn.Sequential(
            nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 1))),
            manual("net", manual_sgd_no_grad, "param -= learning_rate * param.grad"), "loss.backward()"),
    ])


def test_a_manual_update_applies_the_gradient_of_an_evaluation() -> None:
    check(manual_sgd_eval_backward, [
        Expect("stray-grad", "p.data -= lr * p.grad.data", lambda: pnames("model", mlp(4, 2)),
               manual("model", manual_sgd_eval_backward, "p.data -= lr * p.grad.data"), "saliency_loss.backward()"),
    ])


def test_a_manual_update_of_a_network_with_an_unused_part() -> None:
    check(manual_sgd_dead_head, [
        Expect("dead-param", "p.data.add_(p.grad, alpha=-0.1)", lambda: {"model.aux.weight", "model.aux.bias"},
               manual("model", manual_sgd_dead_head, "p.data.add_(p.grad, alpha=-0.1)")),
    ])


def test_a_loss_summed_as_a_tensor_keeps_every_iterations_graph_and_saved_tensors() -> None:
    [f] = check(epoch_loss_keeps_graphs, [
        Expect("retained-graph", "epoch_loss += loss.item() if item else loss", None, None,
               "loss.backward(retain_graph=True)", "epoch_loss"),
    ])
    assert f.extra["retained"] and f.extra["saved_bytes"] > 0 and f.extra["graphs"] >= 2
    assert "`epoch_loss += loss.item()`" in f.fix and "drop `retain_graph=True`" in f.fix


def test_losses_appended_to_a_list_keep_their_graphs() -> None:
    [f] = check(loss_history_keeps_graphs, [
        Expect("retained-graph", "history.append(loss.item() if item else loss)", None, None, "loss.backward()",
               "history"),
    ])
    assert f.extra["saved_bytes"] == 0  # freed by each backward; the graphs themselves still grow
    assert "`history.append(loss.item())`" in f.fix and "retain_graph" not in f.fix
    assert "at least" in f.message and "one call in four" in f.notes[0], (f.message, f.notes)  # a sample's count


def test_a_running_sum_rebound_each_iteration_keeps_the_graphs() -> None:
    check(running_loss_keeps_graphs, [
        Expect("retained-graph", "running = running + (loss.detach() if detach else loss)", None, None,
               "loss.backward()", "running"),
    ])


def test_second_backward_after_the_generator_step_puts_the_detach_in_the_discriminator_loss() -> None:
    [f] = check(gan_g_step_first, [
        Expect("second-backward", "d_loss.backward()", backward="g_loss.backward()", tensor="gen_imgs"),
    ], raises=RuntimeError)
    assert "`discriminator(gen_imgs.detach())`" in f.fix and "`d_loss.backward()`" in f.fix
    assert "retain_graph" not in f.fix
    enters = line(gan_g_step_first, "fake_loss = ")
    assert any(lab.site.line == enters and "enters `discriminator`" in lab.text for lab in f.labels)


def test_second_backward_after_the_discriminator_step_puts_the_detach_in_its_loss() -> None:
    f, _leak = check(gan_d_step_first, [
        Expect("second-backward", "errG.backward()", backward="errD.backward()", tensor="fake"),
        Expect("detach-leak", "errD = ", lambda: pnames("netG", mlp(4, 16)), "optimizerG", "errD.backward()", "fake"),
    ], raises=RuntimeError)
    assert f"`netD(fake.detach())` at line {line(gan_d_step_first, 'errD = ')}" in f.fix
    assert "`retain_graph=True` would only hide the error" in f.fix


def test_truncated_bptt_names_the_carried_state_and_detaches_it_as_a_tuple() -> None:
    [f] = check(tbptt_lstm_without_repackage, [
        Expect("second-backward", "loss.backward()", backward="loss.backward()", tensor="hidden"),
    ], raises=RuntimeError)
    assert "the previous iteration's `loss.backward()`" in f.message
    assert "# the next chunk" not in f.message  # the comment on the line is not the call
    at = line(tbptt_lstm_without_repackage, "output, hidden = model(x, hidden)")
    assert f"`hidden = tuple(h.detach() for h in hidden)` before line {at}" in f.fix


def test_the_last_manual_update_of_a_run_is_a_step_too() -> None:
    torch.manual_seed(0)
    model = mlp(4, 1)  # alive when the watch ends, as a script's model is
    with lens.watch() as w:
        for _ in range(3):
            model.zero_grad()
            F.mse_loss(model(torch.randn(8, 4)), torch.randn(8, 1)).backward()
            for p in model.parameters():
                p.data.add_(p.grad, alpha=-0.1)
    [manual] = [s for s in w.report.steps if s.optimizer.startswith("manual update of model")]
    assert manual.count == 3  # the update after the last backward is seen when the watch ends


def test_a_sequential_of_layers_is_one_network_and_an_agents_parts_are_units() -> None:
    """One optimizer over `nn.Sequential(Linear, ReLU, Linear)` trains one network: its layers are not
    parts with objectives of their own (no split of its loss, one snapshot); an agent's actor and
    critic under one optimizer are."""
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 1))
    agent = Agent()
    opt, agent_opt = torch.optim.SGD(model.parameters(), lr=0.1), torch.optim.SGD(agent.parameters(), lr=0.1)
    x = torch.randn(3, 4)
    with lens.watch() as w:
        for _ in range(3):
            opt.zero_grad()
            model(x).sum().backward()
            opt.step()
        agent_opt.zero_grad()
        (agent.critic(x).sum() + agent.actor(x).sum()).backward()
        agent_opt.step()
    units = {w.reg.unit_of(id(p)) for p in model.parameters()}
    assert units == {"model"}
    assert {w.reg.unit_of(id(p)) for p in agent.critic.parameters()} == {"agent.critic"}
    assert len(w.graphs) == 2 and not w.report.findings


def gan_detach_forgotten_late(iters: int = 12, late: int = 9) -> None:
    netG = nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Linear(16, 6))
    netD = nn.Sequential(nn.Linear(6, 16), nn.LeakyReLU(0.2), nn.Linear(16, 1))
    optimizerD = torch.optim.Adam(netD.parameters(), lr=1e-3)
    optimizerG = torch.optim.Adam(netG.parameters(), lr=1e-3)
    real, ones, zeros = torch.randn(8, 6), torch.ones(8, 1), torch.zeros(8, 1)
    for i in range(iters):
        netD.zero_grad()
        fake = netG(torch.randn(8, 4))
        d_in = fake if i == late else fake.detach()  # one late iteration forgets the detach
        errD = F.binary_cross_entropy_with_logits(netD(real), ones) + F.binary_cross_entropy_with_logits(netD(d_in), zeros)
        errD.backward()
        optimizerD.step()
        netG.zero_grad()
        errG = F.binary_cross_entropy_with_logits(netD(fake), ones)
        errG.backward()
        optimizerG.step()


def gan_g_first_detach_forgotten_late(iters: int = 12, late: int = 9) -> None:
    """The generator's step first, as PyTorch-GAN's loops run it; one late iteration forgets the
    detach in the discriminator's loss, whose backward then reaches the freed generator graph."""
    generator = nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Linear(16, 6), nn.Tanh())
    discriminator = nn.Sequential(nn.Linear(6, 16), nn.LeakyReLU(0.2), nn.Linear(16, 1))
    optimizer_G = torch.optim.Adam(generator.parameters(), lr=1e-3)
    optimizer_D = torch.optim.Adam(discriminator.parameters(), lr=1e-3)
    real, valid, fake = torch.randn(8, 6), torch.ones(8, 1), torch.zeros(8, 1)
    for i in range(iters):
        optimizer_G.zero_grad()
        gen_imgs = generator(torch.randn(8, 4)).view(8, 6)
        g_loss = F.binary_cross_entropy_with_logits(discriminator(gen_imgs), valid)
        g_loss.backward()
        optimizer_G.step()
        optimizer_D.zero_grad()
        d_in = gen_imgs if i == late else gen_imgs.detach()
        d_loss = (F.binary_cross_entropy_with_logits(discriminator(real), valid)
                  + F.binary_cross_entropy_with_logits(discriminator(d_in), fake)) / 2
        d_loss.backward()
        optimizer_D.step()


def gan_detach_kept_late() -> None:
    gan_detach_forgotten_late(late=-1)


def gan_g_first_detach_kept_late() -> None:
    gan_g_first_detach_forgotten_late(late=-1)


CORRECT += [gan_detach_kept_late, gan_g_first_detach_kept_late]


def test_a_detach_forgotten_late_after_the_generator_step_puts_it_in_the_discriminator_loss() -> None:
    findings = watched(gan_g_first_detach_forgotten_late, raises=RuntimeError)
    f = next(f for f in findings if f.rule == "second-backward")
    assert f.site.line == line(gan_g_first_detach_forgotten_late, "d_loss.backward()")
    assert f.backward.line == line(gan_g_first_detach_forgotten_late, "g_loss.backward()")
    assert f.tensor == "gen_imgs"  # (a view of the generator's output: named by the variable)
    assert f.fix.startswith("detach `gen_imgs` in the loss of `d_loss.backward()`, which must not train `generator`")


def test_a_detach_forgotten_late_in_a_run_names_the_backward_that_freed_the_buffers() -> None:
    # past the detailed calls nothing stamps the graphs: what the failing graph shows is read after
    # the failure (its freed parts, the parameters below them, and the earlier call that reached them)
    findings = watched(gan_detach_forgotten_late, raises=RuntimeError)
    f = next(f for f in findings if f.rule == "second-backward")
    assert f.site.line == line(gan_detach_forgotten_late, "errG.backward()")
    assert f.backward.line == line(gan_detach_forgotten_late, "errD.backward()")
    assert f.tensor == "fake"
    assert "`fake.detach()`" in f.fix and "`netG`" in f.fix and "retain_graph=True` would only hide" in f.fix


def test_a_meta_learner_whose_parameters_is_a_parameter_list_is_watched() -> None:
    findings = watched(lambda: maml_first_order(zero=False))
    f = by_rule(findings, "missing-zero-grad")
    assert f.site is not None and f.site.line == line(Meta.forward, "self.meta_optim.step()")
    assert f.backward is not None and f.backward.line == line(Meta.forward, "loss_q.backward()")
    assert set(f.params) == {f"maml.net.vars.{i}" for i in range(4)}, f.params
    assert f.optimizer == "maml.meta_optim", f.optimizer
    # the fix speaks of the optimizer as the step's line holds it
    assert "that an earlier `self.meta_optim.step()` already applied" in f.message, f.message
    assert "call `self.meta_optim.zero_grad()`" in f.fix, f.fix
    assert rules(findings) == {"missing-zero-grad"}, short(findings)


def test_the_inner_autograd_grad_of_fast_weights_does_not_need_the_saved_parameters() -> None:
    # `autograd.grad(loss, fast_weights)` stops at the fast weights: the graph below them, which
    # saved the parameters before the step, is neither run nor checked; the meta backward needs it
    check(maml_step_in_every_task, [
        Expect("inplace-saved", "meta_batch_loss.backward()", lambda: {"model.2.weight"}, "optimiser"),
        Expect("missing-zero-grad", "loss.backward(retain_graph=True)", lambda: pnames("model", mlp(4, 2)), "optimiser"),
    ], raises=RuntimeError)


@pytest.mark.parametrize("precondition", [False, True])
def test_an_optimizer_kept_by_an_agent_object_is_named_by_its_attribute(precondition: bool) -> None:
    findings = watched(lambda: a2c_agent_object(precondition=precondition, zero=False))
    f = by_rule(findings, "missing-zero-grad")
    assert f.optimizer == "agent.optimizer", f.optimizer
    assert f.site is not None and f.site.line == line(A2CAgent.update, "self.optimizer.step()")
    assert set(f.params) == pnames("actor_critic", mlp(4, 1))
    assert rules(findings) == {"missing-zero-grad"}, short(findings)


def test_the_inner_step_of_an_optimizer_is_part_of_its_step_also_when_steady() -> None:
    torch.manual_seed(0)
    with lens.watch() as w:
        a2c_preconditioned(iters=12)
        assert w.recorder.steady.on
    assert w.report.findings == ()
    [row] = w.report.steps
    assert (row.optimizer, row.count) == ("agent.optimizer", 12), (row.optimizer, row.count)


def test_an_ema_update_outside_no_grad_makes_the_target_parameters_non_leaves(recwarn: pytest.WarningsRecorder) -> None:
    # the optimizer's own reads of their `.grad` (inside torch) are told at the user's line, once,
    # with the parameters; the lens reads none itself (no warning of its own)
    findings = check(ema_target_with_grad, [
        Expect("nonleaf-grad", "opt.zero_grad()", lambda: pnames("target", mlp(4, 4), trainable=False), "opt"),
    ])
    assert "torch.no_grad()" in findings[0].fix
    assert findings[0].site.function == "ema_target"
    shown = {w.filename for w in recwarn}
    assert any("torch" in f for f in shown), shown
    assert not any("autograd_lens" in f for f in shown), shown


def test_a_gradient_penalty_on_the_fake_images_keeps_them_requiring_grad_in_the_fix() -> None:
    # WGAN-div differentiates the discriminator's output with respect to `fake_imgs`: a plain
    # `.detach()` (or freezing the generator) would make that `autograd.grad` fail
    [f] = check(wgan_div, [
        Expect("detach-leak", "fake_validity = discriminator(fake_imgs)", lambda: pnames("generator", mlp(4, 16)),
               "optimizer_G", "d_loss.backward()", "fake_imgs"),
    ])
    assert "`discriminator(fake_imgs.detach().requires_grad_())`" in f.fix, f.fix
    assert "requires_grad_(False)" not in f.fix, f.fix
    n = line(wgan_div, "fake_grad = torch.autograd.grad(")
    assert any(f"autograd.grad of `fake_validity` at line {n}:" in note for note in f.notes), f.notes
    assert watched(wgan_div_detached_as_told) == ()  # the fix it gives works (a correct loop above)


def test_a_generator_loss_reusing_the_discriminators_output_is_told_to_take_a_new_forward() -> None:
    # detaching `fake_validity` would cut the generator off its own loss
    findings = check(wgan_div_reuses_the_discriminators_output, [
        Expect("second-backward", "g_loss.backward()", backward="d_loss.backward()", tensor="fake_validity"),
        Expect("detach-leak", "fake_validity = discriminator(fake_imgs)", lambda: pnames("generator", mlp(4, 16)),
               "optimizer_G", "d_loss.backward()", "fake_imgs"),
    ], raises=RuntimeError)
    f = by_rule(findings, "second-backward")
    assert "new forward" in f.fix and "`generator` and `discriminator`" in f.fix, f.fix
    assert "would also cut the gradient `g_loss.backward()` needs for `generator`" in f.fix, f.fix


@pytest.mark.parametrize("fn", [zero_grad_between_backward_and_step, zero_grad_to_zeros_between_backward_and_step])
def test_a_zero_grad_between_backward_and_step_leaves_the_step_nothing(fn: Callable[[], None]) -> None:
    [f] = watched(fn)
    zero_line = line(zero_grad_placed, "loss.backward()") + 2
    assert (f.rule, f.site.line, f.optimizer) == ("dead-param", zero_line, "optimizer"), short([f])  # the line to move
    assert set(f.params) == pnames("model", mlp(4, 1)), f.params
    assert f.backward is not None and f.backward.line == line(zero_grad_placed, "loss.backward()")
    assert f"`optimizer.zero_grad(set_to_none=set_to_none)` (line {zero_line}) discarded" in f.message, f.message
    assert "before the backward" in f.fix, f.fix


class TwoHeads(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.b, self.unused = nn.Linear(4, 1), nn.Linear(4, 1), nn.Linear(4, 1)


def multitask_skipping_a_step(iters: int = 6) -> None:
    model = TwoHeads()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    for i in range(iters):
        head = model.a if i % 2 == 0 else model.b
        opt.zero_grad()
        loss = head(torch.randn(8, 4)).pow(2).mean()
        loss.backward()
        if i != 2:  # a step skipped (a non-finite gradient norm, GradScaler's inf check)
            opt.step()


def test_a_zero_grad_before_the_next_backward_is_not_told_to_move() -> None:
    # the next iteration's zero_grad drops head a's unapplied gradient, then head b's backward runs:
    # the zero_grad is where it belongs; the unused head is still dead-param's
    [f] = watched(multitask_skipping_a_step)
    assert f.rule == "dead-param" and set(f.params) == {"model.unused.bias", "model.unused.weight"}, short([f])
    assert "never received a gradient" in f.message, f.message


def test_a_zero_grad_between_backward_and_step_and_a_dead_parameter_are_two_findings() -> None:
    def loop(iters: int = 3) -> None:
        model = TwoHeads()
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        for _ in range(iters):
            (model.a(torch.randn(8, 4)) + model.b(torch.randn(8, 4))).pow(2).mean().backward()
            opt.zero_grad()
            opt.step()

    findings = watched(loop)
    assert sorted((f.rule, f.site.line) for f in findings) == [
        ("dead-param", line(loop, "opt.zero_grad()")), ("dead-param", line(loop, "opt.step()"))], short(findings)


def a2c_expression_loss(iters: int = 3, zero: bool = True) -> None:
    model = mlp(4, 2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    for _ in range(iters):
        out = model(torch.randn(8, 4))
        value_loss, action_loss, dist_entropy = out[:, 0].pow(2).mean(), out[:, 1].mean(), out.std()
        if zero:
            optimizer.zero_grad()
        (value_loss * 0.5 + action_loss - dist_entropy * 0.01 + value_loss.detach() * 0.0).backward()
        optimizer.step()


def test_a_backward_of_an_expression_is_named_by_its_line_once() -> None:
    f = by_rule(watched(lambda: a2c_expression_loss(zero=False)), "missing-zero-grad")
    n = line(a2c_expression_loss, "(value_loss * 0.5")
    assert f"applied gradient of the backward at line {n} that an earlier" in f.message, f.message
    assert "<" not in f.message and "(line" not in f.message, f.message


@pytest.mark.parametrize("fn", [gan_parts_no_detach, gan_parts_no_detach_through_forward])
def test_a_leak_between_parts_of_one_module_that_have_optimizers_of_their_own(fn: Callable[[], None]) -> None:
    # the generator and the discriminator are parts of one module: the leak crosses between
    # them (the generator called on its own, or through the module's forward)
    [f] = check(fn, [
        Expect("detach-leak", "fake_loss = ", lambda: pnames("model.generator", mlp(4, 6)), "opt_g",
               "d_loss.backward()", "fake_imgs"),
    ])
    assert "enters `model.discriminator`" in f.message, f.message
    assert "`model.discriminator(fake_imgs.detach())`" in f.fix, f.fix


def test_a_frozen_network_is_not_shown_as_stopped_at_a_detach() -> None:
    def rows(fn: Callable[[], None]) -> dict[str, dict[str, str]]:
        torch.manual_seed(0)
        with lens.watch() as w:
            fn()
        return {b.call: b.networks for b in w.report.backwards}

    frozen = rows(r1_penalty_gan)  # StyleGAN's requires_grad toggling
    assert frozen["d_loss.backward()"]["G"] == "not reached", frozen  # no graph, not a detach
    assert frozen["g_loss.backward()"]["G"] == "reached", frozen
    detached = rows(cgan_d_first)
    assert detached["d_loss.backward()"]["generator"] == "detached", detached


def test_the_model_an_ema_wrapper_holds_is_named_as_the_loop_holds_it() -> None:
    torch.manual_seed(0)
    with lens.watch() as w:
        ema_wrapper(zero=False)
    f = by_rule(w.report.findings, "missing-zero-grad")
    assert set(f.params) == pnames("model", mlp(4, 1)), f.params  # not `ema.online_model.*`
    assert w.report.networks == ("model",), w.report.networks


def test_a_step_of_gradient_set_by_hand_is_shown_so_in_the_step_table() -> None:
    from autograd_lens.render.tables import step_rows

    torch.manual_seed(0)
    with lens.watch() as w:
        pcgrad_like()
    assert w.report.findings == ()
    [row] = step_rows(w.report)[1]
    assert row[0] == "opt" and row[3] == "set by hand (x3)", row
