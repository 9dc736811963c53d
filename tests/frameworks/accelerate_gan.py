"""A GAN trained through HuggingFace accelerate; ``--bug`` forgets ``.detach()`` (keeping errD's
graph) and does not zero the generator before its step."""

import sys

import torch
from accelerate import Accelerator
from torch import nn

BUG = "--bug" in sys.argv


def main() -> None:
    torch.manual_seed(0)
    accelerator = Accelerator(cpu=True)
    netG = nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Linear(16, 8))
    netD = nn.Sequential(nn.Linear(8, 16), nn.LeakyReLU(0.2), nn.Linear(16, 1))
    optimizerG = torch.optim.Adam(netG.parameters(), 1e-3)
    optimizerD = torch.optim.Adam(netD.parameters(), 1e-3)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.randn(24, 8)), batch_size=8)
    netG, netD, optimizerG, optimizerD, loader = accelerator.prepare(netG, netD, optimizerG, optimizerD, loader)
    criterion = nn.BCEWithLogitsLoss()
    for (real,) in loader:
        fake = netG(torch.randn(real.size(0), 4))
        optimizerD.zero_grad()
        d_fake = netD(fake if BUG else fake.detach())
        errD = criterion(netD(real), torch.ones_like(d_fake)) + criterion(d_fake, torch.zeros_like(d_fake))
        accelerator.backward(errD, retain_graph=BUG)
        optimizerD.step()
        if not BUG:
            optimizerG.zero_grad()
        errG = criterion(netD(fake), torch.ones(real.size(0), 1))
        accelerator.backward(errG)
        optimizerG.step()


if __name__ == "__main__":
    main()
