"""The `recsys` command as a user runs it: a real subprocess, exit codes, one-line errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

RECSYS = [str(Path(sys.executable).with_name("recsys"))]


def run(args: list[str], data_dir: Path, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [*RECSYS, *args],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "RECSYS_DATA_DIR": str(data_dir), **env},
    )


def assert_one_line_error(proc: subprocess.CompletedProcess, code: int, needle: str) -> None:
    assert proc.returncode == code, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("recsys: error:") and needle in lines[0]
    assert "Traceback" not in proc.stderr + proc.stdout


def test_config_show_prints_effective_settings_as_json(data_dir):
    proc = run(["config", "show", "--json"], data_dir, RECSYS_ADMIN_TOKEN="tok-123")
    assert proc.returncode == 0, proc.stderr
    values = json.loads(proc.stdout)
    assert values["profile"] == "local"
    assert values["data_dir"] == str(data_dir.resolve())
    assert values["admin_token"] == "***" and "tok-123" not in proc.stdout


def test_config_schema_is_the_json_schema_of_the_settings(data_dir):
    proc = run(["config", "schema"], data_dir)
    schema = json.loads(proc.stdout)
    assert {"profile", "data_dir", "mlflow_tracking_uri", "admin_token"} <= set(
        schema["properties"]
    )


def test_user_errors_are_one_readable_line(data_dir, tmp_path):
    assert_one_line_error(run(["trian"], data_dir), 2, "No such command")
    assert_one_line_error(run(["train", "--window-days", "0"], data_dir), 2, "--window-days")
    # a budget of 1e308 s searched until stopped: a unit mistake is refused up front
    assert_one_line_error(run(["train", "--budget-s", "1e308"], data_dir), 2, "--budget-s")
    assert_one_line_error(
        run(["data", "movielens", "--data-path", str(tmp_path / "nope")], data_dir),
        2,
        "not a folder",
    )
    assert_one_line_error(run(["train"], data_dir), 2, "recsys data generate")
    assert_one_line_error(run(["config", "show"], data_dir, RECSYS_SERVE_PORT="x"), 2, "serve_port")
    assert_one_line_error(run(["data", "generate", "--drift-share", "3"], data_dir), 2, "drift")


def test_a_user_error_inside_a_prefect_flow_ends_in_its_one_line_without_a_traceback(
    data_dir, tmp_path
):
    delivery = tmp_path / "2026-03-01.jsonl"
    delivery.write_text('{"user_id": 1, "item_id": 2}\n')
    proc = run(["ingest", str(delivery)], data_dir)
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith("recsys: error: cannot read")
    # Prefect's own one-line records of the failed task and flow run may precede it
    assert len(proc.stderr.strip().splitlines()) <= 3, proc.stderr
    kept = data_dir / "quarantine" / "2026-03-01"
    assert (kept / "unreadable-1.jsonl").read_bytes() == delivery.read_bytes()


def test_the_terminal_formatter_drops_only_a_user_errors_traceback_and_only_when_quiet():
    import logging

    from recsys.console import LOG_FORMAT, _TerminalFormatter
    from recsys.errors import RecsysError

    def record(exc: Exception) -> logging.LogRecord:
        try:
            raise exc
        except Exception:
            made = logging.LogRecord("prefect", logging.ERROR, __file__, 1, "failed", None, None)
            made.exc_info = sys.exc_info()
        logging.Formatter().format(made)  # an earlier handler caches the traceback text
        return made

    quiet = _TerminalFormatter(LOG_FORMAT, tracebacks=False)
    user_error = record(RecsysError("bad file"))
    assert "Traceback" not in quiet.format(user_error)
    assert user_error.exc_text and "Traceback" in user_error.exc_text  # left for the others
    assert "Traceback" in quiet.format(record(ValueError("a bug")))
    assert "Traceback" in _TerminalFormatter(LOG_FORMAT, tracebacks=True).format(user_error)


def test_generate_then_train_registers_a_champion(data_dir):
    world = ["data", "generate", "--users", "300", "--items", "80", "--days", "6"]
    gen = run([*world, "--interactions", "6000", "--seed", "3"], data_dir)
    assert gen.returncode == 0, gen.stderr
    assert len(list((data_dir / "raw" / "interactions").glob("*.parquet"))) == 6
    assert len(list((data_dir / "clean" / "interactions").glob("*.parquet"))) == 6
    assert (data_dir / "world" / "ground_truth.npz").is_file()
    again = run([*world, "--interactions", "6000", "--seed", "4"], data_dir)
    assert_one_line_error(again, 2, "different synthetic world")

    train = run(["train", "--window-days", "6", "--budget-s", "1"], data_dir)
    assert train.returncode == 0, train.stderr
    assert "registered recsys-recommender version 1 as 'champion'" in train.stdout
    assert "popularity" in train.stdout and "pipeline" in train.stdout
    assert "search:" in train.stdout and "pipeline vs ALS alone" in train.stdout

    evaluate = run(["evaluate", "--alias", "champion"], data_dir)
    assert evaluate.returncode == 0, evaluate.stderr
    assert "recsys-recommender v1 (champion)" in evaluate.stdout
    assert "pipeline" in evaluate.stdout and "trending" in evaluate.stdout


def test_movielens_command_lands_the_real_data(data_dir, ml100k):
    proc = run(["data", "movielens", "--data-path", str(ml100k)], data_dir)
    assert proc.returncode == 0, proc.stderr
    assert "landed 100000 ratings, 1682 items, 943 users" in proc.stdout


@pytest.mark.parametrize("target", ["help"])
def test_make_help_lists_every_target(target):
    root = Path(__file__).resolve().parent.parent
    proc = subprocess.run(["make", "-s", target], cwd=root, capture_output=True, text=True)
    assert proc.returncode == 0
    for name in ("install", "demo", "test", "lint", "clean"):
        assert f"  {name} " in proc.stdout


def test_evaluate_takes_a_version_number_for_its_alias(trained_world):
    settings, registered, _ = trained_world
    assert registered.version == "1"
    proc = run(["evaluate", "--alias", "1", "--k", "5"], settings.data_dir)
    assert proc.returncode == 0, proc.stderr
    assert "recsys-recommender v1 at k=5" in proc.stdout and "pipeline" in proc.stdout
    missing = run(["evaluate", "--alias", "v9"], settings.data_dir)
    assert_one_line_error(missing, 2, "model version 9 of 'recsys-recommender' does not exist")
    assert "the latest is version 1" in missing.stderr

    from recsys.errors import RecsysError
    from recsys.registry import resolve_version

    assert [resolve_version(settings, ref) for ref in ("1", "v1", " V1 ", "champion")] == ["1"] * 4
    # an alias that is not set names the ones that are, not "train first"
    with pytest.raises(
        RecsysError, match=r"alias 'previous'.*aliases set now are .*champion \(v1\)"
    ):
        resolve_version(settings, "previous")


def test_evaluate_refuses_a_holdout_with_no_user_to_measure(trained_world, tmp_path):
    """Every holdout user only repeated items they had: exit 0 and a table of 0.0000."""
    import shutil

    from recsys.config import Settings

    settings, _, _ = trained_world
    folder = tmp_path / "data"
    shutil.copytree(settings.data_dir, folder, ignore=shutil.ignore_patterns("logs", "bentoml"))
    lake = Settings(data_dir=folder).lake
    *earlier, last = lake.clean_batches()
    had = lake.read_clean_interactions(earlier).groupby("user_id")["item_id"].first()
    day = lake.read_clean_interactions([last])
    day = day[day["user_id"].isin(had.index)]
    lake.write_clean_batch(last, day.assign(item_id=day["user_id"].map(had)))
    proc = run(["evaluate", "--test-days", "1"], folder)
    assert_one_line_error(proc, 2, f"the holdout from {last} has no user to measure v1 on")


def test_evaluate_refuses_a_holdout_that_leaves_no_day_to_fit_on(trained_world):
    settings, _, _ = trained_world
    assert settings.lake.read_clean_interactions()["timestamp"].dt.floor("D").nunique() == 12
    proc = run(["evaluate", "--test-days", "12"], settings.data_dir)
    assert_one_line_error(proc, 2, "the lake has 12 day(s) of data: too few to hold out 12 day(s)")
    assert "lower --test-days" in proc.stderr
    # a one-day holdout cannot be lowered: the hint was "lower --test-days" all the same
    proc = run(["train", "--window-days", "1", "--budget-s", "0"], settings.data_dir)
    assert_one_line_error(proc, 2, "too few to hold out 1 day(s) and keep a label window")
    assert "use a wider --window-days or more days of data" in proc.stderr
    assert "--test-days" not in proc.stderr
    # without a window nothing names --window-days: `recsys bench serve`, which has no such
    # option, said "use a wider --window-days" of a one-day synthetic world
    from recsys.errors import RecsysError
    from recsys.train import holdout_days

    one_day = settings.lake.read_clean_interactions(settings.lake.clean_batches()[:1])
    with pytest.raises(RecsysError) as refused:
        holdout_days(one_day, None)
    assert str(refused.value) == (
        "the lake has 1 day(s) of data: too few to hold out 1 day(s) and keep a label window "
        "before them; use more days of data"
    )


def test_float_options_refuse_inf_and_nan(data_dir):
    # a search budget of inf never ended; bounds let inf through a minimum, nan through none
    for value in ("inf", "nan"):  # the budget has a maximum now, a day
        proc = run(["train", "--budget-s", value], data_dir)
        assert_one_line_error(proc, 2, "'--budget-s': Input should be less than or equal to 86400")
    proc = run(["bench", "serve", "--duration", "inf"], data_dir)
    assert_one_line_error(proc, 2, "'--duration': inf is not a finite number")
    proc = run(["data", "generate", "--new-item-share", "nan"], data_dir)
    assert_one_line_error(proc, 2, "'--new-item-share': nan is not a finite number")
    assert not data_dir.exists()


def test_generate_refuses_days_in_the_future_before_writing_anything(data_dir):
    from datetime import UTC, date, datetime, timedelta

    today = datetime.now(UTC).date()
    start = (today - timedelta(days=5)).isoformat()
    proc = run(["data", "generate", "--start-date", start, "--days", "7"], data_dir)
    assert_one_line_error(proc, 2, f"7 day(s) from {start} end on")
    assert "use --days 6 or fewer, or --start-date" in proc.stderr
    proc = run(["data", "generate", "--start-date", "2999-01-01"], data_dir)
    assert_one_line_error(proc, 2, "after today")
    assert_one_line_error(run(["data", "generate", "--days", "100000"], data_dir), 2, "--days")
    assert not data_dir.exists()

    from recsys.errors import RecsysError
    from recsys.synthetic import WorldConfig, refuse_future_days

    ten_days = WorldConfig(n_days=10, start_date="2026-03-01")
    refuse_future_days(ten_days, today=date(2026, 3, 10))  # the last day is today: fine
    with pytest.raises(RecsysError, match="use --days 9 or fewer, or --start-date 2026-02-28 or"):
        refuse_future_days(ten_days, today=date(2026, 3, 9))


def test_an_unreachable_mlflow_server_is_one_line_not_minutes_of_silence(data_dir):
    # MLflow's client retries a server that is down 7 times with backoff: `recsys status` said
    # nothing for about 4 minutes before this check
    import time

    started = time.monotonic()
    proc = run(
        ["status"],
        data_dir,
        RECSYS_PROFILE="prod",
        RECSYS_MLFLOW_TRACKING_URI="http://someone:pw@127.0.0.1:9",
    )
    assert_one_line_error(proc, 2, "MLflow tracking server at http://someone:***@127.0.0.1:9")
    assert "pw@" not in proc.stderr + proc.stdout
    assert time.monotonic() - started < 60


@pytest.mark.parametrize(
    "args",
    [["doctor", "--url", "notaurl"], ["status", "--url", "ftp://x"], ["rollback", "--url", "h:1"]],
)
def test_a_service_url_that_is_not_one_is_refused_before_anything_runs(args, data_dir):
    # `doctor --url notaurl` said "readiness FAIL: the service is not ready"; `rollback` moved
    # the champion first and only then failed to reach the service
    proc = run(args, data_dir, RECSYS_ADMIN_TOKEN="tok")
    assert_one_line_error(proc, 2, f"{args[-1]!r} is not a service URL: use http://HOST:PORT")
    assert not data_dir.exists()


def test_serve_on_a_port_in_use_is_one_line(data_dir):
    # BentoML's own answer was a 50-line traceback ending in "Address already in use"
    import socket

    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        proc = run(["serve", "--port", str(port)], data_dir)
    assert_one_line_error(proc, 2, f"cannot serve on 127.0.0.1:{port}: Address already in use")


def test_status_of_a_new_data_dir_says_what_to_do_and_creates_nothing(data_dir):
    # it created a 0.9 MB mlflow.db (MLflow's migrations) to say that no alias is set
    proc = run(["status", "--json"], data_dir)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert "no model registry yet" in report["registry_note"]
    assert "`recsys train`" in report["registry_note"]
    assert [row["version"] for row in report["aliases"]] == [None, None, None]
    assert not data_dir.exists()
    proc = run(["status"], data_dir)
    assert proc.returncode == 0 and "no model registry yet" in proc.stdout, proc.stderr
    assert not data_dir.exists()


def test_a_data_dir_that_is_a_file_is_one_line(tmp_path):
    # NotADirectoryError / FileExistsError were internal errors
    afile = tmp_path / "data"
    afile.write_text("not a folder\n")
    for args in (["status"], ["data", "generate", "--days", "3", "--users", "20"]):
        proc = run(args, afile)
        assert_one_line_error(proc, 2, "a file stands where a folder must be; check RECSYS_DATA")
    assert afile.read_text() == "not a folder\n"


@pytest.mark.skipif(not Path("/proc/self").is_dir(), reason="needs Linux's /proc")
def test_a_data_dir_that_cannot_be_written_or_created_is_one_line_at_once():
    # /proc/self: a folder no file can be made in, even by root (for whom permission bits
    # and a read-only data dir say nothing): `recsys train` trained, then MLflow retried the
    # registry for ~100 s before an OperationalError; /proc/recsys was an internal error
    proc = run(["train", "--budget-s", "0"], Path("/proc/self"))
    assert_one_line_error(proc, 2, "cannot write in /proc/")
    assert "the model registry (mlflow.db) is kept there" in proc.stderr
    proc = run(["data", "generate", "--days", "3", "--users", "20"], Path("/proc/recsys"))
    assert_one_line_error(proc, 2, "cannot create /proc/recsys: No such file or directory")
    proc = run(["config", "show"], Path("/tmp"), RECSYS_SEED="-1")  # train said ValueError
    assert_one_line_error(proc, 2, "seed: Input should be greater than or equal to 0")
