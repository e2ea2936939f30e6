"""Ingestion: raw batch -> contract check -> clean lake, rejected rows -> quarantine (+ reason).

Nothing is dropped: for every delivery, raw rows = clean rows + quarantined rows (exact
duplicates are quarantined with reason ``duplicate``, so they are counted too). Re-ingesting a
batch replaces its clean copy with the rows of its newest delivery and that delivery's
quarantine whole, so running it twice changes nothing; an older delivery keeps its quarantine.
Rows another batch quarantined as ``duplicate:<batch>`` are checked again when a new delivery
of ``<batch>`` no longer holds them, so they reach the clean zone there.

A delivered file refused whole is kept, byte for byte and numbered, in ``quarantine/<batch>/``
with the reason: one that cannot be read (``unreadable``), or whose batch day cannot be the
delivery day of its rows (``batch_day``: before the day of its earliest event, give or take
:data:`BATCH_DAY_TOLERANCE`, or after today by more than that).
"""

from __future__ import annotations

import io
import json
import logging
import re
import statistics
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pandas as pd
from tqdm.auto import tqdm

from recsys.console import clip
from recsys.contract import (
    EARLIEST_TIMESTAMP,
    FUTURE_TOLERANCE,
    INTERACTIONS_SCHEMA,
    ITEMS_SCHEMA,
    USERS_SCHEMA,
    conform,
    row_keys,
    to_utc,
    validate_interactions,
)
from recsys.errors import RecsysError
from recsys.lake import Lake, batch_of, check_batch_day
from recsys.movielens import Dataset

logger = logging.getLogger(__name__)

BATCH_DAY_TOLERANCE = timedelta(days=1)
"""How far a batch day may precede its earliest event's UTC day (or follow today's): clocks and
time zones of a producer."""


@dataclass
class IngestReport:
    """What happened to one batch."""

    batch: str
    raw_rows: int
    clean_rows: int
    quarantined_rows: int
    reasons: dict[str, int] = field(default_factory=dict)
    schema_errors: list[str] = field(default_factory=list)
    delivery: str | None = None
    rechecked: list[str] = field(default_factory=list)
    damaged: str | None = None  # the raw delivery could not be read: nothing was changed

    @property
    def accepted_all(self) -> bool:
        return self.quarantined_rows == 0

    def as_dict(self) -> dict:
        return asdict(self)


def land_dataset(lake: Lake, dataset: Dataset) -> list[str]:
    """Write a contract-shaped data set into the raw zone: the catalog and one batch per UTC day.

    Returns the batch names (``YYYY-MM-DD``), oldest first. Landing the same data again is a
    no-op; landing different data over an existing batch raises RecsysError (raw is immutable).
    """
    lake.init()
    lake.write_raw(lake.raw_catalog_path("items"), conform(dataset.items, ITEMS_SCHEMA))
    lake.write_raw(lake.raw_catalog_path("users"), conform(dataset.users, USERS_SCHEMA))
    frame = dataset.interactions.sort_values("timestamp", kind="stable")
    days = frame["timestamp"].dt.strftime("%Y-%m-%d")
    batches = []
    for day, rows in frame.groupby(days, sort=True):
        lake.write_raw(lake.raw_batch_path(str(day)), conform(rows, INTERACTIONS_SCHEMA))
        batches.append(str(day))
    return batches


def ingest_catalog(lake: Lake) -> tuple[int, int]:
    """Write the clean item and user catalogs from the raw zone (the landed data set's, then
    every delivered item catalog in order: :func:`recsys.catalog.rebuild_catalog`). Returns
    (items, users) counts."""
    from recsys.catalog import rebuild_catalog

    rebuild_catalog(lake)
    return len(lake.read_clean_catalog("items")), len(lake.read_clean_catalog("users"))


def ingest_batch(
    lake: Lake,
    batch: str,
    *,
    known_items: set[int] | None = None,
    now: datetime | None = None,
    frame: pd.DataFrame | None = None,
) -> IngestReport:
    """Contract-check the newest delivery of raw ``batch`` (or ``frame``) into the clean zone
    and the quarantine of that delivery.

    When the batch's clean rows lose rows it held before (a redelivery without them), every
    other batch that quarantined rows as ``duplicate:<batch>`` is checked again, so those rows
    are accepted there instead of lost (and so on, should that one lose rows); the report's
    ``rechecked`` names those batches."""
    report, lost = _check_delivery(lake, batch, known_items, now, frame)
    pending = _quarantined_as_duplicates_of(lake, batch) if lost else []
    seen = {batch}
    while pending:
        other = pending.pop(0)
        if other in seen:
            continue
        seen.add(other)
        _, lost = _check_delivery(lake, other, known_items, now, None)
        report.rechecked.append(other)
        if lost:
            pending += _quarantined_as_duplicates_of(lake, other)
    return report


