"""The BentoML recommendation service.

    bentoml serve serving.service:RecommenderService --host 127.0.0.1 --port 3000
    recsys serve

At start it loads the model versions behind the ``champion`` and ``challenger`` aliases from the
MLflow registry of the active profile (``RECSYS_*`` settings) and runs a smoke prediction on
each; ``/readyz`` answers 200 once the champion passed. Endpoints (all ``POST`` with a JSON body):

    /recommend {"user_id": 1, "k": 10, "exclude": [3], "context": {...}}  ranked items
    /feedback {"request_id": "...", "user_id": 1, "item_id": 3, "event": "click"}
    /admin/status {}  /admin/reload {}  /admin/cache/flush {}  /admin/canary {"share": 0.2}

Admin endpoints need ``Authorization: Bearer $RECSYS_ADMIN_TOKEN``; without a token configured
they answer 404 "admin disabled". ``/metrics`` carries BentoML's series and ours
(``recsys_serving_*``).

Routing: a user goes to the challenger when sha256 of its id falls under ``canary_share``
(``serving.router``). The share starts at ``RECSYS_CANARY_SHARE``; ``/admin/canary`` sets it for
the challenger being served, and 0 stops that canary (``recsys reject`` does so). A stopped
canary does not stop the next one: when a reload swaps in a challenger version the service did
not hold while the share is 0, the share goes back to ``RECSYS_CANARY_SHARE`` (unless that is 0
too); a non-zero share set through ``/admin/canary`` is kept across a new challenger.

Then candidates (the release's sources) -> features -> ranker -> filters (``serving.ranking``).
The user and item features come from the Feast online store, with the release's own tables as
the fallback (``serving.features``); every answer says which in ``features`` ("online",
"release": never materialized, "release_fallback": the store failed or lacked rows). Degraded
paths never answer 5xx while anything can answer: unknown users get the cold-start list, a
failing model the user's last cached answer or the popularity list.
Reload (``/admin/reload`` or the poll every ``reload_interval_s``) loads a new version fully,
then swaps one reference, so a request in flight finishes on the model it started with.

``/readyz`` answers 200 once the champion is loaded and a smoke prediction passed through the
whole hot path, features included: with a materialized online store the item table is loaded
first; with none (never materialized) the service is ready on the release's features and
``/admin/status`` says ``features.source: not_materialized``; with an unreachable store it is
ready on the release's features, answers are flagged ``release_fallback`` and the store is
retried every few seconds.
"""

from __future__ import annotations

import copy
import gc
import hmac
import logging
import os
import sys
import tempfile
import threading
import time
import uuid
from array import array
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

import bentoml
import numpy as np
from pydantic import Field
from starlette.responses import JSONResponse

from recsys.config import get_settings
from recsys.contract import EVENT_TYPES
from recsys.errors import RecsysError
from recsys.registry import download_release, version_for_alias
from recsys.release import Release
from serving.batching import Coalescer
from serving.cache import CachedAnswer, RecommendationCache
from serving.features import RELEASE_FALLBACK, ServingFeatures
from serving.http import PAGES, EscapedControls, QuietClientErrors, RequestGuard, routed_series_only
from serving.logs import FeedbackLog, RequestLog, ServedRequests
from serving.metrics import ServingMetrics
from serving.ranking import RankedList, rank_for_user
from serving.router import CHALLENGER, CHAMPION, route
from serving.schemas import (
    MAX_ID,
    NULLABLE,
    ContextValue,
    FeedbackResponse,
    ItemId,
    RecommendResponse,
    ScoredItem,
)

logger = logging.getLogger("recsys.serving")

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
_SETTINGS = get_settings()
# BentoML's server logging config leaves the root logger at WARNING: without a level of their
# own, the service's INFO lines (which version serves, reloads, canary moves, the online store
# coming back) never reach the log. They go through BentoML's handler, in its format.
for _package in ("recsys", "features"):
    logging.getLogger(_package).setLevel(_SETTINGS.log_level)
# a client's bad input is an INFO line, not an ERROR with a traceback (serving.http)
logging.getLogger("bentoml._internal.server.http_app").addFilter(QuietClientErrors())
for _name in ("bentoml._internal.server.http_app", "bentoml.access"):
    logging.getLogger(_name).addFilter(EscapedControls())
MAX_K = _SETTINGS.max_k
MAX_EXCLUDE = _SETTINGS.max_exclude
ALIASES = (CHAMPION, CHALLENGER)


