"""smuggling_cases.py - the request-smuggling / desync table that
test_smuggling.py runs against ./switchboard in front of sb-backend (a data
module, not a test module).

REQUESTS rows: Case(name, raw, status, closed, backend)

    raw      the bytes one client connection sends, all at once
    status   the status of the first answer (400, 501, 505, or 200 when the
             request is valid and must be served)
    closed   True: the answer says Connection: close and the proxy then
             closes the connection (after reading what the client still
             sends, so the answer is not lost to a reset)
    backend  requests sb-backend's /stats counts for this row:
             NOTHING  - the backend saw nothing (the head was refused);
             PARTIAL  - at most one: the head may have gone out before the
                        bad chunk arrived, but never a second request;
             n >= 1   - exactly n (valid rows; a smuggled request would
                        make it n + 1)

Many refused rows carry a request hidden behind the first one
("GET /smuggled ..."): whichever framing a server behind a lenient proxy
would have picked, that hidden request must never reach the backend.

RESPONSES rows: RespCase(name, raw, outcome, reusable) for a raw fake
backend that answers a POST with `raw`:

    outcome  502  - the client gets 502 Bad Gateway (nothing was sent yet),
                    the backend connection is closed, not reused;
             CUT  - the head went out already: the client connection is cut
                    before the body is complete, the backend connection is
                    closed.
             200  - valid: the client gets 200 and the body "ok".
    reusable True when the proxy may keep the backend connection for the
             next request; False: it must close it (the next request goes
             on a new connection, and never gets bytes left on this one).
"""

from collections import namedtuple

Case = namedtuple("Case", "name raw status closed backend")
RespCase = namedtuple("RespCase", "name raw outcome reusable")

NOTHING = 0
PARTIAL = -1
CUT = "cut"

SMUGGLED = b"GET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n"


def req(head, body=b"", method=b"POST", target=b"/", version=b"HTTP/1.1", host=True):
    """A request: `head` holds the header lines (each ending in CRLF)."""
    line = method + b" " + target + b" " + version + b"\r\n"
    return line + (b"Host: x\r\n" if host else b"") + head + b"\r\n" + body


def chunked(body):
    return req(b"Transfer-Encoding: chunked\r\n", body)


def bad(name, raw, status=400, backend=NOTHING):
    return Case(name, raw, status, True, backend)


def good(name, raw, backend=1):
    return Case(name, raw, 200, False, backend)


