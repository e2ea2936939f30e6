"""Release management: alias moves in the MLflow registry and the promotion history.

Aliases (``recsys.registry``): ``champion`` serves most traffic, ``challenger`` is the canary,
``previous`` is the last good champion. MLflow keeps no history of alias moves, so every move
is appended to ``<data_dir>/logs/promotions.jsonl`` (one JSON line, fsynced, never rewritten)
and mirrored as a ``last_move`` tag on each version whose aliases changed.

    promote_challenger   champion -> previous, challenger -> champion, challenger alias removed
    reject_challenger    challenger tagged rejected (stage canary) with the evidence, alias removed
    rollback_champion    champion -> previous (or a named version), the bad champion tagged
                         rejected (stage champion); the new ``previous`` is read from the history
    replace_champion     champion -> a newly registered version (the guardian's replacement of a
                         champion that cannot be loaded and has no ``previous``), tagged as above

Nothing is deleted: a rejected version stays registered with ``rejected=true``,
``rejection_reason``, ``rejection_stage`` and ``rejection_evidence`` (the same tags the offline
gate writes, which uses stage ``gate``), and no alias points at it again.

Crash safety. A move takes a lock, then writes its plan to ``logs/promotions.pending.json``
(atomically) before it changes a tag or an alias, and removes that journal after its history
line is appended. Every move, and every registration through the gate, first looks for a
journal: if the move reached the history it only drops the journal; otherwise it undoes the
move's alias and tag changes and records ``interrupted_move_undone``, so rerunning the killed
command does the move exactly once, on the state it was decided on. Aliases that still differ
from the last recorded move (an alias moved by a process that died before recording it) are
recorded as found (``aliases_reconciled``). ``release_problems`` reports both without repairing.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import json
import logging
import math
import os
import uuid
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field, fields
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from recsys.config import Settings
from recsys.errors import RecsysError
from recsys.jsonlog import append_record, read_records
from recsys.lake import write_json
from recsys.pausepoints import pause_point
from recsys.registry import (
    CHALLENGER,
    CHAMPION,
    PREVIOUS,
    configure_mlflow,
    raise_if_refused,
    unreadable_reason,
)

logger = logging.getLogger(__name__)

ALIASES = (CHAMPION, CHALLENGER, PREVIOUS)
_TAG_LIMIT = 4000  # keeps a tag readable in the MLflow UI; the full evidence is in the history


def _utc_now() -> str:
    return datetime.now(UTC).isoformat()


@dataclass
class AliasMove:
    """One change of the registry's aliases: what moved, why, on which evidence, when, by whom.

    ``action`` is ``promote``, ``reject_challenger``, ``rollback_champion``,
    ``manual_rollback``, ``replace_champion``, ``first_champion``, ``challenger_registered``,
    the recovery records ``interrupted_move_undone`` and ``aliases_reconciled`` (or another
    name a caller records).
    ``move_id`` ties a move made here to its journal (None for moves recorded by callers).
    """

    action: str
    aliases_before: dict[str, str | None]
    aliases_after: dict[str, str | None]
    reason: str
    evidence: dict
    at: str = field(default_factory=_utc_now)
    actor: str = "guardian"
    model_name: str | None = None
    move_id: str | None = None

    def as_dict(self) -> dict[str, Any]:
        """The move as plain JSON values (numpy scalars and paths converted)."""
        return _json_safe(asdict(self))

    @classmethod
    def from_dict(cls, payload: dict[str, Any]) -> AliasMove:
        """Inverse of :meth:`as_dict`; unknown keys (a newer writer) are ignored."""
        known = {f.name for f in fields(cls)}
        missing = [k for k in ("action", "aliases_before", "aliases_after") if k not in payload]
        if missing:
            raise ValueError(f"a promotion record lacks {missing}")
        values = {k: v for k, v in payload.items() if k in known}
        values.setdefault("reason", "")
        values.setdefault("evidence", {})
        return cls(**values)


def _json_safe(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [_json_safe(v) for v in value]
    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    tolist = getattr(value, "tolist", None)  # numpy scalars and arrays
    if callable(tolist):
        return _json_safe(tolist())
    return str(value)


def history_path(settings: Settings) -> Path:
    """``<data_dir>/logs/promotions.jsonl``."""
    return Path(settings.data_dir) / "logs" / "promotions.jsonl"


# ---- reading the registry -------------------------------------------------------------------


def aliases(settings: Settings) -> dict[str, str | None]:
    """``{"champion": v, "challenger": v, "previous": v}``; None where an alias is unset (all
    None before the first model is registered)."""
    from mlflow.exceptions import MlflowException

    client = configure_mlflow(settings)
    try:
        model = client.get_registered_model(settings.model_name)
    except MlflowException as exc:
        raise_if_refused(settings, exc)  # no credentials is not "no champion"
        return dict.fromkeys(ALIASES)
    known = {str(a): str(v) for a, v in (model.aliases or {}).items()}
    return {a: known.get(a) for a in ALIASES}


def _version(client, settings: Settings, version: str):
    from mlflow.exceptions import MlflowException

    try:
        return client.get_model_version(settings.model_name, version)
    except MlflowException as exc:
        raise_if_refused(settings, exc)
        return None


def _is_rejected(model_version) -> bool:
    return (model_version.tags or {}).get("rejected") == "true"


def _normalise_version(version: str) -> str:
    text = str(version).strip().removeprefix("v")
    if not text.isdigit():
        raise RecsysError(f"model version must be a number like 3 (or v3), not {version!r}")
    return str(int(text))


# ---- the history ----------------------------------------------------------------------------


def record_move(settings: Settings, move: AliasMove) -> None:
    """Append ``move`` to the promotion history (one line, fsynced, under an exclusive lock,
    safe across processes) and mirror it as a ``last_move`` tag on each version whose aliases
    changed. The history line is written first: it is the record; the tag is a convenience."""
    if move.model_name is None:
        move.model_name = settings.model_name
    append_record(history_path(settings), move.as_dict())
    _mirror_as_tags(settings, move)


def _mirror_as_tags(settings: Settings, move: AliasMove) -> None:
    from mlflow.exceptions import MlflowException

    def held(names: dict[str, str | None], version: str) -> set[str]:
        return {a for a, v in names.items() if v == version}

    versions = {v for v in (*move.aliases_before.values(), *move.aliases_after.values()) if v}
    summary = f"{move.at} {move.action} by {move.actor}: {move.reason}"[:_TAG_LIMIT]
    client = configure_mlflow(settings)
    for version in sorted(versions, key=int):
        if held(move.aliases_before, version) == held(move.aliases_after, version):
            continue
        try:
            client.set_model_version_tag(settings.model_name, version, "last_move", summary)
        except MlflowException as exc:  # the history line is already durable
            logger.warning("could not tag version %s with its last move: %s", version, exc)


def promotion_history(settings: Settings) -> list[AliasMove]:
    """Every recorded move of this model, oldest first. A line that is not a complete record
    (a torn write) is skipped with a warning; a missing file is an empty history."""
    moves = read_records(history_path(settings), AliasMove.from_dict)
    return [m for m in moves if m.model_name in (None, settings.model_name)]


def champion_sequence(history: list[AliasMove]) -> list[str]:
    """The versions that held ``champion``, in the order they took it (a version appears
    again each time it comes back)."""
    sequence: list[str] = []
    for move in history:
        for version in (move.aliases_before.get(CHAMPION), move.aliases_after.get(CHAMPION)):
            if version and (not sequence or sequence[-1] != version):
                sequence.append(version)
    return sequence


def last_good_champion(settings: Settings, exclude: set[str]) -> str | None:
    """The most recent champion in the history that is not in ``exclude``, still registered
    and not rejected; None when there is none."""
    client = configure_mlflow(settings)
    for version in reversed(champion_sequence(promotion_history(settings))):
        if version in exclude:
            continue
        model_version = _version(client, settings, version)
        if model_version is not None and not _is_rejected(model_version):
            return version
    return None


# ---- the moves ------------------------------------------------------------------------------


@contextlib.contextmanager
def _moving(settings: Settings) -> Iterator[None]:
    """Hold an exclusive lock for one read-move-record, so a CLI rollback and a guardian
    promotion on this machine never interleave their alias moves."""
    path = history_path(settings).with_suffix(".lock")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _one_move_at_a_time(move: Callable[..., Any]) -> Callable[..., Any]:
    """Run ``move`` under the lock, after finishing what an interrupted move left behind."""

    @functools.wraps(move)
    def locked(settings: Settings, *args: Any, **kwargs: Any) -> Any:
        with _moving(settings):
            _recover(settings)
            return move(settings, *args, **kwargs)

    return locked


def _rejection_tags(reason: str, stage: str, evidence: Any) -> dict[str, str]:
    return {
        "rejected": "true",
        "rejection_reason": reason[:_TAG_LIMIT],
        "rejection_stage": stage,
        "rejection_evidence": json.dumps(_json_safe(evidence), sort_keys=True)[:_TAG_LIMIT],
        "rejected_at": _utc_now(),
    }


@dataclass
class _Plan:
    """One move before it happens: the aliases it leaves (changed in ``order``) and the tags
    it writes, per version."""

    action: str
    reason: str
    evidence: dict
    actor: str
    before: dict[str, str | None]
    after: dict[str, str | None]
    order: tuple[str, ...] = ALIASES
    tags: dict[str, dict[str, str]] = field(default_factory=dict)


def _set_alias(client, name: str, alias: str, version: str | None) -> None:
    if version is None:
        client.delete_registered_model_alias(name, alias)
    else:
        client.set_registered_model_alias(name, alias, version)


def _execute(settings: Settings, plan: _Plan) -> AliasMove:
    """Journal the plan, write its tags and aliases, record it, drop the journal.

    A process killed at any step leaves the journal behind; the next move (or
    :func:`recover_interrupted_move`) finds it and undoes the partial changes, or only drops
    the journal when the move's history line was already written."""
    client = configure_mlflow(settings)
    name = settings.model_name
    move_id = uuid.uuid4().hex
    tags_before = {}
    for version, tags in plan.tags.items():
        found = _version(client, settings, version)
        current = (found.tags or {}) if found is not None else {}
        tags_before[version] = {key: current.get(key) for key in tags}
    write_json(
        journal_path(settings),
        {
            "move_id": move_id,
            "model_name": name,
            "action": plan.action,
            "actor": plan.actor,
            "reason": plan.reason,
            "at": _utc_now(),
            "aliases_before": plan.before,
            "aliases_after": plan.after,
            "tags": plan.tags,
            "tags_before": tags_before,
        },
    )
    for version, tags in plan.tags.items():
        for key, value in tags.items():
            client.set_model_version_tag(name, version, key, value)
    changed = [a for a in plan.order if plan.before.get(a) != plan.after.get(a)]
    for number, alias in enumerate(changed):
        _set_alias(client, name, alias, plan.after.get(alias))
        if number == 0:
            pause_point("promotion.after_alias")
    move = AliasMove(
        plan.action,
        plan.before,
        aliases(settings),
        plan.reason,
        plan.evidence,
        actor=plan.actor,
        move_id=move_id,
    )
    record_move(settings, move)
    pause_point("promotion.after_record")
    journal_path(settings).unlink(missing_ok=True)
    return move


