"""Actor-critic (DDPG style) done right: the critic's loss and the actor's loss are backwarded
and stepped separately, each after its optimizer's ``zero_grad()``.

The actor's backward still passes through the critic and leaves gradient there; the critic's
``zero_grad()`` clears it before the critic's next step. The lens reports nothing.

Run: ``python examples/actor_critic_fixed.py``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class Actor(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(3, 16), nn.ReLU(), nn.Linear(16, 2), nn.Tanh())

    def forward(self, s: torch.Tensor) -> torch.Tensor:
        return self.net(s)


class Critic(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(5, 16), nn.ReLU(), nn.Linear(16, 1))

    def forward(self, s: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
        return self.net(torch.cat([s, a], dim=1))


def main() -> None:
    torch.manual_seed(0)
    actor, critic = Actor(), Critic()
    actor_opt = torch.optim.Adam(actor.parameters(), lr=1e-3)
    critic_opt = torch.optim.Adam(critic.parameters(), lr=1e-3)
    for _ in range(3):
        s, a, r, s2 = torch.randn(16, 3), torch.rand(16, 2) * 2 - 1, torch.randn(16, 1), torch.randn(16, 3)
        with torch.no_grad():
            target_q = r + 0.99 * critic(s2, actor(s2))
        critic_loss = F.mse_loss(critic(s, a), target_q)
        critic_opt.zero_grad()
        critic_loss.backward()
        critic_opt.step()
        actor_loss = -critic(s, actor(s)).mean()
        actor_opt.zero_grad()
        actor_loss.backward()
        actor_opt.step()


if __name__ == "__main__":
    main()
