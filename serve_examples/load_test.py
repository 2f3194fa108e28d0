"""A bounded load test of a running server: N concurrent clients, M requests in all, then it stops.

    python serve_examples/load_test.py http://127.0.0.1:8000 --clients 8 --requests 2000

Each client keeps one HTTP/1.1 connection open and sends `POST /predict` with --texts-per-request
texts taken in turn from built-in sentences in several scripts (or --sentences FILE). With
--malformed-every K every K-th request is a malformed body (bad JSON, wrong types, empty, too many texts,
invalid UTF-8): it must get a 4xx with a JSON error, never a 5xx. Prints one JSON object: requests, errors,
malformed requests rejected, p50/p90/p99 latency in ms of the valid ones, requests/s and texts/s.
The first answer to each distinct text is kept; a later different answer to the same text is an error
("wrong answers": the server must not mix up results of micro-batched requests).
"""
from __future__ import annotations

import argparse
import http.client
import json
import threading
import time
import urllib.parse

import numpy as np

SENTENCES = [
    "the movie was very good .", "John Smith lives in Paris .", "Иван живет в Москве .",
    "محمد يعيش في القاهرة", "北京 大学 在 北京", "a rainy morning with strong winds .",
    "the match ended in a draw after extra time .", "Η Αθήνα είναι η πρωτεύουσα .",
]


MALFORMED = [b"{not json", b'{"texts": [1, 2]}', b'{"texts": []}', b'{"texts": [""]}', b'{"text": ["a"]}',
             b"\xff\xfe{}", b'{"texts": ' + json.dumps(["a"] * 10_000).encode() + b"}"]


def load_test(url: str, clients: int = 8, requests: int = 2000, texts_per_request: int = 1,
              sentences: list[str] | None = None, timeout: float = 30.0, malformed_every: int = 0,
              expected: dict | None = None) -> dict:
    """`expected`: text -> label (classification) or tag list (tagging) every answer must equal; without it,
    every answer to a text must equal the first one."""
    target = urllib.parse.urlsplit(url)
    sentences = sentences or SENTENCES
    counter = iter(range(requests))
    lock = threading.Lock()
    latencies, errors, examples = [], [], []
    answers = dict(expected or {})
    wrong, rejected = [], []

    def client():
        connection = http.client.HTTPConnection(target.hostname, target.port or 80, timeout=timeout)
        while True:
            with lock:
                index = next(counter, None)
            if index is None:
                break
            texts = [sentences[(index + k) % len(sentences)] for k in range(texts_per_request)]
            bad = malformed_every > 0 and index % malformed_every == malformed_every - 1
            body = MALFORMED[(index // max(malformed_every, 1)) % len(MALFORMED)] if bad else json.dumps({"texts": texts}).encode()
            started = time.perf_counter()
            results = None
            try:
                connection.request("POST", "/predict", body, {"Content-Type": "application/json"})
                response = connection.getresponse()
                payload = response.read()
                elapsed = (time.perf_counter() - started) * 1000
                if bad:
                    ok = 400 <= response.status < 500 and "error" in json.loads(payload)
                else:
                    results = json.loads(payload)["results"] if response.status == 200 else None
                    ok = results is not None and len(results) == len(texts)
                if response.getheader("connection", "").lower() == "close":
                    connection.close()
            except (OSError, http.client.HTTPException, ValueError, KeyError) as err:
                ok, elapsed, payload = False, None, repr(err).encode()
                connection.close()
                connection = http.client.HTTPConnection(target.hostname, target.port or 80, timeout=timeout)
            with lock:
                for text, result in zip(texts, results or []):
                    answer = result.get("label", result.get("tags"))   # scores may differ in the last bits by batch
                    if answers.setdefault(text, answer) != answer:
                        wrong.append(index)
                if ok and bad:
                    rejected.append(index)
                elif ok:
                    latencies.append(elapsed)
                else:
                    errors.append(index)
                    if len(examples) < 3:
                        examples.append(payload[:200].decode("utf-8", "replace"))
        connection.close()

    threads = [threading.Thread(target=client, daemon=True) for _ in range(clients)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - started
    times = np.asarray(latencies or [float("nan")])
    return {"requests": requests, "clients": clients, "texts_per_request": texts_per_request,
            "ok": len(latencies), "errors": len(errors), "error_examples": examples,
            "malformed_rejected": len(rejected), "wrong_answers": len(wrong),
            "p50_ms": float(np.percentile(times, 50)), "p90_ms": float(np.percentile(times, 90)),
            "p99_ms": float(np.percentile(times, 99)), "wall_s": wall,
            "requests_per_s": len(latencies) / wall, "texts_per_s": len(latencies) * texts_per_request / wall}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("url", help="server base URL, e.g. http://127.0.0.1:8000")
    parser.add_argument("--clients", type=int, default=8, help="concurrent clients (default: 8)")
    parser.add_argument("--requests", type=int, default=2000, help="requests in all (default: 2000)")
    parser.add_argument("--texts-per-request", type=int, default=1, help="texts per request (default: 1)")
    parser.add_argument("--sentences", help="file with one sentence per line (default: built-in, several scripts)")
    parser.add_argument("--malformed-every", type=int, default=0,
                        help="every K-th request malformed; it must get a 4xx (default: 0 = none)")
    args = parser.parse_args(argv)
    sentences = None
    if args.sentences:
        with open(args.sentences, encoding="utf-8") as handle:
            sentences = [line.strip() for line in handle if line.strip()]
    result = load_test(args.url, args.clients, args.requests, args.texts_per_request, sentences,
                       malformed_every=args.malformed_every)
    print(json.dumps(result, indent=2))
    return 1 if result["errors"] or result["wrong_answers"] else 0


if __name__ == "__main__":
    raise SystemExit(main())
