"""``autograd_lens.runner`` and ``autograd_lens.output``: running a program as ``python`` would,
and writing its report and graphs."""

from __future__ import annotations

import json
import os
import sys
import textwrap
import traceback
from pathlib import Path

import pytest

from autograd_lens import output, runner
from autograd_lens.errors import LensError

GAN = textwrap.dedent(
    """\
    import sys
    import torch
    from torch import nn

    torch.manual_seed(0)
    netG = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 6), nn.Tanh())
    netD = nn.Sequential(nn.Linear(6, 8), nn.LeakyReLU(0.2), nn.Linear(8, 1))
    optimizerD = torch.optim.Adam(netD.parameters(), lr=1e-3)
    optimizerG = torch.optim.Adam(netG.parameters(), lr=1e-3)
    criterion = nn.BCEWithLogitsLoss()
    real = torch.randn(16, 6)
    ones, zeros = torch.ones(16, 1), torch.zeros(16, 1)


    def step():
        netD.zero_grad()
        errD_real = criterion(netD(real), ones)
        errD_real.backward()
        fake = netG(torch.randn(16, 4))
        errD_fake = criterion(netD(fake), zeros)
        errD_fake.backward(retain_graph=True)
        optimizerD.step()
        errG = criterion(netD(fake), ones)
        errG.backward()
        optimizerG.step()


    if __name__ == "__main__":
        for _ in range(int(sys.argv[1]) if len(sys.argv) > 1 else 2):
            step()
    """
)



def line_of(text: str, source: str = GAN) -> int:
    """The number of the first line of ``source`` that contains ``text``."""
    return next(i for i, line in enumerate(source.splitlines(), 1) if text in line)


#: Lines of GAN: the discriminator's backward on `fake`, and the generator's step.
GAN_BACKWARD_LINE = line_of("errD_fake.backward(")
GAN_STEP_LINE = line_of("optimizerG.step()")


def write(path: Path, text: str) -> Path:
    path.write_text(textwrap.dedent(text))
    return path


@pytest.fixture
def gan(tmp_path: Path) -> Path:
    return write(tmp_path / "gan.py", GAN)


# ----------------------------------------------------------------------------------------------
# running as python would
# ----------------------------------------------------------------------------------------------


def test_program_sees_python_like_state(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "helper_mod_for_runner2.py").write_text("VALUE = 42\n")
    script = write(
        tmp_path / "prog.py",
        """\
        import sys
        import helper_mod_for_runner2
        print(__name__, sys.argv[1:], sys.path[0] == __import__("os").path.dirname(__file__),
              sys.modules["__main__"].__dict__ is globals(), helper_mod_for_runner2.VALUE)
        if __name__ == "__main__":
            print("block")
        """,
    )
    argv, path, main = sys.argv, list(sys.path), sys.modules["__main__"]
    result = runner.run_script(script, ["--lr", "0.1"])
    assert (sys.argv, sys.path, sys.modules["__main__"]) == (argv, path, main)
    assert result.exit_status == 0
    out = capsys.readouterr().out
    assert out == "__main__ ['--lr', '0.1'] True True 42\nblock\n"