def _check_delivery(
    lake: Lake,
    batch: str,
    known_items: set[int] | None,
    now: datetime | None,
    frame: pd.DataFrame | None,
) -> tuple[IngestReport, bool]:
    """:func:`ingest_batch` of one batch: (its report, whether its clean copy lost rows)."""
    import pyarrow as pa

    delivery = lake.deliveries(batch)[-1] if frame is None else batch
    try:
        raw = lake.read_raw_delivery(delivery) if frame is None else frame
    except (pa.ArrowException, OSError) as exc:
        raise DamagedRaw(lake.delivery_path(delivery), exc) from None
    result = validate_interactions(
        raw,
        known_items=known_items,
        now=now or datetime.now(UTC),
        elsewhere=accepted_elsewhere(lake, batch, raw, now=now),
    )
    before = _row_keys_of_clean(lake, batch)
    lake.write_clean_batch(batch, result.clean)
    counts = result.reason_counts()
    lake.quarantine_batch(delivery, result.rejected, counts, raw_rows=len(raw), delivery_of=batch)
    lost = before is not None and not before.isin(row_keys(result.clean)).all()
    report = IngestReport(
        batch=batch,
        raw_rows=len(raw),
        clean_rows=len(result.clean),
        quarantined_rows=len(result.rejected),
        reasons=counts,
        schema_errors=result.schema_errors,
        delivery=delivery,
    )
    return report, lost


def _said(exc: BaseException) -> str:
    """``exc`` as one line: its type and message, whitespace collapsed."""
    return " ".join(f"{type(exc).__name__}: {exc}".split())


class DamagedRaw(RecsysError):
    """The raw zone's copy of a delivery cannot be read: the lake's record of what was
    delivered, which nothing can rebuild."""

    def __init__(self, path: Path, exc: BaseException) -> None:
        said = _said(exc)
        super().__init__(
            f"the raw delivery {path} cannot be read ({clip(said, 160)}): it is the lake's "
            "record of that delivery and nothing can rebuild it; its clean rows are left as "
            "they were: restore the file from a backup, or deliver the day again (`recsys "
            "ingest FILE --batch DAY`)"
        )


def _row_keys_of_clean(lake: Lake, batch: str) -> pd.Series | None:
    """Row keys of the clean rows of ``batch``; None when it has no clean copy yet."""
    if not lake.clean_batch_path(batch).exists():
        return None
    return row_keys(lake.read_clean_interactions([batch]))


def _quarantined_as_duplicates_of(lake: Lake, batch: str) -> list[str]:
    """The other batches whose newest delivery quarantined rows as ``duplicate:<batch>``."""
    return [b for b in batches_quarantining(lake, f"duplicate:{batch}") if b != batch]


def batches_quarantining(lake: Lake, reason: str) -> list[str]:
    """The batches whose newest delivery quarantined rows as ``reason``."""
    found = []
    for batch in lake.raw_batches():
        report = lake.quarantine_dir(lake.deliveries(batch)[-1]) / "report.json"
        if report.exists() and reason in json.loads(report.read_text()).get("reasons", {}):
            found.append(batch)
    return found


def accepted_elsewhere(
    lake: Lake, batch: str, raw: pd.DataFrame, *, now: datetime | None = None
) -> pd.DataFrame | None:
    """The clean rows, with their ``batch``, of the other batches that hold events in the time
    span of ``raw``'s: where an event delivered again as another day already is (the contract
    quarantines such a row as ``duplicate:<batch>``). None when there is none to compare.

    Every other batch is asked, whatever its day: a file delivered late under a later day and
    then again under its own day is the same events twice either way round. Each batch's
    row-group statistics keep the reads to the batches whose events overlap that span.

    Only events the contract can accept at ``now`` (default: the wall clock) count: one out of
    its range (the year 3000) is quarantined anyway, and cannot repeat an accepted one."""
    if "timestamp" not in raw:
        return None
    when = to_utc(raw["timestamp"]).dropna()
    latest = (now or datetime.now(UTC)) + FUTURE_TOLERANCE
    when = when[(when >= EARLIEST_TIMESTAMP) & (when <= latest)]
    if when.empty:
        return None
    start, end = when.min(), when.max()
    frames = []
    for other in lake.clean_batches():
        if other == batch:
            continue
        rows = lake.read_clean_between(other, start, end)
        if rows is not None and len(rows):
            frames.append(rows.assign(batch=other))
    return pd.concat(frames, ignore_index=True) if frames else None


