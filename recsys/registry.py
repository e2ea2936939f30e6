"""The MLflow registry: log a release as one model version, move aliases, load by alias.

Aliases: ``champion`` (serves most traffic), ``challenger`` (the canary), ``previous`` (the last
good champion). A model version carries the release folder as its artifact, the holdout metrics
and the metadata as tags, so the registry alone says what is served and why.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import re
import socket
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from recsys.config import Settings
from recsys.errors import RecsysError
from recsys.pausepoints import pause_point
from recsys.release import Release, UnreadableRelease

logger = logging.getLogger(__name__)

CHAMPION = "champion"
CHALLENGER = "challenger"
PREVIOUS = "previous"
_PYFUNC_FILE = Path(__file__).with_name("pyfunc_model.py")


@dataclass(frozen=True)
class RegisteredRelease:
    name: str
    version: str
    run_id: str
    model_uri: str


def configure_mlflow(settings: Settings) -> Any:
    """Point MLflow at this profile's tracking/registry store; returns an MlflowClient."""
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    # against an HTTP server MLflow prints "View run ... at: URL" at the end of every run: a
    # train with a search printed ~900 of them (and asked the server for each run once more)
    os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
    import mlflow
    from mlflow import MlflowClient

    if settings.profile == "local":
        settings.data_dir.mkdir(parents=True, exist_ok=True)
    if settings.tracking_uri.startswith("sqlite:///"):
        database = Path(settings.tracking_uri.removeprefix("sqlite:///"))
        check_writable(database.parent)
        check_not_lost(settings, database)
    check_reachable(settings.tracking_uri)
    mlflow.set_tracking_uri(settings.tracking_uri)
    mlflow.set_registry_uri(settings.tracking_uri)
    return MlflowClient(settings.tracking_uri, settings.tracking_uri)


_WRITABLE: set[Path] = set()


def check_writable(folder: Path) -> None:
    """Create and delete a file in the folder of a SQLite registry, once per process: MLflow
    opening a registry it cannot write retried for about 100 s before an OperationalError (a
    read-only or immutable data dir, where the permission bits say nothing to root).

    Raises:
        RecsysError: the folder cannot be written.
    """
    if folder in _WRITABLE:
        return
    try:
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".recsys-write-probe-"):
            pass
    except OSError as exc:
        raise RecsysError(
            f"cannot write in {folder} ({exc.strerror}): the model registry (mlflow.db) is "
            "kept there; RECSYS_DATA_DIR must be a folder this user can write"
        ) from None
    _WRITABLE.add(folder)


def check_not_lost(settings: Settings, database: Path) -> None:
    """Refuse to open a SQLite registry that is gone while the data dir says it held models (a
    promotion history): MLflow would create an empty one, and a lost registry would look like
    one where nothing was ever trained (the doctor advised a reload).

    Raises:
        RecsysError: ``database`` is missing and the promotion history is not.
    """
    from recsys.promotion import history_path

    if database.exists():
        return
    history = history_path(settings)
    if history.exists() and history.stat().st_size:
        raise RecsysError(
            f"the model registry {database} is missing, but {history} records the aliases it "
            "held: restore mlflow.db from a backup (to start a new registry instead, move that "
            "history and mlartifacts/ away)"
        )


def preflight(settings: Settings) -> None:
    """Say before any training what would fail when it registers: a SQLite registry's folder
    that cannot be written, a tracking server that does not answer. Creates nothing.

    Raises:
        RecsysError: as :func:`check_writable` or :func:`check_reachable`.
    """
    if settings.tracking_uri.startswith("sqlite:///"):
        database = Path(settings.tracking_uri.removeprefix("sqlite:///"))
        if database.parent.is_dir():
            check_writable(database.parent)
            check_not_lost(settings, database)
    else:
        check_reachable(settings.tracking_uri)


_ANSWERED: set[str] = set()
PROBES = (0.0, 1.0, 2.0)
"""Waits before each probe of a tracking server that has not answered yet (3 tries, ~3 s)."""


