"""The report is never lost: ``--out`` is fixed before the script runs, an unwritable folder at the
end sends the report to a temporary folder, SIGTERM writes what ran, files are replaced atomically,
and paths in the report are relative to the working directory with the absolute path beside."""

from __future__ import annotations

import builtins
import io
import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

from autograd_lens import output, runner
from autograd_lens.cli import exit_codes
from autograd_lens.cli.main import main
from autograd_lens.schema import REPORT_SCHEMA, report_schema

from conftest import check_report
from test_runner import GAN, GAN_STEP_LINE


def trace(*args: str) -> Result:
    return CliRunner().invoke(main, ["trace", *args])


def write(path: Path, text: str) -> Path:
    path.write_text(textwrap.dedent(text))
    return path


@pytest.fixture
def here(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_a_script_that_changes_folder_does_not_move_the_report(here: Path) -> None:
    (here / "elsewhere").mkdir()
    write(
        here / "moves.py",
        """\
        import os
        import torch
        os.chdir("elsewhere")
        w = torch.ones(2, requires_grad=True)
        (w * 3).sum().backward()
        """,
    )
    result = trace("--no-graphs", "moves.py")
    assert result.exit_code == exit_codes.OK, result.output
    assert (here / "lens-out" / "report.json").is_file()
    assert not (here / "elsewhere" / "lens-out").exists()
    assert result.stderr.splitlines()[-1].startswith(f"lens: wrote {Path('lens-out') / 'report.json'}")
    assert Path.cwd() == here  # the working directory is restored after the script


def test_an_out_folder_that_became_unwritable_sends_the_report_to_a_temporary_folder(here: Path) -> None:
    write(
        here / "breaks_out.py",
        """\
        import shutil
        import torch
        w = torch.ones(2, requires_grad=True)
        (w * 3).sum().backward()
        shutil.rmtree("lens-out")
        open("lens-out", "w").close()   # the output folder is now a file
        """,
    )
    result = trace("--no-graphs", "breaks_out.py")
    assert result.exit_code == exit_codes.OK, result.output  # a successful run stays a success
    warning = next(line for line in result.stderr.splitlines() if line.startswith("lens: warning: cannot"))
    assert "the report is written to " in warning
    temp = Path(warning.rsplit("the report is written to ", 1)[1].split(" instead")[0])
    try:
        assert f"lens: wrote {temp / 'report.json'}" in result.stderr
        data = json.loads((temp / "report.json").read_text())
        check_report(data)
        assert data["status"] == "ok" and data["backwards"][0]["count"] == 1
    finally:
        for p in sorted(temp.rglob("*"), reverse=True):
            p.unlink() if p.is_file() else p.rmdir()
        temp.rmdir()


def test_empty_out_is_a_usage_error_and_leaves_the_folder_alone(here: Path) -> None:
    write(here / "prog.py", GAN)
    (here / "graphs").mkdir()
    (here / "graphs" / "mine.svg").write_text("<svg/>")
    result = trace("--out", "", "prog.py")
    assert result.exit_code == exit_codes.USAGE
    assert result.stderr.startswith("lens: error: Invalid value for '--out': needs a folder name")
    assert "Traceback" not in result.output and result.stderr.count("\n") == 1
    assert sorted(p.name for p in here.iterdir()) == ["graphs", "prog.py"]
    assert [p.name for p in (here / "graphs").iterdir()] == ["mine.svg"]


def test_report_json_is_replaced_atomically(here: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A write that fails half-way (disk full) leaves the earlier report whole, and no stray file."""
    result = runner.run_script(write(here / "gan.py", GAN))
    out = here / "out"
    output.write(result.report, out, draw=False)
    before = (out / "report.json").read_bytes()
    real_open = io.open

    class HalfWriter:
        def __init__(self, f: Any) -> None:
            self.f = f

        def write(self, data: bytes) -> int:
            self.f.write(data[: len(data) // 2])
            raise OSError(28, "No space left on device")

        def __getattr__(self, name: str) -> Any:
            return getattr(self.f, name)

        def __enter__(self) -> HalfWriter:
            return self

        def __exit__(self, *exc: object) -> None:
            self.f.close()

    def full_disk_open(file: Any, mode: str = "r", *args: Any, **kwargs: Any) -> Any:
        f = real_open(file, mode, *args, **kwargs)
        if "w" in mode and Path(os.fspath(file)).parent == out:
            return HalfWriter(f)
        return f

    monkeypatch.setattr(builtins, "open", full_disk_open)
    monkeypatch.setattr(io, "open", full_disk_open)
    with pytest.raises(Exception, match="No space left on device"):
        output.write(result.report, out, draw=False)
    monkeypatch.undo()
    assert (out / "report.json").read_bytes() == before
    assert sorted(p.name for p in out.iterdir()) == ["report.json"]


def test_sigterm_writes_the_report_and_ends_by_the_signal(tmp_path: Path) -> None:
    write(
        tmp_path / "stopped.py",
        """\
        import os, signal, time
        import torch
        w = torch.ones(3, requires_grad=True)
        for i in range(4):
            (w * 2).sum().backward()
        os.kill(os.getpid(), signal.SIGTERM)   # as `timeout`, SLURM or Kubernetes would
        time.sleep(30)
        print("not reached")
        """,
    )
    proc = subprocess.run(
        [sys.executable, "-m", "autograd_lens.cli.main", "trace", "--no-graphs", "stopped.py"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == -signal.SIGTERM, proc.stderr  # killed by SIGTERM, as python would be
    assert "not reached" not in proc.stdout
    assert "terminated by SIGTERM; the report covers what ran" in proc.stderr
    data = json.loads((tmp_path / "lens-out" / "report.json").read_text())
    assert (data["status"], data["error"]) == ("terminated", "SIGTERM")
    assert data["backwards"][0]["count"] == 4


def test_sigterm_in_process_gives_143_and_leaves_no_handler(here: Path) -> None:
    write(here / "stop.py", "import os, signal\nos.kill(os.getpid(), signal.SIGTERM)\n")
    before = signal.getsignal(signal.SIGTERM)
    result = trace("--no-graphs", "stop.py")
    assert result.exit_code == exit_codes.TERMINATED == 143
    assert signal.getsignal(signal.SIGTERM) == before
    assert json.loads((here / "lens-out" / "report.json").read_text())["status"] == "terminated"


def test_a_scripts_own_sigterm_handler_is_kept(here: Path) -> None:
    write(
        here / "handles.py",
        """\
        import os, signal, sys
        signal.signal(signal.SIGTERM, lambda *a: sys.exit(7))
        os.kill(os.getpid(), signal.SIGTERM)
        """,
    )
    before = signal.getsignal(signal.SIGTERM)
    result = trace("--no-graphs", "handles.py")
    assert result.exit_code == 7
    assert signal.getsignal(signal.SIGTERM) == before


def test_paths_in_the_report_are_relative_with_the_absolute_path_beside(here: Path) -> None:
    (here / "src").mkdir()
    write(here / "src" / "gan.py", GAN)
    result = trace("--no-graphs", "src/gan.py")
    assert result.exit_code == exit_codes.FINDINGS
    data = json.loads((here / "lens-out" / "report.json").read_text())
    stray = next(f for f in data["findings"] if f["rule"] == "stray-grad")
    assert stray["site"] == {
        "file": os.path.join("src", "gan.py"),
        "path": str(here / "src" / "gan.py"),
        "line": GAN_STEP_LINE,
        "function": "step",
    }
    assert all(lab["site"]["file"] == os.path.join("src", "gan.py") for lab in stray["labels"])
    assert all(b["site"]["path"] == str(here / "src" / "gan.py") for b in data["backwards"])


def test_the_schema_ships_in_the_package_and_rejects_what_it_should() -> None:
    import autograd_lens

    assert REPORT_SCHEMA.is_file() and Path(autograd_lens.__file__).parent in REPORT_SCHEMA.parents
    schema = report_schema()
    assert schema["properties"]["status"]["enum"][:5] == list(runner.STATUSES)
    site = schema["$defs"]["site"]["properties"]
    assert "relative" in schema["$defs"]["site"]["description"] and {"file", "path"} <= set(site)
    good = {
        "schema": "autograd_lens.report/1", "script": "t.py", "status": "ok", "error": None,
        "findings": [], "backwards": [], "steps": [], "graphs": [], "networks": [],
    }
    check_report(good)
    for bad in ({**good, "status": "fine"}, {**good, "findings": [{"rule": "x"}]}, {k: v for k, v in good.items() if k != "steps"}):
        with pytest.raises(pytest.fail.Exception):
            check_report(bad)


def test_a_detach_leak_keeps_its_networks_and_what_the_call_is_for_through_report_json() -> None:
    import torch

    import autograd_lens as lens
    from autograd_lens import Finding
    from test_corpus import dcgan_no_detach_zeroed

    torch.manual_seed(0)
    with lens.watch() as w:
        dcgan_no_detach_zeroed()
    data = json.loads(w.report.to_json())
    check_report(data)
    (leak,) = [f for f in data["findings"] if f["rule"] == "detach-leak"]
    assert leak["networks"] == ["netG"] and leak["for"] == ["optimizerD"]
    back = Finding.from_dict(leak)
    assert back.extra["networks"] == ["netG"] and back.extra["for"] == ["optimizerD"]
    assert back.to_dict() == leak
