"""Through the wrappers people train with: PyTorch Lightning (manual and automatic optimization,
and a callback), HuggingFace accelerate, torch.amp; and sites that skip the frameworks' frames.

The training scripts are in ``tests/frameworks/``; each takes ``--bug`` for its buggy variant.
"""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest
import torch

from click.testing import CliRunner

import autograd_lens as lens

from autograd_lens.cli.main import main

from helpers import by_rule, line_of, rules, run_path

pytest.importorskip("pytorch_lightning", reason="scripts/setup.sh installs pytorch-lightning")
pytest.importorskip("accelerate", reason="scripts/setup.sh installs accelerate")

HERE = Path(__file__).resolve().parent / "frameworks"
NETG = ("netG.0.bias", "netG.0.weight", "netG.2.bias", "netG.2.weight")


def gan_bug_findings(path: Path, *, backward_d: str, step_g: str, optimizer: str, enters: str) -> None:
    """The findings of a GAN that forgets `.detach()` and does not zero G, as in one process."""
    w, _ = run_path(path, "--bug")
    report = w.report
    assert rules(report.findings) == {"detach-leak", "stray-grad", "missing-zero-grad"}
    stray = by_rule(report.findings, "stray-grad")
    assert stray.site.line == line_of(path, step_g)
    assert stray.optimizer == optimizer and stray.params == NETG and stray.tensor == "fake"
    assert stray.backward is not None and stray.backward.line == line_of(path, backward_d)
    leak = by_rule(report.findings, "detach-leak")
    assert leak.site.line == line_of(path, enters)
    assert leak.params == NETG and leak.optimizer == optimizer
    assert by_rule(report.findings, "missing-zero-grad").optimizer == optimizer
    assert report.networks == ("netG", "netD")
    assert all(f.site.file == str(path) for f in report.findings)  # the user's lines, not the framework's
    assert all(b.site.file == str(path) for b in report.backwards)
    assert w.internal_errors == []


def twin_is_silent(path: Path) -> tuple[object, ...]:
    w, _ = run_path(path)
    assert w.report.findings == (), [f.short() for f in w.report.findings]
    assert w.internal_errors == []
    return w.report.backwards


def test_lightning_manual_optimization_gan_bug() -> None:
    path = HERE / "lightning_gan.py"
    gan_bug_findings(path, backward_d="self.manual_backward(errD, retain_graph=BUG)", step_g="opt_g.step()",
                     optimizer="opt_g", enters="d_fake = self.netD(fake if BUG else fake.detach())")


def test_lightning_manual_optimization_gan_twin_and_names() -> None:
    path = HERE / "lightning_gan.py"
    w, _ = run_path(path)
    report = w.report
    assert report.findings == (), [f.short() for f in report.findings]  # no stray-grad, no retained-graph
    assert {s.optimizer for s in report.steps} == {"opt_g", "opt_d"}
    assert {s.call for s in report.steps} == {"opt_g.step()", "opt_d.step()"}
    assert {b.call for b in report.backwards} == {"self.manual_backward(errD, retain_graph=BUG)",
                                                   "self.manual_backward(errG)"}


