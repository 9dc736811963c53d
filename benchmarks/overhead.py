"""Overhead of ``watch()`` on a DCGAN training step, against the bare step and anomaly mode.

Run: ``python benchmarks/overhead.py [--device cpu|cuda] [--steps N] [--batch B] [--width W]``.

G and D are the generator and discriminator of the PyTorch DCGAN example (64x64 images, ``nz=100``;
``--width`` sets ``ngf = ndf``). One step is the example's: D on a real and a fake batch (fake
detached), ``optimizerD.step()``, then G through D, ``optimizerG.step()``. The three modes run
interleaved in one process (bare, watch, anomaly, bare, ...), after warm-up; the figure for each is
the median step time, printed as a ratio to the bare step. Targets: ``watch()`` at most 1.10x on
CPU and 1.05x on a GPU.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import time
import warnings
from collections.abc import Callable

import torch
from torch import nn

import autograd_lens as lens

nz, nc = 100, 3


class Generator(nn.Module):
    def __init__(self, ngf: int) -> None:
        super().__init__()
        self.main = nn.Sequential(
            nn.ConvTranspose2d(nz, ngf * 8, 4, 1, 0, bias=False),
            nn.BatchNorm2d(ngf * 8),
            nn.ReLU(True),
            nn.ConvTranspose2d(ngf * 8, ngf * 4, 4, 2, 1, bias=False),
            nn.BatchNorm2d(ngf * 4),
            nn.ReLU(True),
            nn.ConvTranspose2d(ngf * 4, ngf * 2, 4, 2, 1, bias=False),
            nn.BatchNorm2d(ngf * 2),
            nn.ReLU(True),
            nn.ConvTranspose2d(ngf * 2, ngf, 4, 2, 1, bias=False),
            nn.BatchNorm2d(ngf),
            nn.ReLU(True),
            nn.ConvTranspose2d(ngf, nc, 4, 2, 1, bias=False),
            nn.Tanh(),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.main(x)


class Discriminator(nn.Module):
    def __init__(self, ndf: int) -> None:
        super().__init__()
        self.main = nn.Sequential(
            nn.Conv2d(nc, ndf, 4, 2, 1, bias=False),
            nn.LeakyReLU(0.2, inplace=True),
            nn.Conv2d(ndf, ndf * 2, 4, 2, 1, bias=False),
            nn.BatchNorm2d(ndf * 2),
            nn.LeakyReLU(0.2, inplace=True),
            nn.Conv2d(ndf * 2, ndf * 4, 4, 2, 1, bias=False),
            nn.BatchNorm2d(ndf * 4),
            nn.LeakyReLU(0.2, inplace=True),
            nn.Conv2d(ndf * 4, ndf * 8, 4, 2, 1, bias=False),
            nn.BatchNorm2d(ndf * 8),
            nn.LeakyReLU(0.2, inplace=True),
            nn.Conv2d(ndf * 8, 1, 4, 1, 0, bias=False),
            nn.Sigmoid(),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.main(x).view(-1, 1).squeeze(1)


def make_step(device: torch.device, batch: int, width: int) -> Callable[[], None]:
    torch.manual_seed(0)
    netG = Generator(width).to(device)
    netD = Discriminator(width).to(device)
    criterion = nn.BCELoss()
    optimizerD = torch.optim.Adam(netD.parameters(), lr=2e-4, betas=(0.5, 0.999))
    optimizerG = torch.optim.Adam(netG.parameters(), lr=2e-4, betas=(0.5, 0.999))
    real = torch.randn(batch, nc, 64, 64, device=device)
    noise = torch.randn(batch, nz, 1, 1, device=device)
    real_label = torch.full((batch,), 1.0, device=device)
    fake_label = torch.full((batch,), 0.0, device=device)

    def step() -> None:
        netD.zero_grad()
        errD_real = criterion(netD(real), real_label)
        errD_real.backward()
        fake = netG(noise)
        errD_fake = criterion(netD(fake.detach()), fake_label)
        errD_fake.backward()
        optimizerD.step()
        netG.zero_grad()
        errG = criterion(netD(fake), real_label)
        errG.backward()
        optimizerG.step()

    return step


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--steps", type=int, default=30, help="timed steps per mode")
    ap.add_argument("--warmup", type=int, default=3, help="untimed steps at the start of each block")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--width", type=int, default=16, help="ngf = ndf (the example uses 64)")
    args = ap.parse_args()
    warnings.filterwarnings("ignore", message="Anomaly Detection has been enabled")
    device = torch.device(args.device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    step = make_step(device, args.batch, args.width)

    modes: dict[str, Callable[[], contextlib.AbstractContextManager]] = {
        "bare": contextlib.nullcontext,
        "watch()": lens.watch,
        "detect_anomaly()": torch.autograd.detect_anomaly,
    }
    # Rounds of blocks, one block per mode: a long-lived watch() takes full detail (graph
    # snapshots) for the first occurrences of each site only, so the first steps of every block
    # are warm-up and only the later ones are timed.
    times: dict[str, list[float]] = {m: [] for m in modes}
    per_block = args.warmup + max(1, args.steps // args.rounds)
    findings = 0
    for _ in range(args.rounds):
        for name, ctx in modes.items():
            with ctx() as w:
                for i in range(per_block):
                    sync()
                    t0 = time.perf_counter()
                    step()
                    sync()
                    if i >= args.warmup:
                        times[name].append(time.perf_counter() - t0)
            if isinstance(w, lens.Watch):
                findings += len(w.report.findings)

    base = statistics.median(times["bare"])
    print(f"torch {torch.__version__}, device {device}, threads {torch.get_num_threads()}, "
          f"batch {args.batch}, ngf=ndf={args.width}, {args.steps} steps per mode (median)")
    for name, ts in times.items():
        med = statistics.median(ts)
        print(f"  {name:<18} {med * 1e3:9.2f} ms/step   {med / base:5.3f}x bare")
    print(f"  watch() findings on the correct loop: {findings}")
    target = 1.05 if device.type == "cuda" else 1.10
    ratio = statistics.median(times["watch()"]) / base
    print(f"  target for watch(): <= {target:.2f}x  ->  {'met' if ratio <= target else 'NOT met'} ({ratio:.3f}x)")


if __name__ == "__main__":
    main()
