"""A corpus of training loops written the way their users write them, run under the lens.

Each correct loop must leave the lens silent; each buggy one must give the right finding: rule,
line, parameter names and optimizer. Networks are tiny and every loop runs 2-4 iterations.
"""

from __future__ import annotations

import copy
import inspect
import itertools
from collections.abc import Callable

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import autograd_lens as lens

from helpers import Expect, one_thread, short, watched  # noqa: F401  (one_thread: a fixture)

NZ = 4


def line(fn: object, text: str) -> int:
    """The line of the one statement of ``fn`` that starts with ``text``."""
    src, start = inspect.getsourcelines(fn)  # type: ignore[arg-type]
    hits = [start + i for i, s in enumerate(src) if s.strip().startswith(text)]
    assert len(hits) == 1, f"{text!r} at {hits}"
    return hits[0]


def pnames(var: str, module: nn.Module, *, trainable: bool = True) -> set[str]:
    """The names the lens gives the parameters of ``module`` held in the variable ``var``."""
    return {f"{var}.{n}" for n, p in module.named_parameters() if p.requires_grad or not trainable}


def mlp(i: int, o: int, h: int = 8) -> nn.Sequential:
    return nn.Sequential(nn.Linear(i, h), nn.ReLU(), nn.Linear(h, o))


# ----------------------------------------------------------------------------------------------
# networks
# ----------------------------------------------------------------------------------------------


class DCGenerator(nn.Module):
    """The DCGAN generator, scaled down: noise (N, NZ, 1, 1) -> image (N, 1, 8, 8)."""

    def __init__(self) -> None:
        super().__init__()
        self.main = nn.Sequential(
            nn.ConvTranspose2d(NZ, 8, 4, 1, 0, bias=False),
            nn.BatchNorm2d(8),
            nn.ReLU(True),
            nn.ConvTranspose2d(8, 1, 4, 2, 1, bias=False),
            nn.Tanh(),
        )

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return self.main(input)


class DCDiscriminator(nn.Module):
    """The DCGAN discriminator, scaled down: image (N, 1, 8, 8) -> probability (N,)."""

    def __init__(self, sigmoid: bool = True) -> None:
        super().__init__()
        layers: list[nn.Module] = [
            nn.Conv2d(1, 8, 4, 2, 1, bias=False),
            nn.LeakyReLU(0.2, inplace=True),
            nn.Conv2d(8, 16, 2, 2, 0, bias=False),
            nn.BatchNorm2d(16),
            nn.LeakyReLU(0.2, inplace=True),
            nn.Conv2d(16, 1, 2, 1, 0, bias=False),
        ]
        if sigmoid:
            layers.append(nn.Sigmoid())
        self.main = nn.Sequential(*layers)

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return self.main(input).view(-1, 1).squeeze(1)