def known_items(lake: Lake) -> set[int]:
    """Item ids of the clean catalog (the contract's ``unknown_item`` check)."""
    return set(lake.read_clean_catalog("items")["item_id"].tolist())


def reingest_window(lake: Lake, batches: list[str]) -> list[IngestReport]:
    """Re-ingest ``batches`` from the raw zone (each from its newest delivery). Idempotent."""
    known = known_items(lake)
    return [ingest_batch(lake, batch_of(name), known_items=known) for name in batches]


@dataclass
class RowCountCheck:
    """Clean rows of a batch against the median of the trailing batches."""

    batch: str
    clean_rows: int
    baseline_rows: float | None
    ratio: float | None
    anomalous: bool
    rule: str

    def as_dict(self) -> dict:
        return asdict(self)


def row_count_check(
    lake: Lake, batch: str, *, trailing: int = 7, low: float = 0.5, high: float = 2.0
) -> RowCountCheck:
    """Flag ``batch`` when its clean rows fall outside ``[low, high]`` x the median clean rows
    of up to ``trailing`` earlier batches that have clean rows (needs at least 3 of them), or
    when it has no clean row at all (always: an empty delivery needs no history to be suspect).

    Batches without clean rows (refused whole, or empty) are no baseline: they were flagged
    themselves, and counting them as 0 would make the next healthy batch look anomalous."""
    rows = _clean_rows(lake, batch)
    earlier: list[int] = []
    for name in reversed([n for n in lake.clean_batches() if n < batch]):
        count = _clean_rows(lake, name)
        if count:
            earlier.append(count)
            if len(earlier) == trailing:
                break
    rule = (
        f"clean rows outside [{low:g}, {high:g}] x median of the {len(earlier)} previous "
        f"batches with clean rows (up to {trailing})"
    )
    if len(earlier) < 3:
        if rows == 0:
            return RowCountCheck(batch, 0, None, None, True, "no clean rows in the batch")
        return RowCountCheck(batch, rows, None, None, False, rule + " (too few batches yet)")
    baseline = float(statistics.median(earlier))
    ratio = rows / baseline
    return RowCountCheck(batch, rows, baseline, ratio, not low <= ratio <= high, rule)


def _clean_rows(lake: Lake, batch: str) -> int:
    import pyarrow.parquet as pq

    path = lake.clean_batch_path(batch)
    return pq.read_metadata(path).num_rows if path.exists() else 0


_READERS = {".parquet": "parquet", ".csv": "csv", ".tsv": "tsv", ".data": "udata"}
_COMPRESSIONS = {".gz": "gzip"}
_UTF16_BOMS = (b"\xff\xfe", b"\xfe\xff")
_RAGGED = re.compile(r"Expected (\d+) fields in line (\d+), saw (\d+)")


def read_batch_file(path: Path, *, empty: pd.DataFrame | None = None) -> pd.DataFrame:
    """Read a delivered batch as it is (no type coercion: the contract judges the values).

    Parquet, CSV and TSV with a header (UTF-8, or UTF-16 with its byte-order mark; CSV and TSV
    also gzip-compressed, ``.csv.gz``), or the GroupLens ``u.data`` layout (user, item, rating,
    unix time; tab separated, no header). A file of 0 bytes is ``empty`` when given (a producer's
    "nothing today"), else refused.

    Raises:
        RecsysError: the file is missing, of an unknown kind, or cannot be parsed; one line that
            says why (a duplicate column, the line of a byte that is not UTF-8, the line whose
            fields the header does not have).
    """
    path = Path(path)
    if not path.is_file():
        raise RecsysError(f"no such file: {path}")
    suffixes = [s.lower() for s in path.suffixes]
    compression = _COMPRESSIONS.get(suffixes[-1]) if suffixes else None
    if compression is not None:
        suffixes = suffixes[:-1]
    kind = _READERS.get(suffixes[-1]) if suffixes else None
    if kind is None or (compression is not None and kind not in ("csv", "tsv")):
        raise RecsysError(
            f"cannot read {path.name}: use .parquet, .csv, .tsv (.csv.gz and .tsv.gz too) or a "
            "GroupLens u.data file"
        )
    if path.stat().st_size == 0:
        if empty is not None:
            return empty
        raise RecsysError(f"cannot read {path.name}: the file is empty (0 bytes)")
    try:
        if kind == "parquet":
            import pyarrow.parquet as pq

            _refuse_duplicate_columns(pq.read_schema(path).names)
            return pq.read_table(path).to_pandas()
        if kind == "udata":
            from recsys.movielens import read_udata

            return read_udata(path)
        return _read_delimited(path, "\t" if kind == "tsv" else ",", compression)
    except RecsysError as exc:
        raise RecsysError(f"cannot read {path.name}: {exc}") from None
    except Exception as exc:  # any parse failure is the producer's problem, said in one line
        said = _said(exc)
        ragged = _RAGGED.search(said)
        if ragged is not None:
            want, line, saw = ragged.groups()
            said = (
                f"line {line} has {saw} fields where the header has {want} (a separator inside "
                "an unquoted value?): the file is refused whole"
            )
        raise RecsysError(f"cannot read {path.name}: {clip(said, 300)}") from None


