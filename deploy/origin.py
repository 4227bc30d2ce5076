"""A small origin server for the demo and the namespace tests: python's http.server, plus
per-path response headers and a request log.

``python deploy/origin.py --bind 10.77.2.2 --port 80 --root DIR [--log FILE]``

Files are served from DIR by :class:`http.server.SimpleHTTPRequestHandler` (so Last-Modified
and If-Modified-Since work as the standard library does them). ``DIR/.headers.json`` maps a
URL path to extra response headers (``{"/a.bin": {"Cache-Control": "max-age=60"}}``); the
special header ``X-Origin-Status`` replaces the status code and ``X-Origin-Truncate: N``
makes the origin close the connection after N body bytes; ``X-Origin-No-Length`` drops
Content-Length, so the body is delimited by the connection's close. The headers file is re-read
on every request, so a test can change an object's headers between fetches. A single
``Range: bytes=a-b`` (or ``a-``) of a file is answered 206 (If-Range checked against the ETag
set in the headers file or Last-Modified) unless the path has ``X-Origin-No-Range``. Every
request is appended to the log as one JSON line: method, path, status, body bytes sent,
request headers; a client that goes away mid-body is logged with the bytes sent until then.
``X-Origin-Hold: N FILE`` pauses the body after N bytes until FILE exists.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import threading
import time
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any


class _HoldingWriter:
    """``X-Origin-Hold: N FILE``: the body pauses after N bytes until FILE exists (at most
    two minutes), so a test can keep a transfer open for as long as it needs."""

    def __init__(self, out: Any, spec: str) -> None:
        at, _, gate = spec.partition(" ")
        self.out, self.at, self.gate, self.sent = out, int(at), Path(gate), 0

    def write(self, data: bytes) -> None:
        if 0 <= self.at < self.sent + len(data):
            first = self.at - self.sent
            self.out.write(data[:first])
            self.out.flush()
            deadline = time.monotonic() + 120
            while not self.gate.exists() and time.monotonic() < deadline:
                time.sleep(0.02)
            self.at = -1
            self.out.write(data[first:])
        else:
            self.out.write(data)
        self.sent += len(data)


class OriginHandler(SimpleHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    root: Path
    log_path: Path | None
    log_lock = threading.Lock()

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._sent = 0
        self._range_left = -1
        super().__init__(*args, directory=str(self.root), **kwargs)

    def send_head(self) -> Any:
        self._range_left = -1
        spec = self.headers.get("Range")
        extra = self._extra()
        path = self.translate_path(self.path)
        m = re.fullmatch(r"bytes=(\d+)-(\d*)", (spec or "").strip())
        if m is None or "X-Origin-No-Range" in extra or not os.path.isfile(path):
            return super().send_head()
        f = open(path, "rb")  # noqa: SIM115 - returned to the caller, which closes it
        st = os.fstat(f.fileno())
        last_modified = self.date_time_string(int(st.st_mtime))
        if_range = self.headers.get("If-Range")
        if if_range is not None and if_range not in (extra.get("ETag"), last_modified):
            f.close()
            return super().send_head()
        start = int(m[1])
        end = min(int(m[2]) if m[2] else st.st_size - 1, st.st_size - 1)
        if start > end:
            f.close()
            self.send_response(416)
            self.send_header("Content-Range", f"bytes */{st.st_size}")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return None
        self.send_response(206)
        self.send_header("Content-Type", self.guess_type(path))
        self.send_header("Content-Range", f"bytes {start}-{end}/{st.st_size}")
        self.send_header("Content-Length", str(end - start + 1))
        self.send_header("Last-Modified", last_modified)
        self.end_headers()
        f.seek(start)
        self._range_left = end - start + 1
        return f

    def _extra(self) -> dict[str, str]:
        try:
            table = json.loads((self.root / ".headers.json").read_text())
        except (OSError, ValueError):
            return {}
        path = self.path.split("?", 1)[0]
        extra = table.get(path, {})
        return dict(extra) if isinstance(extra, dict) else {}

    def send_response(self, code: int, message: str | None = None) -> None:
        extra = self._extra()
        status = int(extra.get("X-Origin-Status", code)) if code == 200 else code
        super().send_response(status, message if status == code else None)
        for name, value in extra.items():
            if name != "X-Origin-Status":
                self.send_header(name, value)

    def send_header(self, keyword: str, value: str) -> None:
        # X-Origin-No-Length plays an origin that sends a close-delimited body.
        if keyword.lower() == "content-length" and "X-Origin-No-Length" in self._extra():
            self.close_connection = True
            return
        super().send_header(keyword, value)

    def copyfile(self, source: Any, outputfile: Any) -> None:
        # X-Origin-Truncate: N plays an origin that dies after N body bytes.
        limit = int(self._extra().get("X-Origin-Truncate", -1))
        hold = self._extra().get("X-Origin-Hold")
        if hold:
            outputfile = _HoldingWriter(outputfile, hold)
        left = self._range_left
        try:
            while chunk := source.read(256 * 1024 if left < 0 else min(256 * 1024, left)):
                if 0 <= limit < self._sent + len(chunk):
                    outputfile.write(chunk[: limit - self._sent])
                    self._sent = limit
                    self.close_connection = True
                    return
                outputfile.write(chunk)
                self._sent += len(chunk)
                if left >= 0:
                    left -= len(chunk)
        except (BrokenPipeError, ConnectionResetError):
            # The client (the cache, after a fingerprint match) cut the transfer.
            self.close_connection = True

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length", "0"))
        digest = hashlib.sha256(self.rfile.read(length)).hexdigest()
        body = f"posted {length} {digest}\n".encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
        self._sent += len(body)

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        self._status = code

    def handle_one_request(self) -> None:
        self._sent = 0
        self._status: int | str = "-"
        self.command = ""  # a keep-alive connection's final EOF must not log the last request
        super().handle_one_request()
        if self.log_path is None or not getattr(self, "command", None):
            return
        line = json.dumps(
            {
                "method": self.command,
                "path": self.path,
                "status": int(self._status) if str(self._status).isdigit() else 0,
                "bytes": self._sent,
                "headers": {k.lower(): v for k, v in self.headers.items()},
            }
        )
        with self.log_lock, open(self.log_path, "a") as fh:
            fh.write(line + "\n")

    def log_message(self, format: str, *args: Any) -> None:
        pass


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bind", required=True)
    parser.add_argument("--port", type=int, default=80)
    parser.add_argument("--root", required=True)
    parser.add_argument("--log")
    args = parser.parse_args()
    OriginHandler.root = Path(args.root).resolve()
    OriginHandler.log_path = Path(args.log) if args.log else None
    server = ThreadingHTTPServer((args.bind, args.port), OriginHandler)
    server.daemon_threads = True
    print(f"origin serving {args.root} on {args.bind}:{args.port}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