# ---- recovery after a crash -----------------------------------------------------------------


def journal_path(settings: Settings) -> Path:
    """``<data_dir>/logs/promotions.pending.json``: the move in progress, if any."""
    return history_path(settings).with_name("promotions.pending.json")


def pending_move(settings: Settings) -> dict[str, Any] | None:
    """The journal of a move that started and has not finished (a running move, or one whose
    process died), or None. An unreadable journal is returned as ``{"unreadable": reason}``."""
    path = journal_path(settings)
    try:
        payload = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except ValueError as exc:
        return {"unreadable": f"{path} is not JSON: {exc}"}
    needed = ("move_id", "model_name", "action", "aliases_before", "aliases_after")
    if not isinstance(payload, dict) or any(key not in payload for key in needed):
        return {"unreadable": f"{path} lacks one of {list(needed)}"}
    return payload


def _recover(settings: Settings) -> list[AliasMove]:
    """Finish what a killed move left behind, then make the history explain the aliases.

    1. A journal whose move reached the history: the move finished; the journal is dropped.
    2. A journal whose move did not: its alias and tag changes are undone and the undo is
       recorded (``interrupted_move_undone``), so a rerun of the same command does the move
       once, on the state it was decided on.
    3. Aliases that differ from the last recorded ones (an alias moved by a process that died
       before recording it, or by hand) are recorded as found (``aliases_reconciled``).

    Returns the records it appended. The caller holds the lock."""
    recorded: list[AliasMove] = []
    journal = pending_move(settings)
    if journal is not None and "unreadable" in journal:
        aside = journal_path(settings).with_suffix(f".unreadable-{uuid.uuid4().hex[:8]}")
        journal_path(settings).rename(aside)
        logger.error("%s; moved aside to %s", journal["unreadable"], aside)
    elif journal is not None:
        owner = settings.model_copy(update={"model_name": journal["model_name"]})
        if any(m.move_id == journal["move_id"] for m in promotion_history(owner)):
            logger.info("move %s (%s) was recorded: dropping its journal", *_ids(journal))
        else:
            recorded.append(_undo(owner, journal))
        journal_path(settings).unlink(missing_ok=True)
    history = promotion_history(settings)
    if history:
        last = {a: history[-1].aliases_after.get(a) for a in ALIASES}
        now = aliases(settings)
        if now != last:
            move = AliasMove(
                "aliases_reconciled",
                last,
                now,
                "the registry's aliases differ from the last recorded move: an alias was moved "
                "by a process that died before recording it, or by hand; recorded as found",
                {"last_recorded_move": history[-1].action, "last_recorded_at": history[-1].at},
                actor="recovery",
            )
            record_move(settings, move)
            logger.warning("aliases moved without a record: %s -> %s", last, now)
            recorded.append(move)
    return recorded


