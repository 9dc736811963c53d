"""DistributedDataParallel under torchrun: 2 ranks with the gloo backend on the CPU.

Each rank records on its own (``OUT/rank<N>/``); rank 0 merges the findings into ``OUT/report.json``
with ``world_size`` and, per finding, the ``ranks`` where it occurred, and prints the report once.
These tests start real ``torchrun`` processes (a few seconds each).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import line_of

HERE = Path(__file__).resolve().parent / "frameworks"
BIN = Path(sys.executable).parent
NETG = ["netG.0.bias", "netG.0.weight", "netG.2.bias", "netG.2.weight"]

pytestmark = pytest.mark.skipif(not (BIN / "torchrun").exists(), reason="torchrun is not installed beside python")


def torchrun(tmp_path: Path, *command: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    env["OMP_NUM_THREADS"] = "1"
    return subprocess.run(
        [str(BIN / "torchrun"), "--standalone", "--nproc_per_node=2", *command],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=180,
    )


def test_ddp_gan_bug_merged_report_with_ranks(tmp_path: Path) -> None:
    script = HERE / "ddp_gan.py"
    run = torchrun(tmp_path, "--no-python", str(BIN / "lens"), "trace", "--no-graphs", str(script), "--bug")
    report = json.loads((tmp_path / "lens-out" / "report.json").read_text())
    assert report["world_size"] == 2
    assert report["status"] == "findings"
    by_rule = {f["rule"]: f for f in report["findings"]}
    assert set(by_rule) == {"detach-leak", "stray-grad", "missing-zero-grad"}
    stray = by_rule["stray-grad"]
    assert stray["ranks"] == [0, 1] and stray["count"] == 6  # 3 steps on each of 2 ranks
    assert stray["optimizer"] == "optimizerG" and stray["params"] == NETG  # no `.module.`
    assert stray["site"]["line"] == line_of(script, "optimizerG.step()")
    assert stray["backward"]["line"] == line_of(script, "errD.backward(retain_graph=BUG)")
    for r in (0, 1):  # each rank's own report
        own = json.loads((tmp_path / "lens-out" / f"rank{r}" / "report.json").read_text())
        assert {f["rule"] for f in own["findings"]} == set(by_rule) and "world_size" not in own
    assert run.stderr.count("error[stray-grad]: ") == 1, run.stderr  # the report printed once
    assert "on 2 ranks" in run.stderr


def test_ddp_gan_twin_is_silent_in_python_mode(tmp_path: Path) -> None:
    # torchrun's python mode: `torchrun ... -m autograd_lens trace SCRIPT`
    run = torchrun(tmp_path, "-m", "autograd_lens", "trace", "--no-graphs", str(HERE / "ddp_gan.py"))
    assert run.returncode == 0, run.stderr[-3000:]
    report = json.loads((tmp_path / "lens-out" / "report.json").read_text())
    assert report["world_size"] == 2 and report["findings"] == [] and report["status"] == "ok"


def test_ddp_unused_parameters_failure_is_explained_by_name(tmp_path: Path) -> None:
    script = HERE / "ddp_unused.py"
    run = torchrun(tmp_path, "--no-python", str(BIN / "lens"), "trace", "--no-graphs", str(script))
    assert run.returncode != 0
    assert "[autograd_lens] warning[dead-param]: `model`'s forward did not use `model.aux.weight`" in run.stderr
    assert "find_unused_parameters=True" in run.stderr
    report = json.loads((tmp_path / "lens-out" / "report.json").read_text())
    assert report["status"] == "script-error"
    ddp = [f for f in report["findings"] if f["message"].startswith("`model`'s forward did not use")]
    assert len(ddp) == 1 and ddp[0]["ranks"] == [0, 1]
    assert sorted(ddp[0]["params"]) == ["model.aux.bias", "model.aux.weight"]
    assert ddp[0]["site"]["line"] == line_of(script, "loss = model(torch.randn(8, 4)).pow(2).mean()")