class ImageToImage(nn.Module):
    """A tiny image-to-image generator (CycleGAN / pix2pix): (N, 1, 8, 8) -> (N, 1, 8, 8)."""

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.InstanceNorm2d(4), nn.ReLU(), nn.Conv2d(4, 1, 3, padding=1), nn.Tanh())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class PatchDiscriminator(nn.Module):
    def __init__(self, in_ch: int = 1) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Conv2d(in_ch, 4, 4, 2, 1), nn.LeakyReLU(0.2, True), nn.Conv2d(4, 1, 3, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class QNet(nn.Module):
    def __init__(self, s: int = 3, a: int = 2) -> None:
        super().__init__()
        self.l1, self.l2 = nn.Linear(s + a, 16), nn.Linear(16, 1)

    def forward(self, state: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
        return self.l2(F.relu(self.l1(torch.cat([state, action], 1))))


class Actor(nn.Module):
    def __init__(self, s: int = 3, a: int = 2, max_action: float = 1.0) -> None:
        super().__init__()
        self.l1, self.l2 = nn.Linear(s, 16), nn.Linear(16, a)
        self.max_action = max_action

    def forward(self, state: torch.Tensor) -> torch.Tensor:
        return self.max_action * torch.tanh(self.l2(F.relu(self.l1(state))))


def real_images(n: int = 8) -> torch.Tensor:
    return torch.rand(n, 1, 8, 8) * 2 - 1


# ----------------------------------------------------------------------------------------------
# GANs: correct loops
# ----------------------------------------------------------------------------------------------


def dcgan(iters: int = 3) -> None:
    netG, netD = DCGenerator(), DCDiscriminator()
    criterion = nn.BCELoss()
    optimizerD = torch.optim.Adam(netD.parameters(), lr=2e-4, betas=(0.5, 0.999))
    optimizerG = torch.optim.Adam(netG.parameters(), lr=2e-4, betas=(0.5, 0.999))
    real_label, fake_label = 1.0, 0.0
    for i in range(iters):
        ############################
        # (1) Update D network: maximize log(D(x)) + log(1 - D(G(z)))
        ###########################
        # train with real
        netD.zero_grad()
        real_cpu = real_images()
        batch_size = real_cpu.size(0)
        label = torch.full((batch_size,), real_label, dtype=real_cpu.dtype)
        output = netD(real_cpu)
        errD_real = criterion(output, label)
        errD_real.backward()
        D_x = output.mean().item()
        # train with fake
        noise = torch.randn(batch_size, NZ, 1, 1)
        fake = netG(noise)
        label.fill_(fake_label)
        output = netD(fake.detach())
        errD_fake = criterion(output, label)
        errD_fake.backward()
        D_G_z1 = output.mean().item()
        errD = errD_real + errD_fake
        optimizerD.step()
        ############################
        # (2) Update G network: maximize log(D(G(z)))
        ###########################
        netG.zero_grad()
        label.fill_(real_label)  # fake labels are real for generator cost
        output = netD(fake)
        errG = criterion(output, label)
        errG.backward()
        D_G_z2 = output.mean().item()
        optimizerG.step()
        _ = (errD.item(), errG.item(), D_x, D_G_z1, D_G_z2)


def dcgan_optimizer_zero_grad(iters: int = 3, set_to_none: bool = True) -> None:
    netG, netD = DCGenerator(), DCDiscriminator()
    criterion = nn.BCELoss()
    optimizerD = torch.optim.Adam(netD.parameters(), lr=2e-4, betas=(0.5, 0.999))
    optimizerG = torch.optim.Adam(netG.parameters(), lr=2e-4, betas=(0.5, 0.999))
    for _ in range(iters):
        real = real_images()
        b = real.size(0)
        optimizerD.zero_grad(set_to_none=set_to_none)
        errD_real = criterion(netD(real), torch.ones(b))
        errD_real.backward()
        fake = netG(torch.randn(b, NZ, 1, 1))
        errD_fake = criterion(netD(fake.detach()), torch.zeros(b))
        errD_fake.backward()
        optimizerD.step()
        optimizerG.zero_grad(set_to_none=set_to_none)
        errG = criterion(netD(fake), torch.ones(b))
        errG.backward()
        optimizerG.step()


def dcgan_zero_grad_keep(iters: int = 3) -> None:
    dcgan_optimizer_zero_grad(iters, set_to_none=False)


def dcgan_freeze_d_loop(iters: int = 3) -> None:
    netG, netD = DCGenerator(), DCDiscriminator()
    criterion = nn.BCELoss()
    optimizerD = torch.optim.Adam(netD.parameters(), lr=2e-4, betas=(0.5, 0.999))
    optimizerG = torch.optim.Adam(netG.parameters(), lr=2e-4, betas=(0.5, 0.999))
    for _ in range(iters):
        real = real_images()
        b = real.size(0)
        for p in netD.parameters():
            p.requires_grad = True
        optimizerD.zero_grad()
        fake = netG(torch.randn(b, NZ, 1, 1))
        errD = criterion(netD(real), torch.ones(b)) + criterion(netD(fake.detach()), torch.zeros(b))
        errD.backward()
        optimizerD.step()
        for p in netD.parameters():
            p.requires_grad = False  # to avoid computation
        optimizerG.zero_grad()
        errG = criterion(netD(fake), torch.ones(b))
        errG.backward()
        optimizerG.step()


def dcgan_freeze_d_method(iters: int = 3) -> None:
    netG, netD = DCGenerator(), DCDiscriminator()
    criterion = nn.BCELoss()
    optimizerD = torch.optim.Adam(netD.parameters(), lr=2e-4, betas=(0.5, 0.999))
    optimizerG = torch.optim.Adam(netG.parameters(), lr=2e-4, betas=(0.5, 0.999))
    for _ in range(iters):
        real = real_images()
        b = real.size(0)
        netD.requires_grad_(True)
        optimizerD.zero_grad()
        fake = netG(torch.randn(b, NZ, 1, 1))
        loss_D = criterion(netD(real), torch.ones(b)) + criterion(netD(fake.detach()), torch.zeros(b))
        loss_D.backward()
        optimizerD.step()
        netD.requires_grad_(False)
        optimizerG.zero_grad()
        loss_G = criterion(netD(fake), torch.ones(b))
        loss_G.backward()
        optimizerG.step()


def dcgan_summed_errD(iters: int = 3) -> None:
    netG, netD = DCGenerator(), DCDiscriminator()
    criterion = nn.BCELoss()
    optimizerD = torch.optim.Adam(netD.parameters(), lr=2e-4, betas=(0.5, 0.999))
    optimizerG = torch.optim.Adam(netG.parameters(), lr=2e-4, betas=(0.5, 0.999))
    for _ in range(iters):
        real = real_images()
        b = real.size(0)
        netD.zero_grad()
        fake = netG(torch.randn(b, NZ, 1, 1))
        errD_real = criterion(netD(real), torch.ones(b))
        errD_fake = criterion(netD(fake.detach()), torch.zeros(b))
        errD = errD_real + errD_fake
        errD.backward()
        optimizerD.step()
        netG.zero_grad()
        errG = criterion(netD(fake), torch.ones(b))
        errG.backward()
        optimizerG.step()


def gan_single_adam_frozen(iters: int = 3) -> None:
    netG, netD = DCGenerator(), DCDiscriminator()
    criterion = nn.BCELoss()
    optimizer = torch.optim.Adam(list(netG.parameters()) + list(netD.parameters()), lr=2e-4)
    for _ in range(iters):
        real = real_images()
        b = real.size(0)
        netD.requires_grad_(True)
        optimizer.zero_grad()
        fake = netG(torch.randn(b, NZ, 1, 1))
        errD = criterion(netD(real), torch.ones(b)) + criterion(netD(fake.detach()), torch.zeros(b))
        errD.backward()
        optimizer.step()
        netD.requires_grad_(False)
        optimizer.zero_grad()
        errG = criterion(netD(fake), torch.ones(b))
        errG.backward()
        optimizer.step()


def gan_single_adam(iters: int = 3) -> None:
    netG, netD = DCGenerator(), DCDiscriminator()
    criterion = nn.BCELoss()
    optimizer = torch.optim.Adam(list(netG.parameters()) + list(netD.parameters()), lr=2e-4)
    for _ in range(iters):
        real = real_images()
        b = real.size(0)
        optimizer.zero_grad()
        fake = netG(torch.randn(b, NZ, 1, 1))
        errD = criterion(netD(real), torch.ones(b)) + criterion(netD(fake.detach()), torch.zeros(b))
        errD.backward()
        optimizer.step()
        optimizer.zero_grad()
        errG = criterion(netD(fake), torch.ones(b))
        errG.backward()
        optimizer.step()


def lsgan(iters: int = 3) -> None:
    generator, discriminator = DCGenerator(), DCDiscriminator(sigmoid=False)
    adversarial_loss = nn.MSELoss()
    optimizer_G = torch.optim.Adam(generator.parameters(), lr=2e-4, betas=(0.5, 0.999))
    optimizer_D = torch.optim.Adam(discriminator.parameters(), lr=2e-4, betas=(0.5, 0.999))
    for _ in range(iters):
        imgs = real_images()
        valid, fake = torch.ones(imgs.size(0)), torch.zeros(imgs.size(0))
        optimizer_G.zero_grad()
        z = torch.randn(imgs.size(0), NZ, 1, 1)
        gen_imgs = generator(z)
        g_loss = adversarial_loss(discriminator(gen_imgs), valid)
        g_loss.backward()
        optimizer_G.step()
        optimizer_D.zero_grad()
        real_loss = adversarial_loss(discriminator(imgs), valid)
        fake_loss = adversarial_loss(discriminator(gen_imgs.detach()), fake)
        d_loss = 0.5 * (real_loss + fake_loss)
        d_loss.backward()
        optimizer_D.step()


def hinge_gan(iters: int = 3) -> None:
    G, D = DCGenerator(), DCDiscriminator(sigmoid=False)
    opt_g = torch.optim.Adam(G.parameters(), lr=2e-4, betas=(0.0, 0.9))
    opt_d = torch.optim.Adam(D.parameters(), lr=2e-4, betas=(0.0, 0.9))
    for _ in range(iters):
        x = real_images()
        z = torch.randn(x.size(0), NZ, 1, 1)
        opt_d.zero_grad()
        d_loss = F.relu(1.0 - D(x)).mean() + F.relu(1.0 + D(G(z).detach())).mean()
        d_loss.backward()
        opt_d.step()
        opt_g.zero_grad()
        g_loss = -D(G(z)).mean()
        g_loss.backward()
        opt_g.step()


def cyclegan(iters: int = 2) -> None:
    G_AB, G_BA = ImageToImage(), ImageToImage()
    D_A, D_B = PatchDiscriminator(), PatchDiscriminator()
    criterion_GAN, criterion_cycle, criterion_identity = nn.MSELoss(), nn.L1Loss(), nn.L1Loss()
    optimizer_G = torch.optim.Adam(itertools.chain(G_AB.parameters(), G_BA.parameters()), lr=2e-4, betas=(0.5, 0.999))
    optimizer_D_A = torch.optim.Adam(D_A.parameters(), lr=2e-4, betas=(0.5, 0.999))
    optimizer_D_B = torch.optim.Adam(D_B.parameters(), lr=2e-4, betas=(0.5, 0.999))
    for _ in range(iters):
        real_A, real_B = real_images(4), real_images(4)
        valid, fake = torch.ones(4, 1, 4, 4), torch.zeros(4, 1, 4, 4)
        # ------------------  Train Generators  ------------------
        G_AB.train()
        G_BA.train()
        optimizer_G.zero_grad()
        loss_id_A = criterion_identity(G_BA(real_A), real_A)
        loss_id_B = criterion_identity(G_AB(real_B), real_B)
        loss_identity = (loss_id_A + loss_id_B) / 2
        fake_B = G_AB(real_A)
        loss_GAN_AB = criterion_GAN(D_B(fake_B), valid)
        fake_A = G_BA(real_B)
        loss_GAN_BA = criterion_GAN(D_A(fake_A), valid)
        loss_GAN = (loss_GAN_AB + loss_GAN_BA) / 2
        recov_A = G_BA(fake_B)
        loss_cycle_A = criterion_cycle(recov_A, real_A)
        recov_B = G_AB(fake_A)
        loss_cycle_B = criterion_cycle(recov_B, real_B)
        loss_cycle = (loss_cycle_A + loss_cycle_B) / 2
        loss_G = loss_GAN + 10.0 * loss_cycle + 5.0 * loss_identity
        loss_G.backward()
        optimizer_G.step()
        # ------------------  Train Discriminator A  ------------------
        optimizer_D_A.zero_grad()
        loss_real = criterion_GAN(D_A(real_A), valid)
        loss_fake = criterion_GAN(D_A(fake_A.detach()), fake)
        loss_D_A = (loss_real + loss_fake) / 2
        loss_D_A.backward()
        optimizer_D_A.step()
        # ------------------  Train Discriminator B  ------------------
        optimizer_D_B.zero_grad()
        loss_real = criterion_GAN(D_B(real_B), valid)
        loss_fake = criterion_GAN(D_B(fake_B.detach()), fake)
        loss_D_B = (loss_real + loss_fake) / 2
        loss_D_B.backward()
        optimizer_D_B.step()


def pix2pix(iters: int = 3) -> None:
    generator, discriminator = ImageToImage(), PatchDiscriminator(in_ch=2)
    criterion_GAN, criterion_pixelwise = nn.MSELoss(), nn.L1Loss()
    optimizer_G = torch.optim.Adam(generator.parameters(), lr=2e-4, betas=(0.5, 0.999))
    optimizer_D = torch.optim.Adam(discriminator.parameters(), lr=2e-4, betas=(0.5, 0.999))
    for _ in range(iters):
        real_A, real_B = real_images(4), real_images(4)
        valid, fake = torch.ones(4, 1, 4, 4), torch.zeros(4, 1, 4, 4)
        optimizer_G.zero_grad()
        fake_B = generator(real_A)
        pred_fake = discriminator(torch.cat((fake_B, real_A), 1))
        loss_GAN = criterion_GAN(pred_fake, valid)
        loss_pixel = criterion_pixelwise(fake_B, real_B)
        loss_G = loss_GAN + 100 * loss_pixel
        loss_G.backward()
        optimizer_G.step()
        optimizer_D.zero_grad()
        pred_real = discriminator(torch.cat((real_B, real_A), 1))
        loss_real = criterion_GAN(pred_real, valid)
        pred_fake = discriminator(torch.cat((fake_B.detach(), real_A), 1))
        loss_fake = criterion_GAN(pred_fake, fake)
        loss_D = 0.5 * (loss_real + loss_fake)
        loss_D.backward()
        optimizer_D.step()


def r1_penalty_gan(iters: int = 3) -> None:
    G, D = DCGenerator(), DCDiscriminator(sigmoid=False)
    g_optim = torch.optim.Adam(G.parameters(), lr=2e-3, betas=(0.0, 0.99))
    d_optim = torch.optim.Adam(D.parameters(), lr=2e-3, betas=(0.0, 0.99))
    for i in range(iters):
        real_img = real_images()
        noise = torch.randn(real_img.size(0), NZ, 1, 1)
        # D step
        D.requires_grad_(True)
        G.requires_grad_(False)
        fake_img = G(noise)
        d_loss = F.softplus(D(fake_img)).mean() + F.softplus(-D(real_img)).mean()
        D.zero_grad()
        d_loss.backward()
        d_optim.step()
        # lazy R1 regularization
        if i % 2 == 0:
            real_img.requires_grad = True
            real_pred = D(real_img)
            (grad_real,) = torch.autograd.grad(outputs=real_pred.sum(), inputs=real_img, create_graph=True)
            r1_loss = grad_real.pow(2).reshape(grad_real.shape[0], -1).sum(1).mean()
            D.zero_grad()
            (10 / 2 * r1_loss * 2 + 0 * real_pred[0]).backward()
            d_optim.step()
        # G step
        D.requires_grad_(False)
        G.requires_grad_(True)
        fake_img = G(noise)
        g_loss = F.softplus(-D(fake_img)).mean()
        G.zero_grad()
        g_loss.backward()
        g_optim.step()


def wgan_clip(iters: int = 2, n_critic: int = 3) -> None:
    netG, netD = DCGenerator(), DCDiscriminator(sigmoid=False)
    optimizerD = torch.optim.RMSprop(netD.parameters(), lr=5e-5)
    optimizerG = torch.optim.RMSprop(netG.parameters(), lr=5e-5)
    one, mone = torch.tensor(1.0), torch.tensor(-1.0)
    for _ in range(iters):
        for p in netD.parameters():
            p.requires_grad = True
        for _ in range(n_critic):
            for p in netD.parameters():
                p.data.clamp_(-0.01, 0.01)
            netD.zero_grad()
            real = real_images()
            errD_real = netD(real).mean()
            errD_real.backward(one)
            noise = torch.randn(real.size(0), NZ, 1, 1)
            with torch.no_grad():
                fake = netG(noise)
            errD_fake = netD(fake).mean()
            errD_fake.backward(mone)
            optimizerD.step()
        for p in netD.parameters():
            p.requires_grad = False
        netG.zero_grad()
        errG = netD(netG(torch.randn(8, NZ, 1, 1))).mean()
        errG.backward(one)
        optimizerG.step()


# ----------------------------------------------------------------------------------------------
# GANs: buggy loops
# ----------------------------------------------------------------------------------------------


def dcgan_no_detach(iters: int = 3, zero_g: bool = False) -> None:
    netG, netD = DCGenerator(), DCDiscriminator()
    criterion = nn.BCELoss()
    optimizerD = torch.optim.Adam(netD.parameters(), lr=2e-4, betas=(0.5, 0.999))
    optimizerG = torch.optim.Adam(netG.parameters(), lr=2e-4, betas=(0.5, 0.999))
    for _ in range(iters):
        netD.zero_grad()
        real = real_images()
        b = real.size(0)
        errD_real = criterion(netD(real), torch.ones(b))
        errD_real.backward()
        fake = netG(torch.randn(b, NZ, 1, 1))
        errD_fake = criterion(netD(fake), torch.zeros(b))
        errD_fake.backward(retain_graph=True)
        optimizerD.step()
        if zero_g:
            netG.zero_grad()
        output = netD(fake)
        errG = criterion(output, torch.ones(b))
        errG.backward()
        optimizerG.step()


def dcgan_no_detach_zeroed(iters: int = 3) -> None:
    dcgan_no_detach(iters, zero_g=True)


def dcgan_d_zeroed_after_step(iters: int = 3) -> None:
    netG, netD = DCGenerator(), DCDiscriminator()
    criterion = nn.BCELoss()
    optimizerD = torch.optim.Adam(netD.parameters(), lr=2e-4, betas=(0.5, 0.999))
    optimizerG = torch.optim.Adam(netG.parameters(), lr=2e-4, betas=(0.5, 0.999))
    for _ in range(iters):
        real = real_images()
        b = real.size(0)
        fake = netG(torch.randn(b, NZ, 1, 1))
        errD = criterion(netD(real), torch.ones(b)) + criterion(netD(fake.detach()), torch.zeros(b))
        errD.backward()
        optimizerD.step()
        optimizerD.zero_grad()
        errG = criterion(netD(fake), torch.ones(b))
        errG.backward()
        optimizerG.step()
        optimizerG.zero_grad()


def srgan(iters: int = 2, fused: bool = False) -> None:
    netG, netD = ImageToImage(), PatchDiscriminator()
    optimizerG = torch.optim.Adam(netG.parameters(), lr=1e-3)
    optimizerD = torch.optim.Adam(netD.parameters(), lr=1e-3, fused=fused)
    mse = nn.MSELoss()
    for _ in range(iters):
        real_img = real_images(4)
        z = real_images(4)
        fake_img = netG(z)
        netD.zero_grad()
        real_out = netD(real_img).mean()
        fake_out = netD(fake_img).mean()
        d_loss = 1 - real_out + fake_out
        d_loss.backward(retain_graph=True)
        optimizerD.step()
        netG.zero_grad()
        g_loss = mse(fake_img, real_img) + 1e-3 * (1 - fake_out)
        g_loss.backward()
        optimizerG.step()


def srgan_fused(iters: int = 2) -> None:
    srgan(iters, fused=True)


# ----------------------------------------------------------------------------------------------
# reinforcement learning
# ----------------------------------------------------------------------------------------------


class ActorCritic(nn.Module):
    def __init__(self, obs: int = 4, n_actions: int = 3) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Linear(obs, 16), nn.Tanh())
        self.pi = nn.Linear(16, n_actions)
        self.v = nn.Linear(16, 1)

    def forward(self, x: torch.Tensor) -> tuple[torch.distributions.Categorical, torch.Tensor]:
        h = self.body(x)
        return torch.distributions.Categorical(logits=self.pi(h)), self.v(h).squeeze(-1)


def ppo(iters: int = 2, epochs: int = 2) -> None:
    agent = ActorCritic()
    optimizer = torch.optim.Adam(agent.parameters(), lr=3e-4, eps=1e-5)
    for _ in range(iters):
        obs = torch.randn(16, 4)
        with torch.no_grad():
            dist, values = agent(obs)
            actions = dist.sample()
            logprobs = dist.log_prob(actions)
        returns = values + torch.randn(16)
        advantages = returns - values
        for _ in range(epochs):
            for mb in torch.randperm(16).split(8):
                new_dist, new_values = agent(obs[mb])
                newlogprob = new_dist.log_prob(actions[mb])
                ratio = (newlogprob - logprobs[mb]).exp()
                mb_adv = (advantages[mb] - advantages[mb].mean()) / (advantages[mb].std() + 1e-8)
                pg_loss = torch.max(-mb_adv * ratio, -mb_adv * torch.clamp(ratio, 0.8, 1.2)).mean()
                v_loss = 0.5 * ((new_values - returns[mb]) ** 2).mean()
                entropy_loss = new_dist.entropy().mean()
                loss = pg_loss - 0.01 * entropy_loss + v_loss * 0.5
                optimizer.zero_grad()
                loss.backward()
                nn.utils.clip_grad_norm_(agent.parameters(), 0.5)
                optimizer.step()


def td3(iters: int = 4, policy_freq: int = 2) -> None:
    actor = Actor()
    actor_target = copy.deepcopy(actor)
    actor_optimizer = torch.optim.Adam(actor.parameters(), lr=3e-4)
    critic1, critic2 = QNet(), QNet()
    critic1_target, critic2_target = copy.deepcopy(critic1), copy.deepcopy(critic2)
    critic_optimizer = torch.optim.Adam(list(critic1.parameters()) + list(critic2.parameters()), lr=3e-4)
    tau, discount = 0.005, 0.99
    for total_it in range(1, iters + 1):
        state, action = torch.randn(8, 3), torch.rand(8, 2) * 2 - 1
        reward, next_state, not_done = torch.randn(8, 1), torch.randn(8, 3), torch.ones(8, 1)
        with torch.no_grad():
            noise = (torch.randn_like(action) * 0.2).clamp(-0.5, 0.5)
            next_action = (actor_target(next_state) + noise).clamp(-1, 1)
            target_Q1 = critic1_target(next_state, next_action)
            target_Q2 = critic2_target(next_state, next_action)
            target_Q = reward + not_done * discount * torch.min(target_Q1, target_Q2)
        current_Q1, current_Q2 = critic1(state, action), critic2(state, action)
        critic_loss = F.mse_loss(current_Q1, target_Q) + F.mse_loss(current_Q2, target_Q)
        critic_optimizer.zero_grad()
        critic_loss.backward()
        critic_optimizer.step()
        if total_it % policy_freq == 0:
            actor_loss = -critic1(state, actor(state)).mean()
            actor_optimizer.zero_grad()
            actor_loss.backward()
            actor_optimizer.step()
            with torch.no_grad():
                for param, target_param in zip(critic1.parameters(), critic1_target.parameters()):
                    target_param.data.copy_(tau * param.data + (1 - tau) * target_param.data)
                for param, target_param in zip(critic2.parameters(), critic2_target.parameters()):
                    target_param.data.copy_(tau * param.data + (1 - tau) * target_param.data)
                for param, target_param in zip(actor.parameters(), actor_target.parameters()):
                    target_param.data.copy_(tau * param.data + (1 - tau) * target_param.data)


class GaussianPolicy(nn.Module):
    def __init__(self, s: int = 3, a: int = 2) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(s, 16), nn.ReLU())
        self.mean, self.log_std = nn.Linear(16, a), nn.Linear(16, a)

    def sample(self, state: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.net(state)
        mean, log_std = self.mean(h), self.log_std(h).clamp(-20, 2)
        normal = torch.distributions.Normal(mean, log_std.exp())
        x_t = normal.rsample()
        y_t = torch.tanh(x_t)
        log_prob = (normal.log_prob(x_t) - torch.log(1 - y_t.pow(2) + 1e-6)).sum(1, keepdim=True)
        return y_t, log_prob


def sac_autotune(iters: int = 3, detach_alpha: bool = True) -> None:
    policy = GaussianPolicy()
    critic, critic_target = QNet(), QNet()
    critic_target.load_state_dict(critic.state_dict())
    policy_optim = torch.optim.Adam(policy.parameters(), lr=3e-4)
    critic_optim = torch.optim.Adam(critic.parameters(), lr=3e-4)
    target_entropy = -2.0
    log_alpha = torch.zeros(1, requires_grad=True)
    alpha_optim = torch.optim.Adam([log_alpha], lr=3e-4)
    alpha = log_alpha.exp().item()
    for _ in range(iters):
        state, action, reward, next_state = torch.randn(8, 3), torch.rand(8, 2), torch.randn(8, 1), torch.randn(8, 3)
        with torch.no_grad():
            next_action, next_log_pi = policy.sample(next_state)
            next_q = critic_target(next_state, next_action) - alpha * next_log_pi
            next_q_value = reward + 0.99 * next_q
        qf_loss = F.mse_loss(critic(state, action), next_q_value)
        critic_optim.zero_grad()
        qf_loss.backward()
        critic_optim.step()
        pi, log_pi = policy.sample(state)
        policy_loss = ((alpha * log_pi) - critic(state, pi)).mean()
        policy_optim.zero_grad()
        policy_loss.backward()
        policy_optim.step()
        alpha_loss = -(log_alpha * (log_pi + target_entropy).detach()).mean()
        alpha_optim.zero_grad()
        alpha_loss.backward()
        alpha_optim.step()
        alpha = log_alpha.exp().item() if detach_alpha else log_alpha.exp()
        with torch.no_grad():
            for tp, p in zip(critic_target.parameters(), critic.parameters()):
                tp.copy_(tp * 0.995 + p * 0.005)


def sac_alpha_not_detached(iters: int = 3) -> None:
    sac_autotune(iters, detach_alpha=False)


def dqn(iters: int = 4, target_update: int = 2) -> None:
    policy_net, target_net = mlp(4, 2, h=16), mlp(4, 2, h=16)
    target_net.load_state_dict(policy_net.state_dict())
    target_net.eval()
    optimizer = torch.optim.AdamW(policy_net.parameters(), lr=1e-4, amsgrad=True)
    criterion = nn.SmoothL1Loss()
    for step in range(iters):
        state_batch, action_batch = torch.randn(8, 4), torch.randint(0, 2, (8, 1))
        reward_batch, next_states = torch.randn(8), torch.randn(8, 4)
        state_action_values = policy_net(state_batch).gather(1, action_batch)
        with torch.no_grad():
            next_state_values = target_net(next_states).max(1).values
        expected_state_action_values = (next_state_values * 0.99) + reward_batch
        loss = criterion(state_action_values, expected_state_action_values.unsqueeze(1))
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_value_(policy_net.parameters(), 100)
        optimizer.step()
        if step % target_update == 0:
            target_net.load_state_dict(policy_net.state_dict())


def actor_critic_summed(iters: int = 3) -> None:
    actor, critic = Actor(), QNet()
    actor_opt = torch.optim.Adam(actor.parameters(), lr=1e-3)
    critic_opt = torch.optim.Adam(critic.parameters(), lr=1e-3)
    for _ in range(iters):
        state, action, target_q = torch.randn(8, 3), torch.rand(8, 2), torch.randn(8, 1)
        critic_loss = F.mse_loss(critic(state, action), target_q)
        actor_loss = -critic(state, actor(state)).mean()
        loss = critic_loss + actor_loss
        actor_opt.zero_grad()
        critic_opt.zero_grad()
        loss.backward()
        critic_opt.step()
        actor_opt.step()


def ddpg_no_critic_zero(iters: int = 3) -> None:
    actor, actor_target = Actor(), Actor()
    critic, critic_target = QNet(), QNet()
    actor_target.load_state_dict(actor.state_dict())
    critic_target.load_state_dict(critic.state_dict())
    actor_opt = torch.optim.Adam(actor.parameters(), lr=1e-3)
    critic_opt = torch.optim.Adam(critic.parameters(), lr=1e-3)
    for _ in range(iters):
        state, action, reward, next_state = torch.randn(8, 3), torch.rand(8, 2), torch.randn(8, 1), torch.randn(8, 3)
        with torch.no_grad():
            target_q = reward + 0.99 * critic_target(next_state, actor_target(next_state))
        critic_loss = F.mse_loss(critic(state, action), target_q)
        critic_loss.backward()
        critic_opt.step()
        actor_loss = -critic(state, actor(state)).mean()
        actor_opt.zero_grad()
        actor_loss.backward()
        actor_opt.step()
        with torch.no_grad():
            for p, tp in zip(critic.parameters(), critic_target.parameters()):
                tp.mul_(0.995).add_(0.005 * p)
            for p, tp in zip(actor.parameters(), actor_target.parameters()):
                tp.mul_(0.995).add_(0.005 * p)


# ----------------------------------------------------------------------------------------------
# distillation, EMA, VAE, contrastive, multi-task
# ----------------------------------------------------------------------------------------------


def distill(iters: int = 3, detach_teacher: bool = True) -> None:
    teacher, student = mlp(5, 3, h=16), mlp(5, 3, h=4)
    teacher.eval()
    optimizer = torch.optim.SGD(student.parameters(), lr=0.1, momentum=0.9)
    T = 4.0
    for _ in range(iters):
        inputs, labels = torch.randn(8, 5), torch.randint(0, 3, (8,))
        optimizer.zero_grad()
        if detach_teacher:
            with torch.no_grad():
                teacher_logits = teacher(inputs)
        else:
            teacher_logits = teacher(inputs)  # keeps the teacher's graph
        student_logits = student(inputs)
        soft_targets = F.softmax(teacher_logits / T, dim=-1)
        soft_prob = F.log_softmax(student_logits / T, dim=-1)
        soft_targets_loss = torch.sum(soft_targets * (soft_targets.log() - soft_prob)) / soft_prob.size()[0] * (T**2)
        label_loss = F.cross_entropy(student_logits, labels)
        loss = 0.25 * soft_targets_loss + 0.75 * label_loss
        loss.backward()
        optimizer.step()


def distill_teacher_not_detached(iters: int = 3) -> None:
    distill(iters, detach_teacher=False)


def mean_teacher(iters: int = 3, alpha: float = 0.99) -> None:
    model = mlp(5, 3)
    ema_model = copy.deepcopy(model)
    for param in ema_model.parameters():
        param.detach_()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    for global_step in range(iters):
        x, y = torch.randn(8, 5), torch.randint(0, 3, (8,))
        model_out = model(x + 0.1 * torch.randn_like(x))
        ema_out = ema_model(x + 0.1 * torch.randn_like(x))
        class_loss = F.cross_entropy(model_out, y)
        consistency_loss = F.mse_loss(F.softmax(model_out, 1), F.softmax(ema_out.detach(), 1))
        loss = class_loss + consistency_loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        a = min(1 - 1 / (global_step + 1), alpha)
        for ema_param, param in zip(ema_model.parameters(), model.parameters()):
            ema_param.data.mul_(a).add_(param.data, alpha=1 - a)


class VAE(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.fc21, self.fc22 = nn.Linear(16, 8), nn.Linear(8, 2), nn.Linear(8, 2)
        self.fc3, self.fc4 = nn.Linear(2, 8), nn.Linear(8, 16)

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h1 = F.relu(self.fc1(x))
        return self.fc21(h1), self.fc22(h1)

    def reparameterize(self, mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
        std = torch.exp(0.5 * logvar)
        return mu + torch.randn_like(std) * std

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.fc4(F.relu(self.fc3(z))))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        mu, logvar = self.encode(x.view(-1, 16))
        z = self.reparameterize(mu, logvar)
        return self.decode(z), mu, logvar


def vae(iters: int = 3) -> None:
    model = VAE()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    model.train()
    for _ in range(iters):
        data = torch.rand(8, 16)
        optimizer.zero_grad()
        recon_batch, mu, logvar = model(data)
        BCE = F.binary_cross_entropy(recon_batch, data.view(-1, 16), reduction="sum")
        KLD = -0.5 * torch.sum(1 + logvar - mu.pow(2) - logvar.exp())
        loss = BCE + KLD
        loss.backward()
        optimizer.step()


class Encoder(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Linear(16, 8)
        self.mu, self.logvar = nn.Linear(8, 2), nn.Linear(8, 2)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = F.relu(self.body(x))
        return self.mu(h), self.logvar(h)


def vae_gan(iters: int = 3, detach_z: bool = True) -> None:
    encoder, decoder, discriminator = Encoder(), mlp(2, 16), mlp(16, 1)
    opt_enc = torch.optim.Adam(encoder.parameters(), lr=1e-3)
    opt_dec = torch.optim.Adam(decoder.parameters(), lr=1e-3)
    opt_dis = torch.optim.Adam(discriminator.parameters(), lr=1e-3)
    bce = nn.BCEWithLogitsLoss()
    for _ in range(iters):
        x = torch.rand(8, 16)
        ones, zeros = torch.ones(8, 1), torch.zeros(8, 1)
        mu, logvar = encoder(x)
        z = mu + torch.randn_like(mu) * torch.exp(0.5 * logvar)
        x_tilde = decoder(z.detach()) if detach_z else decoder(z)
        x_p = decoder(torch.randn(8, 2))
        # discriminator
        dis_loss = bce(discriminator(x), ones) + bce(discriminator(x_tilde.detach()), zeros) + bce(discriminator(x_p.detach()), zeros)
        opt_dis.zero_grad()
        dis_loss.backward()
        opt_dis.step()
        # decoder: reconstruction + fool the discriminator
        rec_loss = F.mse_loss(x_tilde, x)
        gan_loss = bce(discriminator(x_tilde), ones) + bce(discriminator(x_p), ones)
        dec_loss = rec_loss + 0.1 * gan_loss
        opt_dec.zero_grad()
        dec_loss.backward(retain_graph=True)
        opt_dec.step()
        # encoder: KL + reconstruction
        kl = -0.5 * torch.mean(1 + logvar - mu.pow(2) - logvar.exp())
        enc_loss = kl + F.mse_loss(decoder(z), x)
        opt_enc.zero_grad()
        enc_loss.backward()
        opt_enc.step()


def vae_gan_decoder_loss_into_encoder(iters: int = 3) -> None:
    vae_gan(iters, detach_z=False)


def moco(iters: int = 3, m: float = 0.99, K: int = 32) -> None:
    encoder_q = mlp(8, 4, h=16)
    encoder_k = copy.deepcopy(encoder_q)
    for param_k in encoder_k.parameters():
        param_k.requires_grad = False
    queue = F.normalize(torch.randn(4, K), dim=0)
    optimizer = torch.optim.SGD(encoder_q.parameters(), lr=0.03, momentum=0.9, weight_decay=1e-4)
    criterion = nn.CrossEntropyLoss()
    ptr = 0
    for _ in range(iters):
        im_q, im_k = torch.randn(8, 8), torch.randn(8, 8)
        q = F.normalize(encoder_q(im_q), dim=1)
        with torch.no_grad():
            for param_q, param_k in zip(encoder_q.parameters(), encoder_k.parameters()):
                param_k.data = param_k.data * m + param_q.data * (1.0 - m)
            k = F.normalize(encoder_k(im_k), dim=1)
        l_pos = torch.einsum("nc,nc->n", [q, k]).unsqueeze(-1)
        l_neg = torch.einsum("nc,ck->nk", [q, queue.clone().detach()])
        logits = torch.cat([l_pos, l_neg], dim=1) / 0.07
        labels = torch.zeros(logits.shape[0], dtype=torch.long)
        loss = criterion(logits, labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        queue[:, ptr : ptr + 8] = k.T
        ptr = (ptr + 8) % K


def siamese(iters: int = 3) -> None:
    net = mlp(6, 4, h=8)
    optimizer = torch.optim.Adam(net.parameters(), lr=5e-4)
    for _ in range(iters):
        img0, img1, label = torch.randn(8, 6), torch.randn(8, 6), torch.randint(0, 2, (8,)).float()
        optimizer.zero_grad()
        output1, output2 = net(img0), net(img1)
        euclidean_distance = F.pairwise_distance(output1, output2)
        loss_contrastive = torch.mean(
            (1 - label) * torch.pow(euclidean_distance, 2) + label * torch.pow(torch.clamp(2.0 - euclidean_distance, min=0.0), 2)
        )
        loss_contrastive.backward()
        optimizer.step()


def gradnorm(iters: int = 3, alpha: float = 1.5) -> None:
    trunk, heads = nn.Sequential(nn.Linear(4, 8), nn.ReLU()), nn.ModuleList([nn.Linear(8, 1), nn.Linear(8, 1)])
    weights = nn.Parameter(torch.ones(2))
    optimizer = torch.optim.Adam(list(trunk.parameters()) + list(heads.parameters()), lr=1e-3)
    optimizer_w = torch.optim.Adam([weights], lr=1e-3)
    l0 = None
    for _ in range(iters):
        x, ys = torch.randn(8, 4), [torch.randn(8, 1), torch.randn(8, 1)]
        h = trunk(x)
        task_losses = torch.stack([F.mse_loss(head(h), y) for head, y in zip(heads, ys)])
        if l0 is None:
            l0 = task_losses.detach()
        weighted = (weights * task_losses).sum()
        optimizer.zero_grad()
        weighted.backward(retain_graph=True)
        # GradNorm: gradient norms of each weighted task loss at the last shared layer
        W = trunk[0].weight
        norms = torch.stack(
            [torch.autograd.grad(weights[i] * task_losses[i], W, retain_graph=True, create_graph=True)[0].norm() for i in range(2)]
        )
        loss_ratio = task_losses.detach() / l0
        inverse_train_rate = loss_ratio / loss_ratio.mean()
        target = (norms.mean() * inverse_train_rate**alpha).detach()
        grad_norm_loss = (norms - target).abs().sum()
        optimizer_w.zero_grad()
        weights.grad = torch.autograd.grad(grad_norm_loss, weights)[0]
        optimizer.step()
        optimizer_w.step()
        with torch.no_grad():
            weights.data = weights.data * 2 / weights.data.sum()


# ----------------------------------------------------------------------------------------------
# supervised training: the everyday variants
# ----------------------------------------------------------------------------------------------


def grad_accumulation_scaled(iters: int = 2, accumulation_steps: int = 3, scale: float = 1024.0) -> None:
    model = mlp(4, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    optimizer.zero_grad()
    for i in range(iters * accumulation_steps):
        x, y = torch.randn(8, 4), torch.randn(8, 1)
        loss = F.mse_loss(model(x), y) / accumulation_steps
        (loss * scale).backward()
        if (i + 1) % accumulation_steps == 0:
            for p in model.parameters():
                if p.grad is not None:
                    p.grad.div_(scale)
            if all(torch.isfinite(p.grad).all() for p in model.parameters()):
                optimizer.step()
            optimizer.zero_grad()


def clip_and_schedule(iters: int = 3) -> None:
    model = nn.Sequential(nn.Linear(4, 8), nn.LayerNorm(8), nn.GELU(), nn.Dropout(0.1), nn.Linear(8, 3))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.01)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=1e-2, total_steps=iters)
    for _ in range(iters):
        model.train()
        x, y = torch.randn(8, 4), torch.randint(0, 3, (8,))
        model.zero_grad(set_to_none=True)
        loss = F.cross_entropy(model(x), y, label_smoothing=0.1)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm=1.0)
        optimizer.step()
        scheduler.step()


def param_groups(iters: int = 3) -> None:
    backbone, head = mlp(4, 8), nn.Linear(8, 2)
    decay = [p for n, p in backbone.named_parameters() if n.endswith("weight")]
    no_decay = [p for n, p in backbone.named_parameters() if n.endswith("bias")]
    optimizer = torch.optim.SGD(
        [
            {"params": decay, "weight_decay": 1e-4},
            {"params": no_decay, "weight_decay": 0.0},
            {"params": head.parameters(), "lr": 0.1},
        ],
        lr=0.01,
        momentum=0.9,
    )
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=0.5)
    for _ in range(iters):
        x, y = torch.randn(8, 4), torch.randint(0, 2, (8,))
        optimizer.zero_grad()
        loss = F.cross_entropy(head(backbone(x)), y)
        loss.backward()
        optimizer.step()
        scheduler.step()


class Classifier(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.backbone = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.fc = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.backbone(x))


def frozen_backbone(iters: int = 3) -> None:
    model = Classifier()
    for param in model.backbone.parameters():
        param.requires_grad = False
    optimizer = torch.optim.SGD(model.fc.parameters(), lr=0.001, momentum=0.9)
    criterion = nn.CrossEntropyLoss()
    for _ in range(iters):
        inputs, labels = real_images(), torch.randint(0, 3, (8,))
        optimizer.zero_grad()
        outputs = model(inputs)
        loss = criterion(outputs, labels)
        loss.backward()
        optimizer.step()


def backbone_lr_zero(iters: int = 3) -> None:
    model = Classifier()
    optimizer = torch.optim.Adam(
        [{"params": model.backbone.parameters(), "lr": 0.0}, {"params": model.fc.parameters(), "lr": 1e-3}]
    )
    for _ in range(iters):
        inputs, labels = real_images(), torch.randint(0, 3, (8,))
        optimizer.zero_grad()
        loss = F.cross_entropy(model(inputs), labels)
        loss.backward()
        optimizer.step()


class CharRNN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.rnn = nn.LSTM(3, 8, batch_first=True)
        self.out = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor, hidden: tuple[torch.Tensor, torch.Tensor] | None) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        y, hidden = self.rnn(x, hidden)
        return self.out(y), hidden