def check_reachable(uri: str, timeout_s: float = 5.0) -> None:
    """Ask an HTTP tracking server's ``/health`` until it answers (any status will do: it is
    up), once per process. Without this, MLflow's own client retries a server that is down 7
    times with exponential backoff: a command said nothing for about 4 minutes.

    Raises:
        RecsysError: nothing answered at ``uri`` after :data:`PROBES`.
    """
    if not uri.startswith(("http://", "https://")) or uri in _ANSWERED:
        return
    import httpx

    from recsys.config import mask_url

    problem = ""
    for wait in PROBES:
        time.sleep(wait)
        try:
            httpx.get(f"{uri.rstrip('/')}/health", timeout=timeout_s)
        except httpx.TransportError as exc:  # refused, unresolvable, timed out: nobody answered
            problem = f"{type(exc).__name__}: {exc}"
            continue
        _ANSWERED.add(uri)
        return
    raise RecsysError(
        f"the MLflow tracking server at {mask_url(uri)} does not answer ({problem}); start it "
        "or fix RECSYS_MLFLOW_TRACKING_URI"
    )


RUN_HOST_TAG = "recsys.host"
RUN_PID_TAG = "recsys.pid"
REAPED_TAG = "recsys.reaped"
STALE_RUN_S = 3600.0
"""A run still RUNNING this long after its start is dead wherever it ran: a registration run
lasts seconds (the model is trained before its run opens)."""


def _run_tags() -> dict[str, str]:
    """Who owns a run: what :func:`reap_dead_runs` checks."""
    return {RUN_HOST_TAG: socket.gethostname(), RUN_PID_TAG: str(os.getpid())}


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive
        return True
    return True


def reap_dead_runs(settings: Settings, experiment_id: str | None = None) -> list[str]:
    """Mark KILLED the registration runs a dead process left RUNNING (a SIGKILL mid-registration
    runs no cleanup, and MLflow would show them running forever): those of this host whose
    process is gone, and those of any host running longer than :data:`STALE_RUN_S`. Runs
    without the owner tags of :func:`_run_tags` are not ours and are left alone. The reason is
    tagged on each (``recsys.reaped``); returns their ids."""
    client = configure_mlflow(settings)
    experiment_id = experiment_id or _ensure_experiment(settings)
    host, now_ms = socket.gethostname(), time.time() * 1000
    reaped = []
    for run in client.search_runs(
        [experiment_id], filter_string="attributes.status = 'RUNNING'", max_results=1000
    ):
        tags = run.data.tags
        if RUN_HOST_TAG not in tags:
            continue  # not a run of ours (someone else's, in the same experiment)
        pid = tags.get(RUN_PID_TAG, "")
        if tags[RUN_HOST_TAG] == host and pid.isdigit() and not _alive(int(pid)):
            reason = f"its process {pid} on {host} is gone"
        elif now_ms - run.info.start_time > STALE_RUN_S * 1000:
            reason = f"still RUNNING {STALE_RUN_S / 3600:g} h after its start"
        else:
            continue
        client.set_tag(run.info.run_id, REAPED_TAG, reason)
        client.set_terminated(run.info.run_id, "KILLED")
        logger.warning("mlflow run %s marked KILLED: %s", run.info.run_id, reason)
        reaped.append(run.info.run_id)
    return reaped


def _ensure_experiment(settings: Settings) -> str:
    import mlflow

    experiment = mlflow.get_experiment_by_name(settings.experiment_name)
    if experiment is not None:
        return experiment.experiment_id
    return mlflow.create_experiment(
        settings.experiment_name, artifact_location=settings.artifact_location
    )


PYFUNC_PACKAGES = ("mlflow", "numpy", "pandas", "pyarrow", "scipy", "torch", "selfheal-recsys")


def pyfunc_requirements() -> list[str]:
    """What the pyfunc flavour imports, pinned to the installed versions. Given explicitly:
    MLflow's own inference loads the model in a subprocess and costs seconds per release
    (and misses torch, which the ranker imports lazily)."""
    from importlib import metadata

    pins = []
    for name in PYFUNC_PACKAGES:
        try:
            pins.append(f"{name}=={metadata.version(name)}")
        except metadata.PackageNotFoundError:
            pins.append(name)
    return pins


