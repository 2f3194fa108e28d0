"""HTTP inference server for a distilled student: ONNX Runtime behind FastAPI + uvicorn.

    python serve_examples/onnx_server.py runs/demo/bundle [--artifact onnx-dynamic] [--port 8000]

Endpoints
    POST /predict   {"texts": ["...", ...]} -> {"results": [...], "artifact": "onnx-dynamic"}
                    classification: {"label", "score", "scores"} per text; tagging: {"tags", "entities"}
                    with character spans (see xtremedistil/export/serving.py)
    GET  /health    {"status": "ok"}
    GET  /metadata  labels, task, artifact, quantization, size, parity figures from manifest.json, limits

Requests that arrive together are micro-batched: the batcher waits at most --max-wait-ms after the
first request for more, up to --max-batch texts, and runs them as one ONNX Runtime call in a worker
thread (the event loop keeps accepting connections meanwhile). Every malformed or oversized request
is a 4xx with {"error": "..."}: invalid UTF-8 or not JSON 400, too many texts / characters / bytes
413, wrong types, empty list or empty text 422, a body not received within --body-timeout-s 408 (a slow
client holds no worker: reading is asynchronous). SIGTERM or Ctrl-C: no new connections, the requests in
flight are answered, exit 0. A missing, cut-off or damaged artifact is a one-line error at start-up (exit 2).
"""
import argparse
import asyncio
import concurrent.futures
import json
import signal
import sys
import time

from xtremedistil.errors import XtremeDistilError
from xtremedistil.export.serving import Limits, RequestError, TextPipeline, texts_from_payload


class MicroBatcher:
    """Collects concurrent requests into batches of at most `max_batch` texts, waiting `max_wait` s at most."""

    def __init__(self, pipeline: TextPipeline, max_batch: int = 64, max_wait: float = 0.005):
        self.pipeline = pipeline
        self.max_batch = max_batch
        self.max_wait = max_wait
        self.queue: asyncio.Queue | None = None
        self.executor = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="predict")
        self.batches = 0
        self.texts = 0
        self._task = None

    def start(self) -> None:
        self.queue = asyncio.Queue()
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
        self.executor.shutdown(wait=False)

    async def submit(self, texts: list[str]) -> list[dict]:
        future = asyncio.get_running_loop().create_future()
        await self.queue.put((texts, future))
        return await future

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        carried = None
        while True:
            first = carried or await self.queue.get()
            carried = None
            items, count = [first], len(first[0])
            deadline = loop.time() + self.max_wait
            while count < self.max_batch:
                remaining = deadline - loop.time()
                if remaining <= 0:
                    break
                try:
                    item = await asyncio.wait_for(self.queue.get(), remaining)
                except asyncio.TimeoutError:
                    break
                if count + len(item[0]) > self.max_batch:
                    carried = item   # first in the next batch
                    break
                items.append(item)
                count += len(item[0])
            texts = [text for batch, _ in items for text in batch]
            try:
                results = await loop.run_in_executor(self.executor, self.pipeline.predict, texts, self.max_batch, False)
            except Exception as err:  # noqa: BLE001 - handed to each waiting request, which answers 500
                for _, future in items:
                    if not future.done():
                        future.set_exception(err)
                continue
            self.batches += 1
            self.texts += len(texts)
            start = 0
            for batch, future in items:
                if not future.done():
                    future.set_result(results[start:start + len(batch)])
                start += len(batch)


MAX_BODY_BYTES = 1 << 20


