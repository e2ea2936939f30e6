"""`recsys demo`, the main job, end to end as a user runs it (a real subprocess): simulated
days, every default fault injected, detected and healed; the summary and the HTML report."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from recsys.faults import FAULTS

RECSYS = str(Path(sys.executable).with_name("recsys"))


def _run(args: list[str], data_dir: Path, timeout: float) -> subprocess.CompletedProcess:
    return subprocess.run(
        [RECSYS, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "RECSYS_DATA_DIR": str(data_dir), "COLUMNS": "200"},
    )


@pytest.mark.slow
@pytest.mark.background("demo", timeout=900)
def test_default_demo_heals_every_fault(background_run):
    code, out, err, data_dir = background_run
    assert code == 0, f"{data_dir}\n{out[-4000:]}{err[-3000:]}"
    assert "demo passed" in out
    for fault in FAULTS:
        assert fault in out
    incidents = [
        json.loads(line)
        for line in (data_dir / "logs" / "incidents.jsonl").read_text().splitlines()
        if line.strip()
    ]
    checks = {i["check"] for i in incidents}
    assert {"delivery", "feature_freshness", "cache_version", "drift", "canary"} <= checks
    assert "champion_ctr" in checks
    report = data_dir / "reports" / "demo" / "index.html"
    assert report.is_file()
    html = report.read_text()
    assert all(fault in html for fault in FAULTS)
    assert list(report.parent.glob("*.png"))
    # the service was stopped: nothing listens any more on the port it logged to
    logs = list((data_dir / "logs").glob("service-*.log"))
    port = int(logs[0].stem.split("-")[1])
    with socket.socket() as sock:
        assert sock.connect_ex(("127.0.0.1", port)) != 0


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["demo", "--faults", "meteor"], "recsys: error: unknown faults ['meteor']"),
        (["demo", "--dataset", "imagenet"], "recsys: error: --dataset 'imagenet'"),
        (["demo", "--days", "3"], "recsys: error: --days 3 is too few"),
    ],
)
def test_demo_bad_options_are_one_line_errors(data_dir, args, message):
    proc = _run(args, data_dir, timeout=120)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith(message)
