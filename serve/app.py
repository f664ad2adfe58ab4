"""The GReF Ray Serve application: reranker replicas per A/B arm behind a FastAPI router.

    serve run serve.app:build_app                  # defaults: GReF champion vs NAR4Rec (the paper's Table 4)
    serve deploy serve/config.yaml                 # on a running cluster; re-deploy to change weights

- ``Reranker`` (one deployment per arm): a registered model version (``models:/name@alias``), a
  run (``runs:/...``) or a model directory -- GReF or any baseline of gref.baselines; on the GPU
  when the replica has one; requests are batched with ``@serve.batch`` and decoded (GReF: OMTP
  with KV cache) in one padded batch per list length.
- ``colocate: true``: the Router runs the arms' ``Reranker`` code itself (batched alike) instead of
  calling their deployments -- one process hop less per request; the arms then scale with the
  Router (``routers``), not on their own.
- ``Router`` (FastAPI ingress): ``POST /rerank``, ``POST /feedback``, ``GET /healthz`` (open),
  ``GET /metrics`` (Prometheus text), ``GET /stats`` (the same counters as JSON). With an API-key
  file (``api_keys``; keys made by ``python -m jobs.apikey``) every endpoint but /healthz needs a
  key with its scope (401 without or with an unknown key, 403 without the scope), and feedback is
  accepted only from the client that was served the list. The arm is a sticky function of the
  user id (``gref.serving.ab``); weights and salt are the Router's ``user_config``, applied in
  place by ``reconfigure`` (no restart, no dropped request). Served lists (the candidates with the
  serving model's feature columns only) and feedback go to a sqlite file or PostgreSQL before the
  answer (``gref.serving.feedback``; off the event loop, a 503 with the reason when the database
  is locked, full or unreachable) and export as raw logs for
  ``jobs.prepare``. A request_id the client chose makes a retry idempotent: the same body gets
  the stored answer, another body a 409. Every answer names the model version that ran it, and
  carries a ``Server-Timing`` header: where its time went (``server_timing``).
"""

# no `from __future__ import annotations` here: FastAPI must see the real `Request` type of the
# Router's methods (Serve's class-based ingress resolves them outside this module's globals)
import asyncio
import logging
import os
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from ray import serve
from ray.serve.handle import DeploymentHandle

from gref.config import from_dict
from gref.serving.ab import assign_arm, check_weights, experiment_salt, user_unit
from gref.serving.auth import Authenticator, AuthError, presented_key
from gref.serving.feedback import DuplicateRequest, ReopeningStore, StoreError, UnknownRequest
from gref.serving.requests import (
    RequestError,
    check_content_type,
    encode_batch,
    parse_feedback,
    parse_json,
    parse_rerank,
)
from gref.serving.stats import METRICS_CONTENT_TYPE, RouterStats


