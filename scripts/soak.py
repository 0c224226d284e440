#!/usr/bin/env python3
"""Portcullis soak: hostile and legitimate traffic for a bounded time while
everything around the gateway fails, then a verdict.

    make soak                      # cargo build --release, then 10 minutes
    SOAK_SECONDS=60 make soak      # a quick trial
    python3 scripts/soak.py        # the release binary must already exist

What runs (every socket on 127.0.0.1, nothing else is contacted):

* the release gateway (`target/release/portcullis run`, or SOAK_BINARY) on a
  config that uses an `[[issuers]] jwks_url` and `[clients] source = "http"`;
* a mock upstream in a child process (this script with `--serve-upstream`),
  killed with SIGKILL every ~30 s and restarted ~3 s later;
* a JWKS server and a client-metadata server in this process, down for ~10 s
  every ~45 s, in turn refusing connections, hanging (accept, never answer)
  and answering 500;
* a reload every 5 s: the config file is replaced, alternately by two valid
  variants, and the gateway gets SIGHUP (checked through
  `portcullis_config_reloads_total` and `portcullis_config_info`);
* workers sending, concurrently: valid requests (keep-alive; GET, a checked
  PUT, a streamed POST with Content-Length or chunked), forged tokens (bad
  signature, expired, alg none, unknown key, wrong audience / issuer,
  garbage, none), client rules (disabled, unknown, missing entitlement), bad
  bodies, slow heads and slow bodies (dribbled, 408 expected), oversized
  bodies (413), and abandoned connections (connect and close, half a head,
  half a body, a request whose answer is never read).

A request is *lost* when it should get an answer and got none: EOF, reset or
timeout (20 s) before a complete response. Abandoned connections are not
requests. Slow heads closed without a 408 are counted apart ("closed
unanswered"), as are refusals by status and error code, and 5xx answers by
their JSON `error` code.

Exit status 1 when: a request was lost; RSS or open fds are not flat; a
request meant to be refused was answered 2xx or reached the upstream; a
valid request got a 4xx; a reload failed or did not swap the config; the
gateway died. "Flat": the median of the samples (every 5 s) in the last
window is at most 1.25 x the median of the first window after warm-up plus
16 MiB (RSS) or plus 16 (fds); the windows are 30 s (SOAK_SECONDS / 6 when
shorter), and warm-up is as long as a window.
"""

import argparse
import asyncio
import base64
import collections
import json
import os
import random
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
HOST = "127.0.0.1"

ISSUER = "https://idp.soak.test"
AUDIENCE = "https://api.soak.test"
VALID_CLIENT = "soak-client"
DISABLED_CLIENT = "soak-disabled"
UNKNOWN_CLIENT = "soak-unknown"

HEADER_TIMEOUT_MS = 3000
BODY_TIMEOUT_MS = 3000
ANSWER_TIMEOUT = 20.0  # seconds a request may take before it counts as lost
MAX_BODY_BYTES = 65536

RELOAD_EVERY = 5.0
UPSTREAM_RESTART_EVERY = 30.0
UPSTREAM_DOWN = 3.0
UPSTREAM_FROZEN = 7.0  # longer than the upstream's read_timeout_ms
SIDE_OUTAGE_EVERY = 45.0
SIDE_OUTAGE_DOWN = 10.0
SAMPLE_EVERY = 5.0

RSS_SLACK_KIB = 16 * 1024
FD_SLACK = 16
GROWTH = 1.25


# --------------------------------------------------------------------------------------
# The mock upstream (a child process, so that it can be killed)
# --------------------------------------------------------------------------------------


async def read_http_request(reader):
    """One request (method, target, headers, body) or None at EOF; raises on garbage."""
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError:
        return None
    lines = head[:-4].split(b"\r\n")
    method, target, _version = lines[0].split(b" ", 2)
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        headers[name.strip().lower()] = value.strip()
    if b"chunked" in headers.get(b"transfer-encoding", b"").lower():
        body = bytearray()
        while True:
            size_line = await reader.readuntil(b"\r\n")
            size = int(size_line.split(b";")[0].strip(), 16)
            if size == 0:
                while (await reader.readuntil(b"\r\n")) != b"\r\n":
                    pass
                break
            body += await reader.readexactly(size)
            await reader.readexactly(2)
        body = bytes(body)
    else:
        body = await reader.readexactly(int(headers.get(b"content-length", b"0")))
    return method.decode(), target.decode("latin-1"), headers, body


