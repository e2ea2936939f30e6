"""`bentoml build` packs the service from the [tool.bentoml.build] table of pyproject.toml."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import yaml

from recsys.server import PROJECT_ROOT, QUIET_ENV, bentoml_command

pytestmark = pytest.mark.slow


def test_bentoml_build_packs_the_service_and_its_library(tmp_path, monkeypatch):
    env = {**QUIET_ENV, "BENTOML_HOME": str(tmp_path / "bentoml"), "RECSYS_DATA_DIR": str(tmp_path)}
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    program = bentoml_command("127.0.0.1", 0)[:-6]  # the bentoml executable, without "serve ..."
    done = subprocess.run(
        [*program, "build", "."], cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=240
    )
    assert done.returncode == 0, done.stderr[-2000:]
    (bento,) = [p for p in (tmp_path / "bentoml" / "bentos" / "recsys").iterdir() if p.is_dir()]
    spec = yaml.safe_load((bento / "bento.yaml").read_text())
    routes = {r["route"] for r in spec["schema"]["routes"]}
    assert {"/recommend", "/feedback", "/admin/reload", "/admin/status"} <= routes
    for module in ("serving/service.py", "serving/cache.py", "recsys/release.py"):
        assert (bento / "src" / module).is_file()
    assert not list(Path(bento / "src").glob("tests/*"))
    requirements = (bento / "env" / "python" / "requirements.txt").read_text()
    assert "bentoml==1.4.40" in requirements and "torch==2.13.0" in requirements
