"""The lens steps aside in the user's tracing and dispatch contexts: under ``torch.jit.trace``, a
user's ``TorchDispatchMode`` and ``FakeTensorMode`` it runs no tensor op and touches no tensor's
data of its own, says once that it did not watch, and watches again afterwards."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

import autograd_lens as lens


class CountOps(TorchDispatchMode):
    def __init__(self) -> None:
        super().__init__()
        self.ops: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001, ANN204
        self.ops.append(str(func))
        return func(*args, **(kwargs or {}))


def loop(model: nn.Module, opt: torch.optim.Optimizer) -> None:
    """Paths where the lens would otherwise run ops: clipping without zero_grad (the zero check
    of .grad), a step, a second backward."""
    for _ in range(2):
        loss = model(torch.randn(4, 3)).pow(2).mean()
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()


def test_a_users_dispatch_mode_sees_only_the_programs_ops() -> None:
    def run(watched: bool) -> list[str]:
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 1))
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        with CountOps() as mode:
            if watched:
                with lens.watch():
                    loop(model, opt)
            else:
                loop(model, opt)
        return mode.ops

    bare = run(False)
    with pytest.warns(RuntimeWarning, match="not watching while a CountOps runs"):
        under = run(True)
    assert under == bare


def test_fake_tensor_mode_gets_no_warning_of_the_lens_own_data_access() -> None:
    from torch._subclasses.fake_tensor import FakeTensorMode

    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        with lens.watch() as w:
            with FakeTensorMode():
                fake_model = nn.Linear(3, 1)
                fake_model(torch.randn(2, 3)).sum().backward()
            real = nn.Linear(3, 1)  # watched again once the mode is gone
            opt = torch.optim.SGD(real.parameters(), lr=0.1)
            for _ in range(2):
                real(torch.randn(2, 3)).sum().backward()
                opt.step()
    texts = [str(s.message) for s in seen]
    assert not any("data pointer" in t for t in texts), texts
    assert sum("not watching while a FakeTensorMode runs" in t for t in texts) == 1
    assert w.report.extra["stepped_aside"]["a FakeTensorMode"] >= 1
    assert [f.rule for f in w.report.findings] == ["missing-zero-grad"]  # the real loop is watched


def test_jit_trace_under_watch_then_training_is_watched_again() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 1))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.warns(RuntimeWarning, match="not watching while torch.jit.trace runs"):
        with lens.watch() as w:
            traced = torch.jit.trace(model, torch.randn(2, 3))
            loop(model, opt)
    assert traced(torch.randn(2, 3)).shape == (2, 1)
    assert w.report.extra["stepped_aside"]["torch.jit.trace"] >= 1
    assert [f.rule for f in w.report.findings] == ["missing-zero-grad"]
    assert w.report.to_dict()["stepped_aside"]["torch.jit.trace"] >= 1


def test_lens_trace_of_a_script_that_jit_traces_ends_normally(tmp_path: Path) -> None:
    script = tmp_path / "export.py"
    script.write_text(textwrap.dedent("""\
        import torch
        from torch import nn
        model = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 1))
        traced = torch.jit.trace(model, torch.randn(2, 3))
        traced.save("model.pt")
        print("saved")
    """))
    lens_bin = Path(sys.executable).parent / "lens"
    run = subprocess.run([str(lens_bin), "trace", "--no-graphs", "export.py"], cwd=tmp_path,
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr[-2000:]
    assert run.stdout.strip() == "saved" and (tmp_path / "model.pt").exists()
    report = json.loads((tmp_path / "lens-out" / "report.json").read_text())
    assert report["status"] == "ok" and report["stepped_aside"]["torch.jit.trace"] >= 1
