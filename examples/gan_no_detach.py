"""A GAN whose discriminator loss is computed on the generator's output without ``.detach()``.

``errD_fake = criterion(netD(fake), fake_label)`` keeps the generator in the graph of the
discriminator's loss, and ``errD_fake.backward(retain_graph=True)`` (the usual way to silence
"Trying to backward through the graph a second time") writes that loss's gradient into ``netG``.

- Without ``--zero-g`` nothing clears it: ``optimizerG.step()`` applies the discriminator's gradient
  to the generator (``stray-grad``, an error).
- With ``--zero-g`` (``netG.zero_grad()`` before the generator's backward) the stray gradient is
  cleared in time; the backward still does useless work in ``netG`` (``detach-leak``, a warning).

Run: ``python examples/gan_no_detach.py [--zero-g]``; under the lens:
``lens trace examples/gan_no_detach.py``. The corrected version is ``gan_fixed.py``.
"""

from __future__ import annotations

import argparse

import torch
from torch import nn

NZ, NF, NX = 8, 16, 12


class Generator(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.main = nn.Sequential(nn.Linear(NZ, NF), nn.ReLU(), nn.Linear(NF, NX), nn.Tanh())

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.main(z)


class Discriminator(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.main = nn.Sequential(nn.Linear(NX, NF), nn.LeakyReLU(0.2), nn.Linear(NF, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.main(x)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--zero-g", action="store_true", help="call netG.zero_grad() before G's backward")
    parser.add_argument("--iters", type=int, default=3)
    args = parser.parse_args()
    torch.manual_seed(0)
    netG, netD = Generator(), Discriminator()
    criterion = nn.BCEWithLogitsLoss()
    optimizerD = torch.optim.Adam(netD.parameters(), lr=2e-4, betas=(0.5, 0.999))
    optimizerG = torch.optim.Adam(netG.parameters(), lr=2e-4, betas=(0.5, 0.999))
    batch = 16
    real_label, fake_label = torch.ones(batch, 1), torch.zeros(batch, 1)
    for _ in range(args.iters):
        real = torch.randn(batch, NX)
        # (1) update D: maximize log(D(x)) + log(1 - D(G(z)))
        netD.zero_grad()
        errD_real = criterion(netD(real), real_label)
        errD_real.backward()
        noise = torch.randn(batch, NZ)
        fake = netG(noise)
        errD_fake = criterion(netD(fake), fake_label)
        errD_fake.backward(retain_graph=True)
        optimizerD.step()
        # (2) update G: maximize log(D(G(z)))
        if args.zero_g:
            netG.zero_grad()
        errG = criterion(netD(fake), real_label)
        errG.backward()
        optimizerG.step()


if __name__ == "__main__":
    main()
