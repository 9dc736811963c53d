"""The SRGAN-style loop of ``srgan_retain_graph.py``, corrected.

By default the discriminator's output is recomputed for the generator after ``optimizerD.step()``
(and the discriminator's loss sees ``fake_img.detach()``). With ``--order`` the original sharing is
kept but both backward calls run before any step, zeroing ``netG`` in between.

Run: ``python examples/srgan_fixed.py [--order] [--fused]``.
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
        self.main = nn.Sequential(nn.Linear(NX, NF), nn.LeakyReLU(0.2), nn.Linear(NF, 1), nn.Sigmoid())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.main(x)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--order", action="store_true", help="both backward calls before any step")
    parser.add_argument("--fused", action="store_true", help="use Adam(fused=True) for the discriminator")
    parser.add_argument("--iters", type=int, default=2)
    args = parser.parse_args()
    torch.manual_seed(0)
    netG, netD = Generator(), Discriminator()
    optimizerG = torch.optim.Adam(netG.parameters(), lr=1e-3)
    optimizerD = torch.optim.Adam(netD.parameters(), lr=1e-3, fused=args.fused)
    mse = nn.MSELoss()
    for _ in range(args.iters):
        real_img = torch.rand(16, NX) * 2 - 1
        z = torch.randn(16, NZ)
        fake_img = netG(z)

        if args.order:
            netD.zero_grad()
            netG.zero_grad()
            real_out = netD(real_img).mean()
            fake_out = netD(fake_img.detach()).mean()
            d_loss = 1 - real_out + fake_out
            d_loss.backward()
            netD.requires_grad_(False)
            g_loss = mse(fake_img, real_img) + 1e-3 * (1 - netD(fake_img).mean())
            g_loss.backward()
            netD.requires_grad_(True)
            optimizerD.step()
            optimizerG.step()
            continue

        netD.zero_grad()
        real_out = netD(real_img).mean()
        fake_out = netD(fake_img.detach()).mean()
        d_loss = 1 - real_out + fake_out
        d_loss.backward()
        optimizerD.step()

        netG.zero_grad()
        fake_out = netD(fake_img).mean()
        g_loss = mse(fake_img, real_img) + 1e-3 * (1 - fake_out)
        g_loss.backward()
        optimizerG.step()


if __name__ == "__main__":
    main()
