#!/usr/bin/env python3
"""A small example deployer, and a receiver of kiln's notifications, in one process.

    python3 deployer.py PORT --secret SECRET [--dir DIR] [--public-url URL]

Routes:

  POST /deploy   JSON {"artifact", "sha256", "version"?, "path"?, "run_id"?, ...}
                 "Deploys": checks the tarball's sha256 when "path" names a readable file,
                 appends the deployment to DIR/deployments.jsonl and answers
                 201 {"job_url": "<public url>/jobs/<n>"}.
  GET  /jobs/N   The deployment N as JSON (with the status of its kiln run, once a
                 notification said how the run ended).
  POST /notify   A kiln notification. The signature is checked as kiln makes it:
                 X-Kiln-Signature: sha256=<hex HMAC-SHA256(secret, timestamp + "." + body)>
                 with X-Kiln-Timestamp (unix seconds, at most 300 s away). A good one is
                 appended to DIR/notifications.jsonl, once per X-Kiln-Delivery (kiln delivers
                 at least once), and answered 204; a bad one is answered 401 and not kept.

Port 0 picks a free port. The first line on stdout is `deployer listening on URL`.
Python 3 standard library only.
"""

import argparse
import hashlib
import hmac
import json
import os
import re
import sys
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

MAX_BODY = 1 << 20
WINDOW = 300


class State:
    """The deployments and notifications, in memory and appended to files in `folder`."""

    def __init__(self, folder, secret, public_url):
        self.folder = folder
        self.secret = secret.encode()
        self.public_url = public_url
        self.lock = threading.Lock()
        self.deployments = []
        self.deliveries = set()
        self.run_status = {}
        # A restart carries on where the files left off.
        for record in self.read("deployments.jsonl"):
            self.deployments.append(record)
        for record in self.read("notifications.jsonl"):
            self.deliveries.add(record["delivery"])
            run = (json.loads(record["body"]).get("run") or {})
            if record["event"].startswith("run.") and run.get("id"):
                self.run_status[run["id"]] = run.get("status")

    def read(self, name):
        try:
            with open(os.path.join(self.folder, name), encoding="utf-8") as f:
                return [json.loads(line) for line in f if line.strip()]
        except FileNotFoundError:
            return []

    def append(self, name, record):
        with open(os.path.join(self.folder, name), "a", encoding="utf-8") as f:
            f.write(json.dumps(record, sort_keys=True) + "\n")

    def deploy(self, request):
        with self.lock:
            n = len(self.deployments) + 1
            record = {
                "n": n,
                "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                "job_url": f"{self.public_url}/jobs/{n}",
                "artifact": request["artifact"],
                "sha256": request["sha256"],
                "version": request.get("version"),
                "run_id": request.get("run_id"),
                "run_number": request.get("run_number"),
                "ref": request.get("ref"),
                "sha": request.get("sha"),
            }
            self.deployments.append(record)
            self.append("deployments.jsonl", record)
            return record

    def notified(self, delivery, event_type, timestamp, signature, body, payload):
        """Keeps a verified notification; False when this delivery was seen before."""
        with self.lock:
            if delivery in self.deliveries:
                return False
            self.deliveries.add(delivery)
            run = payload.get("run") or {}
            if event_type.startswith("run.") and run.get("id"):
                self.run_status[run["id"]] = run.get("status")
            self.append(
                "notifications.jsonl",
                {
                    "delivery": delivery,
                    "event": event_type,
                    "timestamp": timestamp,
                    "signature": signature,
                    "verified": True,
                    "body": body.decode("utf-8"),
                },
            )
            return True

    def job(self, n):
        with self.lock:
            if not 1 <= n <= len(self.deployments):
                return None
            record = dict(self.deployments[n - 1])
            record["run_status"] = self.run_status.get(record.get("run_id"))
            return record


