"""The OpenAI-compatible backend against small local HTTP servers: retries, errors, dialects, usage."""

import json
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from offline_seg.classes import ClassList
from offline_seg.errors import InvalidInputError
from offline_seg.llm.base import Choice, LabelList
from offline_seg.llm.openai_backend import LLMServerError, OpenAILLM

VOC = ClassList.preset("voc")
CONVERSATION = [{"role": "user", "content": "a puppy"}]


class FakeServer:
    """A chat server that fails the first `failures` requests with HTTP 503, then answers from `answer`."""

    def __init__(self, answer, *, failures=0, owned_by="vllm", delay=0.0):
        self.bodies: list[dict] = []
        self.failures = failures
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # keep pytest output clean
                pass

            def _send(self, code, data):
                payload = json.dumps(data).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def do_GET(self):
                self._send(200, {"data": [{"id": "fake-model", "owned_by": owned_by}]})

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                outer.bodies.append(body)
                if outer.failures > 0:
                    outer.failures -= 1
                    return self._send(503, {"error": "busy"})
                time.sleep(delay)
                text, finish = answer(body)
                self._send(200, {"choices": [{"message": {"content": text}, "finish_reason": finish}],
                                 "usage": {"prompt_tokens": 10, "completion_tokens": 2}})

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/v1"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def echo_server():
    server = FakeServer(lambda body: (body["messages"][-1]["content"], "stop"))
    yield server
    server.close()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_refuses_hosts_that_are_not_this_machine():
    with pytest.raises(InvalidInputError, match="not this machine"):
        OpenAILLM("http://10.0.0.5:8000/v1")
    with pytest.raises(InvalidInputError, match="not this machine"):
        OpenAILLM("http://example.org/v1")
    OpenAILLM("http://localhost:8000/v1")
    OpenAILLM("http://[::1]:8000/v1")
    OpenAILLM("http://10.0.0.5:8000/v1", allow_remote=True)


def test_a_refused_server_stops_the_run_before_any_image(tiny_weights, tmp_path):
    """A description no run can use is the run's error (exit 2, one line), not every image's failure."""
    from click.testing import CliRunner
    from PIL import Image

    from offline_seg.cli import main

    Image.new("RGB", (32, 24)).save(tmp_path / "a.png")
    for url, words in (("openai:http://example.org/v1", "not this machine"), ("openai:ftp://127.0.0.1/v1", "not an http")):
        result = CliRunner().invoke(main, ["segment", str(tmp_path / "a.png"), "--out", str(tmp_path / "out"),
                                           "--weights", str(tiny_weights), "--labels", "cat", "--refiner", "llm",
                                           "--llm", url])
        assert result.exit_code == 2 and words in result.output and "skipped" not in result.output, result.output


def test_a_server_that_is_down_gives_one_clear_error_at_once():
    port = free_port()
    llm = OpenAILLM(f"http://127.0.0.1:{port}/v1", retries=5, backoff=1.0)
    started = time.monotonic()
    with pytest.raises(LLMServerError, match=f"no LLM server at http://127.0.0.1:{port}/v1.*offline-seg llm serve"):
        llm.complete([CONVERSATION])
    assert time.monotonic() - started < 2  # no retry loop on a refused connection


def test_retries_with_backoff_then_succeeds(echo_server):
    echo_server.failures = 2
    llm = OpenAILLM(echo_server.url, retries=3, backoff=0.01, concurrency=1)
    assert llm.complete([CONVERSATION]) == ["a puppy"]
    assert len(echo_server.bodies) == 3
    echo_server.failures = 5
    with pytest.raises(LLMServerError, match="HTTP 503"):
        OpenAILLM(echo_server.url, retries=1, backoff=0.01).complete([CONVERSATION])


def test_timeout_is_an_error_not_a_hang():
    server = FakeServer(lambda body: ("late", "stop"), delay=1.5)
    try:
        llm = OpenAILLM(server.url, timeout=0.3, retries=1, backoff=0.01)
        with pytest.raises(LLMServerError, match="failed after 2 tries"):
            llm.complete([CONVERSATION])
    finally:
        server.close()


