#!/usr/bin/env python3
"""Raw-socket checks of examples/http_file_server that curl cannot make.

   http_probe.py PORT CHECK [ARGS...]

Each check exits 0 on success and prints why it failed otherwise. Every
socket operation has a timeout: a check never hangs.
"""
import socket
import sys
import time

HOST = "127.0.0.1"


def fail(msg):
    print("FAIL:", msg)
    sys.exit(1)


def connect(port, timeout=5.0):
    s = socket.create_connection((HOST, port), timeout=timeout)
    return s


class Reader:
    """Reads HTTP/1.1 responses (with Content-Length bodies) off a socket."""

    def __init__(self, sock):
        self.sock = sock
        self.buf = b""

    def fill(self):
        data = self.sock.recv(65536)
        if not data:
            raise EOFError("connection closed")
        self.buf += data

    def response(self, head_only=False):
        while b"\r\n\r\n" not in self.buf:
            self.fill()
        head, self.buf = self.buf.split(b"\r\n\r\n", 1)
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split(" ")[1])
        headers = {}
        for line in lines[1:]:
            name, value = line.split(":", 1)
            headers[name.strip().lower()] = value.strip()
        length = 0 if head_only or status == 304 else int(headers.get("content-length", "0"))
        while len(self.buf) < length:
            self.fill()
        body, self.buf = self.buf[:length], self.buf[length:]
        return status, headers, body


def request(path, method="GET", extra=""):
    return f"{method} {path} HTTP/1.1\r\nHost: test\r\n{extra}\r\n".encode()


def check_keepalive(port, path, expected_file):
    """100 requests one after another on one connection, every body checked."""
    expected = open(expected_file, "rb").read()
    s = connect(port)
    r = Reader(s)
    for i in range(100):
        s.sendall(request(path))
        status, headers, body = r.response()
        if status != 200 or body != expected:
            fail(f"request {i}: status {status}, {len(body)} bytes")
        if headers.get("connection") == "close":
            fail(f"request {i}: the server closes a keep-alive connection")
    print("100 keep-alive requests on one connection: ok")


def check_pipeline(port, path, expected_file):
    """Ten GETs, a HEAD, a 404 and a 405 in one write; the answers in order."""
    expected = open(expected_file, "rb").read()
    s = connect(port)
    batch = b"".join(request(path) for _ in range(10))
    batch += request(path, "HEAD") + request("/no-such-file") + request(path, "DELETE")
    batch += request(path)
    s.sendall(batch)
    r = Reader(s)
    for i in range(10):
        status, _, body = r.response()
        if status != 200 or body != expected:
            fail(f"pipelined GET {i}: status {status}, {len(body)} bytes")
    status, headers, _ = r.response(head_only=True)
    if status != 200 or int(headers["content-length"]) != len(expected):
        fail(f"pipelined HEAD: {status} {headers}")
    if r.response()[0] != 404:
        fail("pipelined 404")
    status, headers, _ = r.response()
    if status != 405 or headers.get("allow") != "GET, HEAD":
        fail(f"pipelined 405: {status} {headers}")
    status, _, body = r.response()
    if status != 200 or body != expected:
        fail("the GET after the 405")
    print("14 pipelined requests in one write: ok")


def check_raw(port, expected_status, payload):
    """Sends payload (Python escapes allowed), expects one response with that status."""
    s = connect(port)
    s.sendall(payload.encode("latin-1").decode("unicode_escape").encode("latin-1"))
    status, headers, body = Reader(s).response()
    if status != int(expected_status):
        fail(f"expected {expected_status}, got {status} {body[:100]!r}")
    # Errors of syntax close the connection.
    if status in (400, 414, 431, 501, 505):
        s.settimeout(3)
        try:
            rest = s.recv(100)
            if rest:
                fail(f"data after the error response: {rest!r}")
        except ConnectionResetError:
            pass
    print(f"raw request -> {status}: ok")