def repackage_hidden(h: torch.Tensor | tuple) -> torch.Tensor | tuple:
    if isinstance(h, torch.Tensor):
        return h.detach()
    return tuple(repackage_hidden(v) for v in h)


def tbptt(chunks: int = 3, detach: bool = True) -> None:
    model = CharRNN()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    seq = torch.randn(2, chunks * 4, 3)
    hidden = None
    for i in range(chunks):
        x, y = seq[:, i * 4 : (i + 1) * 4], seq[:, i * 4 + 1 : (i + 1) * 4 + 1]
        if detach and hidden is not None:
            hidden = repackage_hidden(hidden)
        optimizer.zero_grad()
        output, hidden = model(x, hidden)
        loss = F.mse_loss(output[:, : y.size(1)], y)
        loss.backward()
        optimizer.step()


def tbptt_no_detach(chunks: int = 3) -> None:
    tbptt(chunks, detach=False)


def anomaly_mode(iters: int = 2) -> None:
    model = mlp(4, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    for _ in range(iters):
        optimizer.zero_grad()
        loss = F.mse_loss(model(torch.randn(8, 4)), torch.randn(8, 1))
        with torch.autograd.set_detect_anomaly(True):
            loss.backward()
        optimizer.step()


def eval_between_steps(iters: int = 3) -> None:
    model = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Dropout(0.2), nn.Linear(8, 2))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, nesterov=True)
    for _ in range(iters):
        model.train()
        optimizer.zero_grad()
        loss = F.cross_entropy(model(torch.randn(8, 4)), torch.randint(0, 2, (8,)))
        loss.backward()
        optimizer.step()
        model.eval()
        with torch.no_grad():
            val_loss = F.cross_entropy(model(torch.randn(8, 4)), torch.randint(0, 2, (8,)))
            _ = val_loss.item()