@dataclass
class ServeConfig:
    """``args`` of the application (serve/config.yaml or ``serve run serve.app:build_app key=value``)."""

    arms: dict = field(default_factory=lambda: {  # arm name -> model URI (registry alias, run, directory)
        "gref": "models:/gref-reranker@champion", "nar4rec": "models:/gref-nar4rec@champion"})  # Table 4
    weights: dict = field(default_factory=dict)  # arm -> traffic weight; {} = equal (user_config overrides)
    salt: str = ""  # part of the user hash: a new salt reshuffles users; "" = one per experiment (hash of the arms)
    tracking_uri: str = ""  # MLflow store of the registry; "" = $MLFLOW_TRACKING_URI or ./mlflow.db
    api_keys: str = ""  # API-key file (python -m jobs.apikey); "" = $GREF_API_KEYS_FILE; neither = no auth (loopback only)
    feedback_db: str = "runs/serve/feedback.db"  # served lists + feedback: a sqlite file (made absolute; one
    #                                             Router) or a postgresql://user:pass@host/db URL (several Routers)
    replicas: int = 1  # reranker replicas per arm (ignored when autoscaling is set)
    routers: int = 1  # Router replicas; more than one wants a postgresql:// feedback_db (sqlite: one writer host)
    autoscaling: dict = field(default_factory=dict)  # e.g. {min_replicas: 1, max_replicas: 4, target_ongoing_requests: 8}
    reranker_cpus: float = 0.25  # CPUs per reranker replica (fractional: 2-core laptops)
    reranker_gpus: float = -1.0  # GPUs per reranker replica; -1 = 0.25 (4 share a GPU) when the cluster has GPUs, else 0
    router_cpus: float = 0.1
    router_resources: dict = field(default_factory=dict)  # custom resources, e.g. {gref_head: 0.01} pins the
    #                                                       Router and its sqlite file to the head (cluster.yaml)
    max_batch_size: int = 16  # @serve.batch: requests decoded together
    colocate: bool = False  # the Router decodes the arms itself: one hop less; arms scale with `routers`
    decode_mode: str = "auto"  # eager | compile | cuda_graphs (gref.model.accel); auto = cuda_graphs on a GPU, else eager
    batch_wait_timeout_s: float = 0.0  # @serve.batch: how long a batch waits to fill; 0 = never idle: a batch is
    #                                    what queued while the previous one ran (benchmarks.serve: 0.005 was slower)
    max_candidates: int = 200  # per request
    max_n: int = 32  # longest list a request may ask for (the model's max_length caps it too)
    max_body_bytes: int = 1_000_000
    body_timeout_s: float = 10.0  # a request body must arrive within this (slow clients get a 408, not a slot)
    store_timeout_s: float = 2.0  # longest wait for the feedback store's lock; then a 503 with the reason
    retention_days: float = 0.0  # served lists (and their feedback) older than this are deleted; 0 = kept
    explore: float = 0.0  # share of requests served a list sampled from the model (GReF arms), not its greedy
    #                       list: training data with alternatives; the list's log-probability is stored
    explore_temperature: float = 1.0  # sampling temperature of those lists (1 = the model's own distribution)


def _device():
    import torch

    return torch.device("cuda" if torch.cuda.is_available() else "cpu")  # a num_gpus replica may still lack CUDA


