"""Where the lens says things happened, and what it calls them."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

import autograd_lens as lens
import autograd_lens.naming as naming


def test_backward_through_an_installed_library_is_reported_at_the_users_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    lib = tmp_path / "site-packages"
    lib.mkdir()
    (lib / "trainer_lib.py").write_text(
        "def backward(loss):\n"
        "    loss.backward()\n"
    )
    monkeypatch.setattr(naming, "_LIBRARY_DIRS", (str(lib) + "/",))
    spec = importlib.util.spec_from_file_location("trainer_lib", lib / "trainer_lib.py")
    assert spec is not None and spec.loader is not None
    trainer_lib = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(trainer_lib)
    net = nn.Linear(3, 1)
    with lens.watch() as w:
        loss = net(torch.randn(2, 3)).sum()
        trainer_lib.backward(loss); line = sys._getframe().f_lineno  # noqa: E702
    [call] = w.calls
    assert call.site.file == __file__ and call.site.line == line


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