GIL_SWITCH_S = 0.001
"""The worker's GIL switch interval (Python's default: 5 ms). The event loop computes every
request while threads do the reloads, the store reads and the item-table refreshes; a thread
that releases the GIL (numpy, SQLite, sockets) otherwise waits up to the full default interval
to get it back from a busy loop, each time. Measured, it changed neither throughput nor p99,
and it did not keep a reload under load within the request timeout (``WARM_BUDGET_S`` did)."""


STORE_CALLS = 4
"""Most online-store reads of user rows in flight at once, each for every user waiting when it
started (``serving.batching``). One at a time used the least CPU but put a waiting request
behind the call in flight and its own: p99 at 8 clients on ML-100K 102-113 ms against 68 ms
with 4 on a slow day (``docs/benchmarks.md``)."""
WARM_BUDGET_S = 2.0
"""Most seconds a reload of a serving service spends computing candidate blocks ahead
(``Release.warm``) before the swap; a background thread warms the rest after it. Under load the
loading thread gets a small share of the GIL against the event loop, and an unbounded warm-up
held a reload past the 10 s request timeout. The first load (no traffic yet) warms fully."""


@dataclass(frozen=True)
class LoadedModel:
    """One release as served: which alias and version it is, and since when."""

    alias: str
    version: str
    release: Release
    loaded_at: float


def _error(ctx: bentoml.Context | None, status: int, message: str, **headers: str) -> JSONResponse:
    """A JSON error. With a context BentoML takes the status and headers from ``ctx.response``."""
    if ctx is not None:
        ctx.response.status_code = status
        ctx.response.metadata.update(headers)
    return JSONResponse({"error": message}, status_code=status, headers=headers or None)


def load_model(
    settings,
    alias: str,
    features: ServingFeatures | None = None,
    warm_budget_s: float | None = None,
) -> LoadedModel:
    """Download, load and smoke-test the release behind ``alias``: the item table of
    ``features`` is made to cover its catalog, then one prediction runs the whole hot path.
    With ``warm_budget_s`` the candidate warm-up stops after that long and a background thread
    finishes it (the release's memo is thread-safe).

    Raises:
        RecsysError: no such alias, the artifacts are incomplete, or the smoke prediction failed.
    """
    marks = [time.perf_counter()]
    with tempfile.TemporaryDirectory(prefix=f"recsys-{alias}-") as folder:
        version, release_dir = download_release(settings, alias, Path(folder))
        marks.append(time.perf_counter())
        release = Release.load(release_dir)
    marks.append(time.perf_counter())
    release.warm(settings.candidate_memo_mb, budget_s=warm_budget_s)
    marks.append(time.perf_counter())
    if features is not None:
        features.cover(release.item_ids, release.users_by_activity(settings.user_rows_ahead))
    probe = int(release.user_ids[0]) if release.n_users else 0
    try:
        answer = rank_for_user(release, probe, 1, [], features)
    except Exception as exc:
        raise RecsysError(f"smoke prediction of version {version} failed: {exc}") from None
    if release.n_items and len(answer.item_ids) == 0:
        raise RecsysError(f"smoke prediction of version {version} for user {probe} was empty")
    marks.append(time.perf_counter())
    if warm_budget_s is not None:
        threading.Thread(
            target=release.warm,
            args=(settings.candidate_memo_mb,),
            name=f"recsys-warm-{alias}-{version}",
            daemon=True,
        ).start()
    steps = dict(zip(("download", "load", "warm", "features+smoke"), np.diff(marks), strict=True))
    logger.info(
        "loaded %s version %s in %.2fs (%s)",
        alias,
        version,
        marks[-1] - marks[0],
        ", ".join(f"{name} {seconds:.2f}s" for name, seconds in steps.items()),
    )
    return LoadedModel(alias, version, release, time.time())


def lake_popularity(settings, limit: int = 1000) -> tuple[np.ndarray, np.ndarray] | None:
    """(item ids, interaction counts) of the most popular items in the clean lake, or None."""
    try:
        counts = settings.lake.read_clean_interactions()["item_id"].value_counts().head(limit)
    except Exception as exc:  # the degraded path of last resort must not fail the start
        logger.warning("no popularity list from the lake: %s", exc)
        return None
    return counts.index.to_numpy(dtype=np.int64), counts.to_numpy(dtype=np.float64)


