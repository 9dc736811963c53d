"""A GAN training loop done right: the discriminator sees ``fake.detach()``, each network is
zeroed before its own backward.

The corrected version of ``gan_no_detach.py``; the lens reports nothing.

Run: ``python examples/gan_fixed.py``.
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
        errD_fake = criterion(netD(fake.detach()), fake_label)
        errD_fake.backward()
        optimizerD.step()
        # (2) update G: maximize log(D(G(z)))
        netG.zero_grad()
        errG = criterion(netD(fake), real_label)
        errG.backward()
        optimizerG.step()


if __name__ == "__main__":
    main()