def test_vllm_dialect_sends_structured_outputs_and_counts_usage(echo_server):
    llm = OpenAILLM(echo_server.url, concurrency=4)
    users = ["dog", "Cat", "a lamp", "sofa", "person"]
    answers = llm.complete([[{"role": "user", "content": u}] for u in users], choices=VOC.names, max_new_tokens=7)
    assert answers == ["dog", "cat", "a lamp", "sofa", "person"]  # order kept; canonical case; invalid as-is
    body = echo_server.bodies[0]
    assert body["model"] == "fake-model" and body["temperature"] == 0 and body["max_tokens"] == 7
    assert body["structured_outputs"] == {"choice": list(VOC.names)}
    assert llm.stats.snapshot() == {"calls": 1, "requests": 5, "prompt_tokens": 50, "completion_tokens": 10,
                                    "invalid": 1}
    llm.complete([[{"role": "user", "content": "dog, cat"}]], constraint=LabelList(VOC.foreground))
    assert set(echo_server.bodies[-1]["structured_outputs"]) == {"regex"}


def test_gbnf_and_plain_dialects():
    server = FakeServer(lambda body: ("dog, cat, hor", "length"), owned_by="llamacpp")
    try:
        llm = OpenAILLM(server.url)
        assert llm.complete([CONVERSATION], constraint=LabelList(VOC.foreground)) == ["dog, cat"]
        assert llm.dialect == "gbnf" and server.bodies[-1]["grammar"].startswith("root ::= label")
        plain = OpenAILLM(server.url, constraint="none")
        assert plain.complete([CONVERSATION], constraint=Choice(("dog",))) == ["dog, cat, hor"]
        assert "grammar" not in server.bodies[-1] and plain.stats.invalid == 1
    finally:
        server.close()


def test_redirects_are_not_followed():
    class Redirecting(BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def do_GET(self):
            self.send_response(302)
            self.send_header("Location", "http://example.org/v1/models")
            self.send_header("Content-Length", "0")
            self.end_headers()

        do_POST = do_GET

    server = ThreadingHTTPServer(("127.0.0.1", 0), Redirecting)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        with pytest.raises(LLMServerError, match="redirected to 'http://example.org/v1/models'.*not followed"):
            OpenAILLM(f"http://127.0.0.1:{server.server_port}/v1", retries=0).complete([CONVERSATION])
    finally:
        server.shutdown()
        server.server_close()


def test_localhost_must_resolve_to_loopback(monkeypatch):
    real = socket.getaddrinfo
    monkeypatch.setattr(socket, "getaddrinfo", lambda host, *a, **k: [(2, 1, 6, "", ("93.184.216.34", 0))]
                        if host == "localhost" else real(host, *a, **k))
    with pytest.raises(InvalidInputError, match="not this machine"):
        OpenAILLM("http://localhost:8000/v1")
    monkeypatch.setattr(socket, "getaddrinfo", lambda host, *a, **k: [(10, 1, 6, "", ("::1", 0, 0, 0)),
                                                                       (2, 1, 6, "", ("127.0.0.1", 0))])
    OpenAILLM("http://localhost:8000/v1")


def test_garbage_answers_are_a_clear_error():
    server = FakeServer(lambda body: ("dog", "stop"))
    try:
        llm = OpenAILLM(server.url, retries=0)
        assert llm.identity == f"openai:{server.url}:fake-model"  # the served model's name, asked once
    finally:
        server.close()

    class Garbage(BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def do_GET(self):  # /html/v1/models: an HTML page; /json/v1/models: a proper listing
            payload = (b"<html>502 bad gateway</html>" if self.path.startswith("/html")
                       else json.dumps({"data": [{"id": "m", "owned_by": "x"}]}).encode())
            self.send_response(200)
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def do_POST(self):
            payload = json.dumps({"result": "dog"}).encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

    garbage = ThreadingHTTPServer(("127.0.0.1", 0), Garbage)
    threading.Thread(target=garbage.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{garbage.server_port}"
        with pytest.raises(LLMServerError, match="not JSON: b'<html>502 bad gateway"):
            OpenAILLM(f"{url}/html/v1", retries=0).complete([CONVERSATION])
        with pytest.raises(LLMServerError, match='without a chat completion: {"result": "dog"}'):
            OpenAILLM(f"{url}/json/v1", retries=0).complete([CONVERSATION])
    finally:
        garbage.shutdown()
        garbage.server_close()