def signature_problem(secret, headers, body):
    """Why kiln's signature of `body` does not hold, or None when it does."""
    timestamp = headers.get("X-Kiln-Timestamp", "")
    given = headers.get("X-Kiln-Signature", "")
    if not timestamp.isdigit():
        return "X-Kiln-Timestamp is missing or not unix seconds"
    if abs(time.time() - int(timestamp)) > WINDOW:
        return "X-Kiln-Timestamp is more than 300 s away"
    mac = hmac.new(secret, timestamp.encode() + b"." + body, hashlib.sha256)
    if not hmac.compare_digest(given, "sha256=" + mac.hexdigest()):
        return "X-Kiln-Signature does not match"
    return None


def file_sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 16), b""):
            h.update(chunk)
    return h.hexdigest()


class Handler(BaseHTTPRequestHandler):
    server_version = "deployer/1"
    state = None  # set in main()

    def answer(self, status, value=None):
        body = b"" if value is None else json.dumps(value).encode() + b"\n"
        self.send_response(status)
        if value is not None:
            self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def body(self):
        length = int(self.headers.get("Content-Length") or 0)
        if length > MAX_BODY:
            return None
        return self.rfile.read(length)

    def do_GET(self):
        m = re.fullmatch(r"/jobs/(\d+)", self.path)
        record = self.state.job(int(m.group(1))) if m else None
        if record is None:
            self.answer(404, {"error": "no such deployment"})
        else:
            self.answer(200, record)

    def do_POST(self):
        body = self.body()
        if body is None:
            self.answer(413, {"error": "body too large"})
        elif self.path == "/deploy":
            self.deploy(body)
        elif self.path == "/notify":
            self.notify(body)
        else:
            self.answer(404, {"error": "no such route"})

    def deploy(self, body):
        try:
            request = json.loads(body)
        except ValueError as e:
            return self.answer(400, {"error": f"not JSON: {e}"})
        if not isinstance(request, dict) or not all(
            isinstance(request.get(k), str) and request[k] for k in ("artifact", "sha256")
        ):
            return self.answer(422, {"error": "artifact and sha256 are required strings"})
        path = request.get("path")
        if isinstance(path, str) and os.path.isfile(path):
            actual = file_sha256(path)
            if actual != request["sha256"]:
                return self.answer(
                    422, {"error": f"{path} has sha256 {actual}, not {request['sha256']}"}
                )
        record = self.state.deploy(request)
        log(f"deployed {record['artifact']} ({record['sha256']}) as {record['job_url']}")
        self.answer(201, {"job_url": record["job_url"]})

    def notify(self, body):
        problem = signature_problem(self.state.secret, self.headers, body)
        if problem:
            log(f"refused a notification: {problem}")
            return self.answer(401, {"error": problem})
        try:
            payload = json.loads(body)
        except ValueError as e:
            return self.answer(400, {"error": f"not JSON: {e}"})
        delivery = self.headers.get("X-Kiln-Delivery", "")
        event_type = self.headers.get("X-Kiln-Event", "")
        fresh = self.state.notified(
            delivery,
            event_type,
            self.headers["X-Kiln-Timestamp"],
            self.headers["X-Kiln-Signature"],
            body,
            payload,
        )
        run = payload.get("run") or {}
        log(
            f"notification {event_type} for run {run.get('id')} ({run.get('status')})"
            + ("" if fresh else ", a redelivery")
        )
        self.answer(204)

    def log_message(self, format, *args):
        log(f"{self.address_string()} {format % args}")


def log(line):
    print(line, file=sys.stderr, flush=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("port", type=int, help="the port to listen on (0: any free one)")
    parser.add_argument("--host", default="127.0.0.1", help="the address to listen on")
    parser.add_argument("--secret", required=True, help="the kiln receiver's secret")
    parser.add_argument(
        "--dir",
        default=os.path.join(tempfile.gettempdir(), "kiln-deploy-demo"),
        help="where deployments.jsonl and notifications.jsonl go",
    )
    parser.add_argument("--public-url", help="the base of job URLs (default: the address)")
    args = parser.parse_args()

    os.makedirs(args.dir, exist_ok=True)
    server = ThreadingHTTPServer((args.host, args.port), Handler)
    url = f"http://{args.host}:{server.server_address[1]}"
    Handler.state = State(args.dir, args.secret, (args.public_url or url).rstrip("/"))
    print(f"deployer listening on {url}", flush=True)
    log(f"writing to {args.dir}")
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
