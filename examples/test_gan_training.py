"""Protect a GAN training step with autograd_lens in your own test suite.

A missing ``.detach()`` in a GAN does not crash: the generator quietly takes steps on the
discriminator's loss. These tests make that a failing test in CI instead of a wasted training run.

Run them with::

    python -m pytest examples/test_gan_training.py
    python -m pytest --lens examples/test_gan_training.py   # every test under the lens
"""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

import autograd_lens as lens
from autograd_lens.testing import (
    assert_does_not_reach,
    assert_gradcheck,
    assert_grads_only_for,
    assert_reaches,
)

NOISE, FEATURES, BATCH = 4, 6, 16


class Generator(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.main = nn.Sequential(nn.Linear(NOISE, 16), nn.ReLU(), nn.Linear(16, FEATURES), nn.Tanh())

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.main(z)


class Discriminator(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.main = nn.Sequential(nn.Linear(FEATURES, 16), nn.LeakyReLU(0.2), nn.Linear(16, 1), nn.Sigmoid())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.main(x)


def train_step(netG: nn.Module, netD: nn.Module, optimizerD: torch.optim.Optimizer,
               optimizerG: torch.optim.Optimizer, real: torch.Tensor) -> tuple[float, float]:
    """One DCGAN-style step: update D on real and fake, then G through D."""
    criterion = nn.BCELoss()
    ones, zeros = torch.ones(real.shape[0], 1), torch.zeros(real.shape[0], 1)

    netD.zero_grad()
    errD_real = criterion(netD(real), ones)
    errD_real.backward()
    fake = netG(torch.randn(real.shape[0], NOISE))
    errD_fake = criterion(netD(fake.detach()), zeros)
    errD_fake.backward()
    optimizerD.step()

    netG.zero_grad()
    errG = criterion(netD(fake), ones)
    errG.backward()
    optimizerG.step()
    return (errD_real + errD_fake).item(), errG.item()


def buggy_train_step(netG: nn.Module, netD: nn.Module, optimizerD: torch.optim.Optimizer,
                     optimizerG: torch.optim.Optimizer, real: torch.Tensor) -> None:
    """The same step with the classic bug: no ``.detach()`` and no ``netG.zero_grad()``."""
    criterion = nn.BCELoss()
    ones, zeros = torch.ones(real.shape[0], 1), torch.zeros(real.shape[0], 1)
    netD.zero_grad()
    fake = netG(torch.randn(real.shape[0], NOISE))
    errD = criterion(netD(real), ones) + criterion(netD(fake), zeros)
    errD.backward(retain_graph=True)
    optimizerD.step()
    errG = criterion(netD(fake), ones)
    errG.backward()
    optimizerG.step()


@pytest.fixture
def gan() -> tuple[nn.Module, nn.Module, torch.optim.Optimizer, torch.optim.Optimizer, torch.Tensor]:
    torch.manual_seed(0)
    netG, netD = Generator(), Discriminator()
    optimizerD = torch.optim.Adam(netD.parameters(), lr=2e-4)
    optimizerG = torch.optim.Adam(netG.parameters(), lr=2e-4)
    return netG, netD, optimizerD, optimizerG, torch.randn(BATCH, FEATURES)


def test_discriminator_loss_stops_at_the_generator(gan) -> None:
    netG, netD, _, _, real = gan
    fake = netG(torch.randn(BATCH, NOISE))
    errD_fake = nn.BCELoss()(netD(fake.detach()), torch.zeros(BATCH, 1))
    assert_does_not_reach(errD_fake, netG)  # from the graph alone: no backward, .grad untouched
    assert_reaches(errD_fake, netD)


def test_generator_loss_trains_the_generator(gan) -> None:
    netG, netD, _, _, _ = gan
    errG = nn.BCELoss()(netD(netG(torch.randn(BATCH, NOISE))), torch.ones(BATCH, 1))
    assert_reaches(errG, netG)


def test_training_step_is_clean(gan) -> None:
    netG, netD, optimizerD, optimizerG, real = gan
    with lens.expect_clean():
        train_step(netG, netD, optimizerD, optimizerG, real)


def test_each_optimizer_steps_only_its_own_gradient(gan) -> None:
    netG, netD, optimizerD, optimizerG, real = gan
    assert_grads_only_for(train_step, netG, netD, optimizerD, optimizerG, real,
                          optimizers=[optimizerD, optimizerG])


def test_the_lens_catches_the_classic_bug(gan) -> None:
    netG, netD, optimizerD, optimizerG, real = gan
    with lens.expect("stray-grad", optimizer=optimizerG, params=netG):
        buggy_train_step(netG, netD, optimizerD, optimizerG, real)


def test_several_steps_under_the_lens_fixture(lens, gan) -> None:
    netG, netD, optimizerD, optimizerG, real = gan
    for _ in range(3):
        train_step(netG, netD, optimizerD, optimizerG, real)
    assert lens.report.findings == ()
    assert {s.optimizer for s in lens.report.steps} == {"optimizerD", "optimizerG"}


class MinibatchScale(torch.autograd.Function):
    """A custom Function a GAN might use: scales each sample by a learned per-feature weight."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        ctx.save_for_backward(x, weight)
        return x * weight

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:  # type: ignore[override]
        x, weight = ctx.saved_tensors
        return grad * weight, (grad * x).sum(0)


def test_custom_function_gradient() -> None:
    x = torch.randn(BATCH, FEATURES, dtype=torch.double, requires_grad=True)
    weight = torch.randn(FEATURES, dtype=torch.double, requires_grad=True)
    assert_gradcheck(MinibatchScale.apply, (x, weight))


if __name__ == "__main__":
    raise SystemExit(pytest.main([__file__, "-q"]))
