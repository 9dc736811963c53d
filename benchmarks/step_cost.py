"""What ``watch()`` costs per training step, on five kinds of step, against the bare step.

Run: ``python benchmarks/step_cost.py [--steps N] [--rounds R] [--memory-steps N]``.

Steps (CPU, one intra-op thread, CPU time of the process):
- ``mlp``: a tiny MLP (10 -> 32 -> 1), SGD, batch 16;
- ``actor-critic``: DDPG-style actor and critic, two Adam optimizers, the actor's loss through the
  critic, the critic zeroed before its own step;
- ``lstm``: a 2-layer LSTM over 20 steps with ``clip_grad_norm_`` and SGD;
- ``transformer``: a 2-layer ``TransformerEncoder`` (d_model 64, 4 heads) with AdamW;
- ``dcgan``: the DCGAN example's step (ngf = ndf = 16, batch 16).

Printed per step kind: the steady-state ratio (median over interleaved blocks of bare and watched
steps, after the first ``--skip`` steps of each watch, in which it learns the loop: detail for the
first occurrences of each backward site, then the loop's period), the step from which the watch ran
steady cycles, and the first 5 steps of a fresh ``watch()`` against 5 bare steps. Targets: at most
1.10x steady, at most 3x for the first 5 steps. Then the memory that ``watch()`` holds after
``--memory-steps`` steps of a two-network GAN (Python heap, tracemalloc), against at most 5 MiB.
"""

from __future__ import annotations

import argparse
import gc
import statistics
import time
import tracemalloc
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

import autograd_lens as lens

Step = Callable[[], None]


def mlp_step() -> Step:
    model = nn.Sequential(nn.Linear(10, 32), nn.ReLU(), nn.Linear(32, 1))
    opt = torch.optim.SGD(model.parameters(), lr=1e-2)
    x, y = torch.randn(16, 10), torch.randn(16, 1)

    def step() -> None:
        opt.zero_grad()
        loss = F.mse_loss(model(x), y)
        loss.backward()
        opt.step()

    return step


def actor_critic_step() -> Step:
    actor = nn.Sequential(nn.Linear(8, 64), nn.ReLU(), nn.Linear(64, 2), nn.Tanh())
    critic = nn.Sequential(nn.Linear(10, 64), nn.ReLU(), nn.Linear(64, 1))
    actor_opt = torch.optim.Adam(actor.parameters(), lr=1e-3)
    critic_opt = torch.optim.Adam(critic.parameters(), lr=1e-3)
    s, a, r = torch.randn(32, 8), torch.randn(32, 2), torch.randn(32, 1)

    def step() -> None:
        q = critic(torch.cat([s, a], 1))
        critic_loss = F.mse_loss(q, r)
        critic_opt.zero_grad()
        critic_loss.backward()
        critic_opt.step()
        actor_loss = -critic(torch.cat([s, actor(s)], 1)).mean()
        actor_opt.zero_grad()
        actor_loss.backward()
        actor_opt.step()

    return step


def lstm_step() -> Step:
    rnn = nn.LSTM(16, 64, num_layers=2)
    head = nn.Linear(64, 16)
    params = [*rnn.parameters(), *head.parameters()]
    opt = torch.optim.SGD(params, lr=0.1)
    x, y = torch.randn(20, 8, 16), torch.randn(20, 8, 16)

    def step() -> None:
        opt.zero_grad()
        out, _ = rnn(x)
        loss = F.mse_loss(head(out), y)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 0.25)
        opt.step()

    return step


def transformer_step() -> Step:
    layer = nn.TransformerEncoderLayer(64, 4, dim_feedforward=128, dropout=0.0, batch_first=True)
    model = nn.Sequential(nn.TransformerEncoder(layer, num_layers=2), nn.Linear(64, 10))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    x, y = torch.randn(8, 16, 64), torch.randint(0, 10, (8 * 16,))

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        loss = F.cross_entropy(model(x).reshape(-1, 10), y)
        loss.backward()
        opt.step()

    return step


def dcgan_step() -> Step:
    from overhead import make_step  # the DCGAN example's step

    return make_step(torch.device("cpu"), 16, 16)


def gan_step() -> Step:
    """A small two-network GAN, for the memory measurement."""
    netG = nn.Sequential(nn.Linear(4, 32), nn.ReLU(), nn.Linear(32, 8))
    netD = nn.Sequential(nn.Linear(8, 32), nn.LeakyReLU(0.2), nn.Linear(32, 1))
    optimizerD = torch.optim.Adam(netD.parameters(), lr=2e-4)
    optimizerG = torch.optim.Adam(netG.parameters(), lr=2e-4)
    real = torch.randn(16, 8)
    ones, zeros = torch.ones(16, 1), torch.zeros(16, 1)

    def step() -> None:
        netD.zero_grad()
        fake = netG(torch.randn(16, 4))
        errD = F.binary_cross_entropy_with_logits(netD(real), ones) + F.binary_cross_entropy_with_logits(
            netD(fake.detach()), zeros)
        errD.backward()
        optimizerD.step()
        netG.zero_grad()
        errG = F.binary_cross_entropy_with_logits(netD(fake), ones)
        errG.backward()
        optimizerG.step()

    return step