class BodyError(Exception):
    """A request body refused before or while parsing it, with the HTTP status to answer."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


def parse_body(body: bytes, limits: Limits, max_body_bytes: int = MAX_BODY_BYTES) -> list[str]:
    """A raw JSON body `{"texts": [...]}` -> validated texts; BodyError with the status otherwise: 413 for a
    body or request over a limit, 400 for bytes that are not UTF-8 JSON, 422 for JSON of the wrong shape."""
    if len(body) > max_body_bytes:
        raise BodyError(413, f"request body of {len(body)} bytes; at most {max_body_bytes} are allowed")
    try:
        payload = json.loads(body.decode("utf-8"))
    except UnicodeDecodeError as err:
        raise BodyError(400, f"request body is not valid UTF-8 (byte {err.start})") from None
    except ValueError as err:
        raise BodyError(400, f"request body is not JSON: {err}") from None
    try:
        return texts_from_payload(payload, limits)
    except RequestError as err:
        raise BodyError(413 if err.too_large else 422, str(err)) from None


def create_app(pipeline: TextPipeline, max_batch: int = 64, max_wait_ms: float = 5.0, body_timeout: float = 10.0,
               max_body_bytes: int = MAX_BODY_BYTES):
    # (no `from __future__ import annotations` in this file: FastAPI reads the handlers' annotations)
    from contextlib import asynccontextmanager

    from fastapi import FastAPI, Request
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse
    from starlette.exceptions import HTTPException

    batcher = MicroBatcher(pipeline, max_batch, max_wait_ms / 1000)
    started = time.time()

    @asynccontextmanager
    async def lifespan(_app):
        batcher.start()
        yield
        await batcher.stop()

    app = FastAPI(title="xtremedistil student", lifespan=lifespan)

    def error(status: int, message: str) -> JSONResponse:
        return JSONResponse({"error": message}, status_code=status)

    @app.exception_handler(HTTPException)
    async def http_error(_request, exc):
        return error(exc.status_code, str(exc.detail))

    @app.exception_handler(RequestValidationError)
    async def validation_error(_request, exc):
        return error(422, str(exc.errors()[:1]))

    @app.exception_handler(Exception)
    async def internal_error(_request, exc):
        return error(500, f"internal error: {type(exc).__name__}")

    @app.post("/predict")
    async def predict(request: Request):
        limit = max_body_bytes
        declared = request.headers.get("content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > limit):
            return error(413, f"request body of {declared} bytes; at most {limit} are allowed")
        body = bytearray()

        async def read():
            async for chunk in request.stream():
                body.extend(chunk)
                if len(body) > limit:
                    return False
            return True

        try:
            if not await asyncio.wait_for(read(), body_timeout):
                return error(413, f"request body over {limit} bytes")
        except asyncio.TimeoutError:
            return error(408, f"request body not received within {body_timeout:g} s")
        try:
            texts = parse_body(bytes(body), pipeline.limits, limit)
        except BodyError as err:
            return error(err.status, str(err))
        results = await batcher.submit(texts)
        return {"results": results, "artifact": pipeline.row["name"]}

    @app.get("/health")
    async def health():
        return {"status": "ok", "uptime_s": round(time.time() - started, 1)}

    @app.get("/metadata")
    async def metadata():
        meta = pipeline.metadata()
        meta["limits"] = {**meta["limits"], "max_body_bytes": max_body_bytes}
        return {**meta, "batching": {"max_batch": max_batch, "max_wait_ms": max_wait_ms,
                                                    "batches": batcher.batches, "texts": batcher.texts}}

    return app


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("bundle", metavar="BUNDLE", help="student bundle exported with `xtremedistil export`")
    parser.add_argument("--artifact", help="ONNX artifact name from manifest.json (default: the int8 one)")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default: 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8000, help="port (default: 8000)")
    parser.add_argument("--threads", type=int, default=None, help="ONNX Runtime intra-op threads (default: all cores)")
    parser.add_argument("--max-batch", type=int, default=64, help="texts per micro-batch (default: 64)")
    parser.add_argument("--max-wait-ms", type=float, default=5.0, help="wait for more requests (default: 5 ms)")
    parser.add_argument("--max-texts", type=int, default=Limits.max_texts, help="texts per request (default: 64)")
    parser.add_argument("--max-chars", type=int, default=Limits.max_chars, help="characters per text (default: 2000)")
    parser.add_argument("--max-body-bytes", type=int, default=MAX_BODY_BYTES,
                        help="request body size (default: 1 MiB)")
    parser.add_argument("--body-timeout-s", type=float, default=10.0,
                        help="a client slower than this to send its body gets 408 (default: 10 s)")
    args = parser.parse_args(argv)
    if (min(args.max_batch, args.max_texts, args.max_chars, args.max_body_bytes) < 1 or args.max_wait_ms < 0
            or args.body_timeout_s <= 0):
        print("onnx_server: error: limits must be positive (and --max-wait-ms 0 or more)", file=sys.stderr)
        return 2
    try:
        pipeline = TextPipeline(args.bundle, args.artifact, formats=("onnx",), threads=args.threads,
                                limits=Limits(args.max_texts, args.max_chars))
    except XtremeDistilError as err:
        print(f"onnx_server: error: {err}", file=sys.stderr)
        return 2
    import uvicorn

    app = create_app(pipeline, max(args.max_batch, args.max_texts), args.max_wait_ms, args.body_timeout_s,
                     args.max_body_bytes)
    print(f"serving {pipeline.row['name']} of {args.bundle} on http://{args.host}:{args.port}", flush=True)
    # SIGTERM/SIGINT: uvicorn stops accepting, answers the requests in flight, then re-raises the signal into
    # the handler it found; a no-op one lets the server exit 0 after a clean shutdown instead of dying by it.
    for received in (signal.SIGTERM, signal.SIGINT):
        signal.signal(received, lambda *_: None)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning", access_log=False)
    print("stopped: every request in flight was answered", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