def _ids(journal: dict[str, Any]) -> tuple[str, str]:
    return journal["move_id"], journal["action"]


def _undo(settings: Settings, journal: dict[str, Any]) -> AliasMove:
    from mlflow.exceptions import MlflowException

    client = configure_mlflow(settings)
    name = settings.model_name
    found = aliases(settings)
    try:
        for alias in ALIASES:
            wanted = journal["aliases_before"].get(alias)
            if found[alias] != wanted:
                _set_alias(client, name, alias, wanted)
        for version, tags in (journal.get("tags_before") or {}).items():
            if _version(client, settings, version) is None:
                continue
            for key, value in tags.items():
                if value is None:
                    with contextlib.suppress(MlflowException):
                        client.delete_model_version_tag(name, version, key)
                else:
                    client.set_model_version_tag(name, version, key, value)
    except MlflowException as exc:
        raise RecsysError(
            f"could not undo the interrupted {journal['action']} recorded in "
            f"{journal_path(settings)} ({exc}); set the aliases by hand to "
            f"{journal['aliases_before']} and delete that file"
        ) from None
    move = AliasMove(
        "interrupted_move_undone",
        found,
        aliases(settings),
        f"{journal['action']} by {journal.get('actor', '?')} started at {journal.get('at', '?')} "
        "did not finish (its process died); its partial changes were undone",
        {"interrupted": {k: v for k, v in journal.items() if k != "tags_before"}},
        actor="recovery",
    )
    record_move(settings, move)
    logger.warning("undid the interrupted %s %s", journal["action"], journal["move_id"])
    return move


