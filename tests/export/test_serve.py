"""serve_examples for real: the ONNX server over HTTP on 127.0.0.1, the LiteRT script in a subprocess,
the SavedModel client; answers checked against `load_bundle(...).predict`."""
import http.client
import http.server
import json
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from helpers import tiny_bundle
from xtremedistil.distill.bundle import load_bundle
from xtremedistil.export.pipeline import ExportOptions, run_export

SERVE = Path(__file__).resolve().parents[2] / "serve_examples"
UNICODE = ["the movie was very good .", "Иван живет в Москва .", "محمد يعيش في القاهرة", "北京 大学",
           "Η Αθήνα στην 🙂 .", "john   smith  lives in paris ."]


@pytest.fixture(scope="module", params=[False, True], ids=["classification", "tagging"])
def exported(request, tiny_models, tmp_path_factory):
    root = tmp_path_factory.mktemp("serve")
    bundle = tiny_bundle(root, tiny_models("bert"), tagging=request.param)
    run_export(ExportOptions(bundle=str(bundle), formats="onnx:fp32,onnx:dynamic,tflite:fp32,savedmodel",
                             max_metric_drop=100.0))
    return bundle, request.param, load_bundle(bundle).predict(UNICODE)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def server(exported):
    bundle, tagging, expected = exported
    port = _free_port()
    process = _start_server(bundle, port)
    yield port, tagging, expected
    process.terminate()
    process.wait(timeout=30)


def _start_server(bundle, port, *extra):
    process = subprocess.Popen([sys.executable, str(SERVE / "onnx_server.py"), str(bundle), "--artifact", "onnx-fp32",
                                "--port", str(port), "--max-texts", "8", "--max-chars", "200",
                                "--max-body-bytes", "4096", *extra], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True)
    deadline = time.time() + 120
    while time.time() < deadline:
        try:
            if _call(port, "GET", "/health")[0] == 200:
                break
        except OSError:
            time.sleep(0.3)
        assert process.poll() is None, process.stderr.read()[-2000:]
    else:
        process.kill()
        pytest.fail("server did not come up")
    return process


def _call(port, method, path, body=None, headers=None):
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    connection.request(method, path, body, headers or {"Content-Type": "application/json"})
    response = connection.getresponse()
    data = response.read()
    connection.close()
    return response.status, json.loads(data)


def _labels(result, tagging):
    return result["tags"] if tagging else result["label"]


def test_predict_matches_the_bundle_in_several_scripts(server):
    port, tagging, expected = server
    status, answer = _call(port, "POST", "/predict", json.dumps({"texts": UNICODE}).encode())
    assert status == 200 and answer["artifact"] == "onnx-fp32"
    assert [_labels(r, tagging) for r in answer["results"]] == expected
    for text, result in zip(UNICODE, answer["results"]):
        if tagging:
            assert len(result["tags"]) == len(text.split())
            for entity in result["entities"]:
                assert text[entity["start"]:entity["end"]] == entity["text"] and 0 < entity["score"] <= 1
        else:
            assert result["score"] == pytest.approx(max(result["scores"].values()))
            assert sum(result["scores"].values()) == pytest.approx(1, abs=1e-5)


def test_health_and_metadata(server, exported):
    port, tagging, _ = server
    status, health = _call(port, "GET", "/health")
    assert status == 200 and health["status"] == "ok" and health["uptime_s"] >= 0
    status, meta = _call(port, "GET", "/metadata")
    manifest = json.loads((exported[0] / "manifest.json").read_text())
    row = next(r for r in manifest["artifacts"] if r["name"] == "onnx-fp32")
    assert status == 200 and meta["artifact"] == "onnx-fp32" and meta["quantization"] == "fp32"
    assert meta["parity"] == row["parity"] and meta["labels"] == load_bundle(exported[0]).labels
    assert meta["task"] == ("tagging" if tagging else "classification") and meta["limits"]["max_texts"] == 8


@pytest.mark.parametrize("body, status, message", [
    (b"{not json", 400, "not JSON"),
    (b"\xff\xfe{\"texts\": []}", 400, "UTF-8"),
    (b'{"texts": "one text"}', 422, "must be a list"),
    (b'{"texts": [1, 2]}', 422, "texts[0] must be a string"),
    (b'{"texts": ["ok", null]}', 422, "texts[1] must be a string"),
    (b'{"text": ["ok"]}', 422, "JSON object"),
    (b'["ok"]', 422, "JSON object"),
    (b'{"texts": []}', 422, "empty"),
    (b'{"texts": [""]}', 422, "empty"),
    (b'{"texts": ["   "]}', 422, "whitespace"),
    (json.dumps({"texts": ["a"] * 9}).encode(), 413, "at most 8"),
    (json.dumps({"texts": ["word " * 50]}).encode(), 413, "at most 200"),
    (json.dumps({"texts": ["a"], "pad": "x" * 5000}).encode(), 413, "at most 4096"),
], ids=["not-json", "bad-utf8", "string", "ints", "null", "wrong-key", "list", "empty-list", "empty-text",
        "blank-text", "too-many", "too-long", "body-too-large"])
