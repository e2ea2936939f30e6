"""The demo's HTML report: what was injected, what the guardian saw and did, and how it looked.

One self-contained folder, no external assets::

    <out_dir>/index.html      fault summary, plots, incident timeline with evidence, days,
                              offline/online agreement, links to the Evidently reports
    <out_dir>/ctr.png         CTR by day and variant (with the expected CTR), fault markers
    <out_dir>/versions.png    model version behind each alias, by day
    <out_dir>/latency.png     p50 / p99 latency by day
    <out_dir>/traffic.png     requests and errors by day
    <out_dir>/agreement.png   offline nDCG against online CTR per model version (when given)
    <out_dir>/report.json     the same data, machine-readable

Plots are drawn with matplotlib's Agg canvas (no display, no pyplot state); every text that
reaches the HTML is escaped.
"""

from __future__ import annotations

import html
import json
import os
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from monitoring.incidents import Incident, json_safe
from recsys.errors import RecsysError

ALIASES: tuple[str, ...] = ("champion", "challenger", "previous")
_COLORS = {
    "champion": "#1f77b4",
    "challenger": "#ff7f0e",
    "previous": "#7f7f7f",
}
_PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#9467bd", "#8c564b", "#e377c2", "#17becf")


@dataclass
class DayRecord:
    """One simulated day as the demo saw it."""

    day: int
    faults: list[str]
    ctr: dict[str, float]
    expected_ctr: dict[str, float]
    versions: dict[str, str | None]
    p50_ms: float | None
    p99_ms: float | None
    requests: int
    errors: int
    notes: list[str] = field(default_factory=list)


@dataclass
class FaultOutcome:
    """What became of one injected fault."""

    fault: str
    injected_day: int | None  # None: the demo's days ran out before it could be injected
    detected_day: int | None
    check: str | None
    action: str | None
    verified: bool
    follow_up: str | None = None  # what came of the fix later (a retrain's canary verdict)

    @property
    def healed(self) -> bool:
        return self.detected_day is not None and self.action is not None and self.verified


@dataclass
class VersionAgreement:
    """Offline and online quality of one model version (for the agreement section)."""

    version: str
    offline_ndcg: float
    online_ctr: float
    requests: int


def rank_correlation(x: Sequence[float], y: Sequence[float]) -> float | None:
    """Spearman rank correlation of ``x`` and ``y`` (None with fewer than 3 pairs or no
    spread)."""
    from scipy.stats import spearmanr

    if len(x) != len(y):
        raise RecsysError(f"rank_correlation needs pairs, got {len(x)} and {len(y)} values")
    if len(x) < 3 or len(set(x)) < 2 or len(set(y)) < 2:
        return None
    return float(spearmanr(x, y).statistic)


# ---- plots -----------------------------------------------------------------------------------


def _figure(width: float = 9.0, height: float = 3.6):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height), dpi=100, layout="constrained")
    FigureCanvasAgg(figure)
    return figure


def _save(figure, path: Path) -> Path:
    figure.savefig(path, format="png")
    return path


def _fault_markers(ax, days: list[DayRecord], outcomes: list[FaultOutcome]) -> None:
    """A red dashed line at each injection day, the fault's name above the plot, and a green
    triangle at each detection day."""
    for record in days:
        if record.faults:
            ax.axvline(record.day, color="#d62728", linestyle="--", linewidth=1, alpha=0.7)
            ax.text(
                record.day,
                1.02,
                "\n".join(record.faults),
                transform=ax.get_xaxis_transform(),
                rotation=30,
                ha="left",
                va="bottom",
                fontsize=7,
                color="#d62728",
            )
    detected = [o.detected_day for o in outcomes if o.detected_day is not None]
    if detected:
        ax.scatter(
            detected,
            [0.03] * len(detected),
            transform=ax.get_xaxis_transform(),
            marker="^",
            color="#2ca02c",
            zorder=5,
            label="fault detected",
        )


def _legend(ax) -> None:
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))