def serve_upstream(port, leak_file):
    """The protected API: 200 JSON to everything, on keep-alive connections.

    A request whose target contains `refuse-` was meant to be refused by the
    gateway: if one ever arrives complete, it is appended to `leak_file`.
    """

    async def handle(reader, writer):
        try:
            while True:
                req = await read_http_request(reader)
                if req is None:
                    break
                method, target, _headers, body = req
                if "refuse-" in target:
                    with open(leak_file, "a") as f:
                        f.write(f"{method} {target} {len(body)}\n")
                payload = b'{"upstream":"ok"}'
                writer.write(
                    b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                    b"Content-Length: %d\r\n\r\n%s" % (len(payload), payload)
                )
                await writer.drain()
        except (OSError, ValueError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            pass
        finally:
            writer.close()

    async def main():
        server = await asyncio.start_server(handle, HOST, port, reuse_address=True, limit=1 << 20)
        async with server:
            await server.serve_forever()

    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    asyncio.run(main())


class Upstream:
    """The upstream child process: start, kill -9, restart on the same port."""

    def __init__(self, port, leak_file):
        self.port = port
        self.leak_file = leak_file
        self.proc = None
        self.restarts = 0
        self.freezes = 0

    def start(self):
        self.proc = subprocess.Popen(
            [sys.executable, __file__, "--serve-upstream", str(self.port), str(self.leak_file)],
            stdin=subprocess.DEVNULL,
        )
        wait_port(self.port, 10)

    def kill(self):
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    async def restart_every(self, stop, period, down, frozen):
        """Every `period`: in turn, kill -9 and restart `down` s later, or
        freeze (SIGSTOP) for `frozen` s, longer than the read timeout."""
        n = 0
        while not await sleep_or_stop(stop, period):
            n += 1
            if n % 2:
                self.kill()
                stopped = await sleep_or_stop(stop, down)
                await asyncio.to_thread(self.start)
                self.restarts += 1
            else:
                self.proc.send_signal(signal.SIGSTOP)
                stopped = await sleep_or_stop(stop, frozen)
                self.proc.send_signal(signal.SIGCONT)
                self.freezes += 1
            if stopped:
                break


def wait_port(port, limit):
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        try:
            socket.create_connection((HOST, port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.05)
    raise SystemExit(f"nothing listens on {HOST}:{port} after {limit} s")


# --------------------------------------------------------------------------------------
# JWKS and client-metadata servers (in process; they go down and come back)
# --------------------------------------------------------------------------------------


class SideServer:
    """A small HTTP/1.1 server whose state is up, refuse (not listening),
    hang (accepts, never answers) or error (500)."""

    def __init__(self, name, port, answer):
        self.name = name
        self.port = port
        self.answer = answer  # target -> (status, body bytes)
        self.mode = "up"
        self.server = None
        self.writers = set()
        self.requests = 0

    async def start(self):
        self.server = await asyncio.start_server(
            self.handle, HOST, self.port, reuse_address=True, limit=1 << 16
        )

    async def stop_listening(self):
        if self.server:
            self.server.close()
            for w in list(self.writers):
                w.close()
            await self.server.wait_closed()
            self.server = None

    async def set_mode(self, mode):
        if mode == "refuse":
            await self.stop_listening()
        elif self.server is None:
            await self.start()
        if mode != "hang":
            # Connections left hanging are closed when the outage ends.
            for w in list(self.writers):
                w.close()
        self.mode = mode

    async def handle(self, reader, writer):
        self.writers.add(writer)
        try:
            while True:
                req = await read_http_request(reader)
                if req is None:
                    break
                self.requests += 1
                if self.mode == "hang":
                    await asyncio.sleep(3600)
                if self.mode == "error":
                    status, body = 500, b'{"error":"soak outage"}'
                else:
                    status, body = self.answer(req[1])
                reason = {200: "OK", 404: "Not Found", 500: "Internal Server Error"}[status]
                writer.write(
                    b"HTTP/1.1 %d %s\r\nContent-Type: application/json\r\n"
                    b"Content-Length: %d\r\n\r\n%s" % (status, reason.encode(), len(body), body)
                )
                await writer.drain()
        except (OSError, ValueError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            pass
        except asyncio.CancelledError:
            pass
        finally:
            self.writers.discard(writer)
            writer.close()


def metadata_answer(target):
    client_id = target.rstrip("/").rsplit("/", 1)[-1]
    records = {
        VALID_CLIENT: {"enabled": True, "entitlements": ["soak.read", "soak.write"]},
        DISABLED_CLIENT: {"enabled": False, "entitlements": ["soak.read", "soak.write"]},
    }
    if client_id not in records:
        return 404, b'{"error":"not found"}'
    record = dict(records[client_id])
    record.update(
        {"id": f"id-{client_id}", "clientId": client_id, "ipFilterOp": None, "ipFilters": []}
    )
    return 200, json.dumps(record).encode()


async def side_outages(stop, servers, every, down, log):
    modes = ["refuse", "hang", "error"]
    n = 0
    while not await sleep_or_stop(stop, every - down):
        mode = modes[n % len(modes)]
        n += 1
        for s in servers:
            await s.set_mode(mode)
        log.append((time.monotonic(), mode))
        stopped = await sleep_or_stop(stop, down)
        for s in servers:
            await s.set_mode("up")
        if stopped:
            break
    return n


# --------------------------------------------------------------------------------------
# Keys, tokens and configs
# --------------------------------------------------------------------------------------


def b64url(data):
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def run_cli(binary, *args):
    out = subprocess.run([str(binary), *args], capture_output=True, text=True)
    if out.returncode != 0:
        raise SystemExit(f"portcullis {args[0]} failed: {out.stderr.strip()}")
    return out.stdout.strip()


def mint_tokens(binary, work, ttl):
    """Tokens by `portcullis keygen` + `portcullis token`; forged ones by hand."""
    run_cli(binary, "keygen", "--alg", "ES256", "--out", str(work / "keys"), "--kid", "soak-1")
    run_cli(binary, "keygen", "--alg", "ES256", "--out", str(work / "other"), "--kid", "soak-x")

    def token(key="keys", client=VALID_CLIENT, ents="soak.read,soak.write", iss=ISSUER,
              aud=AUDIENCE, extra=()):
        return run_cli(
            binary, "token", "--key", str(work / key / "private.pem"), "--iss", iss,
            "--sub", "soak-user", "--client-id", client, "--entitlements", ents,
            "--aud", aud, "--ttl", str(ttl), *extra,
        )

    valid = token()
    head, claims, sig = valid.split(".")
    # Flip a character in the middle of the signature: still base64url, wrong signature.
    mid = len(sig) // 2
    bad_sig = sig[:mid] + ("A" if sig[mid] != "A" else "B") + sig[mid + 1:]
    none_head = b64url(json.dumps({"alg": "none", "typ": "JWT"}).encode())
    tokens = {
        "valid": valid,
        "disabled": token(client=DISABLED_CLIENT),
        "unknown_client": token(client=UNKNOWN_CLIENT),
        "forged_signature": f"{head}.{claims}.{bad_sig}",
        "forged_expired": token(extra=("--claim", f"exp:={int(time.time()) - 3600}")),
        "forged_alg_none": f"{none_head}.{claims}.",
        "forged_unknown_key": token(key="other"),
        "forged_audience": token(aud="https://elsewhere.test"),
        "forged_issuer": token(iss="https://evil.test"),
        "forged_garbage": "not.a.jwt",
    }
    jwks = (work / "keys" / "jwks.json").read_bytes()
    return tokens, jwks


def gateway_config(work, ports, variant):
    """Two valid variants; issuers and [clients] are the same in both, so the
    key set and the metadata cache survive each reload (as in production)."""
    read_timeout = 5000 if variant == "a" else 6000
    return f"""# soak config, variant {variant}
[log]
level = "info"
format = "json"
audit = {json.dumps(str(work / "audit.log"))}

[server]
listen = ["{HOST}:{ports['proxy']}"]
threads = 2
header_timeout_ms = {HEADER_TIMEOUT_MS}
body_timeout_ms = {BODY_TIMEOUT_MS}
keepalive_timeout_ms = 60000
max_body_bytes = {MAX_BODY_BYTES}
max_connections = 10000
max_connections_per_ip = 1000
shutdown_timeout_seconds = 5
upgrade_sock = {json.dumps(str(work / "upgrade.sock"))}
pid_file = {json.dumps(str(work / "portcullis.pid"))}

[admin]
listen = "{HOST}:{ports['admin']}"

[[issuers]]
name = "soak"
issuer = "{ISSUER}"
audiences = ["{AUDIENCE}"]
algorithms = ["ES256"]
jwks_url = "http://{HOST}:{ports['jwks']}/jwks"
jwks_refresh_seconds = 15
jwks_min_refetch_seconds = 10

[[upstreams]]
name = "app"
url = "http://{HOST}:{ports['upstream']}"
connect_timeout_ms = 1000
read_timeout_ms = {read_timeout}

[clients]
source = "http"
url = "http://{HOST}:{ports['metadata']}/v1.0/apiclients/{{client_id}}"
ttl_seconds = 5
negative_ttl_seconds = 5
stale_if_error_seconds = 120
timeout_ms = 1000

[[routes]]
name = "items-get"
methods = ["GET"]
path = "/soak/items/{{id}}"
upstream = "app"
require_any = ["soak.read"]

[[routes]]
name = "items-put"
methods = ["PUT"]
path = "/soak/items/{{id}}"
upstream = "app"
require_all = ["soak.write"]

[routes.body]
json = true
max_bytes = 4096

[[routes]]
name = "items-delete"
methods = ["DELETE"]
path = "/soak/items/{{id}}"
upstream = "app"
require_all = ["soak.admin"]

[[routes]]
name = "stream"
methods = ["POST"]
path = "/soak/stream/{{id}}"
upstream = "app"
require_all = ["soak.write"]

[[routes]]
name = "variant-{variant}"
methods = ["GET"]
path = "/soak/variant-{variant}"
upstream = "app"
auth = "none"
"""


def write_atomically(path, text):
    tmp = path.with_suffix(".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


RESERVED = []


def free_ports(names):
    """Ports on 127.0.0.1, each held for the whole run by a socket bound with
    SO_REUSEADDR that never listens: Linux gives the port to no other
    `bind(:0)` or `connect()` meanwhile, while our listeners (which also set
    SO_REUSEADDR, as pingora's do) can still bind it."""
    ports = {}
    for name in names:
        s = socket.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind((HOST, 0))
        RESERVED.append(s)
        ports[name] = s.getsockname()[1]
    return ports


# --------------------------------------------------------------------------------------
# The client side: requests, outcomes, workers
# --------------------------------------------------------------------------------------


class Lost(Exception):
    """No complete answer: the reason."""


class Conn(asyncio.Protocol):
    """A client connection that keeps every byte received, even when a reset
    follows (asyncio's StreamReader raises the reset before handing over
    bytes it already holds, which would turn a 408 followed by a reset into
    a lost answer)."""

    def __init__(self):
        self.transport = None
        self.buf = bytearray()
        self.closed = None  # None, "eof" or "reset"
        self.changed = asyncio.Event()
        self.uses = 0
        self.last_answer = None  # e.g. "200 keep-alive"

    @classmethod
    async def open(cls, port, timeout=5.0):
        loop = asyncio.get_running_loop()
        _, conn = await asyncio.wait_for(loop.create_connection(cls, HOST, port), timeout)
        return conn

    def connection_made(self, transport):
        self.transport = transport

    def data_received(self, data):
        self.buf += data
        self.changed.set()

    def eof_received(self):
        self.closed = self.closed or "eof"
        self.changed.set()
        return False

    def connection_lost(self, exc):
        self.closed = self.closed or ("reset" if exc else "eof")
        self.changed.set()

    def write(self, data):
        if self.closed is None and not self.transport.is_closing():
            self.transport.write(data)

    def close(self):
        if self.transport and not self.transport.is_closing():
            self.transport.close()

    def abort(self):
        if self.transport:
            self.transport.abort()

    async def wait_change(self, deadline):
        self.changed.clear()
        left = deadline - time.monotonic()
        if left <= 0:
            return False
        try:
            await asyncio.wait_for(self.changed.wait(), left)
            return True
        except asyncio.TimeoutError:
            return False

    async def read_response(self, deadline):
        """(status, headers, body) of the next complete response; raises Lost."""
        while True:
            parsed = parse_response(self.buf, self.closed is not None)
            if parsed is not None:
                status, headers, body, used = parsed
                del self.buf[:used]
                return status, headers, body
            if self.closed is not None:
                if self.buf:
                    raise Lost(f"truncated response ({self.closed})")
                raise Lost(f"{self.closed} before a status line")
            if not await self.wait_change(deadline):
                raise Lost("timeout" + (" mid-response" if self.buf else ""))


def parse_response(buf, closed):
    """(status, headers, body, bytes used) of a complete response at the start
    of `buf`, or None when more bytes are needed; raises Lost on garbage."""
    offset = 0
    while True:
        end = buf.find(b"\r\n\r\n", offset)
        if end < 0:
            return None
        lines = bytes(buf[offset:end]).split(b"\r\n")
        parts = lines[0].split(b" ", 2)
        if len(parts) < 2 or not parts[0].startswith(b"HTTP/1.") or not parts[1].isdigit():
            raise Lost(f"bad status line {lines[0][:40]!r}")
        status = int(parts[1])
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            headers[name.strip().lower().decode("latin-1")] = value.strip().decode("latin-1")
        start = end + 4
        if 100 <= status < 200:
            offset = start
            continue
        if "chunked" in headers.get("transfer-encoding", "").lower():
            body, pos = bytearray(), start
            while True:
                line_end = buf.find(b"\r\n", pos)
                if line_end < 0:
                    return None
                size = int(bytes(buf[pos:line_end]).split(b";")[0] or b"0", 16)
                pos = line_end + 2
                if size == 0:
                    trailer_end = buf.find(b"\r\n\r\n", pos - 2)
                    if trailer_end < 0:
                        return None
                    return status, headers, bytes(body), trailer_end + 4
                if len(buf) < pos + size + 2:
                    return None
                body += buf[pos:pos + size]
                pos += size + 2
        if "content-length" in headers:
            n = int(headers["content-length"])
            if len(buf) < start + n:
                return None
            return status, headers, bytes(buf[start:start + n]), start + n
        if not closed:
            return None
        return status, headers, bytes(buf[start:]), len(buf)


def error_code(body):
    try:
        value = json.loads(body)
        return str(value.get("error", "?")) if isinstance(value, dict) else "?"
    except ValueError:
        return "non-json"


# What each kind of request should get. `ok5xx`: 5xx answers that are right
# while something is down (counted by cause, not failures). `close_ok`: a
# close without an answer is tolerated (and counted apart).
EXPECT = {
    "valid_get": ({200}, {502, 503, 504}, False),
    "valid_put": ({200}, {502, 503, 504}, False),
    "valid_stream_length": ({200}, {502, 503, 504}, False),
    "valid_stream_chunked": ({200}, {502, 503, 504}, False),
    "no_token": ({401}, set(), False),
    "forged_signature": ({401}, set(), False),
    "forged_expired": ({401}, set(), False),
    "forged_alg_none": ({401}, set(), False),
    "forged_unknown_key": ({401}, {503}, False),
    "forged_audience": ({401}, set(), False),
    "forged_issuer": ({401}, set(), False),
    "forged_garbage": ({401}, set(), False),
    "client_disabled": ({403}, {503}, False),
    "client_unknown": ({403}, {503}, False),
    "missing_entitlement": ({403}, {503}, False),
    "bad_json": ({400}, {503}, False),
    "bad_content_type": ({415}, {503}, False),
    "slow_head": ({408}, set(), True),
    "slow_body_checked": ({408}, {503}, False),
    "slow_body_stream": ({408}, {502, 503, 504}, False),
    "oversized_declared": ({413}, set(), False),
    "oversized_route": ({413}, {503}, False),
    "oversized_chunked": ({413}, {502, 503, 504}, False),
}
VALID_KINDS = {k for k in EXPECT if k.startswith("valid_")}


class Stats:
    def __init__(self):
        self.sent = 0
        self.answered = 0
        self.by_kind = collections.defaultdict(collections.Counter)
        self.refused = collections.Counter()  # "401 invalid_token"
        self.server_errors = collections.Counter()  # "502 upstream_unreachable"
        self.lost = collections.Counter()  # "kind: reason"
        self.lost_examples = []
        self.closed_unanswered = collections.Counter()
        self.unexpected = collections.Counter()  # "kind -> 4xx code"
        self.unexpected_examples = []
        self.abandoned = collections.Counter()
        self.slow_head_latency = []
        self.slow_body_latency = []
        self.valid_latency = []

    def answer(self, kind, status, body, took, t):
        self.answered += 1
        expected, ok5xx, _ = EXPECT[kind]
        label = f"{status} {error_code(body)}" if status >= 400 else str(status)
        self.by_kind[kind][label] += 1
        if 400 <= status < 500:
            self.refused[label] += 1
        elif status >= 500:
            self.server_errors[label] += 1
        if status not in expected and status not in ok5xx:
            self.unexpected[f"{kind} -> {label}"] += 1
            if len(self.unexpected_examples) < 20:
                self.unexpected_examples.append(f"t={t:.1f}s {kind} -> {label} {body[:160]!r}")
        if kind in VALID_KINDS and 200 <= status < 300:
            self.valid_latency.append(took)
        if kind == "slow_head" and status == 408:
            self.slow_head_latency.append(took)
        if kind.startswith("slow_body") and status == 408:
            self.slow_body_latency.append(took)

    def lose(self, kind, reason, t, previous):
        _, _, close_ok = EXPECT[kind]
        if close_ok and not reason.startswith("timeout") and not reason.startswith("connect"):
            self.closed_unanswered[f"{kind}: {reason}"] += 1
            self.by_kind[kind]["closed"] += 1
            return
        detail = f"{kind}: {reason}"
        if previous:
            detail += f" (on a reused connection; previous answer {previous})"
        self.lost[detail] += 1
        self.by_kind[kind]["LOST"] += 1
        if len(self.lost_examples) < 30:
            self.lost_examples.append(f"t={t:.1f}s {detail}")


class Client:
    def __init__(self, port, stats, tokens, t0):
        self.port = port
        self.stats = stats
        self.tokens = tokens
        self.t0 = t0
        self.seq = 0

    def now(self):
        return time.monotonic() - self.t0

    def target(self, base, tag):
        self.seq += 1
        return f"{base}{tag}-{self.seq}"

    @staticmethod
    def head(method, target, token=None, headers=(), close=True):
        lines = [f"{method} {target} HTTP/1.1", "Host: soak.test"]
        if token:
            lines.append(f"Authorization: Bearer {token}")
        lines += list(headers)
        if close:
            lines.append("Connection: close")
        return ("\r\n".join(lines) + "\r\n\r\n").encode()

    async def once(self, kind, data, conn=None, after_send=None):
        """Sends `data` (on `conn`, else a new connection) and records the
        outcome. Returns the connection when it may be reused, else None."""
        self.stats.sent += 1
        started = time.monotonic()
        previous = conn.last_answer if conn else None
        try:
            if conn is None:
                try:
                    conn = await Conn.open(self.port)
                except (OSError, asyncio.TimeoutError) as e:
                    raise Lost(f"connect: {type(e).__name__}") from None
            conn.uses += 1
            conn.write(data)
            if after_send:
                status, headers, body = await after_send(conn)
            else:
                status, headers, body = await conn.read_response(started + ANSWER_TIMEOUT)
        except Lost as e:
            self.stats.lose(kind, str(e), self.now(), previous)
            if conn:
                conn.close()
            return None
        self.stats.answer(kind, status, body, time.monotonic() - started, self.now())
        connection = headers.get("connection", "").lower() or "-"
        conn.last_answer = f"{status} with Connection: {connection}"
        if connection == "close":
            conn.close()
            return None
        return conn

    # --- the workers -----------------------------------------------------------------

    async def valid_worker(self, stop):
        """Legitimate traffic on keep-alive connections (up to 50 requests each)."""
        tok = self.tokens["valid"]
        conn = None
        while not stop.is_set():
            kind = random.choice(sorted(VALID_KINDS))
            tgt = self.target("/soak/items/" if kind in ("valid_get", "valid_put") else "/soak/stream/", "ok")
            body = json.dumps({"id": tgt.rsplit("/", 1)[-1], "note": "soak"}).encode()
            if kind == "valid_get":
                data = self.head("GET", tgt, tok, close=False)
            elif kind == "valid_put":
                data = self.head("PUT", tgt, tok, ["Content-Type: application/json",
                                                   f"Content-Length: {len(body)}"], close=False) + body
            elif kind == "valid_stream_length":
                data = self.head("POST", tgt, tok, ["Content-Type: application/json",
                                                    f"Content-Length: {len(body)}"], close=False) + body
            else:
                data = self.head("POST", tgt, tok, ["Content-Type: application/json",
                                                    "Transfer-Encoding: chunked"], close=False)
                data += b"%x\r\n%s\r\n0\r\n\r\n" % (len(body), body)
            conn = await self.once(kind, data, conn)
            if conn is not None and conn.uses >= 50:
                conn.close()
                conn = None
            await asyncio.sleep(random.uniform(0.005, 0.03))
        if conn:
            conn.close()

    async def refused_worker(self, stop):
        """Forged tokens, client rules and bad bodies, one connection each."""
        kinds = [k for k in self.tokens if k.startswith("forged_")] + [
            "no_token", "client_disabled", "client_unknown", "missing_entitlement",
            "bad_json", "bad_content_type",
        ]
        while not stop.is_set():
            kind = random.choice(kinds)
            tgt = self.target("/soak/items/", f"refuse-{kind}")
            if kind.startswith("forged_"):
                data = self.head("GET", tgt, self.tokens[kind])
            elif kind == "no_token":
                data = self.head("GET", tgt)
            elif kind == "client_disabled":
                data = self.head("GET", tgt, self.tokens["disabled"])
            elif kind == "client_unknown":
                data = self.head("GET", tgt, self.tokens["unknown_client"])
            elif kind == "missing_entitlement":
                data = self.head("DELETE", tgt, self.tokens["valid"])
            elif kind == "bad_json":
                body = b'{"id": "x", "broken": '
                data = self.head("PUT", tgt, self.tokens["valid"], [
                    "Content-Type: application/json", f"Content-Length: {len(body)}"]) + body
            else:
                body = b"id=x"
                data = self.head("PUT", tgt, self.tokens["valid"], [
                    "Content-Type: application/x-www-form-urlencoded",
                    f"Content-Length: {len(body)}"]) + body
            await self.once(kind, data)
            await asyncio.sleep(random.uniform(0.01, 0.05))

    async def dribble_and_read(self, conn, pieces, every):
        """Writes `pieces` one every `every` seconds while reading the answer."""
        deadline = time.monotonic() + ANSWER_TIMEOUT
        answer = asyncio.ensure_future(conn.read_response(deadline))
        try:
            for piece in pieces:
                done, _ = await asyncio.wait({answer}, timeout=every)
                if done or conn.closed:
                    break
                conn.write(piece)
            return await answer
        finally:
            if not answer.done():
                answer.cancel()

    async def slow_worker(self, stop):
        """Slow heads and slow bodies, dribbled: 408 expected."""
        tok = self.tokens["valid"]
        while not stop.is_set():
            kind = random.choice(["slow_head", "slow_body_checked", "slow_body_stream"])
            if kind == "slow_head":
                tgt = self.target("/soak/items/", "refuse-slowhead")
                first = f"GET {tgt} HTTP/1.1\r\nHost: soak.test\r\n".encode()
                pieces = [f"X-Slow-{i}: {'z' * 8}\r\n".encode() for i in range(40)] + [b"\r\n"]
                every = 0.5
            else:
                checked = kind == "slow_body_checked"
                tgt = self.target("/soak/items/" if checked else "/soak/stream/", "refuse-slowbody")
                body = json.dumps({"id": "x", "pad": "p" * 150}).encode()
                first = self.head("PUT" if checked else "POST", tgt, tok, [
                    "Content-Type: application/json", f"Content-Length: {len(body)}"])
                pieces = [body[i:i + 2] for i in range(0, len(body), 2)]
                every = 0.25

            async def after(conn, pieces=pieces, every=every):
                return await self.dribble_and_read(conn, pieces, every)

            await self.once(kind, first, after_send=after)
            await asyncio.sleep(random.uniform(0.05, 0.3))

    async def oversized_worker(self, stop):
        """Bodies over the limits: 413 expected."""
        tok = self.tokens["valid"]
        while not stop.is_set():
            kind = random.choice(["oversized_declared", "oversized_route", "oversized_chunked"])
            if kind == "oversized_declared":
                tgt = self.target("/soak/stream/", "refuse-big")
                data = self.head("POST", tgt, tok, [
                    "Content-Type: application/json", f"Content-Length: {MAX_BODY_BYTES * 2}"])
                data += b"x" * 1024  # the rest never comes: the answer must not wait for it
                await self.once(kind, data)
            elif kind == "oversized_route":
                tgt = self.target("/soak/items/", "refuse-bigroute")
                body = json.dumps({"id": "x", "pad": "p" * 5000}).encode()
                data = self.head("PUT", tgt, tok, [
                    "Content-Type: application/json", f"Content-Length: {len(body)}"])
                await self.once(kind, data + body)
            else:
                tgt = self.target("/soak/stream/", "refuse-bigchunk")
                data = self.head("POST", tgt, tok, [
                    "Content-Type: application/json", "Transfer-Encoding: chunked"])
                chunk = b"%x\r\n%s\r\n" % (8192, b"c" * 8192)
                pieces = [chunk] * (MAX_BODY_BYTES * 2 // 8192) + [b"0\r\n\r\n"]

                async def after(conn, pieces=pieces):
                    return await self.dribble_and_read(conn, pieces, 0.01)

                await self.once(kind, data, after_send=after)
            await asyncio.sleep(random.uniform(0.05, 0.2))

    async def abandon_worker(self, stop):
        """Connections that give up: not requests, nothing to answer."""
        tok = self.tokens["valid"]
        while not stop.is_set():
            how = random.choice(["connect_close", "half_head", "half_body", "unread_answer"])
            try:
                conn = await Conn.open(self.port)
                if how == "half_head":
                    tgt = self.target("/soak/items/", "refuse-abandoned")
                    conn.write(f"GET {tgt} HTTP/1.1\r\nHost: soak.te".encode())
                elif how == "half_body":
                    tgt = self.target("/soak/items/", "refuse-abandoned")
                    conn.write(self.head("PUT", tgt, tok, [
                        "Content-Type: application/json", "Content-Length: 100"]) + b'{"id":')
                elif how == "unread_answer":
                    tgt = self.target("/soak/items/", "abandoned")
                    conn.write(self.head("GET", tgt, tok))
                await asyncio.sleep(random.uniform(0, 0.2))
                conn.abort()  # RST where data is unread: the rudest hang-up
                self.stats.abandoned[how] += 1
            except (OSError, asyncio.TimeoutError) as e:
                self.stats.abandoned[f"could not connect ({type(e).__name__})"] += 1
            await asyncio.sleep(random.uniform(0.02, 0.1))


# --------------------------------------------------------------------------------------
# The gateway process: samples, metrics, reloads
# --------------------------------------------------------------------------------------


def proc_rss_kib(pid):
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        pass
    return None


def proc_fds(pid):
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return None


async def http_get(port, target, timeout=5.0):
    conn = await Conn.open(port, timeout)
    try:
        conn.write(f"GET {target} HTTP/1.1\r\nHost: admin\r\nConnection: close\r\n\r\n".encode())
        status, _headers, body = await conn.read_response(time.monotonic() + timeout)
        return status, body
    finally:
        conn.close()


async def scrape(port):
    try:
        status, body = await http_get(port, "/metrics")
    except (Lost, OSError, asyncio.TimeoutError):
        return None
    return body.decode() if status == 200 else None


def metric_values(text, name):
    """{labels-text: value} of every series of `name`."""
    out = {}
    for line in (text or "").splitlines():
        if line.startswith(name + "{") or line.startswith(name + " "):
            series, _, value = line.rpartition(" ")
            labels = series[len(name):]
            try:
                out[labels] = float(value)
            except ValueError:
                pass
    return out


class Reloader:
    def __init__(self, gateway, config_path, variants, admin_port):
        self.gateway = gateway
        self.config_path = config_path
        self.variants = variants
        self.admin_port = admin_port
        self.sent = 0
        self.swapped = 0
        self.not_swapped = []
        self.current = 0

    async def run(self, stop, every):
        text = await scrape(self.admin_port)
        last_hash = set(metric_values(text, "portcullis_config_info"))
        while not await sleep_or_stop(stop, every):
            self.current = 1 - self.current
            write_atomically(self.config_path, self.variants[self.current])
            self.gateway.send_signal(signal.SIGHUP)
            self.sent += 1
            # The reload is applied in the background: look for the new hash.
            new_hash = None
            for _ in range(30):
                await asyncio.sleep(0.1)
                hashes = set(metric_values(await scrape(self.admin_port), "portcullis_config_info"))
                if hashes and hashes != last_hash:
                    new_hash = hashes
                    break
            if new_hash:
                self.swapped += 1
                last_hash = new_hash
            else:
                self.not_swapped.append(self.sent)


async def sleep_or_stop(stop, seconds):
    """Sleeps `seconds`; True when `stop` was set meanwhile."""
    try:
        await asyncio.wait_for(stop.wait(), seconds)
        return True
    except asyncio.TimeoutError:
        return False


# --------------------------------------------------------------------------------------
# The run
# --------------------------------------------------------------------------------------


def fmt_kib(kib):
    return "?" if kib is None else f"{kib / 1024:.1f} MiB"


def percentiles(values):
    if not values:
        return "-"
    v = sorted(values)
    pick = lambda q: v[min(len(v) - 1, int(q * len(v)))] * 1000  # noqa: E731
    return f"{pick(0.5):.1f} / {pick(0.99):.1f} / {v[-1] * 1000:.0f} ms"


def median(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


async def soak(args):
    seconds = args.seconds
    window = min(30.0, seconds / 6)
    binary = Path(args.binary)
    if not binary.exists():
        raise SystemExit(f"{binary} is missing: run `cargo build --release` (make soak does)")
    work = Path(tempfile.mkdtemp(prefix="portcullis-soak-"))
    print(f"soak: {seconds:.0f} s against {binary}; work dir {work}", flush=True)
    tokens, jwks = mint_tokens(binary, work, ttl=int(seconds) + 3600)
    ports = free_ports(["proxy", "admin", "upstream", "jwks", "metadata"])

    upstream = Upstream(ports["upstream"], work / "upstream-leaks.txt")
    upstream.start()
    jwks_server = SideServer("jwks", ports["jwks"], lambda _t: (200, jwks))
    meta_server = SideServer("metadata", ports["metadata"], metadata_answer)
    await jwks_server.start()
    await meta_server.start()

    variants = [gateway_config(work, ports, "a"), gateway_config(work, ports, "b")]
    config_path = work / "portcullis.toml"
    write_atomically(config_path, variants[0])
    log_path = work / "gateway.log"
    log_file = open(log_path, "wb")
    gateway = subprocess.Popen(
        [str(binary), "run", "--config", str(config_path)],
        stdin=subprocess.DEVNULL, stdout=log_file, stderr=subprocess.STDOUT,
        env={k: v for k, v in os.environ.items() if k != "RUST_LOG"},
    )
    pid = gateway.pid
    failures = []
    try:
        ready = False
        for _ in range(200):
            try:
                status, _ = await http_get(ports["admin"], "/readyz", 1)
                if status == 200:
                    ready = True
                    break
            except (Lost, OSError, asyncio.TimeoutError):
                pass
            if gateway.poll() is not None:
                break
            await asyncio.sleep(0.05)
        if not ready:
            raise SystemExit(f"the gateway did not become ready; log: {log_path}")
        idle_start = (proc_rss_kib(pid), proc_fds(pid))

        stats = Stats()
        t0 = time.monotonic()
        client = Client(ports["proxy"], stats, tokens, t0)
        stop_traffic = asyncio.Event()
        stop_chaos = asyncio.Event()
        workers = (
            [client.valid_worker(stop_traffic) for _ in range(4)]
            + [client.refused_worker(stop_traffic) for _ in range(2)]
            + [client.slow_worker(stop_traffic) for _ in range(3)]
            + [client.oversized_worker(stop_traffic)]
            + [client.abandon_worker(stop_traffic)]
        )
        worker_tasks = [asyncio.ensure_future(w) for w in workers]
        outages = []
        reloader = Reloader(gateway, config_path, variants, ports["admin"])
        chaos = [
            asyncio.ensure_future(upstream.restart_every(
                stop_chaos, UPSTREAM_RESTART_EVERY, UPSTREAM_DOWN, UPSTREAM_FROZEN)),
            asyncio.ensure_future(side_outages(stop_chaos, [jwks_server, meta_server],
                                               SIDE_OUTAGE_EVERY, SIDE_OUTAGE_DOWN, outages)),
            asyncio.ensure_future(reloader.run(stop_chaos, RELOAD_EVERY)),
        ]

        samples = []  # (t, rss KiB, fds)
        next_report = 30.0
        while time.monotonic() - t0 < seconds:
            await asyncio.sleep(SAMPLE_EVERY)
            t = time.monotonic() - t0
            if gateway.poll() is not None:
                failures.append(f"the gateway exited (status {gateway.returncode}) at t={t:.0f}s")
                break
            samples.append((t, proc_rss_kib(pid), proc_fds(pid)))
            if t >= next_report:
                next_report += 30.0
                print(f"  t={t:4.0f}s sent={stats.sent} answered={stats.answered} "
                      f"lost={sum(stats.lost.values())} rss={fmt_kib(samples[-1][1])} "
                      f"fds={samples[-1][2]} reloads={reloader.sent} "
                      f"upstream restarts={upstream.restarts} freezes={upstream.freezes} "
                      f"outages={len(outages)}", flush=True)
        stop_traffic.set()
        stop_chaos.set()
        await asyncio.gather(*worker_tasks, *chaos, return_exceptions=True)
        if upstream.proc is None or upstream.proc.poll() is not None:
            await asyncio.to_thread(upstream.start)
        metrics_text = await scrape(ports["admin"])
        # Idle: slow clients gone, connections closed by now.
        await asyncio.sleep(HEADER_TIMEOUT_MS / 1000 + 2)
        idle_end = (proc_rss_kib(pid), proc_fds(pid))
        alive = gateway.poll() is None
        if not alive and not any("exited" in f for f in failures):
            failures.append(f"the gateway exited (status {gateway.returncode})")

        # SIGTERM: how long an idle gateway takes to exit.
        term_started = time.monotonic()
        exit_took = None
        if alive:
            gateway.send_signal(signal.SIGTERM)
            try:
                await asyncio.to_thread(gateway.wait, 30)
                exit_took = time.monotonic() - term_started
            except subprocess.TimeoutExpired:
                failures.append("the gateway did not exit within 30 s of SIGTERM")
    finally:
        if gateway.poll() is None:
            gateway.kill()
            gateway.wait()
        log_file.close()
        upstream.kill()
        await jwks_server.stop_listening()
        await meta_server.stop_listening()

    # --- verdict -------------------------------------------------------------------------
    first = [s for s in samples if window <= s[0] < 2 * window]
    last = [s for s in samples if s[0] > seconds - window]
    rss_start, rss_end = median(s[1] for s in first), median(s[1] for s in last)
    fds_start, fds_end = median(s[2] for s in first), median(s[2] for s in last)
    rss_flat = None not in (rss_start, rss_end) and rss_end <= rss_start * GROWTH + RSS_SLACK_KIB
    fds_flat = None not in (fds_start, fds_end) and fds_end <= fds_start * GROWTH + FD_SLACK
    lost = sum(stats.lost.values())
    leaks_file = work / "upstream-leaks.txt"
    leaks = leaks_file.read_text().splitlines() if leaks_file.exists() else []
    refused_ok = [k for k, c in stats.unexpected.items() if k.split(" ")[0] not in VALID_KINDS
                  and " -> 2" in k]
    valid_4xx = [k for k in stats.unexpected if k.split(" ")[0] in VALID_KINDS and " -> 4" in k]
    reloads_ok = metric_values(metrics_text, "portcullis_config_reloads_total")
    log_lines = log_path.read_text(errors="replace").splitlines()
    error_lines = [l for l in log_lines if '"level":"ERROR"' in l]
    warn_lines = [l for l in log_lines if '"level":"WARN"' in l]

    if lost:
        failures.append(f"{lost} request(s) lost")
    if not rss_flat:
        failures.append(f"RSS not flat: {fmt_kib(rss_start)} -> {fmt_kib(rss_end)}")
    if not fds_flat:
        failures.append(f"open fds not flat: {fds_start} -> {fds_end}")
    if leaks:
        failures.append(f"{len(leaks)} request(s) meant to be refused reached the upstream")
    if refused_ok:
        failures.append(f"refused kinds answered 2xx: {refused_ok}")
    if valid_4xx:
        failures.append(f"valid requests refused: {valid_4xx}")
    if reloader.not_swapped:
        failures.append(f"{len(reloader.not_swapped)} reload(s) did not swap the config")
    failed_reloads = sum(v for k, v in reloads_ok.items() if 'result="success"' not in k)
    if failed_reloads:
        failures.append(f"{failed_reloads:.0f} reload(s) failed ({reloads_ok})")

    # --- report --------------------------------------------------------------------------
    print()
    print(f"=== Portcullis soak: {seconds:.0f} s, verdict {'FAIL' if failures else 'PASS'} ===")
    rows = [
        ("requests sent", stats.sent),
        ("answered (a complete response)", stats.answered),
        ("  2xx", sum(c for kind in stats.by_kind.values() for l, c in kind.items() if l[0] == "2")),
        ("  refused (4xx)", sum(stats.refused.values())),
        ("  5xx", sum(stats.server_errors.values())),
        ("lost", lost),
        ("slow heads closed without 408 (tolerated)", sum(stats.closed_unanswered.values())),
        ("abandoned connections (not requests)", sum(stats.abandoned.values())),
        ("upstream leaks (refused requests that reached it)", len(leaks)),
        ("reloads: SIGHUP sent / config swapped", f"{reloader.sent} / {reloader.swapped}"),
        ("reloads by result (metric)", ", ".join(f"{k} {v:.0f}" for k, v in reloads_ok.items()) or "?"),
        ("upstream restarts (kill -9, 3 s down) / freezes (SIGSTOP, 7 s)",
         f"{upstream.restarts} / {upstream.freezes}"),
        ("JWKS + metadata outages (10 s)", ", ".join(m for _, m in outages) or "none"),
        ("RSS start / end (window medians)", f"{fmt_kib(rss_start)} / {fmt_kib(rss_end)}"
         f"  flat: {'yes' if rss_flat else 'NO'}"),
        ("open fds start / end (window medians)", f"{fds_start} / {fds_end}"
         f"  flat: {'yes' if fds_flat else 'NO'}"),
        ("RSS / fds peak", f"{fmt_kib(max((s[1] or 0) for s in samples) if samples else None)} / "
         f"{max((s[2] or 0) for s in samples) if samples else '?'}"),
        ("idle before / after traffic: RSS, fds", f"{fmt_kib(idle_start[0])}, {idle_start[1]} / "
         f"{fmt_kib(idle_end[0])}, {idle_end[1]}"),
        ("valid 2xx latency p50 / p99 / max", percentiles(stats.valid_latency)),
        ("slow head answered 408 after (max)", f"{max(stats.slow_head_latency):.2f} s"
         if stats.slow_head_latency else "-"),
        ("slow body answered 408 after (max)", f"{max(stats.slow_body_latency):.2f} s"
         if stats.slow_body_latency else "-"),
        ("exit after SIGTERM (idle)", f"{exit_took:.2f} s" if exit_took is not None else "-"),
        ("gateway log: ERROR / WARN lines", f"{len(error_lines)} / {len(warn_lines)}"),
    ]
    width = max(len(r[0]) for r in rows)
    for name, value in rows:
        print(f"  {name:<{width}}  {value}")
    print("\n  refused by status and code:")
    for label, count in sorted(stats.refused.items()):
        print(f"    {label:<40} {count}")
    print("\n  5xx by cause:")
    for label, count in sorted(stats.server_errors.items()) or [("none", 0)]:
        print(f"    {label:<40} {count}")
    print("\n  by kind:")
    for kind in EXPECT:
        if kind in stats.by_kind:
            outcome = ", ".join(f"{l}: {c}" for l, c in sorted(stats.by_kind[kind].items()))
            print(f"    {kind:<22} {outcome}")
    print("\n  abandoned: " + ", ".join(f"{k} {v}" for k, v in sorted(stats.abandoned.items())))
    if stats.closed_unanswered:
        print("\n  closed unanswered: " + ", ".join(f"{k} {v}" for k, v in stats.closed_unanswered.items()))
    if stats.lost:
        print("\n  lost:")
        for detail, count in stats.lost.most_common():
            print(f"    {count:6}  {detail}")
        for ex in stats.lost_examples[:10]:
            print(f"      e.g. {ex}")
    if stats.unexpected:
        print("\n  unexpected answers:")
        for detail, count in stats.unexpected.most_common():
            print(f"    {count:6}  {detail}")
        for ex in stats.unexpected_examples[:10]:
            print(f"      e.g. {ex}")
    if leaks:
        print("\n  upstream leaks: " + "; ".join(leaks[:10]))
    for level, lines in (("ERROR", error_lines), ("WARN", warn_lines)):
        distinct = collections.Counter()
        for l in lines:
            try:
                distinct[json.loads(l)["fields"]["message"][:120]] += 1
            except (ValueError, KeyError, TypeError):
                distinct[l[:120]] += 1
        if distinct:
            print(f"\n  gateway {level} lines:")
            for message, count in distinct.most_common(10):
                print(f"    {count:6}  {message}")
    print("\n  samples (t s, RSS MiB, fds): " + " ".join(
        f"{t:.0f}:{(r or 0) / 1024:.1f}:{f}" for t, r, f in samples))
    print(f"\n  flat means: end <= start x {GROWTH} + {RSS_SLACK_KIB // 1024} MiB (RSS) or "
          f"+ {FD_SLACK} (fds); start = median of the samples in [{window:.0f} s, {2 * window:.0f} s), "
          f"end = median of the last {window:.0f} s")
    if failures:
        print("\nFAIL:\n  " + "\n  ".join(failures))
        print(f"(work dir kept: {work})")
        return 1
    print("\nPASS")
    if not args.keep:
        for p in sorted(work.rglob("*"), reverse=True):
            p.unlink() if p.is_file() or p.is_symlink() else p.rmdir()
        work.rmdir()
    else:
        print(f"(work dir kept: {work})")
    return 0


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--serve-upstream", nargs=2, metavar=("PORT", "LEAK_FILE"),
                        help=argparse.SUPPRESS)
    parser.add_argument("--seconds", type=float,
                        default=float(os.environ.get("SOAK_SECONDS", "600")),
                        help="how long the traffic runs (env SOAK_SECONDS, default 600)")
    parser.add_argument("--binary", default=os.environ.get(
        "SOAK_BINARY", str(ROOT / "target" / "release" / "portcullis")))
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    args = parser.parse_args()
    if args.serve_upstream:
        serve_upstream(int(args.serve_upstream[0]), args.serve_upstream[1])
        return 0
    if args.seconds < 30:
        raise SystemExit("SOAK_SECONDS must be at least 30")
    return asyncio.run(soak(args))


if __name__ == "__main__":
    sys.exit(main())