def _flat_metrics(metrics: dict[str, dict[str, float]], k: int) -> dict[str, float]:
    return {
        f"{model}_{name}_at_{k}"
        if name not in {"coverage", "novelty", "users", "ndcg_se"}
        else f"{model}_{name}": float(value)
        for model, values in metrics.items()
        for name, value in values.items()
    }


def _flat_params(payload: dict, prefix: str = "") -> dict[str, str]:
    out: dict[str, str] = {}
    for key, value in payload.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(_flat_params(value, f"{name}."))
        else:
            out[name] = str(value)
    return out


def log_release(
    settings: Settings,
    release: Release,
    metrics: dict[str, dict[str, float]],
    *,
    aliases: tuple[str, ...] = (),
    tags: dict[str, str] | None = None,
    trials: list[dict] | None = None,
    ranker_history: list[dict] | None = None,
) -> RegisteredRelease:
    """Log ``release`` in a new run, register it as a version of ``settings.model_name``.

    The release folder becomes the model's artifact; pipeline params, holdout metrics of every
    model, the ranker's learning curve and each search trial (as a nested run) are logged;
    metadata and ``tags`` are tagged on the version as it is created. ``aliases`` are pointed
    at the new version (the gate moves them through ``recsys.promotion`` instead).
    """
    import mlflow

    client = configure_mlflow(settings)
    experiment_id = _ensure_experiment(settings)
    try:
        reap_dead_runs(settings, experiment_id)
    except Exception as exc:  # housekeeping (a run of a user we may not edit): never blocking
        logger.warning("could not mark dead mlflow runs KILLED: %s", exc)
    meta = release.meta
    k = int(meta.get("k", 10))
    with tempfile.TemporaryDirectory(prefix="release-") as tmp:
        folder = release.save(Path(tmp) / "release")
        with mlflow.start_run(
            experiment_id=experiment_id, run_name="train", tags=_run_tags()
        ) as run:
            mlflow.log_params(_flat_params(release.params.as_dict()))
            mlflow.log_params(
                {
                    "window_start": meta["training_window"]["start"],
                    "window_end": meta["training_window"]["end"],
                    "holdout_start": meta["training_window"]["holdout_start"],
                    "data_fingerprint": meta["data_fingerprint"],
                    "n_users": release.n_users,
                    "n_items": release.n_items,
                }
            )
            mlflow.log_metrics(_flat_metrics(metrics, k))
            for record in ranker_history or []:
                member = int(record.get("member", 0))
                mlflow.log_metrics(
                    {
                        f"ranker{member}_{n}": float(v)
                        for n, v in record.items()
                        if n not in {"epoch", "member"}
                    },
                    step=int(record["epoch"]),
                )
            for trial in trials or []:
                with mlflow.start_run(
                    experiment_id=experiment_id,
                    run_name=f"search-trial-{trial['trial']}",
                    nested=True,
                    tags=_run_tags(),
                ):
                    mlflow.log_params(
                        _flat_params({n: v for n, v in trial.items() if isinstance(v, dict)})
                    )
                    mlflow.log_metrics(
                        {
                            f"val_{n.removesuffix('_ndcg')}_ndcg_at_{k}": float(v)
                            for n, v in trial.items()
                            if n.endswith("_ndcg")
                        }
                        | {"seconds": float(trial["seconds"])}
                    )
            pause_point("registry.in_run")
            window = meta["training_window"]
            version_tags = {
                "data_fingerprint": meta["data_fingerprint"],
                "training_window": f"{window['start']}..{window['end']}",
                "holdout_start": window["holdout_start"],
                **{f"{model}_ndcg_at_k": f"{m['ndcg']:.6f}" for model, m in metrics.items()},
                **({"holdout_k": str(meta["k"])} if meta.get("k") is not None else {}),
                **(tags or {}),
            }
            chatter = io.StringIO()  # MLflow prints registration notices straight to stderr
            with contextlib.redirect_stderr(chatter):
                # The version is created with its tags in one registry write: a process killed
                # right after never leaves a version without its gate verdict.
                info = mlflow.pyfunc.log_model(
                    name="recommender",
                    python_model=str(_PYFUNC_FILE),
                    artifacts={"release": str(folder)},
                    registered_model_name=settings.model_name,
                    metadata={"data_fingerprint": meta["data_fingerprint"]},
                    signature=_signature(),
                    input_example=_input_example(release),
                    pip_requirements=pyfunc_requirements(),
                    tags=version_tags,
                )
            logger.info("mlflow: %s", chatter.getvalue().strip())
    version = str(info.registered_model_version)
    pause_point("registry.after_version")
    for alias in aliases:
        client.set_registered_model_alias(settings.model_name, alias, version)
    return RegisteredRelease(settings.model_name, version, run.info.run_id, info.model_uri)