def test_malformed_and_oversized_requests_are_4xx_json(server, body, status, message):
    port, _, _ = server
    got, answer = _call(port, "POST", "/predict", body)
    assert got == status and message in answer["error"]
    assert _call(port, "GET", "/health")[0] == 200   # still serving


def test_wrong_method_and_path_are_json_errors(server):
    port, _, _ = server
    assert _call(port, "GET", "/predict")[0] == 405
    status, answer = _call(port, "GET", "/nowhere")
    assert status == 404 and "error" in answer


def test_load_8_clients_2000_requests_without_errors(server):
    sys.path.insert(0, str(SERVE))
    from load_test import load_test

    port, _, _ = server
    result = load_test(f"http://127.0.0.1:{port}", clients=8, requests=2000)
    print(f"load test: {result['requests']} requests, {result['errors']} errors, p50 {result['p50_ms']:.1f} ms, "
          f"p99 {result['p99_ms']:.1f} ms, {result['requests_per_s']:.0f} requests/s")
    assert result["errors"] == 0 and result["ok"] == 2000
    assert 0 < result["p50_ms"] <= result["p99_ms"]
    status, meta = _call(port, "GET", "/metadata")
    assert meta["batching"]["batches"] < meta["batching"]["texts"]   # concurrent requests were batched


def test_mixed_load_with_10_percent_malformed_gets_no_5xx_and_no_wrong_answer(server, exported):
    sys.path.insert(0, str(SERVE))
    from load_test import SENTENCES, load_test

    port, tagging, _ = server
    bundle = load_bundle(exported[0])
    expected = {text: (result["tags"] if tagging else result["label"])
                for text, result in zip(SENTENCES, _pipeline(exported[0]).predict(SENTENCES))}
    result = load_test(f"http://127.0.0.1:{port}", clients=8, requests=2000, malformed_every=10, expected=expected)
    print(f"mixed load: {result['ok']} valid answered, {result['malformed_rejected']} malformed rejected (4xx), "
          f"{result['errors']} errors, {result['wrong_answers']} wrong answers")
    assert result["errors"] == 0 and result["wrong_answers"] == 0, result["error_examples"]
    assert result["ok"] == 1800 and result["malformed_rejected"] == 200
    assert bundle.labels


def _pipeline(bundle):
    from xtremedistil.export.serving import TextPipeline

    return TextPipeline(bundle, "onnx-fp32")


def test_slow_client_gets_408_and_holds_no_worker(exported):
    bundle, _, _ = exported
    port = _free_port()
    process = _start_server(bundle, port, "--body-timeout-s", "1.5")
    try:
        slow = socket.create_connection(("127.0.0.1", port))
        slow.sendall(b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     b"Content-Length: 100\r\n\r\n{\"texts\": [")        # and then nothing more
        started = time.time()
        for text in UNICODE:                                             # others are served meanwhile
            status, answer = _call(port, "POST", "/predict", json.dumps({"texts": [text]}))
            assert status == 200
        assert time.time() - started < 1.5
        slow.settimeout(10)
        reply = b""
        while b"within" not in reply:                                    # headers and body may come apart
            data = slow.recv(4096)
            if not data:
                break
            reply += data
        reply = reply.decode()
        assert reply.startswith("HTTP/1.1 408") and "not received within 1.5 s" in reply
        slow.close()
        assert _call(port, "GET", "/health")[0] == 200
    finally:
        process.terminate()
        process.wait(timeout=30)


def test_sigterm_answers_the_requests_in_flight_then_exits_0(exported):
    bundle, _, _ = exported
    port = _free_port()
    process = _start_server(bundle, port, "--max-wait-ms", "300")   # requests wait in the batcher
    answers, lock = [], threading.Lock()

    def client(text):
        status = _call(port, "POST", "/predict", json.dumps({"texts": [text]}))[0]
        with lock:
            answers.append(status)

    threads = [threading.Thread(target=client, args=(text,)) for text in UNICODE]
    for thread in threads:
        thread.start()
    time.sleep(0.1)                                                       # all sent, none answered yet
    process.send_signal(15)
    for thread in threads:
        thread.join(timeout=30)
    assert process.wait(timeout=30) == 0
    assert answers == [200] * len(UNICODE)
    assert "Traceback" not in process.stderr.read()


