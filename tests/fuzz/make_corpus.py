#!/usr/bin/env python3
"""make_corpus.py - writes the seed corpus of fuzz_proxy into
tests/fuzz/corpus/ (one file per input: REQUEST "\\n~~~~\\n" RESPONSE).

    python3 tests/fuzz/make_corpus.py        # rewrites tests/fuzz/corpus/

Seeds: every request row of tests/integration/smuggling_cases.py answered
by a valid backend, every response row behind a valid request, and a few
exchanges the tables do not cover (upgrade, 100-continue, HEAD, 204/304,
close-delimited and interim answers, HTTP/1.0, trusted X-Forwarded-For,
routing to the hash pool, hop-by-hop headers).
"""

import os
import re
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "integration"))
from smuggling_cases import REQUESTS, RESPONSES  # noqa: E402

SEP = b"\n~~~~\n"
OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
OK_CHUNKED = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n"
GET = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"
POST = b"POST /p HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n"

EXTRA = {
    "upgrade-websocket": (
        b"GET /ws HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"
        b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
        b"\x81\x85\x37\xfa\x21\x3d\x7f\x9f\x4d\x51\x58",
        b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"
        b"Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n\x81\x05hello"),
    "unexpected-101": (GET, b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: x\r\n\r\n"),
    "expect-100-continue": (
        b"POST /up HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 5\r\n\r\nhello",
        b"HTTP/1.1 100 Continue\r\n\r\n" + OK),
    "interim-103-then-chunked": (GET, b"HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n" + OK_CHUNKED),
    "head": (b"HEAD / HTTP/1.1\r\nHost: x\r\n\r\n",
             b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n"),
    "204": (GET, b"HTTP/1.1 204 No Content\r\n\r\n"),
    "304-with-length": (GET, b"HTTP/1.1 304 Not Modified\r\nContent-Length: 10\r\n\r\n"),
    "close-delimited": (GET, b"HTTP/1.1 200 OK\r\n\r\nall until close"),
    "close-delimited-http10-client": (b"GET / HTTP/1.0\r\n\r\n",
                                      b"HTTP/1.0 200 OK\r\n\r\nbody"),
    "http10-keepalive": (b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\nGET /2 HTTP/1.0\r\n\r\n",
                         b"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 2\r\n\r\nok"),
    "http10-client-chunked-answer": (b"GET / HTTP/1.0\r\n\r\n", OK_CHUNKED),
    "truncated-length": (GET, b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nshort"),
    "truncated-head": (GET, b"HTTP/1.1 200 OK\r\nContent-Le"),
    "no-answer": (POST, b""),
    "connection-close-answer": (GET + GET, b"HTTP/1.1 200 OK\r\nConnection: close\r\n"
                                           b"Content-Length: 2\r\n\r\nok"),
    "trusted-xff": (b"GET / HTTP/1.1\r\nHost: x\r\nX-Forwarded-For: 203.0.113.9, 10.1.2.3\r\n"
                    b"X-Forwarded-For: 10.0.0.1\r\nX-Forwarded-Proto: https\r\n"
                    b"X-Forwarded-Host: y\r\nX-Real-IP: 1.2.3.4\r\n\r\n", OK),
    "xff-garbage": (b"GET / HTTP/1.1\r\nHost: x\r\nX-Forwarded-For: ::1, nonsense, [::2]\r\n\r\n",
                    OK),
    "api-pool-cookie": (b"GET /api/v1?q=1 HTTP/1.1\r\nHost: a.EXAMPLE.com:8080\r\n"
                        b"Cookie: a=b; sid=1234; c=d\r\n\r\n", OK_CHUNKED),
    "no-route": (b"GET /nowhere HTTP/1.1\r\nHost: none.invalid\r\n\r\n", OK),
    "absolute-form-port": (b"GET http://a.example.com:81/api/x?y HTTP/1.1\r\nHost: z\r\n\r\n", OK),
    "hop-by-hop": (b"GET / HTTP/1.1\r\nHost: x\r\nConnection: keep-alive, X-Secret, TE\r\n"
                   b"X-Secret: 1\r\nTE: trailers\r\nKeep-Alive: 5\r\nProxy-Connection: x\r\n\r\n",
                   b"HTTP/1.1 200 OK\r\nConnection: X-Internal\r\nX-Internal: 1\r\n"
                   b"Keep-Alive: timeout=5\r\nTrailer: X-T\r\nContent-Length: 2\r\n\r\nok"),
    "pipelined-three": (GET + b"POST /2 HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc" + GET,
                        OK),
    "chunked-upload-big-chunks": (b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
                                  b"400\r\n" + b"a" * 1024 + b"\r\n0\r\n\r\n", OK),
    "chunked-answer-trailers": (GET, b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
                                     b"2;e=\"q\"\r\nok\r\n0\r\nX-T: 1\r\n\r\n"),
    "extra-bytes-after-answer": (GET + GET, OK + b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\nX"),
    "5xx": (GET, b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\n\r\n"),
}


def slug(name):
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")[:60]


def main():
    out = os.path.join(HERE, "corpus")
    os.makedirs(out, exist_ok=True)
    for f in os.listdir(out):
        os.unlink(os.path.join(out, f))
    seeds = {}
    for case in REQUESTS:
        seeds["req-" + slug(case.name)] = case.raw + SEP + OK
    for case in RESPONSES:
        seeds["resp-" + slug(case.name)] = POST + SEP + case.raw
    for name, (req, resp) in EXTRA.items():
        seeds["x-" + name] = req + SEP + resp
    for name, data in sorted(seeds.items()):
        with open(os.path.join(out, name), "wb") as f:
            f.write(data)
    print("%d seeds in %s" % (len(seeds), out))


if __name__ == "__main__":
    main()