def recover_interrupted_move(settings: Settings) -> list[AliasMove]:
    """Under the move lock: undo a move whose process died midway and record any alias change
    the history does not explain (see :func:`_recover`). Every move does this first; call it
    alone to repair without moving anything. Returns the records appended."""
    with _moving(settings):
        return _recover(settings)


def release_problems(settings: Settings) -> list[str]:
    """What makes the aliases and the history disagree, in words; empty when they agree.

    Reports a pending journal (a move running now, or one whose process died) and aliases that
    differ from the last recorded move. Reads only; :func:`recover_interrupted_move` repairs."""
    problems = []
    journal = pending_move(settings)
    if journal is not None:
        what = journal.get("unreadable") or "{} by {} started at {}".format(
            journal["action"], journal.get("actor", "?"), journal.get("at", "?")
        )
        problems.append(f"a move did not finish: {what} ({journal_path(settings)})")
    history = promotion_history(settings)
    if history:
        last = {a: history[-1].aliases_after.get(a) for a in ALIASES}
        now = aliases(settings)
        if now != last:
            problems.append(
                f"aliases {now} differ from the last recorded move "
                f"({history[-1].action} at {history[-1].at}: {last})"
            )
    return problems


@_one_move_at_a_time
def point_new_version(
    settings: Settings,
    version: str,
    alias: str,
    reason: str,
    evidence: dict,
    *,
    actor: str = "gate",
    record: bool = True,
) -> AliasMove | None:
    """Point ``alias`` (``champion`` for a first model, else ``challenger``) at a newly
    registered ``version``. With ``record`` the move is journaled and recorded
    (``first_champion`` or ``challenger_registered``) and returned; without, the alias is set
    and the caller records the move itself (None is returned).

    A challenger still in its canary (a scheduled train and a guardian retrain that overlap) is
    replaced, not silently: it is tagged ``superseded_by`` the new version and a warning says
    its canary ended without a verdict."""
    before = aliases(settings)
    replaced = before[CHALLENGER] if alias == CHALLENGER else None
    tags = {replaced: {"superseded_by": version}} if replaced and replaced != version else {}
    if tags:
        logger.warning(
            "challenger v%s replaced by v%s before its canary reached a verdict (tagged "
            "superseded_by); the canary starts again on v%s",
            replaced,
            version,
            version,
        )
    if not record:
        client = configure_mlflow(settings)
        for old, values in tags.items():
            for key, value in values.items():
                client.set_model_version_tag(settings.model_name, old, key, value)
        _set_alias(client, settings.model_name, alias, version)
        return None
    action = "first_champion" if alias == CHAMPION else "challenger_registered"
    return _execute(
        settings,
        _Plan(action, reason, evidence, actor, before, {**before, alias: version}, tags=tags),
    )


