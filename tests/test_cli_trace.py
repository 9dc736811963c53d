"""``lens trace``, ``lens explain`` and ``lens rules``: output, files and exit statuses.

Most tests run the command in-process with ``CliRunner``; a few run the installed ``lens`` in a
subprocess, as a user would.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from autograd_lens import output
from autograd_lens.checks import RULES
from autograd_lens.cli import exit_codes
from autograd_lens.cli.main import main

from test_runner import GAN, GAN_BACKWARD_LINE, GAN_STEP_LINE, line_of

ROOT = Path(__file__).resolve().parent.parent
LENS = Path(sys.executable).parent / "lens"
EXAMPLES = ROOT / "examples"


def write(path: Path, text: str) -> Path:
    path.write_text(textwrap.dedent(text))
    return path


def trace(*args: str) -> Result:
    return CliRunner().invoke(main, ["trace", *args])


@pytest.fixture
def gan(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    return write(tmp_path / "gan.py", GAN)


def report_of(folder: Path) -> dict:
    return json.loads((folder / "report.json").read_text())


# ----------------------------------------------------------------------------------------------
# the report
# ----------------------------------------------------------------------------------------------


def test_trace_gan_live_findings_report_and_files(gan: Path, tmp_path: Path) -> None:
    result = trace("--out", "out", "gan.py", "2")
    assert result.exit_code == exit_codes.FINDINGS, result.output
    assert result.stdout == ""  # the report goes to stderr; stdout is the script's
    err = result.stderr
    live = f"lens: error[stray-grad] gan.py:{GAN_STEP_LINE}: `optimizerG.step()` applied gradient"
    assert err.count(live) == 1
    assert f"lens: warning[detach-leak] gan.py:{line_of('errD_fake = ')}:" in err
    assert "error[stray-grad]: `optimizerG.step()` applied gradient that came from" in err
    assert f"  --> gan.py:{GAN_STEP_LINE}" in err
    assert err.index("error[stray-grad]:") < err.index("warning[detach-leak]:")  # most severe first
    assert "gradient flow: which networks each backward reaches" in err
    assert "optimizer steps: where their gradients came from" in err
    assert "stopped at detach" not in err and "not reached" in err
    assert f"exit status {exit_codes.FINDINGS} (findings at or above --fail-on error)" in err
    assert f"lens: wrote {Path('out') / 'report.json'}, {Path('out') / 'report.html'} and 3 graphs in" in err
    assert all(len(line) <= 100 for line in err.splitlines() if not line.startswith("lens: "))

    data = report_of(tmp_path / "out")
    assert list(data)[:8] == ["schema", "script", "status", "error", "findings", "backwards", "steps", "graphs"]
    assert (data["script"], data["status"], data["error"]) == ("gan.py", "findings", None)
    name = f"gan.py_{GAN_BACKWARD_LINE}"
    entry = next(g for g in data["graphs"] if g["site"]["line"] == GAN_BACKWARD_LINE)
    assert entry["json"] == f"graphs/{name}.json"
    assert (tmp_path / "out" / entry["json"]).is_file()
    if entry["svg"] is not None:
        assert (tmp_path / "out" / entry["svg"]).read_text().lstrip().startswith("<?xml")


def test_args_after_the_script_are_the_scripts(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    write(tmp_path / "args.py", "import sys\nprint(sys.argv)\n")
    result = trace("args.py", "--epochs", "1", "--out", "x", "-q", "--format", "json")
    assert result.exit_code == exit_codes.OK, result.output
    assert result.stdout == "['args.py', '--epochs', '1', '--out', 'x', '-q', '--format', 'json']\n"
    assert (tmp_path / "lens-out" / "report.json").is_file() and not (tmp_path / "x").exists()


def test_format_json_keeps_stdout_pure(gan: Path, tmp_path: Path) -> None:
    write(tmp_path / "noisy.py", "print('hello from the script')\n" + GAN)
    result = trace("--format", "json", "--out", "out", "noisy.py")
    assert result.exit_code == exit_codes.FINDINGS
    data = json.loads(result.stdout)
    assert data == report_of(tmp_path / "out")
    assert "hello from the script" in result.stderr
    assert {"stray-grad", "detach-leak"} <= {f["rule"] for f in data["findings"]}


def test_quiet_prints_only_the_summary(gan: Path) -> None:
    result = trace("-q", "--no-graphs", "gan.py")
    assert result.exit_code == exit_codes.FINDINGS
    lines = result.stderr.splitlines()
    assert len(lines) == 2, result.stderr
    assert lines[0].startswith("lens: 1 error, ") and f"exit status {exit_codes.FINDINGS}" in lines[0]
    assert lines[1] == f"lens: wrote {Path('lens-out') / 'report.json'} (graphs not drawn: --no-graphs)"


@pytest.mark.parametrize(
    ("options", "status"),
    [
        ((), exit_codes.FINDINGS),
        (("--fail-on", "never"), exit_codes.OK),
        (("--select", "detach-leak"), exit_codes.OK),
        (("--select", "detach-leak", "--fail-on", "warning"), exit_codes.FINDINGS),
        (("--ignore", "stray-grad,missing-zero-grad"), exit_codes.OK),
    ],
)
def test_fail_on_select_ignore(gan: Path, options: tuple[str, ...], status: int) -> None:
    result = trace("-q", "--no-graphs", *options, "gan.py")
    assert result.exit_code == status, result.output
    rules = {f["rule"] for f in report_of(Path("lens-out"))["findings"]}
    if "--select" in options:
        assert rules == {"detach-leak"}
    if "--ignore" in options:
        assert not rules & {"stray-grad", "missing-zero-grad"}


def test_no_autograd_empty_report(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    write(tmp_path / "plain.py", "print(1 + 1)\n")
    result = trace("plain.py")
    assert result.exit_code == exit_codes.OK
    assert result.stdout == "2\n"
    assert "lens: no autograd activity (no backward call, no optimizer step)" in result.stderr
    data = report_of(tmp_path / "lens-out")
    assert (data["findings"], data["backwards"], data["steps"], data["graphs"]) == ([], [], [], [])


def test_missing_dot_writes_json_graphs_and_warns_once(gan: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(output, "_dot_available", lambda: False)
    result = trace("-q", "gan.py")
    assert result.exit_code == exit_codes.FINDINGS
    assert result.stderr.count("lens: warning: Graphviz `dot` was not found") == 1
    assert "3 graphs (3 as .json only)" in result.stderr
    graphs = report_of(Path("lens-out"))["graphs"]
    assert [g["svg"] for g in graphs] == [None] * 3 and all(Path("lens-out", g["json"]).is_file() for g in graphs)


def test_max_graphs(gan: Path) -> None:
    result = trace("-q", "--max-graphs", "1", "gan.py")
    assert "(2 more not drawn: --max-graphs)" in result.stderr
    assert [g["site"]["line"] for g in report_of(Path("lens-out"))["graphs"]] == [GAN_BACKWARD_LINE]


# ----------------------------------------------------------------------------------------------
# the script fails
# ----------------------------------------------------------------------------------------------


def test_script_raises_traceback_like_python(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    write(
        tmp_path / "twice.py",
        """\
        import torch
        w = torch.ones(3, requires_grad=True)
        y = (w * w).sum()
        y.backward()
        y.backward()
        """,
    )
    result = trace("twice.py")
    assert result.exit_code == 1
    err = result.stderr
    assert err.startswith("lens: error[second-backward] twice.py:5:")
    assert 'Traceback (most recent call last):\n  File "' + str(tmp_path / "twice.py") + '", line 5, in <module>' in err
    assert "RuntimeError: Trying to backward through the graph a second time" in err
    assert "[autograd_lens] error[second-backward]" in err  # the lens's note on the exception
    assert "runner.py" not in err and "click" not in err and "autograd_lens/" not in err
    assert "exit status 1 (the script raised RuntimeError)" in err
    data = report_of(tmp_path / "lens-out")
    assert data["status"] == "script-error" and data["error"].startswith("RuntimeError: Trying to backward")
    assert [f["rule"] for f in data["findings"]] == ["second-backward"]


@pytest.mark.parametrize(
    ("code", "status", "printed"),
    [("sys.exit(3)", 3, None), ("sys.exit('stopping early')", 1, "stopping early\n"), ("sys.exit(0)", 0, None)],
)
def test_script_exit_status(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, code: str, status: int, printed: str | None) -> None:
    monkeypatch.chdir(tmp_path)
    write(tmp_path / "ex.py", f"import sys\n{code}\n")
    result = trace("ex.py")
    assert result.exit_code == status
    if printed:
        assert result.stderr.startswith(printed)
    assert report_of(tmp_path / "lens-out")["status"] == ("ok" if status == 0 else "script-error")


def test_ctrl_c_writes_the_report_and_exits_130(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    write(
        tmp_path / "long.py",
        """\
        import torch
        w = torch.ones(3, requires_grad=True)
        for i in range(5):
            (w * 2).sum().backward()
            if i == 2:
                raise KeyboardInterrupt
        """,
    )
    result = trace("long.py")
    assert result.exit_code == exit_codes.INTERRUPTED == 130
    assert "KeyboardInterrupt" in result.stderr and "interrupted by Ctrl-C" in result.stderr
    data = report_of(tmp_path / "lens-out")
    assert data["error"] == "KeyboardInterrupt" and data["backwards"][0]["count"] == 3


# ----------------------------------------------------------------------------------------------
# bad input
# ----------------------------------------------------------------------------------------------


@pytest.fixture
def bad_inputs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "blob.py").write_bytes(b"\x7fELF\x02\x01\x01\x00\x00\x00")
    write(tmp_path / "notes.txt", "remember to detach fake\n")
    write(tmp_path / "ok.py", "x = 1\n")
    (tmp_path / "afile").write_text("")
    (tmp_path / "folder").mkdir()
    return tmp_path


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["missing.py"], "lens: error: script 'missing.py' does not exist"),
        (["folder"], "lens: error: 'folder' is a directory, not a Python script"),
        (["blob.py"], "lens: error: 'blob.py' is not a Python script (it is a binary file)"),
        (["notes.txt"], "lens: error: 'notes.txt' is not a Python script: it does not compile"),
        (["-m", "no_such_module_for_lens"], "lens: error: no module named 'no_such_module_for_lens'"),
        (["--select", "stray-grad,nope", "ok.py"], "lens: error: unknown rule 'nope'; known rules: second-backward,"),
        (["--ignore", "nope", "ok.py"], "lens: error: unknown rule 'nope'; known rules:"),
        (["--out", "afile/out", "ok.py"], "lens: error: cannot write to output folder 'afile/out': 'afile' is a file"),
    ],
)
def test_bad_input_one_line_exit_2(bad_inputs: Path, args: list[str], message: str) -> None:
    result = trace(*args)
    assert result.exit_code == exit_codes.USAGE
    assert result.stderr.startswith(message)
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.output
    assert not (bad_inputs / "lens-out").exists() or args[0] == "--out"


def test_syntax_error_shown_like_python(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    write(tmp_path / "syn.py", "x = 1\ndef f(:\n    pass\n")
    result = trace("syn.py")
    assert result.exit_code == exit_codes.USAGE
    assert result.stderr.startswith(f'  File "{tmp_path / "syn.py"}", line 2\n    def f(:\n')
    assert "SyntaxError: invalid syntax\nlens: error: syn.py:2: SyntaxError: invalid syntax; the script did not run\n" in result.stderr
    assert "Traceback" not in result.stderr


def test_option_before_script_that_lens_does_not_know() -> None:
    result = trace("--epochs", "1", "train.py")
    assert result.exit_code == exit_codes.USAGE
    assert "No such option '--epochs'" in result.stderr


def test_trace_help_documents_exit_status() -> None:
    result = CliRunner().invoke(main, ["trace", "--help"])
    assert result.exit_code == 0
    assert "Exit status:" in result.stdout and "130" in result.stdout and "--fail-on" in result.stdout
    doc = (ROOT / "docs" / "cli.md").read_text()
    assert "## Exit status" in doc and "130" in doc


# ----------------------------------------------------------------------------------------------
# lens explain / lens rules
# ----------------------------------------------------------------------------------------------


def test_explain_prints_the_rule_page() -> None:
    result = CliRunner().invoke(main, ["explain", "stray-grad"])
    assert result.exit_code == exit_codes.OK
    out = result.stdout
    assert out.startswith("stray-grad (error): ")
    for section in ("What it does", "Why is this bad?", "Example", "Use instead"):
        assert section in out
    assert "netD(fake.detach())" in out and "## " not in out


def test_explain_unknown_rule() -> None:
    result = CliRunner().invoke(main, ["explain", "nope"])
    assert result.exit_code == exit_codes.USAGE
    assert result.stderr.startswith("lens: error: unknown rule 'nope'; known rules: second-backward,")


def test_rules_lists_every_rule() -> None:
    result = CliRunner().invoke(main, ["rules"])
    assert result.exit_code == exit_codes.OK
    for rule in RULES.values():
        assert any(line.split()[:2] == [rule.id, rule.severity] for line in result.stdout.splitlines())


# ----------------------------------------------------------------------------------------------
# the installed command, in a subprocess
# ----------------------------------------------------------------------------------------------


def run_lens(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "COLUMNS": "100"}
    return subprocess.run([str(LENS), "trace", *args], cwd=cwd, capture_output=True, text=True, env=env, timeout=120)


def test_subprocess_gan_without_detach(tmp_path: Path) -> None:
    write(tmp_path / "gan.py", GAN)
    proc = run_lens("gan.py", "3", cwd=tmp_path)
    assert proc.returncode == exit_codes.FINDINGS, proc.stderr
    assert proc.stdout == ""
    data = report_of(tmp_path / "lens-out")
    stray = next(f for f in data["findings"] if f["rule"] == "stray-grad")
    assert stray["site"]["file"] == "gan.py" and stray["site"]["line"] == GAN_STEP_LINE
    assert stray["site"]["path"] == str(tmp_path / "gan.py")
    assert stray["optimizer"] == "optimizerG" and stray["severity"] == "error"
    assert {"netG.0.weight", "netG.0.bias", "netG.2.weight", "netG.2.bias"} == set(stray["params"])
    assert any(f["rule"] == "detach-leak" and f["site"]["line"] == line_of("errD_fake = ") for f in data["findings"])
    assert {s["optimizer"] for s in data["steps"]} == {"optimizerD", "optimizerG"}
    assert (tmp_path / "lens-out" / "graphs" / f"gan.py_{GAN_BACKWARD_LINE}.json").is_file()


@pytest.mark.skipif(not (EXAMPLES / "gan_no_detach.py").exists(), reason="examples/gan_no_detach.py is not there")
def test_subprocess_example_gan_no_detach(tmp_path: Path) -> None:
    proc = run_lens("--format", "json", "--no-graphs", str(EXAMPLES / "gan_no_detach.py"), "--iters", "2", cwd=tmp_path)
    assert proc.returncode == exit_codes.FINDINGS, proc.stderr
    data = json.loads(proc.stdout)
    assert data == report_of(tmp_path / "lens-out")
    stray = next(f for f in data["findings"] if f["rule"] == "stray-grad")
    assert stray["optimizer"] == "optimizerG" and stray["site"]["file"].endswith("gan_no_detach.py")
    assert any(p.startswith("netG.") for p in stray["params"])


@pytest.mark.skipif(not (EXAMPLES / "gan_fixed.py").exists(), reason="examples/gan_fixed.py is not there")
def test_subprocess_example_gan_fixed_is_clean(tmp_path: Path) -> None:
    proc = run_lens("-q", "--fail-on", "warning", "--no-graphs", str(EXAMPLES / "gan_fixed.py"), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert report_of(tmp_path / "lens-out")["findings"] == []


def test_report_text_with_many_networks_and_a_long_source_line(tmp_path: Path) -> None:
    """Six networks in 100 columns: the flow table says yes/-/detach so that every call, line and
    network shows; a source line longer than the console stays one line over its marks."""
    import io

    from rich.console import Console

    from autograd_lens.findings import Finding, Label, Site
    from autograd_lens.report import BackwardSummary, Report, print_report

    long_line = "next_q = rewards + (1 - dones) * gamma * torch.min(q1_target(s2, a2), q2_target(s2, a2)).view(-1)  # x"
    src = write(tmp_path / "td3_like.py", f"import torch\n{long_line}\nloss.backward()\nactor_loss.backward()\n")
    nets = ("actor", "qf1", "qf2", "qf1_target", "qf2_target", "target_actor")
    backwards = (
        BackwardSummary(Site(str(src), 3), 9, ("loss",), False, "backward", dict.fromkeys(nets[1:], "reached"), 30),
        BackwardSummary(Site(str(src), 4), 4, ("actor_loss",), False, "backward",
                        {"actor": "reached", "qf1": "reached", "qf2": "detached"}, 12),
    )
    f = Finding("detach-leak", "warning", "a leak", Site(str(src), 2),
                labels=(Label(Site(str(src), 2), "`next_q` is computed here", primary=True),))
    buf = io.StringIO()
    print_report(Console(file=buf, width=100, color_system=None), Report((f,), backwards, networks=nets))
    text = buf.getvalue()
    lines = text.splitlines()
    assert f"2 | {long_line}" in lines  # one line, however long
    marks = next(line for line in lines if "^^^" in line)
    assert marks.endswith("`next_q` is computed here") and marks.index("^") == lines[lines.index(f"2 | {long_line}")].index("n")
    table = text[text.index("gradient flow"):]
    assert "(lines of td3_like.py)" in table
    for word in ("loss.backward()", "actor_loss.backward()", "yes: reached", "detach"):
        assert word in table, word
    head = [line.strip("┃").split("┃") for line in table.splitlines() if line.startswith("┃")]
    columns = ["".join(part.strip() for part in parts) for parts in zip(*head)]
    assert columns == ["backward", "line", "calls", *nets]  # every name whole (wrapped, not cut)
    assert all(len(line) <= 100 for line in table.splitlines())
