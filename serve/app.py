"""The GReF Ray Serve application: the deployments and the HTTP mapping (the logic they call lives
in gref.serving: config, inference, ab, auth, requests, feedback, stats).

    make serve                                     # serve/config.yaml on this machine, Router on its own port too
    serve run serve.app:build_app                  # defaults: GReF champion vs NAR4Rec (the paper's Table 4)
    serve deploy serve/config.yaml                 # on a running cluster; re-deploy to change weights

- Each arm: a registered model version (``models:/name@alias``), a run (``runs:/...``) or a model
  directory -- GReF or any baseline of gref.baselines; on the GPU when the replica has one;
  requests are batched with ``@serve.batch`` and decoded (GReF: OMTP with KV cache) in one padded
  batch per list length (``gref.serving.inference.ServedModel``).
- ``colocate: true`` (the default): the Router runs the arms' ``Reranker`` code itself (batched
  alike) -- one process hop less per request; the arms scale with the Router (``routers``).
  ``colocate: false``: a ``Reranker`` deployment per arm, scaling (and holding GPUs) on its own.
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
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from ray import serve
from ray.serve.handle import DeploymentHandle

from gref.serving.ab import assign_arm, check_weights, experiment_salt, user_unit
from gref.serving.auth import Authenticator, AuthError, presented_key
from gref.serving.config import ServeConfig, serve_config
from gref.serving.feedback import DuplicateRequest, ReopeningStore, StoreError, UnknownRequest
from gref.serving.inference import ServedModel
from gref.serving.requests import RequestError, check_content_type, parse_feedback, parse_json, parse_rerank
from gref.serving.stats import METRICS_CONTENT_TYPE, RouterStats, server_timing

__all__ = ["ServeConfig", "build_app", "direct_urls", "loop_app"]


@serve.deployment(max_ongoing_requests=32)
class Reranker:
    """One arm's model (gref.serving.inference.ServedModel) behind a batch queue: ``rerank`` takes one
    request and answers it from a batch of those that queued meanwhile."""

    def __init__(self, arm: str, model_uri: str, tracking_uri: str, max_batch_size: int, batch_wait_timeout_s: float,
                 decode_mode: str = "auto", explore_temperature: float = 1.0):
        self.served = ServedModel.load(model_uri, tracking_uri, decode_mode, explore_temperature)
        logging.getLogger("ray.serve").info("reranker %s: %s on %s, decode %s", arm, self.served.pinned,
                                            self.served.device, self.served.decode_mode)
        # a batch queue of this instance's own: @serve.batch on a method keeps one queue per class and
        # runs each batch on its first request's instance -- a Router colocating two arms (two
        # instances in one process) decoded one arm's requests with the other arm's model
        self.rerank = serve.batch(max_batch_size=max_batch_size, batch_wait_timeout_s=batch_wait_timeout_s)(
            self._rerank_batch)

    async def _rerank_batch(self, requests: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return self.served.rerank_batch(requests)


app = FastAPI(title="GReF reranker", description=__doc__)


PRUNE_EVERY = 1000  # served lists between two retention passes


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


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
    cfg = serve_config(args)
    gpus = _gpus(cfg.reranker_gpus)
    user_config = {"weights": cfg.weights, "salt": cfg.salt}
    if cfg.colocate:  # one deployment: the Router holds every arm's model and the arms' resources
        return Router.options(num_replicas=cfg.routers, user_config=user_config, ray_actor_options={
            "num_cpus": cfg.router_cpus + cfg.reranker_cpus * len(cfg.arms), "num_gpus": gpus,
            "resources": cfg.router_resources}).bind(dict(cfg.arms), cfg)
    scale = {"autoscaling_config": cfg.autoscaling} if cfg.autoscaling else {"num_replicas": cfg.replicas}
    arms = {arm: Reranker.options(name=f"reranker-{arm}", max_ongoing_requests=max(32, 2 * cfg.max_batch_size),
                                  ray_actor_options={"num_cpus": cfg.reranker_cpus, "num_gpus": gpus}, **scale)
            .bind(arm, uri, cfg.tracking_uri, cfg.max_batch_size, cfg.batch_wait_timeout_s, cfg.decode_mode,
                  cfg.explore_temperature)
            for arm, uri in cfg.arms.items()}
    return Router.options(num_replicas=cfg.routers, user_config=user_config, ray_actor_options={
        "num_cpus": cfg.router_cpus, "resources": cfg.router_resources}).bind(arms, cfg)


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
