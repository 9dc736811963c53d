"""A GAN in PyTorch Lightning with manual optimization; ``--bug`` forgets ``.detach()`` (and keeps
errD's graph so that the generator's loss can still go through it) and does not zero the generator
before its step."""

import sys

import pytorch_lightning as pl
import torch
from torch import nn

BUG = "--bug" in sys.argv


class GAN(pl.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.automatic_optimization = False
        self.netG = nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Linear(16, 8))
        self.netD = nn.Sequential(nn.Linear(8, 16), nn.LeakyReLU(0.2), nn.Linear(16, 1))
        self.criterion = nn.BCEWithLogitsLoss()

    def training_step(self, batch, batch_idx):
        real = batch[0]
        opt_g, opt_d = self.optimizers()
        fake = self.netG(torch.randn(real.size(0), 4))
        opt_d.zero_grad()
        d_fake = self.netD(fake if BUG else fake.detach())
        errD = self.criterion(self.netD(real), torch.ones_like(d_fake)) + self.criterion(d_fake, torch.zeros_like(d_fake))
        self.manual_backward(errD, retain_graph=BUG)
        opt_d.step()
        if not BUG:
            opt_g.zero_grad()
        errG = self.criterion(self.netD(fake), torch.ones(real.size(0), 1))
        self.manual_backward(errG)
        opt_g.step()

    def configure_optimizers(self):
        return [torch.optim.Adam(self.netG.parameters(), 1e-3), torch.optim.Adam(self.netD.parameters(), 1e-3)]


def trainer(callbacks=()) -> pl.Trainer:
    return pl.Trainer(max_epochs=1, limit_train_batches=3, logger=False, enable_checkpointing=False,
                      enable_progress_bar=False, enable_model_summary=False, accelerator="cpu", devices=1,
                      callbacks=list(callbacks))


def data() -> torch.utils.data.DataLoader:
    return torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.randn(24, 8)), batch_size=8)


if __name__ == "__main__":
    torch.manual_seed(0)
    trainer().fit(GAN(), data())