def test_module_runs_like_python_m(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    pkg = tmp_path / "lenspkg_runner"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    write(pkg / "__main__.py", "import sys\nprint('pkg', __name__, __package__, sys.argv[1:])\n")
    write(pkg / "tool.py", "import sys\nprint('tool', __name__, __spec__.name, sys.argv[0].endswith('tool.py'))\n")
    monkeypatch.chdir(tmp_path)
    assert runner.run_module("lenspkg_runner", ["a"]).exit_status == 0
    assert runner.run_module("lenspkg_runner.tool").exit_status == 0
    assert capsys.readouterr().out == "pkg __main__ lenspkg_runner ['a']\ntool __main__ lenspkg_runner.tool True\n"
    with pytest.raises(LensError, match="no module named 'lenspkg_runner.nope'"):
        runner.load_module("lenspkg_runner.nope")
    with pytest.raises(LensError, match="no module named 'no_such_module_xyz'"):
        runner.load_module("no_such_module_xyz")


@pytest.mark.parametrize(
    ("code", "status", "message"),
    [
        ("sys.exit()", 0, None),
        ("sys.exit(3)", 3, None),
        ("sys.exit(0)", 0, None),
        ("sys.exit('bye')", 1, "bye"),
    ],
)
def test_sys_exit(tmp_path: Path, code: str, status: int, message: str | None) -> None:
    script = write(tmp_path / "ex.py", f"import sys\n{code}\n")
    result = runner.run_script(script)
    assert (result.script_status, result.exit_status, result.exit_message) == (status, status, message)
    assert result.report.status == ("ok" if status == 0 else "script-error")


def test_exception_traceback_has_only_user_frames(tmp_path: Path) -> None:
    script = write(
        tmp_path / "boom.py",
        """\
        import torch

        def f(w):
            return (w * 2).sum().backward(gradient=torch.ones(2))

        f(torch.ones(3, requires_grad=True))
        """,
    )
    result = runner.run_script(script)
    assert result.exit_status == 1 and isinstance(result.exception, RuntimeError)
    assert result.report.status == "script-error" and result.report.error.startswith("RuntimeError")
    frames = traceback.extract_tb(result.exception.__traceback__)
    assert frames[0].filename == str(script) and frames[0].name == "<module>"
    files = [fr.filename for fr in frames]
    assert not any("autograd_lens" in f or "runpy" in f or os.sep + "click" + os.sep in f for f in files)
    assert any("torch" in f for f in files)  # PyTorch's own frames stay, as Python shows them


def test_keyboard_interrupt_keeps_what_ran(tmp_path: Path) -> None:
    script = write(
        tmp_path / "intr.py",
        """\
        import torch
        w = torch.ones(3, requires_grad=True)
        (w * 2).sum().backward()
        raise KeyboardInterrupt
        """,
    )
    result = runner.run_script(script)
    assert result.interrupted and result.exit_status == runner.INTERRUPTED == 130
    assert len(result.report.backwards) == 1
    assert result.report.error == "KeyboardInterrupt"


def test_gan_findings_fail_on_select_ignore(gan: Path) -> None:
    seen: list[str] = []
    result = runner.run_script(gan, on_finding=lambda f: seen.append(f.rule))
    assert result.exit_status == 1
    assert {"stray-grad", "detach-leak"} <= result.report.rules()
    assert len(seen) == len(set(seen))  # each new finding once
    stray = result.report.by_rule("stray-grad")[0]
    assert stray.site.line == GAN_STEP_LINE and stray.optimizer == "optimizerG"
    assert "netG.0.weight" in stray.params

    only = runner.run_script(gan, select=["detach-leak"], fail_on="warning")
    assert only.report.rules() == {"detach-leak"} and only.exit_status == 1
    assert runner.run_script(gan, select=["detach-leak"]).exit_status == 0
    assert runner.run_script(gan, fail_on="never").exit_status == 0
    assert "stray-grad" not in runner.run_script(gan, ignore=["stray-grad"]).report.rules()
    with pytest.raises(LensError, match="unknown rule 'nope'; known rules: .*stray-grad"):
        runner.run_script(gan, select=["nope"])


def test_no_autograd_is_an_empty_report(tmp_path: Path) -> None:
    result = runner.run_script(write(tmp_path / "plain.py", "x = 1 + 1\n"))
    assert result.exit_status == 0
    d = result.report.to_dict()
    assert (d["findings"], d["backwards"], d["steps"], d["status"]) == ([], [], [], "ok")


# ----------------------------------------------------------------------------------------------
# bad input
# ----------------------------------------------------------------------------------------------


def test_bad_scripts(tmp_path: Path) -> None:
    with pytest.raises(LensError, match="does not exist"):
        runner.load_script(tmp_path / "missing.py")
    with pytest.raises(LensError, match="is a directory"):
        runner.load_script(tmp_path)
    (tmp_path / "blob.py").write_bytes(b"\x7fELF\x00\x01\x02")
    with pytest.raises(LensError, match="not a Python script .*binary"):
        runner.load_script(tmp_path / "blob.py")
    write(tmp_path / "notes.txt", "these are my notes, not code\n")
    with pytest.raises(LensError, match="not a Python script: it does not compile"):
        runner.load_script(tmp_path / "notes.txt")
    write(tmp_path / "syn.py", "x = 1\ndef f(:\n    pass\n")
    with pytest.raises(runner.ScriptSyntaxError) as info:
        runner.load_script(tmp_path / "syn.py")
    assert "syn.py:2: SyntaxError: invalid syntax" in str(info.value)
    assert info.value.detail.startswith(f'  File "{tmp_path / "syn.py"}", line 2\n')
    assert info.value.detail.endswith("SyntaxError: invalid syntax\n")


# ----------------------------------------------------------------------------------------------
# output
# ----------------------------------------------------------------------------------------------


def test_safe_name() -> None:
    assert output.safe_name("examples/gan_no_detach.py:56") == "gan_no_detach.py_56"
    assert output.safe_name("/a b/we!rd.py:7") == "we_rd.py_7"
    assert output.safe_name("odd") == "odd"


def test_write_report_and_highlighted_graphs(gan: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    result = runner.run_script(gan)
    monkeypatch.setattr(output, "_dot_available", lambda: False)
    warnings: list[str] = []
    out = tmp_path / "out"
    written = output.write(result.report, out, result.graphs, sites=result.graph_sites(), warn=warnings.append)
    assert len(warnings) == 1 and "Graphviz `dot` was not found" in warnings[0]
    data = json.loads((out / "report.json").read_text())
    lines = [line_of("errD_real.backward("), GAN_BACKWARD_LINE, line_of("errG.backward(")]
    assert [g["json"] for g in data["graphs"]] == [f"graphs/gan.py_{n}.json" for n in lines]
    assert all(g["svg"] is None for g in data["graphs"])
    assert data["graphs"][1]["site"]["line"] == GAN_BACKWARD_LINE
    graph = json.loads((out / "graphs" / f"gan.py_{GAN_BACKWARD_LINE}.json").read_text())
    tags = {h["tag"] for h in graph["highlights"]}
    assert {"leak", "stray"} <= tags
    names = {graph["nodes"][h["node"]]["name"] for h in graph["highlights"] if h["tag"] == "stray"}
    assert "netG.0.weight" in names

    small = output.write(result.report, out, result.graphs, sites=result.graph_sites(), max_graphs=1)
    assert small.graphs_written == 1 and small.graphs_skipped == 2
    assert [g["site"]["line"] for g in small.report.graphs] == [GAN_BACKWARD_LINE]  # the one findings name
    left = sorted(p.name for p in (out / "graphs").iterdir())
    assert left == [f"gan.py_{GAN_BACKWARD_LINE}.json"]  # the graphs of the earlier write are gone
    none = output.write(result.report, out, result.graphs, draw=False)
    assert none.report.graphs == () and written.report_path == none.report_path


def test_unwritable_out(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("")
    with pytest.raises(LensError, match="is a file, not a folder"):
        output.prepare(tmp_path / "file" / "out")
