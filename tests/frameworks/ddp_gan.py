"""A GAN under DistributedDataParallel (run with torchrun, gloo backend, CPU); ``--bug`` forgets
``.detach()`` (keeping errD's graph) and does not zero the generator before its step."""

import os
import sys

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel as DDP

BUG = "--bug" in sys.argv


def main() -> None:
    dist.init_process_group("gloo")
    torch.manual_seed(0)
    netG = DDP(nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Linear(16, 8)))
    netD = DDP(nn.Sequential(nn.Linear(8, 16), nn.LeakyReLU(0.2), nn.Linear(16, 1)))
    optimizerG = torch.optim.Adam(netG.parameters(), 1e-3)
    optimizerD = torch.optim.Adam(netD.parameters(), 1e-3)
    criterion = nn.BCEWithLogitsLoss()
    torch.manual_seed(1 + int(os.environ["RANK"]))
    for _ in range(3):
        real = torch.randn(8, 8)
        fake = netG(torch.randn(8, 4))
        optimizerD.zero_grad()
        d_fake = netD(fake if BUG else fake.detach())
        errD = criterion(netD(real), torch.ones_like(d_fake)) + criterion(d_fake, torch.zeros_like(d_fake))
        errD.backward(retain_graph=BUG)
        optimizerD.step()
        if not BUG:
            optimizerG.zero_grad()
        errG = criterion(netD(fake), torch.ones(8, 1))
        errG.backward()
        optimizerG.step()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
