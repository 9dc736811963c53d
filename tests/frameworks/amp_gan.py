"""A GAN with torch.amp (autocast and GradScaler); ``--bug`` forgets ``.detach()`` (keeping errD's
graph) and does not zero the generator before its step."""

import sys

import torch
from torch import nn

BUG = "--bug" in sys.argv


def main() -> None:
    torch.manual_seed(0)
    netG = nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Linear(16, 8))
    netD = nn.Sequential(nn.Linear(8, 16), nn.LeakyReLU(0.2), nn.Linear(16, 1))
    optimizerG = torch.optim.Adam(netG.parameters(), 1e-3)
    optimizerD = torch.optim.Adam(netD.parameters(), 1e-3)
    scaler = torch.amp.GradScaler("cpu", init_scale=128.0)
    criterion = nn.BCEWithLogitsLoss()
    for _ in range(3):
        real = torch.randn(8, 8)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            fake = netG(torch.randn(8, 4))
            d_fake = netD(fake if BUG else fake.detach())
            errD = criterion(netD(real).float(), torch.ones(8, 1)) + criterion(d_fake.float(), torch.zeros(8, 1))
        optimizerD.zero_grad()
        scaler.scale(errD).backward(retain_graph=BUG)
        scaler.step(optimizerD)
        if not BUG:
            optimizerG.zero_grad()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            errG = criterion(netD(fake).float(), torch.ones(8, 1))
        scaler.scale(errG).backward()
        scaler.step(optimizerG)
        scaler.update()


if __name__ == "__main__":
    main()