@pytest.mark.parametrize("damage", ["missing", "cut", "garbled"])
def test_missing_or_damaged_artifact_is_one_line_at_start_up(exported, tmp_path, damage):
    import shutil

    bundle = tmp_path / "bundle"
    shutil.copytree(exported[0], bundle)
    onnx = bundle / "artifacts" / "onnx-fp32.onnx"
    if damage == "missing":
        onnx.unlink()
    elif damage == "cut":
        onnx.write_bytes(onnx.read_bytes()[:1000])
    else:
        data = bytearray(onnx.read_bytes())
        data[200:400] = b"\x07" * 200
        onnx.write_bytes(bytes(data))
    out = subprocess.run([sys.executable, str(SERVE / "onnx_server.py"), str(bundle), "--artifact", "onnx-fp32"],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 2 and "Traceback" not in out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and "onnx-fp32.onnx" in lines[0], out.stderr
    assert {"missing": "no such file", "cut": "bytes, but manifest.json recorded",
            "garbled": "export it again"}[damage] in lines[0]


def test_litert_script_without_tensorflow(exported, tmp_path):
    bundle, tagging, expected = exported
    lines = b"\n".join(t.encode() for t in UNICODE[:3]) + b"\n\n\xff\xfe broken\n" + UNICODE[3].encode() + b"\n"
    probe = ("import runpy, sys; sys.argv = ['litert_predict.py', sys.argv[1], '--batch-size', '2']\n"
             "try:\n    runpy.run_path(%r, run_name='__main__')\n"
             "except SystemExit as e:\n    code = e.code\n"
             "print('TENSORFLOW_LOADED', 'tensorflow' in sys.modules, file=sys.stderr)\nsys.exit(code)\n"
             % str(SERVE / "litert_predict.py"))
    out = subprocess.run([sys.executable, "-c", probe, str(bundle)], input=lines, capture_output=True, timeout=300)
    assert out.returncode == 1, out.stderr.decode()[-2000:]   # 1: two lines failed, the rest answered
    assert b"TENSORFLOW_LOADED False" in out.stderr
    records = [json.loads(line) for line in out.stdout.decode().splitlines()]
    assert [r["line"] for r in records] == [1, 2, 3, 4, 5, 6]
    assert "empty" in records[3]["error"] and "UTF-8" in records[4]["error"]
    good = [r for r in records if "error" not in r]
    assert [_labels(r, tagging) for r in good] == expected[:4]
    assert [r["text"] for r in good] == UNICODE[:4]


class _StubServing(http.server.BaseHTTPRequestHandler):
    """Answers TF Serving's REST predict route with the SavedModel run in process (request format check)."""

    predictor = None

    def do_POST(self):  # noqa: N802
        payload = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        assert self.path.endswith("/v1/models/student:predict") and payload["signature_name"] == "serving_default"
        logits = self.predictor.predict(np.asarray(payload["instances"], dtype=np.int32))
        body = json.dumps({"predictions": logits.tolist()}).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


def test_savedmodel_client_in_process_and_over_rest(exported, capsys):
    sys.path.insert(0, str(SERVE / "savedmodel"))
    from client import main as client_main

    from xtremedistil.export.predictor import load_predictor

    bundle, tagging, expected = exported
    assert client_main([str(bundle), *UNICODE]) == 0
    local = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [_labels(r, tagging) for r in local] == expected

    _StubServing.predictor = load_predictor(bundle / "artifacts" / "savedmodel" / "student")
    stub = http.server.HTTPServer(("127.0.0.1", 0), _StubServing)
    threading.Thread(target=stub.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{stub.server_port}/v1/models/student"
        assert client_main([str(bundle), "--url", url, *UNICODE]) == 0
        remote = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
        assert remote == local
        assert client_main([str(bundle), "--url", "http://127.0.0.1:9/v1/models/student", "x"]) == 2
        assert "did not answer" in capsys.readouterr().err
    finally:
        stub.shutdown()


def test_server_refuses_a_bundle_without_onnx(tiny_models, tmp_path):
    bundle = tiny_bundle(tmp_path, tiny_models("bert"), tagging=False)
    out = subprocess.run([sys.executable, str(SERVE / "onnx_server.py"), str(bundle)], capture_output=True,
                         text=True, timeout=120, env={**os.environ})
    assert out.returncode == 2 and "run `xtremedistil export" in out.stderr
    assert "Traceback" not in out.stderr


def test_a_bundle_decoding_bio_serves_the_tags_its_predict_gives(exported, tmp_path):
    import shutil

    from xtremedistil.distill.decoding import invalid_share
    from xtremedistil.export.serving import TextPipeline

    bundle, tagging, _ = exported
    if not tagging:
        pytest.skip("tag decoding is for tagging bundles")
    copy = tmp_path / "bundle"
    shutil.copytree(bundle, copy)
    config = json.loads((copy / "config.json").read_text())
    config["task"]["decoding"] = "bio"
    (copy / "config.json").write_text(json.dumps(config))
    pipeline = TextPipeline(copy, "onnx-fp32")
    served = pipeline.predict(UNICODE)
    expected = load_bundle(copy).predict(UNICODE)            # the bundle's own decoding: bio
    assert [r["tags"] for r in served] == expected and invalid_share(expected) == 0.0
    assert expected != load_bundle(copy).predict(UNICODE, "argmax")   # random weights: argmax breaks IOB2
    assert pipeline.metadata()["decoding"] == "bio"
    config["task"]["decoding"] = "crf"
    (copy / "config.json").write_text(json.dumps(config))
    from xtremedistil.errors import XtremeDistilError
    with pytest.raises(XtremeDistilError, match="task.decoding must be one of argmax, bio, not 'crf'"):
        load_bundle(copy)
