"""Terminal output shared by the CLI and the demo: one rich console, tables, quiet libraries."""

from __future__ import annotations

import logging
import math
import os
import sys
import warnings
from collections.abc import Iterable, Sequence
from typing import Any

import typer
from rich.console import Console
from rich.table import Table

# Piped output (CI logs, files) gets a wide console so tables are not cut to 80 columns.
_WIDTH = None if sys.stdout.isatty() or os.environ.get("COLUMNS") else 140
console = Console(stderr=False, highlight=False, width=_WIDTH)
err_console = Console(stderr=True, highlight=False, soft_wrap=True)

_NOISY = ("mlflow", "alembic", "urllib3", "httpx", "bentoml", "implicit", "numexpr", "py.warnings")


LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class _TerminalFormatter(logging.Formatter):
    """Log lines for the terminal. A user error (RecsysError) that a library logs on its way
    out (Prefect logs a failed flow's exception) is shown without its traceback unless
    ``tracebacks``: the CLI ends with its one-line message. Other exceptions keep theirs; other
    handlers (Prefect's API log) format the record themselves."""

    def __init__(self, fmt: str, *, tracebacks: bool) -> None:
        super().__init__(fmt)
        self.tracebacks = tracebacks

    def format(self, record: logging.LogRecord) -> str:
        from recsys.errors import RecsysError

        if self.tracebacks or not (record.exc_info and isinstance(record.exc_info[1], RecsysError)):
            return super().format(record)
        # the record is shared: a handler that ran first may have cached its traceback text
        kept = record.exc_info, record.exc_text
        record.exc_info, record.exc_text = None, None
        try:
            return super().format(record)
        finally:
            record.exc_info, record.exc_text = kept


def quiet_libraries(verbose: bool = False) -> None:
    """Keep third-party INFO chatter and telemetry out of the user's terminal."""
    for key, value in {
        "MLFLOW_DISABLE_TELEMETRY": "true",
        "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
        "MLFLOW_LOGGING_LEVEL": "INFO" if verbose else "ERROR",
        "BENTOML_DO_NOT_TRACK": "true",
        "DO_NOT_TRACK": "true",
        "FEAST_USAGE": "False",
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "OPENBLAS_NUM_THREADS": "1",
    }.items():
        os.environ.setdefault(key, value)
    root = logging.getLogger()
    if not root.handlers:  # as logging.basicConfig: a host that configured logging keeps it
        handler = logging.StreamHandler()
        handler.setFormatter(_TerminalFormatter(LOG_FORMAT, tracebacks=verbose))
        root.addHandler(handler)
        root.setLevel(logging.INFO if verbose else logging.WARNING)
    for name in _NOISY:
        logging.getLogger(name).setLevel(logging.INFO if verbose else logging.ERROR)
    if not verbose:
        warnings.filterwarnings("ignore")
        # libraries that re-add filters of their own (in task threads) still print nothing
        warnings.showwarning = lambda *args, **kwargs: None
        # and in the processes we start (the BentoML service, Prefect's ephemeral API server)
        os.environ.setdefault("PYTHONWARNINGS", "ignore")


def clip(text: object, width: int = 70) -> str:
    """``text`` for a table cell: at most ``width`` characters, ending in "…" where cut."""
    text = str(text) if text is not None else "-"
    return text if len(text) <= width else text[: width - 1] + "…"


def table(
    title: str, columns: Sequence[str], rows: Iterable[Sequence[Any]], *, numeric: int = 4
) -> Table:
    """A rich table; floats are shown with ``numeric`` decimals."""
    out = Table(title=title, title_justify="left")
    for name in columns:
        out.add_column(str(name))
    for row in rows:
        out.add_row(*(f"{v:.{numeric}f}" if isinstance(v, float) else str(v) for v in row))
    return out


def quarantine_table(reasons: dict[str, int], schema_errors: Sequence[str] = ()) -> Table:
    """Why rows were quarantined: each reason code, in words, with its row count (a row may
    carry several reasons); a changed schema first, since it rejects the whole batch."""
    from recsys.contract import describe_reason

    rows = [[code, describe_reason(code), "whole batch"] for code in schema_errors]
    rows += [
        [code, describe_reason(code), count]
        for code, count in sorted(reasons.items(), key=lambda kv: (-kv[1], kv[0]))
        if code not in schema_errors
    ]
    return table("Quarantined", ["reason", "meaning", "rows"], rows)


def ingest_table(reports: Sequence[Any]) -> Table:
    """Totals of a list of IngestReport: batches, raw, clean and quarantined rows."""
    raw = sum(r.raw_rows for r in reports)
    clean = sum(r.clean_rows for r in reports)
    quarantined = sum(r.quarantined_rows for r in reports)
    return table(
        "Ingest",
        ["batches", "raw rows", "clean rows", "quarantined rows"],
        [[len(reports), raw, clean, quarantined]],
    )


def _finite(value: float | None) -> float | None:
    if value is not None and not math.isfinite(value):
        raise typer.BadParameter(f"{value} is not a finite number")
    return value


def float_option(**kwargs: Any) -> Any:
    """``typer.Option`` of a float option: refuses inf and nan, which bounds let through (inf
    passes a minimum; without bounds nan passes too) and which no command can use."""
    return typer.Option(callback=_finite, **kwargs)


def _service_url(value: str | None) -> str | None:
    from urllib.parse import urlparse

    if value is not None:
        parsed = urlparse(value)
        if parsed.scheme not in ("http", "https") or not parsed.hostname:
            raise typer.BadParameter(f"{value!r} is not a service URL: use http://HOST:PORT")
    return value


def url_option() -> Any:
    """``--url`` of a command that talks to the service: refused before anything runs unless it
    is an http(s) URL with a host (``--url notaurl`` failed late, as "the service is not
    ready", or after a rollback had already moved the champion)."""
    return typer.Option(
        "--url", callback=_service_url, help="Service URL (default http://SERVE_HOST:SERVE_PORT)."
    )
