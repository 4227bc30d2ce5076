"""A small origin server for the demo and the namespace tests: python's http.server, plus
per-path response headers and a request log.

``python deploy/origin.py --bind 10.77.2.2 --port 80 --root DIR [--log FILE]``

Files are served from DIR by :class:`http.server.SimpleHTTPRequestHandler` (so Last-Modified
and If-Modified-Since work as the standard library does them). ``DIR/.headers.json`` maps a
URL path to extra response headers (``{"/a.bin": {"Cache-Control": "max-age=60"}}``); the
special header ``X-Origin-Status`` replaces the status code and ``X-Origin-Truncate: N``
makes the origin close the connection after N body bytes; ``X-Origin-No-Length`` drops
Content-Length, so the body is delimited by the connection's close. It is re-read on every request,
so a test can change an object's headers between fetches. Every request is appended to the
log as one JSON line: method, path, status, body bytes sent, request headers.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import threading
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any


class OriginHandler(SimpleHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    root: Path
    log_path: Path | None
    log_lock = threading.Lock()

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._sent = 0
        super().__init__(*args, directory=str(self.root), **kwargs)

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
        while chunk := source.read(256 * 1024):
            if 0 <= limit < self._sent + len(chunk):
                outputfile.write(chunk[: limit - self._sent])
                self._sent = limit
                self.close_connection = True
                return
            outputfile.write(chunk)
            self._sent += len(chunk)

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
