"""The same reranker behind a plain FastAPI + uvicorn process (no Ray): the baseline of
benchmarks/serve.py. Same validation, encoding, decoding and served-list record as serve/app.py,
one request at a time (no batching, no A/B split).

    python -m benchmarks.plain_server --model DIR --port 8001 --db /tmp/plain.db
"""

from __future__ import annotations

import argparse
import time
import uuid

import torch
import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from gref.data.features import FeatureSpec
from gref.model.decoding import decode
from gref.reranker_io import load_reranker
from gref.serving.feedback import FeedbackStore
from gref.serving.requests import RequestError, encode_candidates, parse_json, parse_rerank


def make_app(model_dir: str, db: str) -> FastAPI:
    model = load_reranker(model_dir)
    spec = FeatureSpec.load(f"{model_dir}/features.json")
    store = FeedbackStore(db)
    app = FastAPI()

    @app.post("/rerank")
    async def rerank(request: Request) -> JSONResponse:
        started = time.perf_counter()
        try:
            req = parse_rerank(parse_json(await request.body(), 1_000_000), 200, model.cfg.max_length)
        except RequestError as err:
            return JSONResponse({"error": str(err)}, status_code=err.status)
        num, cat = encode_candidates(req.candidates, spec)
        placed = decode(model, torch.from_numpy(num)[None], torch.from_numpy(cat)[None],
                        torch.ones(1, len(num), dtype=torch.bool), req.n)[0].tolist()
        items = [req.candidates[j]["item_id"] for j in placed if j >= 0]
        request_id = req.request_id or uuid.uuid4().hex
        store.record_served(request_id, req.user_id, "plain", model_dir, req.candidates, items)
        return JSONResponse({"request_id": request_id, "items": items,
                             "latency_ms": 1000 * (time.perf_counter() - started)})

    @app.get("/healthz")
    async def healthz() -> dict:
        return {"status": "ok"}

    return app


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True)
    p.add_argument("--port", type=int, default=8001)
    p.add_argument("--db", required=True)
    p.add_argument("--threads", type=int, default=1, help="torch threads")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    uvicorn.run(make_app(args.model, args.db), host="127.0.0.1", port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