def lbfgs(iters: int = 2) -> None:
    model = nn.Linear(4, 1)
    optimizer = torch.optim.LBFGS(model.parameters(), lr=0.5, max_iter=4)
    x, y = torch.randn(16, 4), torch.randn(16, 1)
    for _ in range(iters):

        def closure() -> torch.Tensor:
            optimizer.zero_grad()
            loss = F.mse_loss(model(x), y)
            loss.backward()
            return loss

        optimizer.step(closure)


class SignSGD(torch.optim.Optimizer):
    def __init__(self, params: object, lr: float = 1e-3) -> None:
        super().__init__(params, {"lr": lr})

    @torch.no_grad()
    def step(self, closure: Callable[[], torch.Tensor] | None = None) -> torch.Tensor | None:
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is not None:
                    p.add_(p.grad.sign(), alpha=-group["lr"])
        return loss


def custom_optimizer(iters: int = 3) -> None:
    model = mlp(4, 1)
    optimizer = SignSGD(model.parameters(), lr=1e-3)
    for _ in range(iters):
        optimizer.zero_grad()
        loss = F.mse_loss(model(torch.randn(8, 4)), torch.randn(8, 1))
        loss.backward()
        optimizer.step()


def autocast_bf16(iters: int = 3) -> None:
    model = mlp(4, 2)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    for _ in range(iters):
        x, y = torch.randn(8, 4), torch.randint(0, 2, (8,))
        optimizer.zero_grad()
        with torch.autocast(device_type="cpu", dtype=torch.bfloat16):
            output = model(x)
            loss = F.cross_entropy(output, y)
        loss.backward()
        optimizer.step()


