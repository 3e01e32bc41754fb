"""test_proxy_routing.py - which pool and which server answer: routes by
host and path (exact and wildcard hosts, absolute-form targets, 404), and
the balancers seen through the proxy (weighted round robin shares with one
and two workers, least_conn, random2, hash by URI and by header).

Every sb-backend answers with X-Backend-Id, which tells who served.
"""

import collections
import re
import subprocess
import threading

from harness import Backend, HttpConn, fetch, parse_echo, echo_header
from proxy_helpers import curl, start_proxy

TIMEOUT = 90


def _get_id(conn, target="/", host=None):
    hdrs = [("Host", host)] if host else None
    conn.request("GET", target, hdrs)
    r = conn.read_response()
    assert r.status == 200, (target, host, r)
    return r.header("x-backend-id")


# ---------------------------------------------------------------- routes

def _routing_proxy():
    ids = ("api", "static", "v2", "web")
    backends = {i: Backend(i) for i in ids}
    routes = [
        {"host": "api.example.com", "pool": "api"},
        {"host": "*.example.com", "path_prefix": "/static/", "pool": "static"},
        {"path_prefix": "/v2/", "pool": "v2"},
        {"pool": "web"},
    ]
    sb, port = start_proxy({i: [backends[i]] for i in ids}, routes=routes)
    return sb, port


def test_routes_by_host_and_path():
    sb, port = _routing_proxy()
    cases = [
        ("api.example.com", "/", "api"),
        ("API.Example.COM:8080", "/anything", "api"),     # case, port ignored
        ("api.example.com", "/static/x", "api"),           # first match wins
        ("img.example.com", "/static/logo.png", "static"),
        ("a.b.example.com", "/static/", "static"),         # any depth
        ("example.com", "/static/x", "web"),               # not *.example.com itself
        ("img.example.com", "/other", "web"),
        ("img.example.com", "/static", "web"),             # prefix is /static/
        ("other.org", "/v2/users?x=1", "v2"),
        ("other.org", "/v2", "web"),
        ("127.0.0.1", "/", "web"),
    ]
    with HttpConn("127.0.0.1", port) as c:
        for host, target, want in cases:
            got = _get_id(c, target, host)
            assert got == want, "Host %s %s went to %s, expected %s" % (host, target, got, want)


def test_route_with_curl_host_header():
    sb, port = _routing_proxy()
    p = curl("-H", "Host: api.example.com", "http://127.0.0.1:%d/" % port)
    assert p.returncode == 0 and p.stdout == b"api\n", (p.stdout, p.stderr)
    p = curl("-H", "Host: cdn.example.com", "http://127.0.0.1:%d/static/a.css" % port)
    assert p.stdout == b"static\n", p.stdout


def test_absolute_form_routes_by_authority():
    sb, port = _routing_proxy()
    with HttpConn("127.0.0.1", port) as c:
        # The authority wins over the Host header.
        c.send(b"GET http://api.example.com/echo?q=1 HTTP/1.1\r\nHost: other.org\r\n\r\n")
        r = c.read_response()
        assert r.status == 200 and r.header("x-backend-id") == "api", (r, r.headers)
        line, headers, _ = parse_echo(r.body)
        # The backend gets origin-form and the authority as Host.
        assert line == "GET /echo?q=1 HTTP/1.1", line
        assert echo_header(headers, "host") == ["api.example.com"], headers
        c.send(b"GET http://cdn.example.com:8080/static/x HTTP/1.1\r\nHost: other.org\r\n\r\n")
        assert c.read_response().header("x-backend-id") == "static"
        c.send(b"GET http://other.org HTTP/1.1\r\nHost: api.example.com\r\n\r\n")
        r = c.read_response()
        assert r.header("x-backend-id") == "web", r.headers
    # A real client speaking to the proxy as a forward proxy sends absolute-form.
    p = curl("--proxy", "http://127.0.0.1:%d" % port, "http://api.example.com/")
    assert p.returncode == 0 and p.stdout == b"api\n", (p.stdout, p.stderr)


def test_no_route_gives_404():
    b = Backend("only")
    sb, port = start_proxy({"only": [b], "other": [b]},
                           routes=[{"host": "only.example.com", "pool": "only"},
                                   {"path_prefix": "/other/", "pool": "other"}])
    r = fetch(port, "GET", "/", headers=[("Host", "nope.example.com")])
    assert r.status == 404, r
    assert r.header("x-backend-id") is None, "a backend answered: %r" % r.headers
    r = fetch(port, "GET", "/", headers=[("Host", "only.example.com")])
    assert r.status == 200 and r.body == b"only\n"
    r = fetch(port, "GET", "/other/x", headers=[("Host", "nope.example.com")])
    assert r.status == 200
    assert b.stats()["requests"] == 3      # the 404 never reached it


# ---------------------------------------------------------------- balancers

def _weighted(workers, conns, total=1200):
    bs = [Backend("w%d" % w) for w in (1, 2, 3)]
    sb, port = start_proxy({"web": [(bs[0], 1), (bs[1], 2), (bs[2], 3)]}, workers=workers)
    counts = collections.Counter()
    clients = [HttpConn("127.0.0.1", port) for _ in range(conns)]
    for i in range(total):
        counts[_get_id(clients[i % conns])] += 1
    for c in clients:
        c.close()
    shares = {k: counts[k] / total for k in ("w1", "w2", "w3")}
    expected = {"w1": 1 / 6, "w2": 2 / 6, "w3": 3 / 6}
    msg = "workers=%d: counts %s, shares %s" % (
        workers, dict(counts), {k: round(v, 4) for k, v in shares.items()})
    print(msg)
    assert sum(counts.values()) == total, msg
    for k in expected:
        assert abs(shares[k] - expected[k]) <= 0.02, msg
    # The backends agree with what the clients saw.
    for b, k in zip(bs, ("w1", "w2", "w3")):
        assert b.stats()["requests"] == counts[k] + 1, (k, b.stats(), msg)
    return counts