REQUESTS = [
    # ---- CL.TE / TE.CL: both framings in one request
    bad("CL.TE", req(b"Content-Length: 6\r\nTransfer-Encoding: chunked\r\n",
                     b"0\r\n\r\n" + SMUGGLED)),
    bad("TE.CL", req(b"Transfer-Encoding: chunked\r\nContent-Length: 3\r\n",
                     b"8\r\nSMUGGLED\r\n0\r\n\r\n")),
    bad("CL.TE, TE after a tab", req(b"Content-Length: 6\r\nTransfer-Encoding:\tchunked\r\n",
                                     b"0\r\n\r\n" + SMUGGLED)),
    bad("CL.TE, TE upper case", req(b"Content-Length: 6\r\nTRANSFER-ENCODING: CHUNKED\r\n",
                                    b"0\r\n\r\n" + SMUGGLED)),
    bad("CL.TE, 'Transfer-Encoding : chunked'",
        req(b"Content-Length: 6\r\nTransfer-Encoding : chunked\r\n", b"0\r\n\r\n" + SMUGGLED)),
    bad("CL.TE, 'Transfer-encoding: xchunked'",
        req(b"Content-Length: 6\r\nTransfer-encoding: xchunked\r\n", b"0\r\n\r\n" + SMUGGLED)),
    bad("CL.TE, TE obs-folded",
        req(b"Content-Length: 6\r\nTransfer-Encoding:\r\n chunked\r\n", b"0\r\n\r\n" + SMUGGLED)),
    bad("CL.TE, TE with vertical tab",
        req(b"Content-Length: 6\r\nTransfer-Encoding:\x0bchunked\r\n", b"0\r\n\r\n" + SMUGGLED)),
    bad("CL.TE, TE name with NUL",
        req(b"Content-Length: 6\r\nTransfer-Encoding\x00: chunked\r\n", b"0\r\n\r\n" + SMUGGLED)),
    bad("CL.TE, 'X: y\\nTransfer-Encoding: chunked' (bare LF)",
        req(b"Content-Length: 6\r\nX: y\nTransfer-Encoding: chunked\r\n", b"0\r\n\r\n" + SMUGGLED)),
    # ---- TE.TE: transfer codings that are not exactly one "chunked"
    bad("TE 'chunked, identity'", req(b"Transfer-Encoding: chunked, identity\r\n",
                                      b"0\r\n\r\n" + SMUGGLED)),
    bad("TE 'identity, chunked'", req(b"Transfer-Encoding: identity, chunked\r\n",
                                      b"0\r\n\r\n" + SMUGGLED)),
    bad("TE 'gzip, chunked'", req(b"Transfer-Encoding: gzip, chunked\r\n", b"0\r\n\r\n")),
    bad("TE xchunked", req(b"Transfer-encoding: xchunked\r\n", b"0\r\n\r\n" + SMUGGLED)),
    bad("TE quoted", req(b'Transfer-Encoding: "chunked"\r\n', b"0\r\n\r\n" + SMUGGLED)),
    bad("TE twice", req(b"Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n",
                        b"0\r\n\r\n" + SMUGGLED)),
    bad("TE chunked then TE x", req(b"Transfer-Encoding: chunked\r\nTransfer-Encoding: x\r\n",
                                    b"0\r\n\r\n" + SMUGGLED)),
    bad("TE 'Transfer-Encoding : chunked'", req(b"Transfer-Encoding : chunked\r\n",
                                                b"0\r\n\r\n" + SMUGGLED)),
    bad("TE obs-fold", req(b"Transfer-Encoding: \r\n\tchunked\r\n", b"0\r\n\r\n" + SMUGGLED)),
    bad("TE in HTTP/1.0", req(b"Transfer-Encoding: chunked\r\n", b"0\r\n\r\n" + SMUGGLED,
                              version=b"HTTP/1.0")),
    # ---- Content-Length
    bad("CL twice, different", req(b"Content-Length: 3\r\nContent-Length: 4\r\n",
                                   b"abcd" + SMUGGLED)),
    bad("CL twice, identical", req(b"Content-Length: 4\r\nContent-Length: 4\r\n",
                                   b"abcd" + SMUGGLED)),
    bad("CL list '4, 4'", req(b"Content-Length: 4, 4\r\n", b"abcd" + SMUGGLED)),
    bad("CL '+4'", req(b"Content-Length: +4\r\n", b"abcd" + SMUGGLED)),
    bad("CL '0x4'", req(b"Content-Length: 0x4\r\n", b"abcd" + SMUGGLED)),
    bad("CL '-1'", req(b"Content-Length: -1\r\n", b"abcd" + SMUGGLED)),
    bad("CL empty", req(b"Content-Length: \r\n", b"abcd" + SMUGGLED)),
    bad("CL 'Content-Length : 4'", req(b"Content-Length : 4\r\n", b"abcd" + SMUGGLED)),
    bad("CL obs-fold", req(b"Content-Length:\r\n 4\r\n", b"abcd" + SMUGGLED)),
    bad("CL overflow", req(b"Content-Length: 99999999999999999999999\r\n", b"abcd")),
    # ---- chunk framing (the head is fine; the body is not)
    bad("chunk size 'zz'", chunked(b"zz\r\nabc\r\n0\r\n\r\n"), backend=PARTIAL),
    bad("chunk size '-1'", chunked(b"-1\r\nx\r\n0\r\n\r\n"), backend=PARTIAL),
    bad("chunk size '0x3'", chunked(b"0x3\r\nabc\r\n0\r\n\r\n"), backend=PARTIAL),
    bad("chunk size '+3'", chunked(b"+3\r\nabc\r\n0\r\n\r\n"), backend=PARTIAL),
    bad("chunk size empty", chunked(b"\r\nabc\r\n0\r\n\r\n"), backend=PARTIAL),
    bad("chunk size with trailing space", chunked(b"3 \r\nabc\r\n0\r\n\r\n"), backend=PARTIAL),
    bad("chunk size overflow", chunked(b"10000000000000003\r\nabc\r\n0\r\n\r\n"),
        backend=PARTIAL),
    bad("chunk size bare LF", chunked(b"3\nabc\r\n0\r\n\r\n" + SMUGGLED), backend=PARTIAL),
    bad("chunk size line bare CR", chunked(b"3\rabc\r\n0\r\n\r\n"), backend=PARTIAL),
    bad("chunk extension with bare LF", chunked(b"3;a\nb\r\nabc\r\n0\r\n\r\n"),
        backend=PARTIAL),
    bad("chunk extension empty name", chunked(b"3;=x\r\nabc\r\n0\r\n\r\n"), backend=PARTIAL),
    bad("chunk extension with space in value", chunked(b"3;a=b c\r\nabc\r\n0\r\n\r\n"),
        backend=PARTIAL),
    bad("chunk extension unterminated quote", chunked(b'3;a="b\r\nabc\r\n0\r\n\r\n'),
        backend=PARTIAL),
    bad("chunk extension with NUL", chunked(b"3;a\x00\r\nabc\r\n0\r\n\r\n"), backend=PARTIAL),
    bad("chunk extension 5000 bytes", chunked(b"3;a=" + b"b" * 5000 + b"\r\nabc\r\n0\r\n\r\n"),
        backend=PARTIAL),
    bad("chunk data not followed by CRLF", chunked(b"3\r\nabcXY0\r\n\r\n"), backend=PARTIAL),
    bad("chunk data followed by bare LF", chunked(b"3\r\nabc\n0\r\n\r\n"), backend=PARTIAL),
    bad("chunk data longer than its size",
        chunked(b"3\r\nabcdef\r\n0\r\n\r\n" + SMUGGLED), backend=PARTIAL),
    bad("last chunk bare LF", chunked(b"3\r\nabc\r\n0\n\n" + SMUGGLED), backend=PARTIAL),
    bad("trailer obs-fold", chunked(b"3\r\nabc\r\n0\r\nX-T: a\r\n b\r\n\r\n"),
        backend=PARTIAL),
    bad("trailer bare LF", chunked(b"3\r\nabc\r\n0\r\nX-T: a\n\r\n"), backend=PARTIAL),
    bad("trailer 'X-T : a'", chunked(b"3\r\nabc\r\n0\r\nX-T : a\r\n\r\n"), backend=PARTIAL),
    # ---- header lines
    bad("obs-fold (space)", req(b"X-A: a\r\n b\r\n", method=b"GET")),
    bad("obs-fold (tab)", req(b"X-A: a\r\n\tb\r\n", method=b"GET")),
    bad("space before colon", req(b"X-A : a\r\n", method=b"GET")),
    bad("tab before colon", req(b"X-A\t: a\r\n", method=b"GET")),
    bad("space inside a name", req(b"X A: a\r\n", method=b"GET")),
    bad("'(' inside a name", req(b"X(A): a\r\n", method=b"GET")),
    bad("empty name", req(b": a\r\n", method=b"GET")),
    bad("line without colon", req(b"X-A a\r\n", method=b"GET")),
    bad("NUL in a value", req(b"X-A: a\x00b\r\n", method=b"GET")),
    bad("bare CR in a value", req(b"X-A: a\rb\r\n", method=b"GET")),
    bad("bare LF in a value", req(b"X-A: a\nb\r\n", method=b"GET")),
    bad("DEL in a value", req(b"X-A: a\x7fb\r\n", method=b"GET")),
    bad("^A in a value", req(b"X-A: a\x01b\r\n", method=b"GET")),
    bad("duplicate Host", req(b"Host: y\r\n", method=b"GET")),
    bad("HTTP/1.1 without Host", req(b"", method=b"GET", host=False)),
    # ---- line endings
    bad("bare LF everywhere", b"GET / HTTP/1.1\nHost: x\n\n"),
    bad("bare LF after the request line", b"GET / HTTP/1.1\nHost: x\r\n\r\n"),
    bad("bare LF after a header", b"GET / HTTP/1.1\r\nHost: x\n\r\n"),
    bad("bare LF ends the head", b"GET / HTTP/1.1\r\nHost: x\r\n\n"),
    bad("bare CR after the request line", b"GET / HTTP/1.1\rHost: x\r\n\r\n"),
    bad("bare LF before the request line", b"\nGET / HTTP/1.1\r\nHost: x\r\n\r\n"),
    # ---- request line
    bad("HTTP/0.9 (no version)", b"GET /\r\n\r\n"),
    bad("HTTP/0.9, then a smuggled head", b"GET /\r\nHost: x\r\n\r\n" + SMUGGLED),
    bad("version 'HTTP/1.10'", b"GET / HTTP/1.10\r\nHost: x\r\n\r\n"),
    bad("version 'HTTP/1'", b"GET / HTTP/1\r\nHost: x\r\n\r\n"),
    bad("version 'http/1.1'", b"GET / http/1.1\r\nHost: x\r\n\r\n"),
    bad("version followed by a space", b"GET / HTTP/1.1 \r\nHost: x\r\n\r\n"),
    bad("HTTP/1.2", b"GET / HTTP/1.2\r\nHost: x\r\n\r\n", status=505),
    bad("HTTP/2.0", b"GET / HTTP/2.0\r\nHost: x\r\n\r\n", status=505),
    bad("two spaces after the method", b"GET  / HTTP/1.1\r\nHost: x\r\n\r\n"),
    bad("two spaces before the version", b"GET /  HTTP/1.1\r\nHost: x\r\n\r\n"),
    bad("tab after the method", b"GET\t/ HTTP/1.1\r\nHost: x\r\n\r\n"),
    bad("space in the target", b"GET /a b HTTP/1.1\r\nHost: x\r\n\r\n"),
    bad("tab in the target", b"GET /a\tb HTTP/1.1\r\nHost: x\r\n\r\n"),
    bad("^A in the target", b"GET /a\x01b HTTP/1.1\r\nHost: x\r\n\r\n"),
    bad("byte 0xff in the target", b"GET /a\xffb HTTP/1.1\r\nHost: x\r\n\r\n"),
    bad("fragment in the target", b"GET /a#b HTTP/1.1\r\nHost: x\r\n\r\n"),
    bad("target without '/'", b"GET a HTTP/1.1\r\nHost: x\r\n\r\n"),
    bad("'*' with GET", b"GET * HTTP/1.1\r\nHost: x\r\n\r\n"),
    bad("absolute-form ftp://", b"GET ftp://x/ HTTP/1.1\r\nHost: x\r\n\r\n"),
    bad("absolute-form with userinfo", b"GET http://u@x/ HTTP/1.1\r\nHost: x\r\n\r\n"),
    bad("method with '@'", b"G@T / HTTP/1.1\r\nHost: x\r\n\r\n"),
    bad("method in lower case (a token, unknown)", b"get / HTTP/1.1\r\nHost: x\r\n\r\n",
        status=501),
    bad("unknown method", b"FOO / HTTP/1.1\r\nHost: x\r\n\r\n", status=501),
    bad("garbage", b"HELLO\r\n\r\n"),
    # ---- valid: served, and the backend sees exactly what the proxy saw
    good("chunked body", chunked(b"3\r\nabc\r\n0\r\n\r\n")),
    good("chunked, TE after a tab", req(b"Transfer-Encoding:\tchunked\r\n",
                                        b"3\r\nabc\r\n0\r\n\r\n")),
    good("chunked, TE in upper case", req(b"TRANSFER-ENCODING: CHUNKED\r\n",
                                          b"3\r\nabc\r\n0\r\n\r\n")),
    good("chunked, extensions", chunked(b'3;a=b;c="d \\" e" ; f\r\nabc\r\n0;g\r\n\r\n')),
    good("chunked, leading zeros", chunked(b"0003\r\nabc\r\n000\r\n\r\n")),
    good("chunked, trailers", chunked(b"3\r\nabc\r\n0\r\nX-T: 1\r\nX-U: 2\r\n\r\n")),
    good("chunked, a request head as chunk data",
         chunked(b"%x\r\n%s\r\n0\r\n\r\n" % (len(SMUGGLED), SMUGGLED))),
    good("CL body holding a request head", req(b"Content-Length: %d\r\n" % len(SMUGGLED),
                                               SMUGGLED)),
    good("CL then pipelined GET", req(b"Content-Length: 3\r\n", b"abc") + SMUGGLED,
         backend=2),
    good("chunked then pipelined GET", chunked(b"3\r\nabc\r\n0\r\n\r\n") + SMUGGLED,
         backend=2),
    good("empty line before the request", b"\r\nGET / HTTP/1.1\r\nHost: x\r\n\r\n"),
    good("no space after the colon", b"GET / HTTP/1.1\r\nHost:x\r\nX-A:b\r\n\r\n"),
    good("HTTP/1.0 without Host", b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n"),
    good("OPTIONS *", b"OPTIONS * HTTP/1.1\r\nHost: x\r\n\r\n"),
    good("absolute-form http://", b"GET http://x/ HTTP/1.1\r\nHost: y\r\n\r\n"),
    good("obs-text in a value", b"GET / HTTP/1.1\r\nHost: x\r\nX-A: caf\xe9\r\n\r\n"),
]

OK_BODY = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"

RESPONSES = [
    RespCase("valid", OK_BODY, 200, True),
    RespCase("a second response after the first", OK_BODY +
             b"HTTP/1.1 200 OK\r\nContent-Length: 8\r\n\r\nSMUGGLED", 200, False),
    RespCase("valid chunked", b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
                              b"2;x=y\r\nok\r\n0\r\n\r\n", 200, True),
    RespCase("obs-fold", b"HTTP/1.1 200 OK\r\nX-A: a\r\n b\r\nContent-Length: 2\r\n\r\nok", 502, False),
    RespCase("CL and TE", b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n"
                          b"Transfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n", 502, False),
    RespCase("TE and CL", b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n"
                          b"Content-Length: 2\r\n\r\n2\r\nok\r\n0\r\n\r\n", 502, False),
    RespCase("CL twice, different", b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n"
                                    b"Content-Length: 3\r\n\r\nok!", 502, False),
    RespCase("CL twice, identical", b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n"
                                    b"Content-Length: 2\r\n\r\nok", 502, False),
    RespCase("TE gzip", b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\nok", 502, False),
    RespCase("TE twice", b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n"
                         b"Transfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n", 502, False),
    RespCase("space before colon", b"HTTP/1.1 200 OK\r\nContent-Length : 2\r\n\r\nok", 502, False),
    RespCase("bad header name", b"HTTP/1.1 200 OK\r\nX(A): 1\r\nContent-Length: 2\r\n\r\nok", 502, False),
    RespCase("NUL in a value", b"HTTP/1.1 200 OK\r\nX-A: a\x00b\r\nContent-Length: 2\r\n\r\nok",
             502, False),
    RespCase("bare LF", b"HTTP/1.1 200 OK\nContent-Length: 2\n\nok", 502, False),
    RespCase("status line '2000'", b"HTTP/1.1 2000 OK\r\nContent-Length: 2\r\n\r\nok", 502, False),
    RespCase("HTTP/2.0 status line", b"HTTP/2.0 200 OK\r\nContent-Length: 2\r\n\r\nok", 502, False),
    RespCase("101 to a request without Upgrade", b"HTTP/1.1 101 Switching Protocols\r\n"
             b"Connection: Upgrade\r\nUpgrade: x\r\n\r\n", 502, False),
    RespCase("bad chunk size", b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
                               b"zz\r\nok\r\n0\r\n\r\n", CUT, False),
    RespCase("chunk data not followed by CRLF", b"HTTP/1.1 200 OK\r\n"
             b"Transfer-Encoding: chunked\r\n\r\n2\r\nokXX0\r\n\r\n", CUT, False),
    RespCase("chunk extension with bare LF", b"HTTP/1.1 200 OK\r\n"
             b"Transfer-Encoding: chunked\r\n\r\n2;a\nb\r\nok\r\n0\r\n\r\n", CUT, False),
]
