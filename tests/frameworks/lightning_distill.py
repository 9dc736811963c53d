"""Knowledge distillation in PyTorch Lightning with automatic optimization; ``--bug`` uses the
teacher's logits without ``.detach()`` (the teacher requires grad but is in no optimizer)."""

import sys

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch import nn

BUG = "--bug" in sys.argv


class Distill(pl.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.teacher = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 3))
        self.student = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 3))

    def training_step(self, batch, batch_idx):
        x, y = batch
        t_logits = self.teacher(x)
        if not BUG:
            t_logits = t_logits.detach()
        s_logits = self.student(x)
        kd = F.kl_div(F.log_softmax(s_logits / 2, -1), F.softmax(t_logits / 2, -1), reduction="batchmean")
        loss = kd + F.cross_entropy(s_logits, y)
        return loss

    def configure_optimizers(self):
        return torch.optim.SGD(self.student.parameters(), lr=0.1)


if __name__ == "__main__":
    torch.manual_seed(0)
    ds = torch.utils.data.TensorDataset(torch.randn(24, 6), torch.randint(0, 3, (24,)))
    pl.Trainer(max_epochs=1, limit_train_batches=3, logger=False, enable_checkpointing=False,
               enable_progress_bar=False, enable_model_summary=False, accelerator="cpu", devices=1).fit(
        Distill(), torch.utils.data.DataLoader(ds, batch_size=8))