def test_lightning_callback_watches_fit_from_the_users_entry_point(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import runpy
    import sys

    from autograd_lens.lightning import LensCallback

    gan = runpy.run_path(str(HERE / "lightning_gan.py"))  # the module, not its __main__ block
    argv = sys.argv
    sys.argv = ["train.py", "--bug"]
    try:
        gan["BUG"] = True
        gan["GAN"].training_step.__globals__["BUG"] = True
        callback = LensCallback(out=tmp_path / "out")
        gan["trainer"]([callback]).fit(gan["GAN"](), gan["data"]())
    finally:
        sys.argv = argv
    assert {f.rule for f in callback.findings} == {"detach-leak", "stray-grad", "missing-zero-grad"}
    assert by_rule(callback.findings, "stray-grad").optimizer == "opt_g"
    saved = json.loads((tmp_path / "out" / "report.json").read_text())
    assert {f["rule"] for f in saved["findings"]} == {"detach-leak", "stray-grad", "missing-zero-grad"}
    assert "error[stray-grad]" in capsys.readouterr().err


def test_lightning_automatic_optimization_points_at_the_loss_training_step_returns() -> None:
    path = HERE / "lightning_distill.py"
    w, _ = run_path(path, "--bug")
    leak = by_rule(w.report.findings, "detach-leak")
    assert leak.site.file == str(path) and leak.site.line == line_of(path, "t_logits = self.teacher(x)")
    assert leak.backward is not None and leak.backward.line == line_of(path, "return loss")
    assert set(leak.params) == {"teacher.0.weight", "teacher.0.bias", "teacher.2.weight", "teacher.2.bias"}
    assert "the backward of `loss` returned at line" in leak.message
    assert rules(w.report.findings) == {"detach-leak"}
    backwards = twin_is_silent(path)
    assert [b.site.line for b in backwards] == [line_of(path, "return loss")]


def test_accelerate_gan_bug() -> None:
    path = HERE / "accelerate_gan.py"
    gan_bug_findings(path, backward_d="accelerator.backward(errD, retain_graph=BUG)", step_g="optimizerG.step()",
                     optimizer="optimizerG", enters="d_fake = netD(fake if BUG else fake.detach())")


def test_accelerate_gan_twin() -> None:
    backwards = twin_is_silent(HERE / "accelerate_gan.py")
    assert {b.call for b in backwards} == {"accelerator.backward(errD, retain_graph=BUG)", "accelerator.backward(errG)"}


def test_amp_gan_bug() -> None:
    path = HERE / "amp_gan.py"
    gan_bug_findings(path, backward_d="scaler.scale(errD).backward(retain_graph=BUG)", step_g="scaler.step(optimizerG)",
                     optimizer="optimizerG", enters="d_fake = netD(fake if BUG else fake.detach())")


def test_amp_gan_twin() -> None:
    twin_is_silent(HERE / "amp_gan.py")


# ----------------------------------------------------------------------------------------------
# sites: the user's frame, skipping the frameworks and the packages the user names
# ----------------------------------------------------------------------------------------------

LIB = """\
def step(loss, optimizer):
    loss.backward()
    optimizer.step()
"""

TRAIN = """\
import torch
from torch import nn
import mytrainer

model = nn.Linear(4, 1)
optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
for _ in range(3):
    loss = model(torch.randn(8, 4)).pow(2).mean()
    mytrainer.step(loss, optimizer)
"""


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A script that trains through the user's own installed package (no zero_grad: a finding)."""
    (tmp_path / "site").mkdir()
    (tmp_path / "site" / "mytrainer.py").write_text(LIB)
    (tmp_path / "train.py").write_text(TRAIN)
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_the_users_own_installed_code_keeps_its_lines(project: Path) -> None:
    w, _ = run_path(project / "train.py")
    f = by_rule(w.report.findings, "missing-zero-grad")
    assert f.site.file == str(project / "site" / "mytrainer.py") and f.site.line == 3


def test_packages_to_skip_from_watch_the_command_line_and_pyproject(project: Path) -> None:
    w, _ = run_path(project / "train.py", skip=["mytrainer"])
    f = by_rule(w.report.findings, "missing-zero-grad")
    assert f.site.file == str(project / "train.py") and f.site.line == 9
    result = CliRunner().invoke(main, ["trace", "--no-graphs", "--skip-package", "mytrainer", "train.py"])
    assert "train.py:9: " in result.stderr, result.stderr
    (project / "pyproject.toml").write_text(textwrap.dedent("""\
        [tool.autograd_lens]
        skip-packages = ["mytrainer"]
    """))
    result = CliRunner().invoke(main, ["trace", "--no-graphs", "train.py"])
    assert "train.py:9: " in result.stderr, result.stderr
    (project / "pyproject.toml").unlink()
    result = CliRunner().invoke(main, ["trace", "--no-graphs", "train.py"])
    assert "mytrainer.py:3: " in result.stderr, result.stderr


def test_an_optimizer_prepared_by_accelerate_and_kept_by_a_trainer_is_named_by_its_attribute() -> None:
    from accelerate import Accelerator

    class Trainer:
        def __init__(self) -> None:
            self.accelerator = Accelerator(cpu=True)
            self.model = torch.nn.Linear(4, 1)
            self.opt = torch.optim.Adam(self.model.parameters(), 1e-3)
            self.model, self.opt = self.accelerator.prepare(self.model, self.opt)

        def train(self) -> None:
            for _ in range(3):
                loss = self.model(torch.randn(8, 4)).pow(2).mean()
                self.accelerator.backward(loss)
                self.opt.step()  # no zero_grad

    with lens.watch() as w:
        trainer = Trainer()
        trainer.train()
    assert by_rule(w.report.findings, "missing-zero-grad").optimizer == "trainer.opt"
    assert [s.optimizer for s in w.report.steps] == ["trainer.opt"]
    assert w.internal_errors == []


def test_torch_compile_does_not_warn_of_the_lens_s_own_global_hooks(recwarn: pytest.WarningsRecorder) -> None:
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 1))
    compiled = torch.compile(model, backend="eager")
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    try:
        with lens.watch() as w:
            for _ in range(3):
                opt.zero_grad()
                compiled(torch.randn(8, 4)).pow(2).mean().backward()
                opt.step()
    finally:
        torch._dynamo.reset()  # (the compiled graphs are the compiler's, held in its caches)
    assert w.report.findings == () and w.internal_errors == []
    assert not [str(x.message) for x in recwarn if "global hooks" in str(x.message)]
    import warnings

    assert not any("global hooks" in str(f[1].pattern if f[1] else "") for f in warnings.filters)  # filter removed
