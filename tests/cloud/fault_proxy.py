"""A tiny HTTP proxy in front of moto's server that injects S3 faults for the requests a rule matches.

``proxy.fail(rule, status=500)`` answers matching requests with an S3 error document instead of forwarding
them; ``proxy.hold(rule)`` keeps the first matching request waiting until the test releases it, so a test
can act (e.g. send SIGTERM) while a request is known to be in flight. Everything else goes to moto as is.
Point ``AWS_ENDPOINT_URL`` at ``proxy.url``.
"""

from __future__ import annotations

import http.client
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

_HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade", "content-length"}


@dataclass(frozen=True)
class Request:
    """What a rule sees: HTTP method, path (``/bucket/key``) and query parameters."""

    method: str
    path: str
    query: dict[str, list[str]]


Rule = Callable[[Request], bool]


def upload_part(request: Request) -> bool:
    """An UploadPart request (``PUT ...?partNumber=N&uploadId=...``)."""
    return request.method == "PUT" and "partNumber" in request.query


def complete_upload(request: Request) -> bool:
    """A CompleteMultipartUpload request (``POST ...?uploadId=...``)."""
    return request.method == "POST" and "uploadId" in request.query


def object_read(key_suffix: str, methods: tuple[str, ...] = ("GET", "HEAD")) -> Rule:
    """A read (GET or HEAD, or only ``methods``) of an object whose key ends with ``key_suffix``."""
    return lambda r: r.method in methods and r.path.endswith(key_suffix)


@dataclass
class Gate:
    """A held request: ``arrived`` is set when it reaches the proxy, ``done`` when its answer was sent."""

    rule: Rule
    arrived: threading.Event = field(default_factory=threading.Event)
    released: threading.Event = field(default_factory=threading.Event)
    done: threading.Event = field(default_factory=threading.Event)

    def release(self) -> None:
        self.released.set()


@dataclass
class _Fault:
    rule: Rule
    status: int
    code: str
    message: str
    hits: int = 0


class FaultProxy:
    """Forwards HTTP requests to ``upstream`` unless a fault rule matches them."""

    def __init__(self, upstream: str):
        parts = urlsplit(upstream)
        self._upstream = (parts.hostname, parts.port)
        self._faults: list[_Fault] = []
        self._gates: list[Gate] = []
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> FaultProxy:
        self._thread.start()
        return self

    def stop(self) -> None:
        for gate in self._gates:
            gate.release()
        self._server.shutdown()
        self._server.server_close()

    def fail(
        self,
        rule: Rule,
        status: int = 500,
        code: str = "InternalError",
        message: str = "We encountered an internal error. Please try again.",
    ) -> _Fault:
        """Answers every request ``rule`` matches with ``status`` and an S3 error document."""
        fault = _Fault(rule, status, code, message)
        with self._lock:
            self._faults.append(fault)
        return fault

    def hold(self, rule: Rule) -> Gate:
        """Keeps the first request ``rule`` matches waiting until ``gate.release()``, then forwards it."""
        gate = Gate(rule)
        with self._lock:
            self._gates.append(gate)
        return gate

    def _match(self, request: Request) -> tuple[_Fault | None, Gate | None]:
        with self._lock:
            for fault in self._faults:
                if fault.rule(request):
                    fault.hits += 1
                    return fault, None
            for gate in self._gates:
                if not gate.arrived.is_set() and gate.rule(request):
                    gate.arrived.set()
                    return None, gate
        return None, None

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:  # quiet
                pass

            def _body(self) -> bytes:
                if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                    chunks = []
                    while True:
                        size = int(self.rfile.readline().split(b";")[0], 16)
                        if size == 0:
                            while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                                pass
                            return b"".join(chunks)
                        chunks.append(self.rfile.read(size))
                        self.rfile.readline()
                return self.rfile.read(int(self.headers.get("Content-Length") or 0))

            def _answer(self, status: int, headers: list[tuple[str, str]], body: bytes) -> None:
                self.send_response(status)
                length = str(len(body))
                for name, value in headers:
                    if self.command == "HEAD" and name.lower() == "content-length":
                        length = value  # a HEAD answer has no body but states the object's size
                    elif name.lower() not in _HOP_BY_HOP:
                        self.send_header(name, value)
                self.send_header("Content-Length", length)
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(body)

            def _handle(self) -> None:
                body = self._body()
                split = urlsplit(self.path)
                request = Request(self.command, split.path, parse_qs(split.query, keep_blank_values=True))
                fault, gate = proxy._match(request)
                if fault is not None:
                    document = (
                        '<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>'
                        f"{fault.code}</Code><Message>{fault.message}</Message>"
                        "<RequestId>FAULT0001</RequestId></Error>"
                    ).encode()
                    self._answer(fault.status, [("Content-Type", "application/xml")], document)
                    return
                if gate is not None:
                    gate.released.wait()
                try:
                    connection = http.client.HTTPConnection(*proxy._upstream, timeout=60)
                    headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP_BY_HOP}
                    headers["Content-Length"] = str(len(body))
                    connection.request(self.command, self.path, body=body, headers=headers)
                    response = connection.getresponse()
                    self._answer(response.status, response.getheaders(), response.read())
                    connection.close()
                finally:
                    if gate is not None:
                        gate.done.set()

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _handle

        return Handler
