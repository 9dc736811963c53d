"""Where the lens says things happened, and what it calls them."""

from __future__ import annotations

import torch
from torch import nn

import autograd_lens as lens


def test_parameters_are_named_by_the_variables_that_hold_their_modules() -> None:
    class Critic(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.body = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 1))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.body(x)

    critic = Critic()
    g = lens.draw(critic(torch.randn(2, 3)).sum())
    assert set(g.param_names) == {"critic.body.0.weight", "critic.body.0.bias", "critic.body.2.weight", "critic.body.2.bias"}


def test_reading_locals_keeps_a_dict_the_function_holds() -> None:
    x = torch.randn(3, requires_grad=True)
    held = locals()
    with lens.watch():
        (x * 2).sum().backward()
    assert "x" in held


def test_reading_locals_keeps_names_that_exec_created() -> None:
    exec("scale = 0.5")
    x = torch.randn(3, requires_grad=True)
    with lens.watch():
        (x * 2).sum().backward()
    assert locals()["scale"] == 0.5


def test_optimizers_kept_in_a_list_are_named_by_their_place_in_it() -> None:
    import autograd_lens as lens

    netG, netD = torch.nn.Linear(2, 2), torch.nn.Linear(2, 1)
    optimizers = [torch.optim.SGD(netG.parameters(), lr=0.1), torch.optim.SGD(netD.parameters(), lr=0.1)]
    with lens.watch() as w:
        for opt, loss in zip(optimizers, (netG(torch.randn(3, 2)).sum(), netD(torch.randn(3, 2)).sum())):
            opt.zero_grad()
            loss.backward()
            opt.step()
    assert sorted(s.optimizer for s in w.report.steps) == ["optimizers[0]", "optimizers[1]"]