def plot_ctr(days: list[DayRecord], outcomes: list[FaultOutcome], path: Path) -> Path:
    """CTR by day per variant (solid), the expected CTR of what was served (dashed), faults."""
    figure = _figure()
    ax = figure.add_subplot()
    variants = sorted({v for d in days for v in (*d.ctr, *d.expected_ctr)})
    x = [d.day for d in days]
    for i, variant in enumerate(variants):
        color = _COLORS.get(variant, _PALETTE[i % len(_PALETTE)])
        ctr = [d.ctr.get(variant, np.nan) for d in days]
        expected = [d.expected_ctr.get(variant, np.nan) for d in days]
        if not np.all(np.isnan(ctr)):
            ax.plot(x, ctr, marker="o", color=color, label=f"{variant} CTR")
        if not np.all(np.isnan(expected)):
            ax.plot(
                x, expected, linestyle=":", marker="x", color=color, label=f"{variant} expected"
            )
    ax.set_ylim(bottom=0)
    ax.set_xlabel("day")
    ax.set_ylabel("CTR")
    ax.figure.suptitle("CTR by day")
    _fault_markers(ax, days, outcomes)
    ax.grid(alpha=0.3)
    _legend(ax)
    return _save(figure, path)


def _version_number(version: str | None, order: dict[str, int]) -> float:
    """A y value for a version: its number when it is one, else its order of appearance."""
    if version is None:
        return np.nan
    try:
        return float(int(str(version)))
    except ValueError:
        return float(order.setdefault(str(version), len(order) + 1))


def plot_versions(days: list[DayRecord], outcomes: list[FaultOutcome], path: Path) -> Path:
    """The model version behind each alias at the end of each day (step lines)."""
    figure = _figure()
    ax = figure.add_subplot()
    aliases = list(ALIASES) + sorted({a for d in days for a in d.versions} - set(ALIASES))
    order: dict[str, int] = {}
    x = [d.day for d in days]
    for i, alias in enumerate(aliases):
        y = [_version_number(d.versions.get(alias), order) for d in days]
        if np.all(np.isnan(y)):
            continue
        ax.step(
            x,
            y,
            where="post",
            marker="o",
            color=_COLORS.get(alias, _PALETTE[i % len(_PALETTE)]),
            label=alias,
            linewidth=2.5 if alias == "champion" else 1.5,
            alpha=0.9,
        )
    ax.set_xlabel("day")
    ax.set_ylabel("model version")
    ax.yaxis.get_major_locator().set_params(integer=True)
    ax.figure.suptitle("Model versions behind each alias")
    _fault_markers(ax, days, outcomes)
    ax.grid(alpha=0.3)
    _legend(ax)
    return _save(figure, path)


def plot_latency(days: list[DayRecord], outcomes: list[FaultOutcome], path: Path) -> Path:
    """p50 and p99 latency (ms) by day."""
    figure = _figure()
    ax = figure.add_subplot()
    x = [d.day for d in days]
    for name, values, style in (
        ("p50", [d.p50_ms for d in days], "-"),
        ("p99", [d.p99_ms for d in days], "--"),
    ):
        y = [np.nan if v is None else v for v in values]
        if not np.all(np.isnan(y)):
            ax.plot(x, y, marker="o", linestyle=style, label=name)
    ax.set_ylim(bottom=0)
    ax.set_xlabel("day")
    ax.set_ylabel("latency (ms)")
    ax.figure.suptitle("Latency seen by clients")
    _fault_markers(ax, days, outcomes)
    ax.grid(alpha=0.3)
    _legend(ax)
    return _save(figure, path)