@_one_move_at_a_time
def promote_challenger(
    settings: Settings, reason: str, evidence: dict, *, actor: str = "guardian"
) -> AliasMove:
    """Champion -> ``previous``, challenger -> ``champion``, the challenger alias removed;
    the move is recorded and returned.

    Raises:
        RecsysError: no challenger to promote.
    """
    before = aliases(settings)
    challenger = before[CHALLENGER]
    if challenger is None:
        raise RecsysError(
            f"no challenger to promote in {settings.model_name!r}: train one first "
            "(`recsys train`); aliases are "
            + ", ".join(f"{a}={v or '-'}" for a, v in before.items())
        )
    after = {
        CHAMPION: challenger,
        CHALLENGER: None,
        PREVIOUS: before[CHAMPION] if before[CHAMPION] is not None else before[PREVIOUS],
    }
    move = _execute(
        settings,
        _Plan(
            "promote",
            reason,
            evidence,
            actor,
            before,
            after,
            order=(CHAMPION, PREVIOUS, CHALLENGER),  # the service never lacks a champion
            tags={challenger: {"promoted_at": _utc_now()}},
        ),
    )
    logger.info("promoted v%s to champion (was v%s): %s", challenger, before[CHAMPION], reason)
    return move


@_one_move_at_a_time
def reject_challenger(
    settings: Settings, reason: str, evidence: dict, *, actor: str = "guardian"
) -> AliasMove:
    """Tag the challenger ``rejected`` (stage ``canary``) with the reason and the evidence and
    remove its alias; the version stays registered. The move is recorded and returned.

    Raises:
        RecsysError: no challenger to reject.
    """
    before = aliases(settings)
    challenger = before[CHALLENGER]
    if challenger is None:
        raise RecsysError(f"no challenger to reject in {settings.model_name!r}: none is running")
    move = _execute(
        settings,
        _Plan(
            "reject_challenger",
            reason,
            evidence,
            actor,
            before,
            {**before, CHALLENGER: None},
            tags={challenger: _rejection_tags(reason, "canary", evidence)},
        ),
    )
    logger.warning("rejected challenger v%s: %s", challenger, reason)
    return move