def fine_tune_in_eval_mode(iters: int = 3) -> None:
    model = Classifier()
    model.eval()  # BatchNorm statistics stay frozen while the weights train
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    for _ in range(iters):
        optimizer.zero_grad()
        loss = F.cross_entropy(model(real_images()), torch.randint(0, 3, (8,)))
        loss.backward()
        optimizer.step()


# ----------------------------------------------------------------------------------------------
# supervised training: buggy loops
# ----------------------------------------------------------------------------------------------


def grad_accumulation_never_zeroed(iters: int = 2, accumulation_steps: int = 2) -> None:
    model = mlp(4, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    for i in range(iters * accumulation_steps):
        loss = F.mse_loss(model(torch.randn(8, 4)), torch.randn(8, 1)) / accumulation_steps
        loss.backward()
        if (i + 1) % accumulation_steps == 0:
            optimizer.step()


class TwoHeads(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Linear(4, 8)
        self.classifier = nn.Linear(8, 3)
        self.aux_classifier = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(F.relu(self.features(x)))


def dead_param(iters: int = 3) -> None:
    model = TwoHeads()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    for _ in range(iters):
        optimizer.zero_grad()
        loss = F.cross_entropy(model(torch.randn(8, 4)), torch.randint(0, 3, (8,)))
        loss.backward()
        optimizer.step()


def eval_backward_stale_grad(epochs: int = 2, batches: int = 2) -> None:
    model = mlp(4, 2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    for _ in range(epochs):
        model.train()
        for _ in range(batches):
            loss = F.cross_entropy(model(torch.randn(8, 4)), torch.randint(0, 2, (8,)))
            loss.backward()
            optimizer.step()
            optimizer.zero_grad()
        model.eval()
        x_val = torch.randn(8, 4, requires_grad=True)
        val_loss = F.cross_entropy(model(x_val), torch.randint(0, 2, (8,)))
        val_loss.backward()
        saliency = x_val.grad.abs().mean(0)
        _ = saliency


# ----------------------------------------------------------------------------------------------
# the judgement
# ----------------------------------------------------------------------------------------------

CORRECT: list[Callable[[], None]] = [
    dcgan,
    dcgan_optimizer_zero_grad,
    dcgan_zero_grad_keep,
    dcgan_freeze_d_loop,
    dcgan_freeze_d_method,
    dcgan_summed_errD,
    gan_single_adam_frozen,
    lsgan,
    hinge_gan,
    cyclegan,
    pix2pix,
    r1_penalty_gan,
    wgan_clip,
    ppo,
    td3,
    sac_autotune,
    dqn,
    distill,
    mean_teacher,
    vae,
    vae_gan,
    moco,
    siamese,
    gradnorm,
    grad_accumulation_scaled,
    clip_and_schedule,
    param_groups,
    frozen_backbone,
    backbone_lr_zero,
    tbptt,
    anomaly_mode,
    eval_between_steps,
    lbfgs,
    custom_optimizer,
    autocast_bf16,
    fine_tune_in_eval_mode,
]


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize("fn", CORRECT, ids=lambda fn: fn.__name__)
def test_correct_loop_is_silent(fn: Callable[[], None]) -> None:
    findings = watched(fn)
    assert findings == (), short(findings)


@pytest.mark.parametrize("fn", CORRECT, ids=lambda fn: fn.__name__)
def test_correct_loop_trains_the_same_under_the_lens(fn: Callable[[], None]) -> None:
    def state() -> list[torch.Tensor]:
        torch.manual_seed(0)
        seen: list[torch.Tensor] = []
        orig = torch.optim.Optimizer.zero_grad

        def record(self: torch.optim.Optimizer, set_to_none: bool = True) -> None:
            seen.extend(p.detach().clone() for g in self.param_groups for p in g["params"])
            orig(self, set_to_none)

        torch.optim.Optimizer.zero_grad = record  # type: ignore[method-assign]
        try:
            fn()
        finally:
            torch.optim.Optimizer.zero_grad = orig  # type: ignore[method-assign]
        return seen

    bare = state()
    with lens.watch():
        watched_state = state()
    assert len(bare) == len(watched_state)
    assert all(torch.equal(a, b) for a, b in zip(bare, watched_state))


def netG_params() -> set[str]:
    return pnames("netG", DCGenerator())


def netD_params() -> set[str]:
    return pnames("netD", DCDiscriminator())


BUGGY: list[tuple[Callable[[], None], list[Expect], type[BaseException] | None]] = [
    (
        dcgan_no_detach,
        [
            Expect("stray-grad", "optimizerG.step()", netG_params, "optimizerG", "errD_fake.backward(retain_graph=True)", "fake"),
            Expect("detach-leak", "errD_fake = criterion(netD(fake)", netG_params, "optimizerG", "errD_fake.backward(retain_graph=True)", "fake"),
            Expect("missing-zero-grad", "optimizerG.step()", netG_params, "optimizerG"),
        ],
        None,
    ),
    (
        dcgan_no_detach_zeroed,
        [Expect("detach-leak", "errD_fake = criterion(netD(fake)", netG_params, "optimizerG", "errD_fake.backward(retain_graph=True)", "fake")],
        None,
    ),
    (
        dcgan_d_zeroed_after_step,
        [Expect("stray-grad", "optimizerD.step()", netD_params, "optimizerD", "errG.backward()")],
        None,
    ),
    (
        srgan,
        [
            Expect("inplace-saved", "g_loss.backward()", lambda: {"netD.net.0.weight", "netD.net.2.weight"}, "optimizerD"),
            Expect("detach-leak", "fake_out = netD(fake_img).mean()", lambda: pnames("netG", ImageToImage()), "optimizerG",
                   "d_loss.backward(retain_graph=True)", "fake_img"),
        ],
        RuntimeError,
    ),
    (
        srgan_fused,
        [
            Expect("inplace-saved", "g_loss.backward()", lambda: {"netD.net.0.weight", "netD.net.2.weight"}, "optimizerD"),
            Expect("detach-leak", "fake_out = netD(fake_img).mean()", lambda: pnames("netG", ImageToImage()), "optimizerG",
                   "d_loss.backward(retain_graph=True)", "fake_img"),
        ],
        None,
    ),
    (
        actor_critic_summed,
        [Expect("stray-grad", "critic_opt.step()", lambda: pnames("critic", QNet()), "critic_opt", "loss.backward()")],
        None,
    ),
    (
        ddpg_no_critic_zero,
        [
            Expect("stray-grad", "critic_opt.step()", lambda: pnames("critic", QNet()), "critic_opt", "actor_loss.backward()"),
            Expect("missing-zero-grad", "critic_opt.step()", lambda: pnames("critic", QNet()), "critic_opt", "critic_loss.backward()"),
        ],
        None,
    ),
    (
        sac_alpha_not_detached,
        [Expect("detach-leak", "policy_loss.backward()", lambda: {"log_alpha"}, "alpha_optim", "policy_loss.backward()", "alpha")],
        None,
    ),
    (
        distill_teacher_not_detached,
        [Expect("detach-leak", "teacher_logits = teacher(inputs)  # keeps", lambda: pnames("teacher", mlp(5, 3, h=16)), None,
                "loss.backward()")],
        None,
    ),
    (
        vae_gan_decoder_loss_into_encoder,
        [Expect("detach-leak", "x_tilde = decoder(z.detach()) if detach_z else decoder(z)", lambda: pnames("encoder", Encoder()),
                "opt_enc", "dec_loss.backward(retain_graph=True)", "z")],
        None,
    ),
    (
        grad_accumulation_never_zeroed,
        [Expect("missing-zero-grad", "optimizer.step()", lambda: pnames("model", mlp(4, 1)), "optimizer", "loss.backward()")],
        None,
    ),
    (
        tbptt_no_detach,
        [Expect("second-backward", "loss.backward()", backward="loss.backward()")],
        RuntimeError,
    ),
    (
        dead_param,
        [Expect("dead-param", "optimizer.step()", lambda: {"model.aux_classifier.weight", "model.aux_classifier.bias"}, "optimizer")],
        None,
    ),
]


def _where(fn: Callable[[], None], text: str) -> int:
    # a loop that delegates (`dcgan_no_detach_zeroed`) is judged on the function that holds the code
    target = fn
    src = inspect.getsource(fn)
    if text.split("\n")[0] not in src:
        callee = next(v for k, v in globals().items() if callable(v) and f"{k}(" in src.split("\n", 1)[1])
        target = callee
    if text.endswith("\n"):
        text = text[:-1]
        src_lines, start = inspect.getsourcelines(target)
        hits = [start + i for i, s in enumerate(src_lines) if s.strip() == text]
        assert len(hits) == 1, f"{text!r} at {hits}"
        return hits[0]
    return line(target, text)


@pytest.mark.parametrize("fn,expected,raises", BUGGY, ids=[b[0].__name__ for b in BUGGY])
def test_buggy_loop_gets_the_right_finding(
    fn: Callable[[], None], expected: list[Expect], raises: type[BaseException] | None
) -> None:
    findings = watched(fn, raises)
    assert sorted(f.rule for f in findings) == sorted(e.rule for e in expected), short(findings)
    for e in expected:
        [f] = [f for f in findings if f.rule == e.rule]
        assert f.site.line == _where(fn, e.at), (e.rule, short(findings))
        if e.params is not None:
            assert set(f.params) == e.params(), (e.rule, f.params)
        assert f.optimizer == e.optimizer, (e.rule, f.optimizer)
        if e.backward is not None:
            assert f.backward is not None and f.backward.line == _where(fn, e.backward), e.rule
        if e.tensor is not None:
            assert f.tensor == e.tensor, (e.rule, f.tensor)


def test_gan_with_one_optimizer_over_both_networks_trains_D_on_the_generator_loss() -> None:
    findings = watched(gan_single_adam)
    [f] = [f for f in findings if f.rule == "stray-grad"]
    src, start = inspect.getsourcelines(gan_single_adam)
    steps = [start + i for i, s in enumerate(src) if s.strip() == "optimizer.step()"]
    assert f.site.line == steps[1]  # the generator's step also moves netD
    assert f.optimizer == "optimizer"
    assert set(f.params) == netD_params()
    assert f.backward is not None and f.backward.line == line(gan_single_adam, "errG.backward()")


def test_eval_time_backward_leaves_a_stale_gradient_for_the_next_step() -> None:
    findings = watched(eval_backward_stale_grad)
    f = next((f for f in findings if f.rule == "stray-grad"), None)
    assert f is not None, short(findings)
    assert f.site.line == line(eval_backward_stale_grad, "optimizer.step()")
    assert f.optimizer == "optimizer"
    assert set(f.params) == pnames("model", mlp(4, 2))
    assert f.backward is not None and f.backward.line == line(eval_backward_stale_grad, "val_loss.backward()")