def _read_delimited(path: Path, sep: str, compression: str | None) -> pd.DataFrame:
    """A CSV or TSV file as text columns, after checking its encoding and its header."""
    import csv
    import gzip

    opener = gzip.open if compression == "gzip" else open
    with opener(path, "rb") as handle:
        data = handle.read()
    utf16 = data.startswith(_UTF16_BOMS)
    try:  # a byte-order mark is no part of the first column's name
        text = data.decode("utf-16" if utf16 else "utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise RecsysError(
            f"not {'UTF-16' if utf16 else 'UTF-8'} text: byte 0x{data[exc.start]:02x} on line "
            f"{line}; save the file as UTF-8 (a latin-1 or Windows-1252 export is not read: "
            "which characters its bytes mean would be a guess)"
        ) from None
    header = next(csv.reader(io.StringIO(text), delimiter=sep), [])
    _refuse_duplicate_columns([name.strip() for name in header])
    return pd.read_csv(io.StringIO(text), sep=sep, dtype=str)


def _refuse_duplicate_columns(names: list[str]) -> None:
    seen: set[str] = set()
    twice = sorted({name for name in names if name in seen or seen.add(name)})
    if twice:
        raise RecsysError(
            f"duplicate column {', '.join(twice)}: which of the two holds the values cannot be told"
        )


def quarantine_unreadable(lake: Lake, batch: str, path: Path, reason: str) -> Path:
    """Keep an unreadable delivery byte for byte, with the reason, in the quarantine (as
    ``quarantine/<batch>/unreadable-<n>.*``: every one, numbered); returns the kept file."""
    return lake.keep_refused_delivery(batch, Path(path), "unreadable", reason)


def check_batch_day_of_rows(batch: str, frame: pd.DataFrame, *, now: datetime | None = None):
    """Refuse a batch day that cannot be the delivery day of ``frame``'s rows: a day before the
    UTC day of its earliest event, or after today (``now``, default the wall clock), by more
    than :data:`BATCH_DAY_TOLERANCE`. Events the contract rejects anyway (no date, before 1990,
    in the future) do not count; with none left, only today bounds the day.

    Raises:
        RecsysError: saying which day the rows suggest.
    """
    day = datetime.fromisoformat(batch).replace(tzinfo=UTC)
    now = now or datetime.now(UTC)
    latest = (now + BATCH_DAY_TOLERANCE).date()
    if day.date() > latest:
        raise RecsysError(
            f"batch day {batch} is after today ({now:%Y-%m-%d}, UTC): a batch is the day it "
            "delivers; pass --batch YYYY-MM-DD with the day of its rows"
        )
    if "timestamp" not in frame:
        return
    when = to_utc(frame["timestamp"]).dropna()
    when = when[(when >= EARLIEST_TIMESTAMP) & (when <= now + FUTURE_TOLERANCE)]
    if when.empty:
        return
    first = when.min().floor("D")
    if day < first - BATCH_DAY_TOLERANCE:
        raise RecsysError(
            f"batch day {batch} is before every row it delivers (the earliest is of "
            f"{first:%Y-%m-%d}): pass --batch YYYY-MM-DD with the day of its rows"
        )


