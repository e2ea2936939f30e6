"""Settings: profiles, environment prefix, YAML file, masking, readable errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from recsys.config import Settings, get_settings, mask_url
from recsys.errors import RecsysError


def test_local_profile_keeps_everything_under_the_data_dir(settings, data_dir: Path):
    assert settings.profile == "local"
    assert settings.data_dir == data_dir.resolve()
    assert settings.tracking_uri == f"sqlite:///{data_dir.resolve() / 'mlflow.db'}"
    assert settings.artifact_location.startswith("file://")
    assert settings.lake.root == data_dir.resolve()
    assert settings.serve_host == "127.0.0.1"


def test_environment_variables_use_the_recsys_prefix(monkeypatch, data_dir):
    monkeypatch.setenv("RECSYS_SERVE_PORT", "3456")
    monkeypatch.setenv("RECSYS_MODEL_NAME", "shop-recs")
    settings = get_settings()
    assert settings.serve_port == 3456
    assert settings.model_name == "shop-recs"


def test_prod_profile_needs_a_tracking_server(monkeypatch, data_dir):
    monkeypatch.setenv("RECSYS_PROFILE", "prod")
    settings = get_settings()
    with pytest.raises(RecsysError, match="RECSYS_MLFLOW_TRACKING_URI"):
        _ = settings.tracking_uri
    monkeypatch.setenv("RECSYS_MLFLOW_TRACKING_URI", "http://127.0.0.1:5000")
    assert get_settings().tracking_uri == "http://127.0.0.1:5000"
    assert get_settings().artifact_location is None


def test_yaml_file_is_read_and_environment_wins(tmp_path, monkeypatch, data_dir):
    config = tmp_path / "recsys.yaml"
    config.write_text("model_name: from-yaml\nmax_k: 50\n")
    monkeypatch.setenv("RECSYS_CONFIG_FILE", str(config))
    monkeypatch.setenv("RECSYS_MAX_K", "20")
    settings = get_settings()
    assert settings.model_name == "from-yaml"
    assert settings.max_k == 20


def test_missing_yaml_file_is_a_readable_error(monkeypatch, data_dir):
    monkeypatch.setenv("RECSYS_CONFIG_FILE", "/nonexistent/recsys.yaml")
    with pytest.raises(RecsysError, match="RECSYS_CONFIG_FILE"):
        get_settings()


def test_invalid_value_is_one_readable_error(monkeypatch, data_dir):
    monkeypatch.setenv("RECSYS_SERVE_PORT", "not-a-port")
    with pytest.raises(RecsysError, match="serve_port"):
        get_settings()


def _config_file_error(monkeypatch, path: Path) -> str:
    monkeypatch.setenv("RECSYS_CONFIG_FILE", str(path))
    with pytest.raises(RecsysError) as caught:
        get_settings()
    message = str(caught.value)
    assert "\n" not in message and f"RECSYS_CONFIG_FILE={path}" in message
    return message


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (b"a: [1, 2", "is not valid YAML (line 1, column 9: expected ',' or ']'"),
        (b"a: \x00\n", "is not valid YAML (offset 3: unacceptable character #x0000"),
        (b"- 1\n- 2\n", "must hold a mapping of settings (name: value), not a list"),
        (b"just text\n", "not a string"),
        (b"\x89PNG\r\n\x1a\n\x00", "is not UTF-8 text (byte 0x89 at offset 0)"),
    ],
    ids=["unclosed-list", "control-character", "top-level-list", "top-level-string", "binary"],
)
def test_malformed_yaml_file_is_one_readable_error(
    tmp_path, monkeypatch, data_dir, content, expected
):
    config = tmp_path / "bad.yaml"
    config.write_bytes(content)
    assert expected in _config_file_error(monkeypatch, config)


def test_a_directory_as_yaml_file_is_named_as_such(tmp_path, monkeypatch, data_dir):
    assert "is a directory" in _config_file_error(monkeypatch, tmp_path)


def test_unknown_key_in_yaml_file_is_an_error_with_a_suggestion(tmp_path, monkeypatch, data_dir):
    config = tmp_path / "recsys.yaml"
    config.write_text("model_name: from-yaml\nserve_prot: 3000\n")
    message = _config_file_error(monkeypatch, config)
    assert "unknown setting 'serve_prot' (did you mean serve_port?)" in message
    config.write_text("foo: 1\nzzzzqq: 2\n")
    assert "unknown settings 'foo', 'zzzzqq';" in _config_file_error(monkeypatch, config)
    # The environment stays lenient, and keys match settings case-insensitively as env does.
    monkeypatch.setenv("RECSYS_SERVE_PROT", "3000")
    config.write_text("SERVE_PORT: 4000\n")
    assert get_settings().serve_port == 4000
    config.write_text("")
    assert get_settings().serve_port == 3000


def test_invalid_value_from_yaml_file_points_at_the_file(tmp_path, monkeypatch, data_dir):
    config = tmp_path / "recsys.yaml"
    config.write_text("serve_port: not-a-port\n")
    message = _config_file_error(monkeypatch, config)
    assert "serve_port" in message and message.endswith(f"check RECSYS_CONFIG_FILE={config}")
    monkeypatch.setenv("RECSYS_MAX_K", "many")
    message = _config_file_error(monkeypatch, config)
    assert message.endswith(f"check RECSYS_* variables and RECSYS_CONFIG_FILE={config}")
    # A value from the environment wins over the file, and the message says so.
    monkeypatch.delenv("RECSYS_MAX_K")
    monkeypatch.setenv("RECSYS_SERVE_PORT", "also-bad")
    with pytest.raises(RecsysError, match=r"check RECSYS_\* variables$"):
        get_settings()


def test_whitespace_around_a_secret_is_no_part_of_it(monkeypatch, data_dir):
    """A token read from a secret file keeps its final newline: every admin call was a 401."""
    monkeypatch.setenv("RECSYS_ADMIN_TOKEN", "tok-from-a-file\n")
    monkeypatch.setenv("RECSYS_ALERT_WEBHOOK_URL", " http://127.0.0.1:9/hook\r\n")
    settings = Settings()
    assert settings.admin_token.get_secret_value() == "tok-from-a-file"
    assert settings.alert_webhook_url.get_secret_value() == "http://127.0.0.1:9/hook"
    monkeypatch.setenv("RECSYS_ADMIN_TOKEN", " \n")
    assert Settings().admin_token is None


def test_secrets_and_url_passwords_are_masked(data_dir):
    settings = Settings(
        admin_token="s3cret-token",
        redis_url="redis://:hunter2@127.0.0.1:6379/0",
        postgres_url="postgresql://app:pa55word@127.0.0.1:5432/test",
    )
    shown = str(settings.masked())
    assert "s3cret-token" not in shown and "hunter2" not in shown and "pa55word" not in shown
    assert settings.masked()["admin_token"] == "***"
    assert "redis://:***@127.0.0.1:6379/0" in shown
    assert mask_url("postgresql://app@host/db") == "postgresql://app@host/db"
    # a password as a query parameter, as libpq and redis-py accept it
    for url, masked in [
        ("postgresql://app@h/db?password=pa55word", "postgresql://app@h/db?password=***"),
        ("redis://h:6379/0?ssl=1&Password=hunter2#x", "redis://h:6379/0?ssl=1&Password=***#x"),
        ("http://h/?token=abc&k=1", "http://h/?token=***&k=1"),
    ]:
        assert mask_url(url) == masked
    in_query = Settings(postgres_url="postgresql://app@127.0.0.1/test?password=pa55word")
    assert "pa55word" not in str(in_query.masked()) + in_query.model_dump_json()


def test_an_empty_secret_or_url_in_the_environment_means_unset(monkeypatch, data_dir):
    from recsys.config import get_settings

    monkeypatch.setenv("RECSYS_ALERT_WEBHOOK_URL", "")
    monkeypatch.setenv("RECSYS_ADMIN_TOKEN", "  ")
    monkeypatch.setenv("RECSYS_REDIS_URL", "")
    settings = get_settings()
    assert settings.alert_webhook_url is None and settings.admin_token is None
    assert settings.redis_url is None
    monkeypatch.setenv("RECSYS_ADMIN_TOKEN", "s3cret")
    assert get_settings().admin_token.get_secret_value() == "s3cret"


_PREFECT_PROBE = """
import json, sys
from pathlib import Path
from recsys.config import Settings
from flows.runtime import configure_prefect
configure_prefect(Settings(data_dir=Path(sys.argv[1])))
from prefect.settings import get_current_settings
print(json.dumps(get_current_settings().server.ephemeral.startup_timeout_seconds))
"""


@pytest.mark.parametrize(("given", "expected"), [(None, 180), ("45", 45)])
def test_the_local_prefect_api_gets_time_to_start(tmp_path, given, expected):
    """Prefect waits 20 s by default for its ephemeral API to start, which a busy machine
    overran (more so on a new data dir, where it builds its database first); the local profile
    waits longer unless the user set their own value. Checked in a fresh interpreter: Prefect
    reads it at import."""
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "RECSYS_"))}
    if given is not None:
        env["PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS"] = given
    proc = subprocess.run(
        [sys.executable, "-c", _PREFECT_PROBE, str(tmp_path)],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert int(proc.stdout.strip().splitlines()[-1]) == expected