# bound to RECSYS_SERVE_HOST (127.0.0.1 by default) when `bentoml serve` is run without --host;
# BentoML's own default is 0.0.0.0, every interface of the machine
@bentoml.service(
    name="recsys",
    traffic={"timeout": 10},
    workers=1,
    http={"host": _SETTINGS.serve_host, "port": _SETTINGS.serve_port},
)
class RecommenderService:
    """Serves the champion (and a canary challenger) over HTTP, reloading them by alias."""

    def __init__(self) -> None:
        settings = self.settings = _SETTINGS
        sys.setswitchinterval(GIL_SWITCH_S)  # this process is the service's worker
        self._models: dict[str, LoadedModel] = {}
        self.load_error: str | None = None
        self.canary_share = settings.canary_share
        self.cache = RecommendationCache(settings.cache_size)
        self.metrics = ServingMetrics()
        self.features = ServingFeatures(settings)
        self._before_fault: dict[str, LoadedModel] = {}
        logs = settings.data_dir / "logs"
        self.feedback_log = FeedbackLog(logs / "feedback")
        self.request_log = RequestLog(
            logs / "requests",
            settings.request_log_sample,
            int(settings.request_log_max_mb * 2**20),
            seed=settings.seed,
        )
        self.served = ServedRequests()
        # the requests that wait on the online store share its calls (see _reads_store)
        self.user_reads = Coalescer(self.features.prefetch_users, parallel=STORE_CALLS)
        self._reload_lock = threading.Lock()
        self._share_lock = threading.Lock()  # /admin/canary vs a reload's resume
        self._refused: dict[str, tuple[str, str]] = {}
        self.last_reload: dict[str, Any] = {}
        self.reload()
        self.popularity = None if CHAMPION in self._models else lake_popularity(settings)
        self._stop = threading.Event()
        if settings.reload_interval_s > 0:
            threading.Thread(target=self._poll, name="recsys-reload", daemon=True).start()
        _freeze_heap()

    # ---- model lifecycle -------------------------------------------------------------------

    def reload(self, *, retry_refused: bool = True) -> dict[str, Any]:
        """Point each alias at the version the registry names; load new versions fully before
        swapping them in. A version that fails to load leaves the served one in place and is
        remembered, so the poll (``retry_refused=False``) does not download it again.

        A challenger version not held before (another version, or none was held) starts a new
        canary: a share of 0 (an earlier canary stopped through ``/admin/canary``) goes back to
        the configured ``canary_share`` once it is swapped in. A non-zero share is kept as is."""
        with self._reload_lock:
            current = self._models
            models = dict(current)
            changed: dict[str, str | None] = {}
            errors: dict[str, str] = {}
            for alias in ALIASES:
                try:
                    wanted = version_for_alias(self.settings, alias)
                except Exception as exc:  # registry down: keep serving what is loaded
                    errors[alias] = f"registry unavailable: {exc}"
                    continue
                held = current.get(alias)
                if wanted is None:
                    if held is not None and alias == CHALLENGER:
                        del models[alias]
                        changed[alias] = None
                    elif alias == CHAMPION and held is None:
                        errors[alias] = (
                            f"no model version has alias {alias!r} in "
                            f"{self.settings.model_name!r}; run `recsys train` first"
                        )
                    continue
                if held is not None and held.version == wanted:
                    continue
                if not retry_refused and self._refused.get(alias, (None,))[0] == wanted:
                    errors[alias] = self._refused[alias][1]
                    continue
                twin = next((m for m in current.values() if m.version == wanted), None)
                try:
                    # a version already served under another alias is shared, not loaded twice
                    loaded = (
                        LoadedModel(alias, wanted, twin.release, twin.loaded_at)
                        if twin is not None
                        # a serving service warms for WARM_BUDGET_S, then in the background
                        else load_model(
                            self.settings,
                            alias,
                            self.features,
                            WARM_BUDGET_S if current else None,
                        )
                    )
                except Exception as exc:
                    errors[alias] = str(exc)
                    self._refused[alias] = (wanted, str(exc))
                    logger.error("could not load %s version %s: %s", alias, wanted, exc)
                    continue
                models[alias] = loaded
                changed[alias] = loaded.version
                logger.info("serving %s version %s", alias, loaded.version)
            self._models = models  # one reference swap: requests keep the dict they read
            # after the swap: a stopped challenger must never get traffic back
            self._resume_canary(changed.get(CHALLENGER))
            retired = self.cache.retire({m.version for m in models.values()})
            if changed:
                _freeze_heap()
            self.load_error = errors.get(CHAMPION) if CHAMPION not in models else None
            self.metrics.set_models(
                {a: (m.version, m.loaded_at, m.release.meta) for a, m in models.items()}
            )
            for alias in changed:
                self.metrics.inc("reloads_total", "Model swaps by alias.", alias=alias)
            self.last_reload = {
                "at": time.time(),
                "changed": changed,
                "errors": errors,
                "served": {a: m.version for a, m in models.items()},
                "cache_entries_retired": retired,
            }
            return self.last_reload

    def _resume_canary(self, challenger: str | None) -> None:
        """A new ``challenger`` version was swapped in: a share of 0 is the stop of an earlier
        canary, not of this one, so the configured share applies again (when it is not 0)."""
        configured = self.settings.canary_share
        with self._share_lock:  # a share set by hand meanwhile is not overwritten
            if challenger is None or self.canary_share != 0 or configured == 0:
                return
            self.canary_share = configured
        logger.info("canary share 0 -> %s for the new challenger v%s", configured, challenger)

    def _poll(self) -> None:
        while not self._stop.wait(self.settings.reload_interval_s):
            try:
                self.reload(retry_refused=False)
            except Exception:  # the poll must outlive any one failure
                logger.exception("reload poll failed")

    def __is_ready__(self) -> bool:
        return CHAMPION in self._models

    # ---- recommend -------------------------------------------------------------------------

    @bentoml.api(route="/recommend")
    async def recommend(
        self,
        ctx: bentoml.Context,
        user_id: Annotated[
            int, Field(ge=0, le=MAX_ID, strict=True, description="The user to recommend for.")
        ],
        k: Annotated[int, Field(ge=1, le=MAX_K, strict=True, description="How many items.")] = 10,
        exclude: Annotated[
            list[ItemId], Field(max_length=MAX_EXCLUDE, description="Items never to return.")
        ] = [],  # noqa: B006 - pydantic copies defaults
        context: Annotated[
            dict[str, ContextValue] | None,
            Field(
                max_length=32,
                description="Free request context, kept in the request log.",
                json_schema_extra={"nullable": True},
            ),
        ] = None,
    ) -> RecommendResponse:
        """Top-k items the user has not seen and did not exclude, best first."""
        started = time.perf_counter()
        models = self._models  # read once: a reload swaps the dict, never mutates it
        variant = route(user_id, self.canary_share, CHALLENGER in models)
        model = models.get(variant)
        mark = self._stage("route", started)
        store_s = 0.0
        if self._reads_store(model, user_id):
            # only the read waits on a worker thread, shared with the other requests waiting
            # on one (serving.batching): a thread holding the GIL for the whole pipeline
            # would stall the event loop (and every other request) in turn
            await self.user_reads.wait(user_id)
            store_s = time.perf_counter() - mark
            mark += store_s
        return self._recommend(
            ctx, user_id, k, exclude, context, started, mark, models, variant, store_s
        )

    def _reads_store(self, model: LoadedModel | None, user_id: int) -> bool:
        """Whether answering ``user_id`` with ``model`` now may wait on the online store (its
        user row is due for a re-read): that read runs first, on a worker thread, batched with
        the other requests' reads of that moment. Everything else runs on the event loop: a
        sub-millisecond computation, cheaper than the hop to a thread and back (the hop alone
        cost more than the whole pipeline: see ``docs/benchmarks.md``)."""
        if model is None:
            return False
        if model.release.user_row(user_id) is None:  # only for what they had since the cut
            return self.features.has_recent_items(user_id)[0] and self.features.reads_store(user_id)
        return model.release.ranker is not None and self.features.reads_store(user_id)

    def _recommend(
        self,
        ctx: bentoml.Context,
        user_id: int,
        k: int,
        exclude,
        context,
        started: float,
        mark: float,
        models: dict[str, LoadedModel],
        variant: str,
        store_s: float,
    ) -> RecommendResponse | JSONResponse:
        """The answer to a routed request; ``store_s``: time its user row took to read
        (counted in the features stage), ``mark``: when that read ended."""
        cached = False
        model = models.get(variant)
        reasons: tuple[str, ...] = ()
        if model is None:
            answer = self._degraded(user_id, k, exclude, models)
            if answer is None:
                return _error(ctx, 503, f"no model loaded: {self.load_error}")
        else:
            key = self.cache.key(model.version, user_id, k, exclude, self.features.epoch)
            hit = self.cache.get(key)
            cached = hit is not None
            self.metrics.inc("cache_requests_total", result="hit" if hit else "miss")
            mark = self._stage("cache", mark)
            if hit is not None:
                fallback = _cold_or_none(model, user_id)
                # the variant is this request's route: a promoted challenger's cached answers
                # are the champion's now (the key holds the version, not the alias)
                answer = (
                    variant,
                    hit.version,
                    hit.item_ids,
                    hit.scores,
                    fallback,
                    hit.features,
                )
            else:
                try:
                    ranked = rank_for_user(model.release, user_id, k, exclude, self.features)
                except Exception:
                    logger.exception("model %s failed for user %s", model.version, user_id)
                    self.metrics.inc("model_errors_total", variant=variant, version=model.version)
                    answer = self._degraded(user_id, k, exclude, models)
                    if answer is None:
                        return _error(ctx, 503, "the model failed and no fallback could answer")
                else:
                    answer = self._ranked_answer(key, variant, model, ranked, exclude, k, store_s)
                    reasons = ranked.feature_reasons
                self._stage("model", mark)
        served_variant, version, items, scores, fallback, features = answer
        response = RecommendResponse(
            request_id=uuid.uuid4().hex,
            user_id=user_id,
            items=[ScoredItem(item_id=i, score=s) for i, s in zip(items, scores, strict=True)],
            model_version=version,
            variant=served_variant,
            fallback=fallback,
            features=features,
            cached=cached,
        )
        self._account(response, k, exclude, context, started, reasons)
        return response

    def _ranked_answer(
        self,
        key,
        variant: str,
        model: LoadedModel,
        ranked: RankedList,
        exclude,
        k: int,
        store_s: float = 0.0,
    ) -> tuple:
        """The answer tuple of a ranked list; cached unless its features were a fallback (the
        next request should try the online store again) or it is a cold-start list made while
        the users with recent items were loading (``RankedList.cacheable``). ``store_s``: the
        user row's read before the pipeline ran, part of its features stage."""
        for stage, seconds in ranked.seconds.items():
            self.metrics.observe_stage(stage, seconds + (store_s if stage == "features" else 0))
        items, scores = _filtered(ranked.item_ids, ranked.scores, exclude, k)
        if ranked.features != RELEASE_FALLBACK and ranked.cacheable:
            self.cache.put(
                key, CachedAnswer(model.version, variant, items, scores, ranked.features)
            )
        return (variant, model.version, items, scores, ranked.fallback, ranked.features)

    def _degraded(
        self, user_id: int, k: int, exclude: list[int], models: dict[str, LoadedModel]
    ) -> tuple | None:
        """The answer when the routed model is missing or failed: the user's last good answer
        (``cache``), topped up to ``k`` with popular items when it is shorter, else a loaded
        release's popularity list, else the lake's (``degraded``); None if nothing can answer.
        Items the user has seen (when a loaded release knows the user, or the online store's
        row of the user read for this request or kept from an earlier one lists them: no store
        read here) and excluded items are never in it."""
        recent = self.features.kept_recent_items(user_id).tolist()
        avoid = [*exclude, *_seen_items(models, user_id), *recent]
        last = self.cache.last_good(user_id)
        if last is not None:
            items, scores = _filtered(last.item_ids, last.scores, avoid, k)
            if items:
                if len(items) < k:
                    more = self._popular(k - len(items), [*avoid, *items], models)
                    if more is not None:
                        items, scores = items + more[1], scores + more[2]
                return (last.variant, last.version, items, scores, "cache", last.features)
        popular = self._popular(k, avoid, models)
        if popular is None:
            return None
        version, items, scores = popular
        return (None, version, items, scores, "degraded", None)

    def _popular(
        self, k: int, avoid: list[int], models: dict[str, LoadedModel]
    ) -> tuple[str | None, tuple[int, ...], tuple[float, ...]] | None:
        """(version, items, scores): the top ``k`` items not in ``avoid`` of a loaded release's
        cold-start list, else of the lake's popularity; None when neither exists."""
        for model in models.values():
            try:
                rec = model.release.cold_start(k, avoid)
            except Exception:
                continue
            return (model.version, *_filtered(rec.item_ids, rec.scores, avoid, k))
        if self.popularity is not None:
            return (None, *_filtered(*self.popularity, avoid, k))
        return None

    def _stage(self, stage: str, since: float) -> float:
        now = time.perf_counter()
        self.metrics.observe_stage(stage, now - since)
        return now

    def _account(
        self,
        response: RecommendResponse,
        k,
        exclude,
        context,
        started: float,
        feature_reasons: tuple[str, ...] = (),
    ) -> None:
        self.served.remember(
            response.request_id,
            {
                "variant": response.variant,
                "model_version": response.model_version,
                "user_id": response.user_id,
                # 8 bytes an item: what /feedback checks a click against
                "items": array("q", (item.item_id for item in response.items)),
            },
        )
        self.metrics.record_answer(
            response.variant, response.model_version, response.fallback, len(response.items)
        )
        if response.features:
            self.metrics.inc("feature_answers_total", features=response.features)
        for reason in feature_reasons:
            self.metrics.inc("feature_fallbacks_total", reason=reason)
        # built only for the sampled requests; a write the disk refuses costs the sample only
        failed = self.request_log.failed
        self.request_log.maybe_write(
            lambda: {
                "request_id": response.request_id,
                "user_id": response.user_id,
                "k": k,
                "exclude": exclude,
                "context": context,
                "items": [it.item_id for it in response.items],
                "scores": [round(float(it.score), 6) for it in response.items],
                "variant": response.variant,
                "model_version": response.model_version,
                "fallback": response.fallback,
                "features": response.features,
                "feature_reasons": list(feature_reasons),
                "cached": response.cached,
                "latency_ms": round((time.perf_counter() - started) * 1000, 3),
            }
        )
        if self.request_log.failed != failed:
            self.metrics.inc("log_write_errors_total", log="requests")
        self._stage("total", started)

    # ---- feedback --------------------------------------------------------------------------

    @bentoml.api(route="/feedback")
    def feedback(
        self,
        request_id: Annotated[str, Field(min_length=1, max_length=64)],
        user_id: Annotated[int, Field(ge=0, le=MAX_ID, strict=True)],
        item_id: ItemId,
        event: Literal[EVENT_TYPES],  # type: ignore[valid-type]
        value: Annotated[
            float | None,
            Field(ge=0, le=1e6, strict=True, allow_inf_nan=False, json_schema_extra=NULLABLE),
        ] = None,
    ) -> FeedbackResponse:
        """Durably record a user's reaction to an item of a /recommend answer.

        The event is tied to the variant and model version that served ``request_id``. An
        unknown request_id (older than this process remembers) is still kept, unattributed:
        losing real feedback is worse than an event without a variant. An event on an item the
        answer did not show is kept too, with ``shown: false``, but a click or purchase on it
        does not count toward the variant's CTR or conversion: the canary's verdict rests on
        them. A request_id that served another user is a 409.
        """
        if event == "rating" and (value is None or not 0.5 <= value <= 5):
            return _error(None, 400, "a rating event needs a value between 0.5 and 5 stars")
        served = self.served.lookup(request_id)
        if served is not None and served["user_id"] != user_id:
            return _error(
                None,
                409,
                f"request {request_id} served user {served['user_id']}, not user {user_id}",
            )
        variant = served["variant"] if served else None
        version = served["model_version"] if served else None
        shown = item_id in served["items"] if served else None
        try:
            self.feedback_log.append(
                {
                    "request_id": request_id,
                    "user_id": user_id,
                    "item_id": item_id,
                    "event": event,
                    "value": value,
                    "variant": variant,
                    "model_version": version,
                    "attributed": served is not None,
                    "shown": shown,
                }
            )
        except OSError as exc:  # the disk refused it: the client must know it was not kept
            self.metrics.inc("log_write_errors_total", log="feedback")
            logger.error("the feedback log cannot be written: %s", exc)
            return _error(
                None,
                503,
                f"the feedback was not recorded: its log cannot be written ({exc.strerror}); "
                "nothing was kept, send it again later",
            )
        self.metrics.record_feedback(event, served, shown)
        return FeedbackResponse(
            request_id=request_id,
            attributed=served is not None,
            shown=shown,
            variant=variant,
            model_version=version,
        )

    # ---- admin -----------------------------------------------------------------------------

    def _admin_denied(self, ctx: bentoml.Context) -> JSONResponse | None:
        token = self.settings.admin_token
        secret = token.get_secret_value() if token is not None else ""
        if not secret:
            return _error(ctx, 404, "admin disabled: set RECSYS_ADMIN_TOKEN to enable /admin")
        scheme, _, given = ctx.request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(
            given.strip().encode(), secret.encode()
        ):
            return _error(
                ctx,
                401,
                "admin needs Authorization: Bearer <token>",
                **{"WWW-Authenticate": "Bearer"},
            )
        return None

    @bentoml.api(route="/admin/status")
    def admin_status(self, ctx: bentoml.Context) -> dict:
        """What is served, the cache, the canary share and the last reload."""
        denied = self._admin_denied(ctx)
        if denied is not None:
            return denied
        return self.status()

    def status(self) -> dict[str, Any]:
        models = self._models
        now = time.time()
        return {
            "ready": CHAMPION in models,
            "load_error": self.load_error,
            "models": {
                a: {"version": m.version, "age_s": round(now - m.loaded_at, 3)}
                for a, m in models.items()
            },
            "canary_share": self.canary_share,
            "cache": {
                "entries": len(self.cache),
                "capacity": self.cache.capacity,
                "hits": self.cache.hits,
                "retired": self.cache.retired,
                "misses": self.cache.misses,
                "stale_entries": self.cache.stale_entries({m.version for m in models.values()}),
            },
            "features": {
                **self.features.status(),
                "user_reads": {"calls": self.user_reads.calls, "users": self.user_reads.keys},
            },
            "last_reload": self.last_reload,
            "reload_interval_s": self.settings.reload_interval_s,
            "request_log": {
                "sample": self.request_log.sample,
                "written": self.request_log.written,
                "write_errors": self.request_log.failed,
                "last_error": self.request_log.last_error,
                "disk_bytes": self._request_log_bytes(),
            },
        }

    def _request_log_bytes(self) -> int | None:
        try:
            return self.request_log.disk_bytes()
        except OSError:  # a folder it cannot list (request_log.last_error says why)
            return None

    @bentoml.api(route="/admin/reload")
    def admin_reload(self, ctx: bentoml.Context) -> dict:
        """Reload every alias now; answers what changed and what failed."""
        denied = self._admin_denied(ctx)
        if denied is not None:
            return denied
        return self.reload()

    @bentoml.api(route="/admin/cache/flush")
    def admin_cache_flush(self, ctx: bentoml.Context) -> dict:
        """Empty the recommendation cache."""
        denied = self._admin_denied(ctx)
        if denied is not None:
            return denied
        return {"flushed": self.cache.flush()}

    @bentoml.api(route="/admin/canary")
    def admin_canary(
        self,
        ctx: bentoml.Context,
        share: Annotated[
            float,
            Field(
                ge=0.0,
                le=1.0,
                strict=True,
                allow_inf_nan=False,
                description="Challenger share of users.",
            ),
        ],
    ) -> dict:
        """Set the share of users the challenger serves (0 stops the canary). The share holds
        for the challenger it was set for: a share of 0 goes back to the configured
        ``RECSYS_CANARY_SHARE`` when a reload swaps in a new challenger version."""
        denied = self._admin_denied(ctx)
        if denied is not None:
            return denied
        with self._share_lock:
            previous, self.canary_share = self.canary_share, share
        logger.info("canary share %s -> %s", previous, share)
        return {"canary_share": share, "previous": previous}

    @bentoml.api(route="/admin/fault")
    def admin_fault(
        self,
        ctx: bentoml.Context,
        name: Annotated[
            Literal["stale-cache", "model-error", "clear"],
            Field(description="The fault to inject, or clear to undo model-error."),
        ],
    ) -> dict:
        """Fault drills: only when the service runs with ``RECSYS_FAULT_INJECTION=true`` (the
        demo and the tests); 404 otherwise. ``stale-cache`` stamps every cache entry with a
        superseded model version, as a cache that survived a deploy would hold.
        ``model-error`` makes every served model fail when it ranks (its ranker's input
        standardisation loses a column, as a release packed against another feature layout
        would), while loading and cold start still work; ``clear`` restores the models."""
        denied = self._admin_denied(ctx)
        if denied is not None:
            return denied
        if not self.settings.fault_injection:
            return _error(ctx, 404, "fault injection is disabled (RECSYS_FAULT_INJECTION)")
        if name == "model-error":
            return self._break_models()
        if name == "clear":
            return self._restore_models()
        champion = self._models.get(CHAMPION)
        current = champion.version if champion else "0"
        superseded = str(int(current) - 1) if current.isdigit() and int(current) > 1 else "0"
        entries = self.cache.restamp(superseded)
        logger.warning("fault drill %s: %d cache entries stamped v%s", name, entries, superseded)
        return {"fault": name, "entries": entries, "stamped_version": superseded}

    def _break_models(self) -> dict:
        with self._reload_lock:
            broken: dict[str, LoadedModel] = {}
            for alias, model in self._models.items():
                if model.release.ranker is None:
                    continue
                self._before_fault.setdefault(alias, model)
                ranker = copy.copy(model.release.ranker)
                ranker.mean = ranker.mean[:-1]  # a width the feature rows no longer match
                release = copy.copy(model.release)
                release.ranker = ranker
                broken[alias] = LoadedModel(alias, model.version, release, model.loaded_at)
            self._models = {**self._models, **broken}
        logger.warning("fault drill model-error: %s rank with a broken ranker", sorted(broken))
        return {"fault": "model-error", "models": sorted(broken)}

    def _restore_models(self) -> dict:
        with self._reload_lock:
            models = dict(self._models)
            restored = [
                alias
                for alias, original in self._before_fault.items()
                if alias in models and models[alias].version == original.version
            ]
            models.update({alias: self._before_fault[alias] for alias in restored})
            self._models = models
            self._before_fault = {}
        logger.warning("fault drill cleared: %s restored", restored)
        return {"fault": "clear", "models": sorted(restored)}

    def __metrics__(self, content: str) -> str:
        extra = {
            "cache_entries": ("Entries in the recommendation cache.", float(len(self.cache))),
            "feature_user_rows_kept": (
                "Users whose online feature row is kept in memory (read ahead or on request).",
                float(self.features.kept_rows),
            ),
            "canary_share": ("Share of users routed to the challenger.", self.canary_share),
            "ready": (
                "1 once the champion is loaded and passed its smoke prediction (/readyz 200).",
                float(CHAMPION in self._models),
            ),
        }
        features = {**self.features.freshness(), "source": self.features.state}
        content = routed_series_only(content, _ENDPOINTS)
        return content + self.metrics.render(extra, features=features)


