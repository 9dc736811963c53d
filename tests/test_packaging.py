"""Packaging: ``python -m autograd_lens``, the declared dependencies, and a wheel installed without
the repository (its README links resolve to documents it ships, and it runs)."""

from __future__ import annotations

import re
import subprocess
import sys
import sysconfig
import tomllib
import zipfile
from email.parser import Parser
from pathlib import Path

import pytest

from autograd_lens.cli import exit_codes

ROOT = Path(__file__).resolve().parent.parent
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())


def readme_links(text: str) -> list[str]:
    """The targets of the Markdown links and images of ``text``."""
    return re.findall(r"\]\(([^)\s]+)\)", text)


def test_python_m_autograd_lens_is_the_lens_command_line(tmp_path: Path) -> None:
    (tmp_path / "prog.py").write_text("import sys\nprint(sys.argv[1:])\nsys.exit(5)\n")
    proc = subprocess.run(
        [sys.executable, "-m", "autograd_lens", "trace", "-q", "--no-graphs", "prog.py", "--lr", "0.1"],
        cwd=tmp_path, capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 5, proc.stderr  # the script's own status, through `-m autograd_lens`
    assert proc.stdout == "['--lr', '0.1']\n"
    assert (tmp_path / "lens-out" / "report.json").is_file()
    proc = subprocess.run(
        [sys.executable, "-m", "autograd_lens", "explain", "no-such-rule"], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == exit_codes.USAGE
    assert proc.stderr.startswith("lens: error: unknown rule 'no-such-rule'") and proc.stderr.count("\n") == 1


def test_declared_dependencies_are_the_ones_the_code_imports() -> None:
    deps = [re.split(r"[<>=!~ ;\[]", d)[0].lower() for d in PYPROJECT["project"]["dependencies"]]
    assert "graphviz" not in deps  # `dot` is a program; the Python package is not used
    used = set()
    for path in [*(ROOT / "autograd_lens").rglob("*.py"), *(ROOT / "cli").rglob("*.py")]:
        used |= set(re.findall(r"^\s*(?:import|from)\s+([a-zA-Z_]\w*)", path.read_text(), re.M))
    assert "graphviz" not in used
    assert {"torch", "rich", "click"} <= set(deps) and {"torch", "rich", "click"} <= used
    assert PYPROJECT["project"]["scripts"]["lens"] == "autograd_lens.cli.main:run"


def test_readme_links_resolve_in_the_repository_and_under_the_package() -> None:
    readme = (ROOT / "README.md").read_text()
    links = [link for link in readme_links(readme) if "://" not in link and not link.startswith("#")]
    assert links, "the README links its documents"
    package_dir = PYPROJECT["tool"]["setuptools"]["package-dir"]
    for link in links:
        assert (ROOT / link).is_file(), link
        top = link.split("/", 1)[0]
        assert package_dir.get(f"autograd_lens.{top}") == top, f"{link}: its folder does not ship in the package"
    assert "--index-url https://download.pytorch.org/whl/cpu" in readme


def test_wheel_installed_without_the_repository(tmp_path: Path) -> None:
    """``pip wheel .``, installed into a fresh environment, runs as ``python -m autograd_lens``
    from a folder outside the repository and ships what its README links to."""
    wheels = tmp_path / "wheels"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", str(ROOT), "--no-deps", "-q", "-w", str(wheels)],
        check=True, capture_output=True, timeout=300,
    )
    (wheel,) = wheels.glob("autograd_lens-*.whl")
    with zipfile.ZipFile(wheel) as z:
        names = set(z.namelist())
        meta = Parser().parsestr(z.read(next(n for n in names if n.endswith(".dist-info/METADATA"))).decode())
    requires = [r.split(";")[0].strip().lower() for r in meta.get_all("Requires-Dist") or [] if "extra ==" not in r]
    assert not [r for r in requires if r.startswith("graphviz")], requires
    for link in readme_links(meta.get_payload()):
        if "://" not in link and not link.startswith("#"):
            assert f"autograd_lens/{link}" in names, link
    assert "autograd_lens/schemas/report.schema.json" in names and "autograd_lens/__main__.py" in names

    env = tmp_path / "env"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(env)], check=True, timeout=120)
    python = env / "bin" / "python"
    subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps", "-q", str(wheel)],
        check=True, capture_output=True, timeout=300,
    )
    site = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True, capture_output=True, text=True,
    ).stdout.strip()
    # torch, rich and click come from this environment, after the fresh one's own packages
    Path(site, "dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")

    work = tmp_path / "work"
    work.mkdir()
    (work / "train.py").write_text(
        "import sys, torch\nw = torch.ones(2, requires_grad=True)\n(w * 2).sum().backward()\nprint(sys.argv)\n"
    )
    proc = subprocess.run(
        [str(python), "-m", "autograd_lens", "trace", "--no-graphs", "train.py", "--epochs", "1"],
        cwd=work, capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == exit_codes.OK, proc.stderr
    assert proc.stdout == "['train.py', '--epochs', '1']\n"
    assert (work / "lens-out" / "report.json").is_file()
    where = subprocess.run(
        [str(python), "-c", "import autograd_lens; print(autograd_lens.__file__)"],
        cwd=work, capture_output=True, text=True, check=True,
    ).stdout.strip()
    assert where.startswith(str(env)) and str(ROOT) not in where