@_one_move_at_a_time
def rollback_champion(
    settings: Settings,
    reason: str,
    evidence: dict,
    *,
    to_version: str | None = None,
    actor: str = "guardian",
) -> AliasMove:
    """Point ``champion`` back at ``previous`` (or at ``to_version``) and tag the replaced
    champion ``rejected`` (stage ``champion``).

    The new ``previous`` is the most recent champion in the promotion history that is neither
    the new champion nor rejected (``last_good_champion``); when there is none the alias is
    removed, so a second rollback never guesses. A running challenger is left alone. The move
    (``rollback_champion`` by the guardian, ``manual_rollback`` by anyone else) is recorded
    and returned.

    Raises:
        RecsysError: no champion; nothing to roll back to (no ``previous`` and no
            ``to_version``); ``to_version`` does not exist, is rejected, is the champion or the
            running challenger, cannot be served, or (named, and not ``previous``) never
            served as champion in the promotion history.
    """
    client = configure_mlflow(settings)
    name = settings.model_name
    before = aliases(settings)
    bad = before[CHAMPION]
    if bad is None:
        raise RecsysError(f"no champion in {name!r} to roll back: train one first")
    if to_version is None:
        target = before[PREVIOUS]
        if target is None:
            raise RecsysError(
                f"nothing to roll back to: champion v{bad} has no previous version "
                "(the history holds no earlier good champion); name one with --to VERSION"
            )
    else:
        target = _normalise_version(to_version)
    model_version = _version(client, settings, target)
    if model_version is None:
        raise RecsysError(
            f"version {target} of {name!r} does not exist; `recsys status` lists the versions"
        )
    if target == bad:
        raise RecsysError(f"v{target} is already the champion: nothing to roll back")
    if _is_rejected(model_version):
        why = model_version.tags.get("rejection_reason", "no reason recorded")
        raise RecsysError(
            f"v{target} was rejected ({why[:200]}); roll back to a good version with --to VERSION"
        )
    if target == before[CHALLENGER]:
        raise RecsysError(
            f"v{target} is the running challenger: let the canary promote it, or stop the canary "
            "with `recsys reject` first"
        )
    broken = unreadable_reason(settings, target)  # the service could not load it: no move
    if broken is not None:
        raise RecsysError(
            f"v{target} cannot be served ({broken[:200]}); roll back to a good version with "
            "--to VERSION"
        )
    named = to_version is not None and target != before[PREVIOUS]
    if named and target not in champion_sequence(promotion_history(settings)):
        # it would tag the good champion rejected for a version nobody has measured
        served = [v for v in champion_sequence(promotion_history(settings)) if v != bad]
        raise RecsysError(
            f"v{target} never served as champion (a challenger replaced or stopped before its "
            "canary's verdict): a rollback returns to a version that served"
            + (f" ({', '.join('v' + v for v in dict.fromkeys(served))})" if served else "")
        )
    action = "rollback_champion" if actor == "guardian" else "manual_rollback"
    move = _move_champion(settings, action, before, target, reason, evidence, actor)
    logger.warning("rolled champion back from v%s to v%s: %s", bad, target, reason)
    return move


def _move_champion(
    settings: Settings,
    action: str,
    before: dict[str, str | None],
    target: str,
    reason: str,
    evidence: dict,
    actor: str,
) -> AliasMove:
    """``champion`` -> ``target``, the replaced champion tagged rejected (stage champion),
    ``previous`` -> the last good champion other than the two (or removed)."""
    bad = before[CHAMPION]
    new_previous = last_good_champion(settings, exclude={bad, target})
    return _execute(
        settings,
        _Plan(
            action,
            reason,
            evidence,
            actor,
            before,
            {**before, CHAMPION: target, PREVIOUS: new_previous},
            order=(CHAMPION, PREVIOUS),
            tags={bad: _rejection_tags(reason, "champion", evidence)},
        ),
    )


@_one_move_at_a_time
def replace_champion(
    settings: Settings, version: str, reason: str, evidence: dict, *, actor: str = "guardian"
) -> AliasMove:
    """Point ``champion`` at ``version``, a release registered to replace a champion that cannot
    be served and has nothing to roll back to, and tag the replaced champion ``rejected``
    (stage ``champion``). ``previous`` becomes the last good champion other than the two, if
    any. A running challenger is left alone. The move (``replace_champion``) is recorded and
    returned.

    Raises:
        RecsysError: no champion; ``version`` does not exist, is rejected, is the champion or
            the running challenger.
    """
    client = configure_mlflow(settings)
    before = aliases(settings)
    bad = before[CHAMPION]
    if bad is None:
        raise RecsysError(f"no champion in {settings.model_name!r} to replace")
    target = _normalise_version(version)
    model_version = _version(client, settings, target)
    if model_version is None or _is_rejected(model_version):
        raise RecsysError(f"v{target} cannot replace the champion: missing or rejected")
    if target in (bad, before[CHALLENGER]):
        raise RecsysError(f"v{target} is already the champion or the running challenger")
    move = _move_champion(settings, "replace_champion", before, target, reason, evidence, actor)
    logger.warning("replaced champion v%s by v%s: %s", bad, target, reason)
    return move


# ---- status ---------------------------------------------------------------------------------


def _created(timestamp_ms: int | None) -> str | None:
    if not timestamp_ms:
        return None
    return datetime.fromtimestamp(timestamp_ms / 1000, UTC).isoformat(timespec="seconds")


def _holdout_ndcg(model_version) -> float | None:
    tags = model_version.tags or {}
    value = tags.get("pipeline_ndcg_at_k") or tags.get("als_ndcg_at_k")
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None


