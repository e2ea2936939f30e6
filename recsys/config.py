"""One settings object for every profile.

Values come from (highest first) keyword arguments, ``RECSYS_*`` environment variables, a YAML
file named by ``RECSYS_CONFIG_FILE``, then the defaults below. ``recsys config show`` prints the
effective values with secrets masked; ``recsys config schema`` prints the JSON schema.

Only the factories in this module (and the store/client builders that call them) look at
``profile``; the rest of the code asks the settings for a URI or a path.
"""

from __future__ import annotations

import difflib
import os
import re
from functools import cached_property
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, SecretStr, field_serializer, field_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    YamlConfigSettingsSource,
)

from recsys.errors import RecsysError

Profile = Literal["local", "prod"]

_URL_PASSWORD = re.compile(r"(?P<head>[a-zA-Z][a-zA-Z0-9+.-]*://[^:/@]*:)(?P<pw>[^@]+)(?P<tail>@)")
# a password given as a query parameter (libpq's ``?password=``, redis-py's ``?password=``)
_QUERY_SECRET = re.compile(
    r"(?P<head>[?&](?:password|passwd|pwd|sslpassword|secret|token|access_token|api_key)=)"
    r"(?P<pw>[^&#]+)",
    re.IGNORECASE,
)


def mask_url(url: str | None) -> str | None:
    """Return ``url`` with any password replaced by ``***`` (``redis://:pw@h`` -> ``redis://:***@h``,
    ``postgresql://u@h/db?password=pw`` -> ``...?password=***``)."""
    if url is None:
        return None
    return _QUERY_SECRET.sub(r"\g<head>***", _URL_PASSWORD.sub(r"\g<head>***\g<tail>", url))