def _input_example(release: Release):
    import pandas as pd

    user = int(release.user_ids[0]) if release.n_users else 0
    return pd.DataFrame({"user_id": [user], "k": [3]})


def _signature():
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, ParamSchema, ParamSpec, Schema

    return ModelSignature(
        inputs=Schema([ColSpec("long", "user_id"), ColSpec("long", "k", required=False)]),
        # the k of rows without one; undeclared params are dropped by MLflow with a warning
        params=ParamSchema([ParamSpec("k", "long", 10)]),
        outputs=Schema(
            [
                ColSpec("long", "user_id"),
                ColSpec("long", "rank"),
                ColSpec("long", "item_id"),
                ColSpec("double", "score"),
                ColSpec("string", "fallback"),
            ]
        ),
    )


_REFUSED = {"UNAUTHENTICATED", "CUSTOMER_UNAUTHORIZED", "PERMISSION_DENIED"}


_NOT_FOUND = frozenset({"RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"})
"""MLflow's error codes for a registered model that does not exist or an alias not set."""


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [""])[0][:200]


def raise_if_refused(settings: Settings, exc: Exception) -> None:
    """Raise one readable line when the registry refused the caller (HTTP 401/403): a lookup
    that catches MLflow's errors as "not found" would otherwise read missing credentials as
    "no champion" (and act on it).

    Raises:
        RecsysError: ``exc`` is MLflow's answer to a request without (or with wrong or too
            weak) credentials.
    """
    refused = registry_refusal(exc, settings.tracking_uri)
    if refused is not None:
        raise refused from None


def registry_refusal(exc: BaseException, uri: str) -> RecsysError | None:
    """The one-line error for MLflow's answer to a request without (or with wrong) credentials,
    or None when ``exc`` is something else."""
    from recsys.config import mask_url

    code = getattr(exc, "error_code", None)
    if code not in _REFUSED:
        return None
    return RecsysError(
        f"the MLflow registry at {mask_url(uri)} refused the request ({code}): set "
        "MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD to a user that may read and "
        "write the model"
    )


def version_for_alias(settings: Settings, alias: str) -> str | None:
    """The version number ``alias`` points at, or None when it is unset.

    Raises:
        RecsysError: the registry refused the request (see :func:`raise_if_refused`).
    """
    from mlflow.exceptions import MlflowException

    from recsys.config import mask_url

    client = configure_mlflow(settings)
    try:
        return str(client.get_model_version_by_alias(settings.model_name, alias).version)
    except MlflowException as exc:
        raise_if_refused(settings, exc)
        if exc.error_code in _NOT_FOUND:  # no such model, or the alias is not set
            return None
        # anything else (a corrupt mlflow.db: "file is not a database") is no answer: read as
        # "unset", a serving service dropped its challenger and ended the canary unseen
        raise RecsysError(
            f"the model registry at {mask_url(settings.tracking_uri)} cannot be read "
            f"({exc.error_code}: {_first_line(exc)}); restore it from a backup"
        ) from None