def wait_closed(s, limit):
    """Seconds until the server closes s (reading and dropping what comes)."""
    start = time.monotonic()
    s.settimeout(limit)
    try:
        while True:
            data = s.recv(65536)
            if not data:
                break
    except ConnectionResetError:
        pass
    except socket.timeout:
        fail(f"the server did not close the connection within {limit} s")
    return time.monotonic() - start


def check_slowloris(port, idle):
    """Half a request then silence, and a trickle of one byte at a time:
    both dropped once the idle timeout has passed, not before."""
    idle = float(idle)
    s = connect(port)
    s.sendall(b"GET /a.txt HTTP/1.1\r\nHost: te")
    took = wait_closed(s, idle + 5)
    if took < idle * 0.8:
        fail(f"half a request dropped after {took:.2f} s, before the {idle} s timeout")
    print(f"half a request: closed after {took:.2f} s: ok")
    s = connect(port)
    start = time.monotonic()
    s.setblocking(False)
    closed = False
    for ch in b"GET /a.txt HTTP/1.1\r\nX-Slow: " + b"a" * 1000:
        try:
            s.send(bytes([ch]))
            if s.recv(100) == b"":
                closed = True
                break
        except BlockingIOError:
            pass
        except (ConnectionResetError, BrokenPipeError):
            closed = True
            break
        if time.monotonic() - start > idle + 5:
            break
        time.sleep(idle / 10)
    took = time.monotonic() - start
    if not closed:
        fail(f"a trickling client was not dropped after {took:.2f} s")
    print(f"trickle: dropped after {took:.2f} s: ok")


def check_noread(port, path, write_timeout, small_path):
    """Asks for a big file and never reads: the server drops the connection
    after the write timeout, and keeps serving others meanwhile."""
    wt = float(write_timeout)
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    s.settimeout(5)
    s.connect((HOST, port))
    s.sendall(request(path))
    # Others are served while this one is stuck.
    for _ in range(5):
        o = connect(port)
        o.sendall(request(small_path, extra="Connection: close\r\n"))
        if Reader(o).response()[0] != 200:
            fail("another client was not served while one did not read")
        o.close()
    time.sleep(wt + 1.5)
    # The server has given up: what is in the buffers drains, then the end.
    got = 0
    s.settimeout(5)
    try:
        while True:
            data = s.recv(1 << 20)
            if not data:
                break
            got += len(data)
    except ConnectionResetError:
        pass
    except socket.timeout:
        fail(f"the connection is still open after the write timeout ({got} bytes read)")
    if got >= 100 * 1024 * 1024:
        fail("the whole file arrived: the server never timed out")
    print(f"a client that never reads: dropped ({got} bytes were in the buffers): ok")


def check_limit(port, limit):
    """With --max-connections LIMIT: LIMIT connections are kept, the next gets 503."""
    held = [connect(port) for _ in range(int(limit))]
    for s in held:  # make sure the server has accepted them
        s.sendall(request("/a.txt"))
        if Reader(s).response()[0] != 200:
            fail("a connection within the limit was refused")
    extra = connect(port)
    status, _, _ = Reader(extra).response()
    if status != 503:
        fail(f"over the limit: {status}, expected 503")
    wait_closed(extra, 5)
    held[0].close()
    time.sleep(0.3)
    s = connect(port)
    s.sendall(request("/a.txt"))
    if Reader(s).response()[0] != 200:
        fail("a connection after one was freed was refused")
    print("connection limit: 503 then close, and room again after a close: ok")


def main():
    port, check, args = int(sys.argv[1]), sys.argv[2], sys.argv[3:]
    checks = {
        "keepalive": check_keepalive,
        "pipeline": check_pipeline,
        "raw": check_raw,
        "slowloris": check_slowloris,
        "noread": check_noread,
        "limit": check_limit,
    }
    try:
        checks[check](port, *args)
    except (OSError, EOFError, ValueError) as e:
        fail(f"{check}: {type(e).__name__}: {e}")


if __name__ == "__main__":
    main()
