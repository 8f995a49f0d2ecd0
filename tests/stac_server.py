"""A local HTTP server for STAC tests: static files with Range support, injected
failures, a fake Planetary Computer SAS token endpoint and a forward proxy for
``*.blob.core.windows.net`` URLs that checks their tokens.

Nothing here touches latentcube: failures and signing are simulated on the wire.
"""

from __future__ import annotations

import datetime as dt
import json
import threading
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit


class StacServer(ThreadingHTTPServer):
    """Serve ``root``; the first ``fail_first`` requests get HTTP 503.

    Attributes
    ----------
    requests, failed
        Counters.
    tokens
        Issued SAS tokens (``sig`` value -> issue number).
    data_requests
        ``(path, sig)`` of every proxied blob request answered with data.
    rejected
        Proxied blob requests refused (no, unknown or expired token).
    """

    daemon_threads = True

    def __init__(
        self,
        root: Path,
        *,
        fail_first: int = 0,
        fail_every: int = 0,
        fail_per_file: int = 0,
        fail_file: dict[str, int] | None = None,
    ) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.root = Path(root)
        self.fail_remaining = fail_first
        self.fail_every = fail_every
        self.fail_per_file = fail_per_file  # every .tif: the first n requests get 503
        self.fail_file = dict(fail_file or {})  # path -> first n requests get 503
        self.file_requests: dict[str, int] = {}
        self.failed_paths: list[str] = []
        self.lock = threading.Lock()
        self.requests = 0
        self.failed = 0
        self.tokens: dict[str, int] = {}
        self.expired: set[str] = set()
        self.expire_first_token = False
        self.data_requests: list[tuple[str, str]] = []
        self.rejected = 0
        self.thread = threading.Thread(target=self.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def __enter__(self) -> StacServer:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown()
        self.server_close()


class _Handler(BaseHTTPRequestHandler):
    server: StacServer
    protocol_version = "HTTP/1.1"

    def log_message(self, *args: object) -> None:  # quiet
        pass

    def do_HEAD(self) -> None:
        self._serve(head=True)

    def do_GET(self) -> None:
        self._serve(head=False)

    def _send(self, code: int, body: bytes = b"", headers: dict[str, str] | None = None,
              head: bool = False) -> None:  # fmt: skip
        self.send_response(code)
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if not head and body:
            self.wfile.write(body)

    def _serve(self, head: bool) -> None:
        srv = self.server
        path_only = urlsplit(self.path).path.lstrip("/")
        with srv.lock:
            srv.requests += 1
            n = srv.file_requests[path_only] = srv.file_requests.get(path_only, 0) + 1
            fail = srv.fail_remaining > 0 or (
                srv.fail_every > 0 and srv.requests % srv.fail_every == 0
            )
            if path_only.endswith(".tif") and n <= srv.fail_per_file:
                fail = True
            if n <= srv.fail_file.get(path_only, 0):
                fail = True
            if srv.fail_remaining > 0:
                srv.fail_remaining -= 1
            if fail:
                srv.failed += 1
                srv.failed_paths.append(path_only)
        if fail:
            self._send(503, b"busy", head=head)
            return
        url = urlsplit(self.path)
        if url.path.startswith("/token/"):
            self._token(head)
            return
        rel = url.path.lstrip("/")
        if url.netloc.endswith(".blob.core.windows.net"):
            sig = parse_qs(url.query).get("sig", [""])[0]
            with srv.lock:
                ok = sig in srv.tokens and sig not in srv.expired
                if not ok:
                    srv.rejected += 1
            if not ok:
                self._send(403, b"AuthenticationFailed", head=head)
                return
            rel = rel.split("/", 1)[1]  # drop the container
            with srv.lock:
                srv.data_requests.append((rel, sig))
        path = srv.root / rel
        if not path.is_file():
            self._send(404, b"not found", head=head)
            return
        data = path.read_bytes()
        rng = self.headers.get("Range")
        if rng and rng.startswith("bytes="):
            a, _, b = rng[6:].partition("-")
            lo = int(a)
            hi = min(int(b) if b else len(data) - 1, len(data) - 1)
            part = data[lo : hi + 1]
            self._send(
                206,
                part,
                {
                    "Content-Range": f"bytes {lo}-{hi}/{len(data)}",
                    "Accept-Ranges": "bytes",
                    "Content-Type": "application/octet-stream",
                },
                head,
            )
            return
        ctype = "application/json" if rel.endswith(".json") else "application/octet-stream"
        self._send(200, data, {"Accept-Ranges": "bytes", "Content-Type": ctype}, head)

    def _token(self, head: bool) -> None:
        srv = self.server
        sig = uuid.uuid4().hex
        with srv.lock:
            srv.tokens[sig] = len(srv.tokens)
            if srv.expire_first_token and len(srv.tokens) == 1:
                srv.expired.add(sig)
        # 59 s of validity: below planetary_computer's 60 s margin, so the client
        # asks for a new token at every signing call.
        expiry = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=59)
        body = json.dumps(
            {
                "msft:expiry": expiry.isoformat().replace("+00:00", "Z"),
                "token": f"st=2018-01-01&se=2099-01-01&sp=rl&sv=2021-06-08&sr=c&sig={sig}",
            }
        ).encode()
        self._send(200, body, {"Content-Type": "application/json"}, head)