def test_weighted_round_robin_one_worker():
    counts = _weighted(workers=1, conns=1)
    # Smooth WRR with one worker is exact over whole cycles (1200 = 200 x 6).
    assert counts == {"w1": 200, "w2": 400, "w3": 600}, counts


def test_weighted_round_robin_two_workers():
    _weighted(workers=2, conns=12)


def test_weighted_round_robin_under_wrk():
    bs = [Backend("w%d" % w) for w in (1, 2, 3)]
    sb, port = start_proxy({"web": [(bs[0], 1), (bs[1], 2), (bs[2], 3)]}, workers=2,
                           access_log="off")
    p = subprocess.run(["wrk", "-t2", "-c8", "-d2s", "--timeout", "2s",
                        "http://127.0.0.1:%d/" % port],
                       stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                       timeout=30)
    out = p.stdout.decode()
    assert p.returncode == 0, out + p.stderr.decode()
    m = re.search(r"(\d+) requests in", out)
    assert m, out
    done = int(m.group(1))
    assert done >= 500, "only %d requests in 2 s:\n%s" % (done, out)
    assert "Non-2xx" not in out and "Socket errors" not in out, out
    counts = [b.stats()["requests"] - 1 for b in bs]
    total = sum(counts)
    # wrk may count a request or two fewer than were answered at its stop.
    assert abs(total - done) <= 16, (counts, done, out)
    msg = "wrk %d requests, counts %s, shares %s" % (
        done, counts, [round(c / total, 4) for c in counts])
    print(msg)
    for c, w in zip(counts, (1, 2, 3)):
        assert abs(c / total - w / 6) <= 0.02, msg
test_weighted_round_robin_under_wrk.timeout = 60


def _reach_all(balance, requests=150, concurrent=False, **extra):
    bs = [Backend("s%d" % i) for i in range(3)]
    pool = {"balance": balance, "servers": bs}
    pool.update(extra)
    sb, port = start_proxy({"web": pool}, workers=1)
    counts = collections.Counter()
    if not concurrent:
        with HttpConn("127.0.0.1", port) as c:
            for i in range(requests):
                counts[_get_id(c, "/?i=%d" % i)] += 1
    else:
        # Slow requests from several connections at once: load differs.
        lock = threading.Lock()
        errors = []

        def client(n):
            try:
                with HttpConn("127.0.0.1", port, timeout=20) as c:
                    for i in range(n):
                        who = _get_id(c, "/delay?ms=20")
                        with lock:
                            counts[who] += 1
            except Exception as e:      # noqa: BLE001 - reported below
                errors.append(e)
        threads = [threading.Thread(target=client, args=(requests // 6,)) for _ in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert not errors, errors
        assert not any(t.is_alive() for t in threads)
    assert set(counts) == {"s0", "s1", "s2"}, "%s reached only %s" % (balance, dict(counts))
    return counts


def test_least_conn_reaches_all_servers():
    _reach_all("least_conn")
    counts = _reach_all("least_conn", requests=60, concurrent=True)
    # Six concurrent clients over three equal servers: no server starves.
    assert min(counts.values()) >= 5, counts


def test_random2_reaches_all_servers():
    counts = _reach_all("random2", requests=300)
    assert min(counts.values()) >= 30, counts


def test_hash_by_uri_reaches_all_and_is_sticky():
    bs = [Backend("s%d" % i) for i in range(3)]
    sb, port = start_proxy({"web": {"balance": "hash", "hash_key": "uri", "servers": bs}})
    first = {}
    with HttpConn("127.0.0.1", port) as c:
        for rnd in range(2):
            for i in range(60):
                who = _get_id(c, "/item/%d" % i)
                if rnd == 0:
                    first[i] = who
                else:
                    assert who == first[i], "uri /item/%d moved from %s to %s" % (i, first[i], who)
    assert set(first.values()) == {"s0", "s1", "s2"}, collections.Counter(first.values())


def test_hash_by_header_same_user_same_server():
    bs = [Backend("s%d" % i) for i in range(3)]
    sb, port = start_proxy({"web": {"balance": "hash", "hash_key": "header:X-User",
                                    "servers": bs}}, workers=2)
    seen = collections.defaultdict(set)
    # Fresh connections too: with two workers either may serve.
    for rnd in range(3):
        conn = HttpConn("127.0.0.1", port)
        for u in range(40):
            conn.request("GET", "/?r=%d" % rnd, [("X-User", "user-%d" % u)])
            r = conn.read_response()
            assert r.status == 200
            seen[u].add(r.header("x-backend-id"))
        conn.close()
    moved = {u: s for u, s in seen.items() if len(s) != 1}
    assert not moved, "users served by several servers: %r" % moved
    used = {next(iter(s)) for s in seen.values()}
    assert used == {"s0", "s1", "s2"}, used
    # The header name is matched case-insensitively.
    with HttpConn("127.0.0.1", port) as c:
        c.request("GET", "/", [("x-user", "user-7")])
        assert c.read_response().header("x-backend-id") in seen[7]