def plot_traffic(days: list[DayRecord], outcomes: list[FaultOutcome], path: Path) -> Path:
    """Requests (bars) and errors (red bars) by day."""
    figure = _figure(height=3.0)
    ax = figure.add_subplot()
    x = np.array([d.day for d in days])
    ax.bar(x - 0.2, [d.requests for d in days], width=0.4, label="requests", color="#1f77b4")
    errors_ax = ax.twinx()
    errors_ax.bar(x + 0.2, [d.errors for d in days], width=0.4, label="errors", color="#d62728")
    errors_ax.set_ylabel("errors", color="#d62728")
    errors_ax.set_ylim(bottom=0, top=max([d.errors for d in days] + [1]) * 1.2)
    ax.set_xlabel("day")
    ax.set_ylabel("requests")
    ax.figure.suptitle("Traffic and errors by day")
    _fault_markers(ax, days, [])  # detections: see the CTR plot
    ax.grid(alpha=0.3, axis="y")
    return _save(figure, path)


def plot_agreement(rows: list[VersionAgreement], path: Path) -> Path:
    """Offline nDCG against online CTR, one labelled point per model version."""
    figure = _figure(width=5.5, height=4.0)
    ax = figure.add_subplot()
    ax.scatter([r.offline_ndcg for r in rows], [r.online_ctr for r in rows], color="#1f77b4")
    for row in rows:
        ax.annotate(f"v{row.version}", (row.offline_ndcg, row.online_ctr), fontsize=8)
    ax.set_xlabel("offline nDCG (holdout)")
    ax.set_ylabel("online CTR")
    ax.set_title("Does offline quality predict online CTR?")
    ax.grid(alpha=0.3)
    return _save(figure, path)


# ---- HTML ------------------------------------------------------------------------------------