def _freeze_heap() -> None:
    """Collect, then move every object alive now out of the cyclic GC's reach. The libraries and
    models are ~500k tracked objects: a full collection over them stalls a request ~0.3 s."""
    gc.collect()
    gc.freeze()


def _filtered(
    item_ids, scores, exclude: list[int], k: int
) -> tuple[tuple[int, ...], tuple[float, ...]]:
    """At most ``k`` items, in order, without excluded items or duplicates."""
    dropped = set(exclude)
    items: list[int] = []
    kept: list[float] = []
    for item, score in zip(item_ids, scores, strict=True):
        item = int(item)
        if item in dropped:
            continue
        dropped.add(item)
        items.append(item)
        kept.append(float(score))
        if len(items) == k:
            break
    return tuple(items), tuple(kept)


def _seen_items(models: dict[str, LoadedModel], user_id: int) -> list[int]:
    """The items ``user_id`` has seen, by the first loaded release that can tell (none: []):
    one that knows the user, or had their events from before its training window."""
    for model in models.values():
        try:
            seen = model.release.seen_item_ids(user_id)
            if len(seen) or model.release.user_row(user_id) is not None:
                return seen.tolist()
        except Exception:  # a broken release says nothing; the next may
            continue
    return []


def _cold_or_none(model: LoadedModel, user_id: int) -> str | None:
    """``cold_start`` when the model does not know ``user_id`` (a cached cold-start list)."""
    return "cold_start" if model.release.user_row(user_id) is None else None


def _refuse_unknown_fields(service) -> None:
    """A body field an endpoint does not have is a 400 naming it (``K: Extra inputs are not
    permitted``): pydantic's default, which BentoML's input models keep, ignores it, so a typo
    such as ``{"user_id": 1, "K": 5}`` silently answered 10 items. The OpenAPI document says
    ``additionalProperties: false``."""
    for method in service.apis.values():
        spec = method.input_spec
        spec.model_config["extra"] = "forbid"  # the model's own config (pydantic copies it)
        spec.model_rebuild(force=True)


_refuse_unknown_fields(RecommenderService)
# Bounds the body before BentoML parses it, makes 400s name the field, and publishes an OpenAPI
# document whose error answers and required bodies are the real ones (serving/http.py).
_ENDPOINTS = PAGES | {api.route for api in RecommenderService.apis.values()}
"""The paths whose BentoML request series ``/metrics`` shows: no made-up path's."""
RecommenderService.add_asgi_middleware(
    RequestGuard,
    max_body_bytes=_SETTINGS.max_body_kb * 1024,
    body_timeout_s=_SETTINGS.body_timeout_s,
)
