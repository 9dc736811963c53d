"""The exit statuses of ``lens``: the script failed, findings, and the lens used wrongly are told
apart, and ``report.json``'s ``status`` says which it was."""

from __future__ import annotations

import json
import re
import textwrap
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from autograd_lens.cli import exit_codes
from autograd_lens.cli.main import main

from test_runner import GAN

ROOT = Path(__file__).resolve().parent.parent


def trace(*args: str) -> Result:
    return CliRunner().invoke(main, ["trace", *args])


@pytest.fixture
def here(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "gan.py").write_text(GAN)
    return tmp_path


def status_of(folder: Path) -> str:
    return json.loads((folder / "lens-out" / "report.json").read_text())["status"]


@pytest.mark.parametrize(
    ("code", "exit_status", "status"),
    [
        ("x = 1", exit_codes.OK, "ok"),
        ("exec(open('gan.py').read())", exit_codes.FINDINGS, "findings"),
        ("raise ValueError('the script failed')", 1, "script-error"),
        ("import sys; sys.exit(2)  # argparse's status", 2, "script-error"),
        ("import sys; sys.exit(64)", 64, "script-error"),
        ("import sys; sys.exit(1)", 1, "script-error"),
    ],
)
def test_each_outcome_has_its_status_and_report_status(here: Path, code: str, exit_status: int, status: str) -> None:
    (here / "prog.py").write_text(textwrap.dedent(code) + "\n")
    result = trace("-q", "--no-graphs", "prog.py")
    assert result.exit_code == exit_status, result.output
    assert status_of(here) == status


def test_findings_and_a_raising_script_differ(here: Path) -> None:
    (here / "gan_then_raise.py").write_text(GAN + "\nraise RuntimeError('after training')\n")
    findings = trace("-q", "--no-graphs", "gan.py")
    failed = trace("-q", "--no-graphs", "gan_then_raise.py")
    assert findings.exit_code == exit_codes.FINDINGS != 1
    assert failed.exit_code == 1  # the script's own status wins over findings
    assert status_of(here) == "script-error"


@pytest.mark.parametrize(
    "args",
    [
        ["--no-such-option", "prog.py"],
        ["--fail-on", "sometimes", "prog.py"],
        ["--select", "no-such-rule", "prog.py"],
        ["missing.py"],
        ["--out", "", "prog.py"],
        [],
    ],
)
def test_usage_errors_are_not_a_scripts_status(here: Path, args: list[str]) -> None:
    (here / "prog.py").write_text("import sys; sys.exit(2)\n")
    result = trace(*args)
    assert result.exit_code == exit_codes.USAGE == 64
    assert "Traceback" not in result.output
    assert not (here / "lens-out" / "report.json").exists()


def test_other_commands_use_the_same_usage_status(tmp_path: Path) -> None:
    assert CliRunner().invoke(main, ["explain", "nope"]).exit_code == exit_codes.USAGE
    assert CliRunner().invoke(main, ["nope"]).exit_code == exit_codes.USAGE
    assert CliRunner().invoke(main, ["draw", str(tmp_path / "missing.json"), "-o", "x.svg"]).exit_code == exit_codes.USAGE


def test_an_internal_error_of_the_lens_is_70(here: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from autograd_lens import runner

    def broken(*args: object, **kwargs: object) -> None:
        raise ZeroDivisionError("a bug in the lens")

    monkeypatch.setattr(runner, "run", broken)
    (here / "prog.py").write_text("x = 1\n")
    result = trace("prog.py")
    assert result.exit_code == exit_codes.INTERNAL == 70
    assert result.stderr.splitlines()[-1] == "lens: internal error: ZeroDivisionError: a bug in the lens"


def test_the_scheme_is_written_down_in_each_place() -> None:
    codes = {"0": exit_codes.OK, "3": exit_codes.FINDINGS, "64": exit_codes.USAGE, "70": exit_codes.INTERNAL}
    help_text = CliRunner().invoke(main, ["trace", "--help"]).stdout
    cli_md = (ROOT / "docs" / "cli.md").read_text()
    readme = (ROOT / "README.md").read_text()
    table = cli_md.split("## Exit status", 1)[1].split("\n## ", 1)[0]
    for text, code in codes.items():
        assert str(code) == text
        assert re.search(rf"^\s+{text}\s", help_text, re.M), text
        assert f"| {text} |" in table, text
        assert f"`{text}`" in readme.split("Exit status", 1)[1][:1500], text
    for status in ("ok", "findings", "script-error", "interrupted", "terminated"):
        assert status in help_text and f"`{status}`" in table