_CSS = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1100px; color: #222; }
h1 { margin-bottom: 0.2em; } h2 { margin-top: 1.6em; border-bottom: 1px solid #ddd; }
table { border-collapse: collapse; width: 100%; font-size: 0.9em; }
th, td { border: 1px solid #ddd; padding: 4px 8px; text-align: left; vertical-align: top; }
th { background: #f4f4f4; }
.ok { color: #1a7f37; font-weight: bold; } .bad { color: #c62828; font-weight: bold; }
.muted { color: #777; } img { max-width: 100%; border: 1px solid #eee; margin: 0.5em 0; }
pre { background: #f8f8f8; padding: 6px; max-height: 24em; overflow: auto; font-size: 0.85em; }
details summary { cursor: pointer; color: #1f5fa8; }
"""


def _e(value: Any) -> str:
    return html.escape("" if value is None else str(value), quote=True)


def _status(ok: bool | None, yes: str = "yes", no: str = "no") -> str:
    if ok is None:
        return '<span class="muted">n/a</span>'
    return f'<span class="ok">{_e(yes)}</span>' if ok else f'<span class="bad">{_e(no)}</span>'


def _table(headers: Sequence[str], rows: Iterable[Sequence[str]]) -> str:
    """An HTML table; ``rows`` hold already-escaped cell HTML."""
    head = "".join(f"<th>{_e(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _fault_section(outcomes: list[FaultOutcome]) -> str:
    if not outcomes:
        return "<p class='muted'>No fault was injected.</p>"
    rows = []
    for o in outcomes:
        delay = None if o.detected_day is None else o.detected_day - o.injected_day
        rows.append(
            [
                _e(o.fault),
                _e(o.injected_day),
                _e(o.detected_day) if o.detected_day is not None else _status(False, no="missed"),
                _e(delay),
                _e(o.check),
                _e(o.action and o.action + (f" ({o.follow_up})" if o.follow_up else "")),
                _status(o.verified),
                _status(o.healed, "healed", "NOT healed"),
            ]
        )
    healed = sum(o.healed for o in outcomes)
    verdict = _status(healed == len(outcomes), "all healed", "not all healed")
    return (
        f"<p>{healed} of {len(outcomes)} injected faults detected and healed: {verdict}</p>"
        + _table(
            [
                "fault",
                "injected day",
                "detected day",
                "days to detect",
                "check",
                "action",
                "verified",
                "outcome",
            ],
            rows,
        )
    )


def _incident_section(incidents: list[Incident]) -> str:
    if not incidents:
        return "<p class='muted'>No incident was recorded.</p>"
    ordered = sorted(incidents, key=lambda i: (i.day if i.day is not None else -1, i.at))
    rows = []
    for incident in ordered:
        evidence = json.dumps(json_safe(incident.evidence), indent=1, sort_keys=True)
        rows.append(
            [
                _e(incident.day),
                _e(incident.at[:19].replace("T", " ")),
                _e(f"{incident.layer} / {incident.check}"),
                _e(incident.fault) if incident.fault else '<span class="muted">-</span>',
                _e(incident.seen)
                + f"<details><summary>evidence</summary><pre>{_e(evidence)}</pre></details>",
                _e(incident.action),
                _status(incident.verified),
            ]
        )
    return _table(["day", "at (UTC)", "layer / check", "fault", "seen", "action", "verified"], rows)


def _day_section(days: list[DayRecord]) -> str:
    variants = sorted({v for d in days for v in d.ctr})
    aliases = [a for a in ALIASES if any(a in d.versions for d in days)]
    rows = []
    for d in days:
        rows.append(
            [
                _e(d.day),
                _e(", ".join(d.faults)) or '<span class="muted">-</span>',
                _e(d.requests),
                _e(d.errors),
                *(_e(_fmt(d.ctr.get(v))) for v in variants),
                *(_e(_fmt(d.expected_ctr.get(v))) for v in variants),
                *(_e(d.versions.get(a)) for a in aliases),
                _e(_fmt(d.p50_ms, 1)),
                _e(_fmt(d.p99_ms, 1)),
                "<br>".join(_e(n) for n in d.notes),
            ]
        )
    headers = [
        "day",
        "faults",
        "requests",
        "errors",
        *(f"CTR {v}" for v in variants),
        *(f"expected CTR {v}" for v in variants),
        *aliases,
        "p50 ms",
        "p99 ms",
        "notes",
    ]
    return _table(headers, rows)


def _fmt(value: float | None, digits: int = 4) -> str | None:
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return None
    return f"{value:.{digits}f}"


def _agreement_section(rows: list[VersionAgreement], image: str | None) -> str:
    if not rows:
        return "<p class='muted'>Too few model versions served to compare.</p>"
    rho = rank_correlation([r.offline_ndcg for r in rows], [r.online_ctr for r in rows])
    verdict = (
        "too few versions (or no spread) for a rank correlation"
        if rho is None
        else f"Spearman rank correlation of offline nDCG and online CTR: {rho:+.2f}"
    )
    table = _table(
        ["version", "offline nDCG", "online CTR", "requests"],
        [
            [_e(r.version), _e(_fmt(r.offline_ndcg)), _e(_fmt(r.online_ctr)), _e(r.requests)]
            for r in rows
        ],
    )
    img = f'<img src="{_e(image)}" alt="offline nDCG against online CTR">' if image else ""
    caveat = (
        "Versions served on different days (and the canary to a share of users): CTR also moves "
        "with the world. A version good offline and bad online is what only the canary catches."
    )
    return f"<p>{_e(verdict)}</p><p class='muted'>{_e(caveat)}</p>{img}{table}"


def find_drift_reports(out_dir: Path, incidents: list[Incident]) -> list[Path]:
    """Evidently reports to link: the ``report`` of each incident's evidence, plus every
    ``*.html`` with a sibling ``.json`` under ``out_dir`` or one level under its parent."""
    out_dir = Path(out_dir).resolve()
    found: dict[Path, None] = {}
    for incident in incidents:
        path = incident.evidence.get("report") if isinstance(incident.evidence, dict) else None
        if isinstance(path, str) and path.endswith(".html") and Path(path).is_file():
            found[Path(path).resolve()] = None
    candidates = [
        *out_dir.rglob("*.html"),
        *out_dir.parent.glob("*.html"),
        *out_dir.parent.glob("*/*.html"),
    ]
    for path in sorted(candidates):
        path = path.resolve()
        if path == out_dir / "index.html" or not path.with_suffix(".json").is_file():
            continue
        found[path] = None
    return sorted(found)


def _reports_section(out_dir: Path, reports: list[Path]) -> str:
    if not reports:
        return "<p class='muted'>No Evidently report was written.</p>"
    items = "".join(
        f'<li><a href="{_e(Path(os.path.relpath(p, out_dir)).as_posix())}">{_e(p.stem)}</a></li>'
        for p in reports
    )
    return f"<ul>{items}</ul>"


def write_demo_report(
    out_dir: Path,
    days: list[DayRecord],
    incidents: list[Incident],
    outcomes: list[FaultOutcome],
    *,
    title: str = "recsys demo",
    drift_reports: list[Path] | None = None,
    agreement: list[VersionAgreement] | None = None,
    summary: dict[str, Any] | None = None,
) -> Path:
    """Write the demo report into ``out_dir`` (created) and return ``out_dir/index.html``.

    ``drift_reports``: Evidently HTML reports to link (default: :func:`find_drift_reports`).
    ``agreement``: offline nDCG and online CTR per model version, plotted and rank-correlated.
    ``summary``: extra key figures shown at the top (e.g. run time, seed).

    Raises:
        RecsysError: ``days`` is empty.
    """
    if not days:
        raise RecsysError("the demo report needs at least one day")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    days = sorted(days, key=lambda d: d.day)
    agreement = list(agreement or [])

    plot_ctr(days, outcomes, out_dir / "ctr.png")
    plot_versions(days, outcomes, out_dir / "versions.png")
    plot_latency(days, outcomes, out_dir / "latency.png")
    plot_traffic(days, outcomes, out_dir / "traffic.png")
    agreement_image = None
    if agreement:
        agreement_image = plot_agreement(agreement, out_dir / "agreement.png").name
    reports = drift_reports if drift_reports is not None else find_drift_reports(out_dir, incidents)
    reports = [Path(p).resolve() for p in reports]

    generated = datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    figures = {
        "days": len(days),
        "requests": sum(d.requests for d in days),
        "errors": sum(d.errors for d in days),
        "incidents": len(incidents),
        "faults injected": len(outcomes),
        "faults healed": sum(o.healed for o in outcomes),
        **(summary or {}),
    }
    key_figures = _table(["figure", "value"], [[_e(k), _e(v)] for k, v in figures.items()])
    sections = [
        ("Faults: injected, detected, healed", _fault_section(outcomes)),
        ("Key figures", key_figures),
        (
            "CTR by day",
            '<img src="ctr.png" alt="CTR by day with fault markers">'
            "<p class='muted'>Solid: logged CTR; dotted: mean ground-truth click probability of "
            "what was served; red dashed lines: faults injected; green triangles: detections."
            "</p>",
        ),
        ("Model versions over time", '<img src="versions.png" alt="model versions by alias">'),
        (
            "Latency and traffic",
            '<img src="latency.png" alt="p50 and p99 latency by day">'
            '<img src="traffic.png" alt="requests and errors by day">',
        ),
        ("Incident timeline", _incident_section(incidents)),
        ("Days", _day_section(days)),
        ("Offline versus online", _agreement_section(agreement, agreement_image)),
        (
            "Evidently reports: interaction drift (with the retrain decision), prediction drift, "
            "ranking quality",
            _reports_section(out_dir.resolve(), reports),
        ),
    ]
    body = "".join(f"<h2>{_e(name)}</h2>{content}" for name, content in sections)
    page = (
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>"
        f"<title>{_e(title)}</title><style>{_CSS}</style></head><body>"
        f"<h1>{_e(title)}</h1><p class='muted'>generated {_e(generated)}</p>{body}"
        "</body></html>"
    )
    index = out_dir / "index.html"
    index.write_text(page, encoding="utf-8")
    data = {
        "title": title,
        "generated": generated,
        "figures": figures,
        "days": [asdict(d) for d in days],
        "incidents": [i.as_dict() for i in incidents],
        "outcomes": [{**asdict(o), "healed": o.healed} for o in outcomes],
        "agreement": [asdict(a) for a in agreement],
        "drift_reports": [str(p) for p in reports],
    }
    (out_dir / "report.json").write_text(json.dumps(json_safe(data), indent=1, sort_keys=True))
    return index