@serve.deployment(max_ongoing_requests=32)
class Reranker:
    def __init__(self, arm: str, model_uri: str, tracking_uri: str, max_batch_size: int, batch_wait_timeout_s: float,
                 decode_mode: str = "auto", explore_temperature: float = 1.0):
        import mlflow

        from gref import tracking
        from gref.data.features import FeatureSpec
        from gref.reranker_io import load_reranker

        if tracking_uri:
            mlflow.set_tracking_uri(tracking_uri)
        pinned, version = tracking.pin_version(model_uri)  # one resolution: what is loaded is what is reported
        directory = tracking.reranker_dir(pinned)
        self.device = _device()
        self.model = load_reranker(directory, self.device)
        from gref.model.accel import accelerated_rerank

        if decode_mode == "auto":
            decode_mode = "cuda_graphs" if self.device.type == "cuda" else "eager"
        self.decode = accelerated_rerank(self.model, decode_mode)  # the same lists as model.rerank, tested
        from gref.model.reranker import GenReranker

        self.explorable = isinstance(self.model, GenReranker)  # a list can be sampled (and its probability known)
        self.explore_temperature = explore_temperature
        self.spec = FeatureSpec.load(directory / "features.json")
        self.features = ["item_id", *self.spec.num_cols, *self.spec.cat_cols]  # what the store keeps of a candidate
        # in every answer: the weights that ran (the Router caches nothing; a replica restarted
        # after the alias moved serves, and says, the new version)
        self.served_by = {"name": model_uri, "version": version, "kind": getattr(self.model.cfg, "kind", "gref"),
                          "heads": getattr(self.model, "k", None)}
        logging.getLogger("ray.serve").info("reranker %s: %s on %s, decode %s", arm, pinned, self.device, decode_mode)
        # a batch queue of this instance's own: @serve.batch on a method keeps one queue per class and
        # runs each batch on its first request's instance -- a Router colocating two arms (two
        # instances in one process) decoded one arm's requests with the other arm's model
        self.rerank = serve.batch(max_batch_size=max_batch_size, batch_wait_timeout_s=batch_wait_timeout_s)(
            self._rerank_batch)

    async def _rerank_batch(self, requests: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """``rerank`` (batched: one call per request, answered from a batch of them). Each request:
        {"candidates": [...validated...], "n": int, "explore": bool} -> {"order":
        [candidate indices], "model": the name, version, kind and heads of the weights that ran,
        "explored": whether the list was sampled (explore, on a GReF model), "log_propensity": its
        log-probability under the sampling policy (0 for the greedy list), "timing": ms spent
        before the batch ran ("queue": the hop from the Router + the batch's wait, from the
        request's "sent_at" wall time) and in the batch's "encode" and "decode"} or {"error":
        message} for a request this model cannot serve."""
        import numpy as np
        import torch

        from gref.model.decoding import decode

        started = time.time()
        encode_s = decode_s = 0.0
        limit_m, limit_n = self.model.cfg.max_candidates, self.model.cfg.max_length
        out: list[dict[str, Any] | None] = [None] * len(requests)
        ok = []
        for i, r in enumerate(requests):
            if len(r["candidates"]) > limit_m or r["n"] > limit_n:
                out[i] = {"error": f"this model serves at most {limit_m} candidates and n <= {limit_n}"}
            else:
                ok.append(i)
        if ok:
            num, cat, mask = encode_batch([requests[i]["candidates"] for i in ok], self.spec)
            num_t, cat_t, mask_t = (torch.from_numpy(a).to(self.device) for a in (num, cat, mask))
            encode_s = time.time() - started
            ns = np.array([requests[i]["n"] for i in ok])
            explore = np.array([self.explorable and requests[i].get("explore", False) for i in ok])
            # one decode per distinct (n, explore): a non-autoregressive model's list depends on its length
            for n, sampled in {(int(n), bool(e)) for n, e in zip(ns, explore)}:
                rows = np.flatnonzero((ns == n) & (explore == sampled))
                sel = torch.from_numpy(rows).to(self.device)
                with torch.no_grad():  # any platform reranker: GReF's OMTP decoding or a baseline's
                    if sampled:
                        placed, log_p = decode(self.model, num_t[sel], cat_t[sel], mask_t[sel], n,
                                               temperature=self.explore_temperature, return_log_prob=True)
                        placed, log_p = placed.cpu().numpy(), log_p.cpu().numpy()
                    else:
                        placed = self.decode(num_t[sel], cat_t[sel], mask_t[sel], n).cpu().numpy()
                        log_p = np.zeros(len(rows))
                for b, row in enumerate(rows):
                    out[ok[row]] = {"order": [int(j) for j in placed[b] if j >= 0], "model": self.served_by,
                                    "features": self.features, "explored": sampled,
                                    "log_propensity": float(log_p[b])}
            decode_s = time.time() - started - encode_s
        for r, o in zip(requests, out):
            o["timing"] = {"queue": 1000.0 * max(started - r.get("sent_at", started), 0.0),
                           "encode": 1000.0 * encode_s, "decode": 1000.0 * decode_s, "batch": len(requests)}
        return out


app = FastAPI(title="GReF reranker", description=__doc__)


PRUNE_EVERY = 1000  # served lists between two retention passes


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


def server_timing(parse_s: float, arm_s: float, reranker: dict[str, float], store_s: float, total_s: float) -> str:
    """The ``Server-Timing`` header (W3C) of a served request, in ms: ``parse`` (key, body, JSON,
    validation, replay lookup), ``arm`` (the Router's await of the reranker: both hops, the batch's
    wait, encode, decode), of which the reranker's ``queue`` (hop there + batch wait), ``encode`` and
    ``decode`` (its batch of ``batch`` requests), ``store`` (the served list recorded) and ``total``
    (the Router's handling; a client's latency beyond it is the HTTP proxy and the network)."""
    stages = {"parse": 1000.0 * parse_s, "arm": 1000.0 * arm_s,
              **{k: reranker[k] for k in ("queue", "encode", "decode") if k in reranker},  # (a replica of an
              "store": 1000.0 * store_s, "total": 1000.0 * total_s}                      # older release: none)
    batch = [f'batch;desc="{reranker["batch"]}"'] if "batch" in reranker else []
    return ", ".join([*(f"{k};dur={v:.3f}" for k, v in stages.items()), *batch])


def _replayed(request_id: str, digest: str, previous: tuple[str, dict[str, Any] | None] | None) -> JSONResponse:
    """A request id served before: the same body gets the stored answer (a client retrying after a
    timeout), another body a 409."""
    stored_digest, answer = previous or ("", None)
    if stored_digest == digest and answer is not None:
        return JSONResponse(answer)
    return _error(409, f"request_id: '{request_id}' was already served for another request")


async def _read_body(request: Request, limit: int, timeout_s: float) -> bytes:
    """The body, refusing (413) past ``limit`` bytes without reading the rest, and (408) when it
    has not fully arrived within ``timeout_s`` (a client trickling bytes would hold a slot)."""
    try:
        return await asyncio.wait_for(_read_limited(request, limit), timeout_s)
    except TimeoutError:
        raise RequestError(408, f"body: not received within {timeout_s:g} s") from None


async def _read_limited(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise RequestError(413, f"body: {declared} bytes, the limit is {limit}")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise RequestError(413, f"body: more than {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


@serve.deployment(max_ongoing_requests=256)
@serve.ingress(app)
class Router:
    def __init__(self, arms: dict[str, DeploymentHandle | str], cfg: ServeConfig):
        """``arms``: arm -> its Reranker deployment's handle, or (``colocate``) its model URI, loaded here."""
        if cfg.colocate:  # the Reranker class itself, in this replica: its @serve.batch works in any event loop
            arms = {arm: Reranker.func_or_class(arm, uri, cfg.tracking_uri, cfg.max_batch_size,
                                                cfg.batch_wait_timeout_s, cfg.decode_mode, cfg.explore_temperature)
                    for arm, uri in arms.items()}
        self.arms, self.cfg = arms, cfg
        self.store = ReopeningStore(cfg.feedback_db, busy_timeout_s=cfg.store_timeout_s)
        try:
            self.store.open()
        except StoreError as err:  # a read-only disk or a database that is down: start, answer 503 meanwhile
            logging.getLogger("ray.serve").error("%s -- /rerank and /feedback answer 503 until it opens", err)
        self.served_since_prune = 0
        self._prune()
        self.stats = RouterStats(list(arms))
        self.auth = Authenticator(cfg.api_keys) if cfg.api_keys else None
        if self.auth is None:
            logging.getLogger("ray.serve").warning(
                "no API keys (api_keys / GREF_API_KEYS_FILE): anyone who reaches this endpoint can rerank and post "
                "feedback -- keep it on loopback")
        self.weights = check_weights(cfg.weights or dict.fromkeys(arms, 1.0), list(arms))
        self.salt = cfg.salt or experiment_salt(cfg.arms)

    def reconfigure(self, user_config: dict[str, Any]) -> None:
        """``{"weights": {arm: w}, "salt": "..."}`` -- applied in place to the running replica."""
        self.weights = check_weights(user_config.get("weights") or dict.fromkeys(self.arms, 1.0), list(self.arms))
        self.salt = user_config.get("salt") or self.salt

    def _prune(self) -> None:
        self.served_since_prune = 0
        if self.cfg.retention_days > 0:
            try:
                self.store.call("prune", int((time.time() - self.cfg.retention_days * 86400) * 1000))
            except StoreError as err:  # busy or full: the next pass tries again
                logging.getLogger("ray.serve").warning("feedback store: retention pass skipped (%s)", err)

    async def _store(self, method: str, *args: Any) -> Any:
        """A feedback-store call off the event loop (the database calls block), bounded by
        ``store_timeout_s``; raises StoreError (-> 503) when the database is locked, full,
        read-only or unreachable."""
        return await asyncio.to_thread(self.store.call, method, *args)

    def _client(self, request: Request, scope: str) -> str:
        """The name of the calling client (AuthError 401/403 unless its key holds ``scope``); "" when
        the endpoint has no keys."""
        return self.auth.check(presented_key(request.headers), scope).name if self.auth else ""

    async def _call(self, arm: str, method: str, *args: Any) -> Any:
        """Call the arm; up to two retries when the replica died under the call (Serve replaces
        it and the handle routes the retry to a live one). Colocated: a plain call."""
        from ray.exceptions import ActorDiedError, ActorUnavailableError, RayActorError

        if self.cfg.colocate:
            return await getattr(self.arms[arm], method)(*args)
        for attempt in range(3):
            try:
                return await getattr(self.arms[arm], method).remote(*args)
            except (ActorDiedError, ActorUnavailableError, RayActorError):
                if attempt == 2:
                    raise
                await asyncio.sleep(0.2 * (attempt + 1))
        raise AssertionError("unreachable")

    @app.post("/rerank")
    async def rerank(self, request: Request) -> JSONResponse:
        started = time.perf_counter()
        try:
            client = self._client(request, "rerank")
            check_content_type(request.headers.get("content-type"))
            body = parse_json(await _read_body(request, self.cfg.max_body_bytes, self.cfg.body_timeout_s),
                              self.cfg.max_body_bytes)
            req = parse_rerank(body, self.cfg.max_candidates, self.cfg.max_n)
            # a client-chosen request_id: a retry of the same request gets the stored answer (only
            # then is the request hashed: a server-made id is never retried)
            digest = req.digest(client) if req.request_id else ""
            if req.request_id and (previous := await self._store("replay", req.request_id)):
                return _replayed(req.request_id, digest, previous)
        except (AuthError, RequestError) as err:
            return _error(err.status, str(err))
        except StoreError as err:
            return _error(503, str(err))
        arm = assign_arm(req.user_id, self.weights, self.salt)
        request_id = req.request_id or uuid.uuid4().hex
        # a fixed function of the request id: a retry of an explored request is explored again
        explore = self.cfg.explore > 0 and user_unit(request_id, self.salt, "explore") < self.cfg.explore
        parsed = time.perf_counter()
        try:
            result = await self._call(arm, "rerank", {"candidates": req.candidates, "n": req.n, "explore": explore,
                                                      "sent_at": time.time()})
        except Exception as err:  # noqa: BLE001 -- whatever took the arm down: a counted 503, never a 500
            self.stats.error(arm)
            return _error(503, f"arm '{arm}' is unavailable: {type(err).__name__}")
        if "error" in result:
            return _error(422, result["error"])
        ranked = time.perf_counter()
        items = [req.candidates[j]["item_id"] for j in result["order"]]
        model = result["model"]  # from the replica that ran: a restarted one may hold another version
        keep = set(result["features"])  # only the model's feature columns are stored (the rest counted)
        stored = [{k: v for k, v in c.items() if k in keep} for c in req.candidates]
        latency = 1000.0 * (time.perf_counter() - started)
        answer = {"request_id": request_id, "items": items, "arm": arm, "model": model,
                  "explored": result["explored"], "latency_ms": round(latency, 3)}
        try:
            await self._store("record_served", request_id, req.user_id, arm, f"{model['name']}#{model['version']}",
                              stored, items, digest, answer, client, result["explored"], result["log_propensity"])
        except DuplicateRequest:  # the same request_id arrived twice at once: one of them was stored
            previous = await self._store("replay", request_id)
            return _replayed(request_id, digest, previous)
        except StoreError as err:
            self.stats.error(arm)
            return _error(503, str(err))
        self.stats.served(arm, latency, sum(len(c) for c in req.candidates) - sum(len(c) for c in stored))
        self.served_since_prune += 1
        if self.cfg.retention_days > 0 and self.served_since_prune >= PRUNE_EVERY:
            await asyncio.to_thread(self._prune)
        timing = server_timing(parsed - started, ranked - parsed, result.get("timing", {}), time.perf_counter() - ranked,
                               time.perf_counter() - started)
        return JSONResponse(answer, headers={"Server-Timing": timing})

    @app.post("/feedback")
    async def feedback(self, request: Request) -> JSONResponse:
        """``{"request_id": "...", "feedback": [{"item_id": "...", "click": 1, "like": 0, "long_view": 1}]}``;
        an item named twice gets the max of its events, as repeated posts do. With API keys, only
        the client that was served the list may post its feedback (it becomes training data)."""
        try:
            client = self._client(request, "feedback")
            check_content_type(request.headers.get("content-type"))
            post = parse_feedback(parse_json(await _read_body(request, self.cfg.max_body_bytes,
                                                              self.cfg.body_timeout_s), self.cfg.max_body_bytes))
            served = await self._store("served", post.request_id)
            if self.auth is not None and served["client"] != client:
                raise AuthError(403, f"request_id: '{post.request_id}' was served to another client")
            post.check_shown(served["shown"])
            first, new = await self._store("record_feedback", post.request_id, post.events)
        except UnknownRequest:
            return _error(404, f"request_id: '{post.request_id}' was not served here")
        except (AuthError, RequestError) as err:
            return _error(err.status, str(err))
        except StoreError as err:
            return _error(503, str(err))
        self.stats.feedback(served["arm"], first, new)  # the events the store did not have: counters agree with it
        return JSONResponse({"request_id": post.request_id, "recorded": len(post.events)})

    @app.get("/healthz")
    async def healthz(self) -> dict[str, Any]:
        """Open to anyone; says whether the feedback store could be opened (else /rerank answers 503)."""
        return {"status": "ok", "weights": self.weights, "store": f"unavailable: {self.store.error}"
                if self.store.error else "ok"}

    @app.get("/metrics")
    async def metrics(self, request: Request) -> Response:
        """Prometheus' text format: per arm requests, errors, a latency histogram, feedback events,
        the weight; the feedback store's row counts. Counters of this router replica."""
        try:
            self._client(request, "metrics")
            store = await self._store("counts")
        except AuthError as err:
            return _error(err.status, str(err))
        except StoreError:
            store = {}  # the store's gauges keep their last values; the arm counters are still served
        return Response(self.stats.prometheus(self.weights, store), media_type=METRICS_CONTENT_TYPE)

    @app.get("/stats")
    async def stats_json(self, request: Request) -> JSONResponse:
        """The same counters as JSON, with latency percentiles over the last 10,000 requests."""
        try:
            self._client(request, "metrics")
        except AuthError as err:
            return _error(err.status, str(err))
        try:
            store: dict[str, Any] = await self._store("counts")
        except StoreError as err:
            store = {"error": str(err)}
        return JSONResponse({"arms": self.stats.snapshot(self.weights), "salt": self.salt, "store": store,
                             "pid": os.getpid()})


def _gpus(requested: float) -> float:
    if requested >= 0:
        return requested
    import ray

    return 0.25 if ray.is_initialized() and ray.cluster_resources().get("GPU", 0) > 0 else 0.0


def build_app(args: dict[str, Any] | None = None):
    """Serve application builder (``import_path: serve.app:build_app``; ``args`` = ServeConfig)."""
    cfg = from_dict(ServeConfig, dict(args or {}))
    from gref.model.accel import MODES

    if cfg.decode_mode not in ("auto", *MODES):
        raise ValueError(f"decode_mode must be auto or one of {', '.join(MODES)}, got '{cfg.decode_mode}'")
    if not 0.0 <= cfg.explore <= 1.0 or cfg.explore_temperature <= 0:
        raise ValueError(f"explore must be in [0, 1] and explore_temperature > 0, got {cfg.explore}, "
                         f"{cfg.explore_temperature}")
    if "://" not in cfg.feedback_db:
        cfg.feedback_db = str(Path(cfg.feedback_db).resolve())  # replicas run in other directories
    cfg.api_keys = cfg.api_keys or os.environ.get("GREF_API_KEYS_FILE", "")
    if cfg.api_keys:
        cfg.api_keys = str(Path(cfg.api_keys).resolve())
        if not Path(cfg.api_keys).exists():
            raise ValueError(f"api_keys: no file at {cfg.api_keys} (python -m jobs.apikey create --name ... "
                             f"--file {cfg.api_keys})")
        Authenticator(cfg.api_keys)  # a malformed file fails the deploy here, with its message
    from gref import tracking

    cfg.tracking_uri = tracking.tracking_uri(tracking.TrackingConfig(uri=cfg.tracking_uri))
    check_weights(cfg.weights or dict.fromkeys(cfg.arms, 1.0), list(cfg.arms))
    scale = ({"autoscaling_config": cfg.autoscaling} if cfg.autoscaling else {"num_replicas": cfg.replicas})
    gpus = _gpus(cfg.reranker_gpus)
    if cfg.colocate:  # one deployment: the Router holds every arm's model and the arms' resources
        return Router.options(num_replicas=cfg.routers, ray_actor_options={
            "num_cpus": cfg.router_cpus + cfg.reranker_cpus * len(cfg.arms), "num_gpus": gpus,
            "resources": cfg.router_resources}, user_config={"weights": cfg.weights, "salt": cfg.salt}
        ).bind(dict(cfg.arms), cfg)
    arms = {arm: Reranker.options(name=f"reranker-{arm}", max_ongoing_requests=max(32, 2 * cfg.max_batch_size),
                                  ray_actor_options={"num_cpus": cfg.reranker_cpus, "num_gpus": gpus}, **scale)
            .bind(arm, uri, cfg.tracking_uri, cfg.max_batch_size, cfg.batch_wait_timeout_s, cfg.decode_mode,
                  cfg.explore_temperature)
            for arm, uri in cfg.arms.items()}
    return Router.options(num_replicas=cfg.routers,
                          ray_actor_options={"num_cpus": cfg.router_cpus, "resources": cfg.router_resources},
                          user_config={"weights": cfg.weights, "salt": cfg.salt}).bind(arms, cfg)


def direct_urls(app_name: str, host: str | None = None, node_ip: str | None = None) -> list[str]:
    """The HTTP URLs of ``app_name``'s Router replicas themselves, when Serve runs with direct
    ingress (the environment of ``ray start`` / ``serve run`` sets ``RAY_SERVE_THROUGHPUT_OPTIMIZED=1``,
    Ray >= 2.55's high-throughput mode): each Router replica then also listens on a port of its own
    (30000..31000), and a request sent there skips Serve's HTTP proxy and its body round trip (the
    proxy on port 8000 keeps working). These targets are what a load balancer in front of the
    cluster routes to; Serve's own HAProxy ingress (``RAY_SERVE_ENABLE_HA_PROXY=1``, the haproxy
    binary on every node) reads the same list. Empty without direct ingress or before the replicas
    run. ``host`` replaces the node address (e.g. 127.0.0.1 when the app listens on loopback);
    ``node_ip``: only the replicas on that node.
    Reads the controller's ``get_target_groups`` (its ``TargetGroup``s are ray.serve.schema's
    public alpha API; the call itself is internal in 2.60).
    """
    import ray
    from ray.serve.context import _get_global_client

    groups = ray.get(_get_global_client()._controller.get_target_groups.remote(app_name))
    prefix = lambda g: "" if g.route_prefix in (None, "/") else g.route_prefix.rstrip("/")  # noqa: E731
    return [f"http://{host or t.ip}:{t.port}{prefix(g)}" for g in groups
            if getattr(g.protocol, "value", g.protocol) == "HTTP" and g.app_name == app_name
            for t in g.targets if t.name.startswith("SERVE_REPLICA") and node_ip in (None, t.ip)]


def loop_app():
    """This application as gref.loop deploys it every round (the library does not import serve/)."""
    from gref.loop import ServeApp

    return ServeApp(build=build_app, direct_urls=direct_urls)