class Settings(BaseSettings):
    """Effective configuration of the recommender. See the module docstring for the sources."""

    model_config = SettingsConfigDict(
        env_prefix="RECSYS_",
        extra="ignore",
        validate_default=True,
    )

    profile: Profile = Field("local", description="local: embedded stores; prod: servers by URL.")
    data_dir: Path = Field(
        Path(".recsys"),
        description="Root of the data lake, the local stores and the logs (local profile).",
    )
    seed: int = Field(
        42, ge=0, le=2**32 - 1, description="Seed for every random choice the pipeline makes."
    )

    # Registry
    model_name: str = Field("recsys-recommender", description="MLflow registered model name.")
    experiment_name: str = Field("recsys", description="MLflow experiment for training runs.")
    mlflow_tracking_uri: str | None = Field(
        None, description="MLflow server URL (prod). Local default: sqlite file under data_dir."
    )

    # Prod services
    redis_url: str | None = Field(None, description="Feast online store (prod), redis://host:port")
    postgres_url: str | None = Field(
        None,
        description="PostgreSQL server of the MLflow and Prefect backends (prod),"
        " postgresql://...; read by recsys.prodstack, which creates their databases. The"
        " clients never connect to it: they reach MLflow and Prefect by their URLs.",
    )
    prefect_api_url: str | None = Field(None, description="Prefect server API URL (prod).")
    feast_project: str = Field(
        "recsys",
        description="Feast project (namespaces online-store keys); features/spec.py reads the "
        "same RECSYS_FEAST_PROJECT variable for the Feast CLI.",
    )

    # Serving
    serve_host: str = Field("127.0.0.1", description="Address the service binds to.")
    serve_port: int = Field(3000, ge=1, le=65535, description="Port the service binds to.")
    admin_token: SecretStr | None = Field(
        None, description="Bearer token for /admin endpoints; unset disables them."
    )
    alert_webhook_url: SecretStr | None = Field(
        None, description="Alerts are POSTed here as JSON (besides the log line); a secret."
    )
    max_k: int = Field(100, ge=1, le=1000, description="Largest k a /recommend call may ask.")
    max_exclude: int = Field(
        1000, ge=0, le=100_000, description="Most item ids a /recommend call may exclude."
    )
    max_body_kb: int = Field(
        64, ge=1, le=10_240, description="Largest request body the service accepts (KiB)."
    )
    body_timeout_s: float = Field(
        5.0,
        gt=0.0,
        le=9.0,
        description="Seconds a request body may take to arrive whole (a slower one is a 408); "
        "under the service's 10 s request timeout.",
    )
    canary_share: float = Field(
        0.1,
        ge=0.0,
        le=1.0,
        description="Share of users (by a hash of user_id) the challenger serves, when one exists.",
    )
    reload_interval_s: float = Field(
        30.0, ge=0.0, description="How often the service polls the registry aliases; 0 disables."
    )
    cache_size: int = Field(
        10_000, ge=0, description="Entries in the per-user recommendation cache; 0 disables it."
    )
    candidate_memo_mb: float = Field(
        256.0,
        ge=0.0,
        description="Memory per loaded model for its users' candidate sets (computed at load "
        "for the most active users, then on first request); 0 computes them on every request.",
    )
    user_rows_ahead: int = Field(
        100_000,
        ge=0,
        description="Most users whose online feature rows the service reads ahead on a "
        "background thread: the most active users' when a model loads, the kept rows again "
        "after each materialization, and rows requests use before they expire; so those "
        "requests do not wait on the online store. 0: every row is read by the request that "
        "needs it.",
    )
    request_log_sample: float = Field(
        0.1, ge=0.0, le=1.0, description="Share of /recommend calls written to the request log."
    )
    request_log_max_mb: float = Field(
        50.0, gt=0, description="Disk the request log may use (all rotated files) in MiB."
    )
    fault_injection: bool = Field(
        False, description="Enable the service's /admin/fault drills (demo and tests only)."
    )
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field(
        "INFO",
        description="Level of the service's own log lines (model loads, reloads, canary moves, "
        "feature-store state) in its log beside BentoML's; BentoML's server config alone "
        "would drop everything below WARNING.",
    )

    # Training defaults (the thin path; the search space lives with the model)
    als_factors: int = Field(32, ge=2, le=1024)
    als_regularization: float = Field(25.0, gt=0)
    als_alpha: float = Field(4.0, gt=0, description="Confidence = alpha * weight.")
    als_iterations: int = Field(20, ge=1, le=500)
    candidates: int = Field(200, ge=10, le=5000, description="Candidate set size per user.")
    ranker_max_epochs: int = Field(40, ge=1, le=1000, description="Ranker epochs at most.")
    ranker_models: int = Field(2, ge=1, le=16, description="Ranker ensemble size (seeds).")

    @field_validator("data_dir")
    @classmethod
    def _absolute_data_dir(cls, value: Path) -> Path:
        return value.expanduser().resolve()

    @field_validator(
        "admin_token",
        "alert_webhook_url",
        "mlflow_tracking_uri",
        "redis_url",
        "postgres_url",
        "prefect_api_url",
        mode="before",
    )
    @classmethod
    def _empty_is_unset(cls, value: Any) -> Any:
        # `RECSYS_ALERT_WEBHOOK_URL=` in an env file means "none", not a URL that fails on every
        # alert (nor an admin token that is the empty string). A secret read from a file keeps
        # its final newline (`RECSYS_ADMIN_TOKEN=$(cat token)` does not, `docker secret` files
        # and env files may): the whitespace around a value is no part of it.
        if isinstance(value, SecretStr):
            value = value.get_secret_value()
        if isinstance(value, str):
            return value.strip() or None
        return value

    @field_serializer(
        "mlflow_tracking_uri", "redis_url", "postgres_url", "prefect_api_url", when_used="json"
    )
    def _url_without_password(self, value: str | None) -> str | None:
        # JSON copies of the settings leave the process (Prefect stores the flows' parameters
        # on its server): a password in a URL never goes with them.
        return mask_url(value)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        config_file = os.environ.get("RECSYS_CONFIG_FILE")
        if config_file:
            sources.append(_StrictYamlSource(settings_cls, yaml_file=_config_path(config_file)))
        return tuple(sources)

    # ---- factories: the only places that look at the profile -------------------------------

    @property
    def tracking_uri(self) -> str:
        """MLflow tracking and registry URI for this profile."""
        if self.mlflow_tracking_uri:
            return self.mlflow_tracking_uri
        if self.profile == "prod":
            raise RecsysError(
                "profile prod needs RECSYS_MLFLOW_TRACKING_URI (the MLflow server URL)"
            )
        return f"sqlite:///{self.data_dir / 'mlflow.db'}"

    @property
    def artifact_location(self) -> str | None:
        """Where new experiments keep artifacts; None lets the MLflow server decide."""
        if self.profile == "prod" or self.mlflow_tracking_uri:
            return None
        return (self.data_dir / "mlartifacts").as_uri()

    @cached_property
    def lake(self):  # -> recsys.lake.Lake, imported late to keep this module dependency-free
        from recsys.lake import Lake

        return Lake(self.data_dir)

    def masked(self) -> dict[str, Any]:
        """Effective settings as plain JSON-able values, with secrets and URL passwords masked."""
        out: dict[str, Any] = {}
        for name in type(self).model_fields:
            value = getattr(self, name)
            if isinstance(value, SecretStr):
                value = "***" if value.get_secret_value() else None
            elif isinstance(value, Path):
                value = str(value)
            elif isinstance(value, str) and "://" in value:
                value = mask_url(value)
            out[name] = value
        out["tracking_uri (effective)"] = mask_url(self._effective_tracking_uri())
        return out

    def _effective_tracking_uri(self) -> str:
        try:
            return self.tracking_uri
        except RecsysError as exc:
            return f"<unset: {exc}>"


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def _config_path(config_file: str) -> Path:
    """The file RECSYS_CONFIG_FILE names, or a RecsysError saying why it cannot be read."""
    path = Path(config_file).expanduser()
    where = f"RECSYS_CONFIG_FILE={config_file}"
    if path.is_dir():
        raise RecsysError(f"{where} is a directory; point it at a YAML file or unset it")
    if not path.exists():
        raise RecsysError(f"{where} does not exist; point it at a YAML file or unset it")
    if not path.is_file():
        raise RecsysError(f"{where} is not a regular file; point it at a YAML file or unset it")
    return path