def _holdout_k(model_version) -> int | None:
    value = (model_version.tags or {}).get("holdout_k")
    return int(value) if value is not None and value.isdigit() else None


def rejected_versions(settings: Settings) -> list[dict[str, Any]]:
    """Every version tagged rejected, newest first: version, stage, reason, created."""
    client = configure_mlflow(settings)
    name = settings.model_name.replace("'", "\\'")
    found = client.search_model_versions(f"name = '{name}' and tags.rejected = 'true'")
    rows = []
    for mv in sorted(found, key=lambda v: int(v.version), reverse=True):
        tags = mv.tags or {}
        rows.append(
            {
                "version": str(mv.version),
                "stage": tags.get("rejection_stage") or ("gate" if tags.get("gate") else None),
                "reason": tags.get("rejection_reason") or tags.get("gate_reason"),
                "created": _created(mv.creation_timestamp),
            }
        )
    return rows


def _service_status(settings: Settings, url: str | None) -> dict[str, Any]:
    from recsys.admin import ServiceAdmin

    admin = ServiceAdmin.from_settings(settings, url)
    admin.timeout = 5.0
    out: dict[str, Any] = {"url": admin.url, "reachable": False}
    if not admin.token:
        out["note"] = f"no admin token to ask {admin.url}: set RECSYS_ADMIN_TOKEN"
        return out
    try:
        answer = admin.status()
    except RecsysError as exc:
        out["note"] = str(exc)
        return out
    out.update(
        reachable=True,
        served={a: m.get("version") for a, m in answer.get("models", {}).items()},
        canary_share=answer.get("canary_share"),
        ready=answer.get("ready"),
        load_error=answer.get("load_error"),
    )
    return out


def recent_incidents(settings: Settings, n: int = 5) -> list[dict[str, Any]]:
    """The ``n`` newest records of ``<data_dir>/logs/incidents.jsonl`` (oldest first);
    unreadable lines are skipped; no file means no incidents."""
    path = Path(settings.data_dir) / "logs" / "incidents.jsonl"
    if not path.exists():
        return []
    records = []
    for raw in path.read_bytes().splitlines():
        try:
            payload = json.loads(raw)
        except ValueError:
            continue
        if isinstance(payload, dict):
            records.append(payload)
    return records[-n:] if n > 0 else []


def registry_exists(settings: Settings) -> bool:
    """False only for the local profile's SQLite registry file before anything was registered
    (other tracking URIs are servers: asked, not assumed)."""
    uri = settings.tracking_uri
    prefix = "sqlite:///"
    return not uri.startswith(prefix) or Path(uri[len(prefix) :]).exists()


def release_status(settings: Settings, url: str | None = None, last: int = 5) -> dict[str, Any]:
    """Everything ``recsys status`` shows, as JSON values: the aliases with each version's
    holdout nDCG and creation time, what makes the aliases and the history disagree
    (``release_problems``), the rejected versions with reasons, what the service at
    ``url`` (default ``http://serve_host:serve_port``) serves and its canary share (or a note
    why that is unknown), the ``last`` promotion moves and the ``last`` incidents. In a data dir
    with no registry yet nothing is created and ``registry_note`` says so (else None)."""
    # a new data dir: say so, do not create the registry (a file is refused as ever)
    fresh = not registry_exists(settings) and not settings.data_dir.is_file()
    client = None if fresh else configure_mlflow(settings)
    rows = []
    for alias, version in (dict.fromkeys(ALIASES) if fresh else aliases(settings)).items():
        mv = _version(client, settings, version) if version else None
        rows.append(
            {
                "alias": alias,
                "version": version,
                "holdout_ndcg": _holdout_ndcg(mv) if mv else None,
                # the k of that nDCG: versions trained with other --k are not comparable
                "holdout_k": _holdout_k(mv) if mv else None,
                "created": _created(mv.creation_timestamp) if mv else None,
            }
        )
    note = "no model registry yet ({}): `recsys train` registers the first model"
    return {
        "model": settings.model_name,
        "registry_note": note.format(settings.tracking_uri) if fresh else None,
        "aliases": rows,
        "problems": [] if fresh else release_problems(settings),
        "rejected": [] if fresh else rejected_versions(settings),
        "service": _service_status(settings, url),
        "moves": [m.as_dict() for m in promotion_history(settings)[-last:]] if last > 0 else [],
        "incidents": recent_incidents(settings, last),
    }
