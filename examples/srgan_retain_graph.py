"""An SRGAN-style loop that reuses the discriminator's output for the generator after
``optimizerD.step()``.

``fake_out = netD(fake_img).mean()`` serves both losses. ``d_loss.backward(retain_graph=True)``
keeps its graph, ``optimizerD.step()`` then changes ``netD``'s weights in place, and
``g_loss.backward()`` needs the weights that graph saved: PyTorch raises "one of the variables
needed for gradient computation has been modified by an inplace operation". The lens names the
weight (``netD.main.0.weight``) and the ``optimizerD.step()`` line.

With ``--fused`` the discriminator uses ``Adam(fused=True)``, which does not bump the version
counter: PyTorch says nothing and ``g_loss``'s gradient is computed from the updated weights. The
lens still reports ``inplace-saved``.

Both variants also write the discriminator's loss into ``netG`` (``fake_img`` is not detached for
``d_loss``); ``netG.zero_grad()`` clears it before the generator's backward, so that is a
``detach-leak`` warning only.

Run: ``python examples/srgan_retain_graph.py [--fused]``. The corrected version is ``srgan_fixed.py``.
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


if __name__ == "__main__":
    main()