_KINDS = {list: "a list", str: "a string", int: "a number", float: "a number", bool: "a boolean"}


def _read_config_file(path: Path) -> dict[str, Any]:
    """The settings in the YAML file at ``path``: a mapping of known setting names.

    Unlike the environment (where unknown ``RECSYS_*`` variables are ignored), the file is
    strict: a key that names no setting is most likely a typo, so it is an error.
    """
    import yaml

    where = f"RECSYS_CONFIG_FILE={path}"
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise RecsysError(
            f"{where} is not UTF-8 text (byte 0x{exc.object[exc.start]:02x} at offset "
            f"{exc.start}); it must be a YAML file"
        ) from None
    except OSError as exc:
        raise RecsysError(f"{where} cannot be read ({exc.strerror or exc})") from None
    try:
        data = yaml.safe_load(text)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        at = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        what = _one_line(exc.problem or exc.context or "")
        raise RecsysError(f"{where} is not valid YAML ({at}{what})") from None
    except yaml.YAMLError as exc:  # ReaderError (control characters) and the like
        position = getattr(exc, "position", None)
        at = f"offset {position}: " if position is not None else ""
        detail = _one_line(str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
        raise RecsysError(f"{where} is not valid YAML ({at}{detail})") from None
    if data is None:  # empty, or only comments
        return {}
    if not isinstance(data, dict):
        kind = _KINDS.get(type(data), type(data).__name__)
        raise RecsysError(f"{where} must hold a mapping of settings (name: value), not {kind}")
    known = {name.lower(): name for name in Settings.model_fields}
    unknown = [key for key in data if not (isinstance(key, str) and key.lower() in known)]
    if unknown:
        described = []
        for key in unknown:
            close = difflib.get_close_matches(str(key).lower(), list(known), n=1)
            hint = f" (did you mean {known[close[0]]}?)" if close else ""
            described.append(f"{_one_line(repr(key))}{hint}")
        noun = "setting" if len(unknown) == 1 else "settings"
        raise RecsysError(
            f"{where} has unknown {noun} {', '.join(described)}; "
            "`recsys config schema` lists the names"
        )
    return data


class _StrictYamlSource(YamlConfigSettingsSource):
    """The YAML file source, with every problem in the file reported as one RecsysError."""

    def _read_file(self, file_path: Any) -> dict[str, Any]:
        return _read_config_file(Path(file_path))


def _file_keys() -> set[str]:
    """The setting names the RECSYS_CONFIG_FILE sets, lowercased (none when it is unset or
    unreadable: its own error is said elsewhere)."""
    config_file = os.environ.get("RECSYS_CONFIG_FILE")
    if not config_file:
        return set()
    try:
        return {str(key).lower() for key in _read_config_file(_config_path(config_file))}
    except RecsysError:
        return set()


def _where_from(field: str, overrides: dict[str, Any], file_keys: set[str]) -> str | None:
    """Which source gave ``field`` its (bad) value: "env", "file" or None (caller/default)."""
    if field.lower() in {name.lower() for name in overrides}:
        return None
    if f"recsys_{field.lower()}" in {name.lower() for name in os.environ}:
        return "env"
    return "file" if field.lower() in file_keys else None


def get_settings(**overrides: Any) -> Settings:
    """Build the settings, turning validation problems into one readable RecsysError."""
    from pydantic import ValidationError

    try:
        return Settings(**overrides)
    except ValidationError as exc:
        errors = exc.errors()
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or 'settings'}: {_one_line(err['msg'])}"
            for err in errors
        )
        file_keys = _file_keys()  # read once, not once per bad field
        sources = {
            _where_from(str(err["loc"][0]), overrides, file_keys) for err in errors if err["loc"]
        }
        config_file = os.environ.get("RECSYS_CONFIG_FILE")
        if "file" in sources and "env" in sources:
            check = f"check RECSYS_* variables and RECSYS_CONFIG_FILE={config_file}"
        elif "file" in sources:
            check = f"check RECSYS_CONFIG_FILE={config_file}"
        else:
            check = "check RECSYS_* variables"
        raise RecsysError(f"invalid settings ({problems}); {check}") from None