def require_catalog(lake: Lake) -> None:
    """Raise unless an item catalog is in the lake (clean, or raw ready to ingest): a batch's
    items are checked against it, so nothing is landed before one is there."""
    raw = lake.raw_catalog_path("items").exists() or bool(lake.catalog_deliveries())
    if not raw and not lake.clean_catalog_path("items").exists():
        raise RecsysError(
            f"no item catalog in {lake.root} yet (a batch's items are checked against it): "
            "deliver yours with `recsys data catalog FILE` (item_id, category or genres; "
            "title, created_at optional), or land a data set with `recsys data generate` or "
            "`recsys data movielens --data-path DIR`; then ingest the file again"
        )


def delivery_batch(path: Path, batch: str | None = None) -> str:
    """The batch a delivered file lands as: ``batch``, else the file name's stem; it must be a
    delivery day ``YYYY-MM-DD``.

    Raises:
        RecsysError: ``path`` is not a file, or the name is not a day.
    """
    path = Path(path)
    if path.is_dir():
        raise RecsysError(f"{path} is a folder: pass one batch file")
    if not path.is_file():
        raise RecsysError(f"no such file: {path}")
    try:
        return check_batch_day(path.name.split(".")[0] if batch is None else batch)
    except RecsysError as exc:
        where = "--batch" if batch is not None else f"the file name {path.name}"
        raise RecsysError(
            f"{exc} ({where}): batches are days; pass --batch YYYY-MM-DD, the day it delivers"
        ) from None


def land_file(lake: Lake, path: Path, batch: str | None = None) -> tuple[str, bool]:
    """Land a delivered batch file in the raw zone; returns the batch name, its delivery day
    ``YYYY-MM-DD`` (default: the file name's stem), and whether anything landed: a second,
    different delivery of the same batch lands as a redelivery, whose rows replace the batch's
    at ingest; the same rows as the batch's newest delivery land nothing.

    Raises:
        RecsysError: no such file, a batch name that is not a day, a file that cannot be
            read or a batch day that is not its rows' (:func:`check_batch_day_of_rows`; such a
            file is kept in the quarantine with the reason before the error is raised), or no
            item catalog in the lake (nothing is landed then).
    """
    import pyarrow as pa

    path = Path(path)
    name = delivery_batch(path, batch)
    try:
        frame = read_batch_file(path, empty=INTERACTIONS_SCHEMA.empty_table().to_pandas())
        table = pa.Table.from_pandas(frame, preserve_index=False)
    except (RecsysError, pa.ArrowException) as exc:
        kept = quarantine_unreadable(lake, name, path, str(exc))
        raise RecsysError(f"{exc} (kept as {kept})") from None
    try:
        check_batch_day_of_rows(name, frame)
    except RecsysError as exc:
        kept = lake.keep_refused_delivery(name, path, "batch_day", str(exc))
        raise RecsysError(f"{exc} (kept as {kept})") from None
    require_catalog(lake)  # before the raw zone: a landed batch could not be ingested
    lake.init()
    if lake.raw_batch_path(name).exists():
        known = len(lake.deliveries(name))
        return batch_of(lake.land_redelivery(name, table)), len(lake.deliveries(name)) > known
    lake.write_raw(lake.raw_batch_path(name), table)
    return name, True


def ingest_all(
    lake: Lake, batches: list[str] | None = None, *, show_progress: bool = False
) -> list[IngestReport]:
    """Ingest the catalog and every raw batch (or ``batches``). Idempotent. A clean batch
    file that cannot be read is set aside first (``clean/damaged/``) and rebuilt from raw; a
    raw delivery that cannot be read leaves its batch as it was, with a report that says so
    (``damaged``), and the others are ingested."""
    for name in lake.set_aside_damaged_clean():
        logger.warning("clean batch %s could not be read: set aside, rebuilt from raw", name)
        if batches is not None and name not in batches:
            batches = [*batches, name]
    ingest_catalog(lake)
    known = known_items(lake)
    names = lake.raw_batches() if batches is None else batches
    if not names:
        raise RecsysError(f"no raw batches under {lake.zone('raw')}; generate or land data first")
    reports = []
    for name in tqdm(names, desc="ingest", unit="batch", disable=not show_progress):
        try:
            reports.append(ingest_batch(lake, name, known_items=known))
        except DamagedRaw as exc:  # one damaged file stopped the whole re-ingest
            logger.error("%s", exc)
            reports.append(IngestReport(name, 0, 0, 0, damaged=str(exc)))
    return reports