def resolve_version(settings: Settings, alias: str) -> str:
    """The version number ``alias`` names: an alias (``champion``) or a version number (``3``
    or ``v3``; MLflow reserves ``v<number>`` for versions, so no alias reads as one).

    Raises:
        RecsysError: no version has that alias, or no such version exists.
    """
    number = re.fullmatch(r"[vV]?([0-9]+)", alias.strip())
    if number is None:
        version = version_for_alias(settings, alias)
        if version is None:
            raise RecsysError(
                f"no model version has alias {alias!r} in {settings.model_name!r} at "
                f"{settings.tracking_uri}; {_aliases_hint(settings)}"
            )
        return version
    from mlflow.exceptions import MlflowException

    client = configure_mlflow(settings)
    version = str(int(number.group(1)))
    try:
        client.get_model_version(settings.model_name, version)
    except MlflowException as exc:
        raise_if_refused(settings, exc)
        try:
            found = client.search_model_versions(f"name = '{settings.model_name}'")
        except MlflowException:
            found = []
        latest = max((int(v.version) for v in found), default=None)
        have = f"the latest is version {latest}" if latest else "run `recsys train` first"
        raise RecsysError(
            f"model version {version} of {settings.model_name!r} does not exist at "
            f"{settings.tracking_uri}; {have}"
        ) from None
    return version


def _aliases_hint(settings: Settings) -> str:
    """What a user asking for an unset alias can ask for instead."""
    from mlflow.exceptions import MlflowException

    try:
        model = configure_mlflow(settings).get_registered_model(settings.model_name)
    except MlflowException:
        return "run `recsys train` first"
    set_now = ", ".join(f"{a} (v{v})" for a, v in sorted((model.aliases or {}).items()))
    if set_now:
        return f"the aliases set now are {set_now}"
    return "no version has any alias yet (`recsys status` lists them; `recsys train` adds one)"


def download_release(settings: Settings, alias: str, dest: Path) -> tuple[str, Path]:
    """Download the release behind ``alias`` (or a version number, see :func:`resolve_version`)
    into ``dest``; returns (version, release folder).

    Raises:
        RecsysError: no model, no such alias or no such version in the registry.
        UnreadableRelease: the version's artifacts hold no release folder.
    """
    version = resolve_version(settings, alias)
    return version, download_version(settings, version, dest)


def download_version(settings: Settings, version: str, dest: Path) -> Path:
    """Download model ``version`` into ``dest``; returns its release folder.

    Raises:
        UnreadableRelease: the version's artifacts hold no release folder.
    """
    import mlflow

    configure_mlflow(settings)
    uri = f"models:/{settings.model_name}/{version}"
    local = Path(mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=str(dest)))
    candidates = [p.parent for p in local.rglob("release.json")]
    if not candidates:
        if not any(p.is_file() for p in local.rglob("*")):  # MLflow downloads "nothing" quietly
            raise UnreadableRelease(
                f"model version {version} has no artifacts left in the artifact store (deleted "
                "or moved); register it again from its training run"
            )
        raise UnreadableRelease(f"model version {version} has no release folder; it is not ours")
    return candidates[0]


def unreadable_reason(settings: Settings, version: str) -> str | None:
    """Why the release of model ``version`` cannot be loaded, read afresh from the registry
    (None: it loads). Only a broken version gives a reason; an error reaching the registry or
    its artifact store raises, as it says nothing about the version."""
    with tempfile.TemporaryDirectory(prefix=f"recsys-check-{version}-") as folder:
        try:
            Release.load(download_version(settings, version, Path(folder)))
        except UnreadableRelease as exc:  # named by its registry address, not the gone copy
            return str(exc).replace(folder, f"models:/{settings.model_name}/{version}")
    return None


def load_release(settings: Settings, alias: str = CHAMPION) -> tuple[str, Release]:
    """(version, Release) behind ``alias`` (or a version number), read without pickle. The
    download is removed once read: a release holds its arrays in memory."""
    with tempfile.TemporaryDirectory(prefix="recsys-release-") as dest:
        version, folder = download_release(settings, alias, Path(dest))
        return version, Release.load(folder)