KINDS: dict[str, Callable[[], Step]] = {
    "mlp": mlp_step,
    "actor-critic": actor_critic_step,
    "lstm": lstm_step,
    "transformer": transformer_step,
    "dcgan": dcgan_step,
}


def cpu_time(step: Step, n: int) -> list[float]:
    out = []
    for _ in range(n):
        t0 = time.process_time()
        step()
        out.append(time.process_time() - t0)
    return out


def steady(step: Step, steps: int, rounds: int, skip: int) -> float:
    """Median watched step over median bare step, blocks interleaved; each watch's first ``skip``
    steps (its detailed first occurrences) are left out."""
    bare: list[float] = []
    watched: list[float] = []
    for _ in range(rounds):
        bare += cpu_time(step, steps)
        with lens.watch():
            cpu_time(step, skip)
            watched += cpu_time(step, steps)
    return statistics.median(watched) / statistics.median(bare)


def steady_from(make: Callable[[], Step], limit: int = 100) -> int | None:
    """The step of a fresh watch from which it ran steady cycles (None: not within ``limit``)."""
    step = make()
    with lens.watch() as w:
        for i in range(limit):
            step()
            if w.recorder.steady.on:
                return i + 1
    return None


def first_steps(make: Callable[[], Step], trials: int, n: int = 5) -> float:
    """The first ``n`` steps under a fresh watch (and fresh networks), over ``n`` bare steps."""
    ratios = []
    for _ in range(trials):
        step = make()
        cpu_time(step, 3)
        bare = sum(cpu_time(step, n))
        step = make()
        cpu_time(step, 3)  # same warm-up as the bare run; the watch starts cold
        with lens.watch():
            first = sum(cpu_time(step, n))
        ratios.append(first / bare)
    return statistics.median(ratios)


def memory(steps: int) -> tuple[float, float]:
    """MiB of Python heap the watch holds after ``steps`` GAN steps, and after steps // 10."""
    step = gan_step()
    cpu_time(step, 5)
    gc.collect()
    tracemalloc.start()
    base = tracemalloc.get_traced_memory()[0]
    early = 0.0
    with lens.watch() as w:
        for i in range(steps):
            step()
            if i + 1 == steps // 10:
                gc.collect()
                early = (tracemalloc.get_traced_memory()[0] - base) / 2**20
        gc.collect()
        held = (tracemalloc.get_traced_memory()[0] - base) / 2**20
    tracemalloc.stop()
    assert w.report.findings == ()
    return early, held


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=20, help="timed steps per block")
    ap.add_argument("--rounds", type=int, default=7, help="interleaved blocks of bare and watched steps")
    ap.add_argument("--skip", type=int, default=15, help="steps of each watch left out of the steady state")
    ap.add_argument("--trials", type=int, default=11, help="fresh watches for the first-steps ratio")
    ap.add_argument("--memory-steps", type=int, default=20_000)
    ap.add_argument("--only", default="", help="comma-separated step kinds")
    args = ap.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    kinds = [k for k in KINDS if not args.only or k in args.only.split(",")]
    print(f"torch {torch.__version__}, CPU, 1 thread; CPU time; steady: median of {args.rounds} blocks of "
          f"{args.steps} steps; first 5: median of {args.trials} fresh watches")
    worst_steady = worst_first = 0.0
    for name in kinds:
        step = KINDS[name]()
        cpu_time(step, 5)
        bare_ms = statistics.median(cpu_time(step, args.steps)) * 1e3
        s = steady(step, args.steps, args.rounds, args.skip)
        f = first_steps(KINDS[name], args.trials)
        worst_steady, worst_first = max(worst_steady, s), max(worst_first, f)
        went = steady_from(KINDS[name])
        print(f"  {name:<13} bare {bare_ms:8.3f} ms/step   watch() steady {s:5.3f}x (steady cycles from step "
              f"{went if went is not None else '-'})   first 5 steps {f:6.2f}x")
    print(f"  targets: steady <= 1.10x ({'met' if worst_steady <= 1.10 else 'NOT met'}: worst {worst_steady:.3f}x), "
          f"first 5 <= 3x ({'met' if worst_first <= 3 else 'NOT met'}: worst {worst_first:.2f}x)")
    if args.memory_steps:
        early, held = memory(args.memory_steps)
        print(f"  memory held by watch() over {args.memory_steps} GAN steps: {held:.2f} MiB "
              f"({early:.2f} MiB after {args.memory_steps // 10}); target <= 5 MiB "
              f"({'met' if held <= 5 else 'NOT met'})")


if __name__ == "__main__":
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    main()
