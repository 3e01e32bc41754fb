"""test_chat.py - the chat demo through the proxy, with real WebSocket clients.

Every test starts ./switchboard with the dashboard (token auth) and the chat
on, a pool `chat` whose one server is the dashboard's own address and a route
/chat -> chat, plus an sb-backend for everything else. Clients connect to the
proxy's port, as end users do: each WebSocket is a tunnel through a proxy
worker into the dashboard's libwebsockets server.

Covers: two users exchanging messages in order, history and presence; the
support queue with three customers and a staff member (order, positions,
no-show going back to the front, a leaving customer removed); random
match-ups and re-rolls; limits (size, flood, bad JSON, unknown types,
connection count) refused with an error frame while other users carry on;
HTML arriving as text; resuming after a dropped connection without a second
announcement; page and staff access rules; chat.log off and on.
"""
import json
import os
import re
import time

from harness import (Backend, HttpConn, Switchboard, WebSocket, WebSocketError, WS_CLOSE,
                     WS_PING, WS_TEXT, fetch, free_port, is_sanitized, wait_for)

TIMEOUT = 120
TOKEN = "chat-staff-token-0123456789"
PROTO = "switchboard.chat"
WAIT = 10 if is_sanitized() else 5


def config(pp, dp, backend, chat_extra=""):
    return ('listen: ["127.0.0.1:%d"]\nworkers: 2\n'
            'pools:\n  web:\n    servers: ["%s"]\n  chat:\n    servers: ["127.0.0.1:%d"]\n'
            'routes:\n  - {path_prefix: /chat, pool: chat}\n  - {pool: web}\n'
            'trusted_proxies: [127.0.0.0/8]\naccess_log: off\n'
            'dashboard:\n  listen: 127.0.0.1:%d\n  auth: {token: %s}\n'
            'chat:\n  enabled: true\n  reconnect_grace: 3s\n  no_show_timeout: 1s\n%s'
            % (pp, backend.addr, dp, dp, TOKEN, chat_extra))


class Stack:
    """switchboard + one backend; stop() stops both."""

    def __init__(self, chat_extra=""):
        self.backend = Backend("b1")
        self.pp, self.dp = free_port(), free_port()
        try:
            self.sb = Switchboard(config(self.pp, self.dp, self.backend, chat_extra),
                                  wait_ports=[self.pp, self.dp])
        except Exception:
            self.backend.stop()
            raise
        self.clients = []

    def client(self, **kw):
        c = Chat(self.pp, **kw)
        self.clients.append(c)
        return c

    def stop(self):
        for c in self.clients:
            c.close()
        self.sb.stop()
        self.backend.stop()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()


class Chat:
    """One chat WebSocket through the proxy at `port`."""

    def __init__(self, port, path="/chat/ws", headers=None, origin=None):
        hdrs = [("Origin", origin or "http://127.0.0.1:%d" % port)] + list(headers or [])
        self.ws = WebSocket.connect("127.0.0.1", port, path, headers=hdrs,
                                    subprotocol=PROTO, timeout=WAIT * 2)
        self.seen = []
        self.closed = False
        self.welcome = self.expect("welcome")

    def send(self, type, **fields):
        fields["type"] = type
        self.ws.send_text(json.dumps(fields))

    def next(self, timeout=WAIT):
        """The next JSON frame (pings answered); None when closed."""
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError("no frame within %ss; seen: %r" % (timeout, self.seen[-5:]))
            op, payload = self.ws.recv(left)
            if op == WS_PING:
                self.ws.send_frame(0xA, payload)
                continue
            if op == WS_CLOSE:
                self.closed = True
                self.close_payload = payload
                return None
            assert op == WS_TEXT, op
            msg = json.loads(payload)
            self.seen.append(msg)
            return msg

    def expect(self, type, timeout=WAIT, **match):
        """The first frame of `type` whose fields equal `match`; frames before
        it are kept in self.seen and skipped."""
        deadline = time.monotonic() + timeout
        while True:
            msg = self.next(max(0.05, deadline - time.monotonic()))
            if msg is None:
                raise AssertionError("closed while waiting for %s" % type)
            if msg["type"] == type and all(msg.get(k) == v for k, v in match.items()):
                return msg

    def quiet(self, seconds=0.3):
        """Frames that arrive within `seconds` (for checking nothing came)."""
        got = []
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            try:
                op, payload = self.ws.recv(max(0.01, end - time.monotonic()))
            except Exception:
                break
            if op == WS_TEXT:
                got.append(json.loads(payload))
        return got

    def join(self, room, name):
        self.send("join", room=room, name=name)
        return self.expect("joined", room=room)

    def close(self):
        if not self.closed:
            self.closed = True
            self.ws.close(wait=False)

    def drop(self):
        """Vanish without a close handshake, as a lost network does."""
        self.closed = True
        self.ws.conn.close()


# ---------------------------------------------------------------- rooms

def test_two_users_exchange_messages_in_order_through_the_proxy():
    with Stack() as s:
        ann, bob = s.client(), s.client()
        assert ann.welcome["modes"] == ["rooms", "support", "random"]
        assert ann.welcome["default"] == "rooms" and ann.welcome["staff"] is False
        ann.send("rooms")
        rooms = ann.expect("rooms")["rooms"]
        assert [r["name"] for r in rooms] == ["Lobby", "Library", "Dining", "Casino", "Gym",
                                              "Nightclub"], rooms
        j = ann.join("Lobby", "ann")
        assert j["users"] == ["ann"] and j["history"] == [] and len(j["resume"]) == 32
        j = bob.join("Lobby", "bob")
        assert j["users"] == ["ann", "bob"]
        p = ann.expect("presence", event="join")
        assert p["name"] == "bob" and p["users"] == ["ann", "bob"]
        assert re.match(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$", p["ts"])
        # The lobby shows the count and the names.
        carl = s.client()
        carl.send("rooms")
        lobby = [r for r in carl.expect("rooms")["rooms"] if r["name"] == "Lobby"][0]
        assert lobby["users"] == 2 and lobby["names"] == ["ann", "bob"]
        for i in range(20):
            (ann if i % 2 == 0 else bob).send("say", text="line %d" % i)
            time.sleep(0.12)    # within 5 a second, under the rate limit
        for who in (ann, bob):
            got = [who.expect("message")["text"] for _ in range(20)]
            assert got == ["line %d" % i for i in range(20)], got
        ids = [m["id"] for m in ann.seen if m["type"] == "message"]
        assert ids == sorted(ids) and len(set(ids)) == 20
        # A late joiner gets the history, in order, and sees 3 users.
        j = carl.join("Lobby", "carl")
        assert [m["text"] for m in j["history"]] == ["line %d" % i for i in range(20)]
        assert j["users"] == ["ann", "bob", "carl"]
        # A nickname is unique per room, case-insensitively.
        dan = s.client()
        dan.send("join", room="Lobby", name="ANN")
        e = dan.expect("error")
        assert e["code"] == "name_taken" and e["ref"] == "join"
        bob.send("rename", name="Carl")
        assert bob.expect("error")["code"] == "name_taken"
        bob.send("rename", name="bobby")
        p = ann.expect("presence", event="rename")
        assert p["old"] == "bob" and p["name"] == "bobby"
        # Leaving is announced, and the leaver gets "left".
        bob.send("leave")
        assert bob.expect("left")["room"] == "Lobby"
        p = ann.expect("presence", event="leave")
        assert p["name"] == "bobby" and p["users"] == ["ann", "carl"]


def test_user_rooms_listed_or_not_and_deleted_when_empty():
    with Stack("  max_rooms_per_user: 1\n") as s:
        ann, bob = s.client(), s.client()
        bob.send("rooms")
        bob.expect("rooms")
        ann.send("create", room="Den", name="ann")
        assert ann.expect("joined")["room"] == "Den"
        # bob watches the lobby: the new room shows up without asking again.
        wait_for(lambda: any(r["name"] == "Den" for r in bob.expect("rooms")["rooms"]),
                 timeout=WAIT)
        ann.send("create", room="Den2", name="ann")
        assert ann.expect("error")["code"] == "room_limit"
        bob.send("create", room="den", name="bob")
        assert bob.expect("error")["code"] == "room_exists"
        ann.send("leave")
        ann.expect("left")
        ann.send("rooms")
        assert "Den" not in [r["name"] for r in ann.expect("rooms")["rooms"]]
        # Now ann may create another: the count follows the rooms that exist.
        ann.send("create", room="Den2", name="ann")
        assert ann.expect("joined")["room"] == "Den2"
        ann.send("leave")
    with Stack("  addable_rooms_visible: false\n") as s:
        ann, bob = s.client(), s.client()
        ann.send("create", room="Hidden", name="ann")
        ann.expect("joined")
        bob.send("rooms")
        assert "Hidden" not in [r["name"] for r in bob.expect("rooms")["rooms"]]
        assert bob.join("Hidden", "bob")["users"] == ["ann", "bob"]
    with Stack("  addable_rooms: false\n") as s:
        ann = s.client()
        ann.send("create", room="Den", name="ann")
        assert ann.expect("error")["code"] == "rooms_locked"


def test_html_in_a_message_arrives_as_text():
    with Stack() as s:
        ann, bob = s.client(), s.client()
        ann.join("Gym", "ann")
        bob.join("Gym", "bob")
        text = '<script>alert("x")</script> <img src=x onerror=alert(1)> **b**'
        ann.send("say", text=text)
        assert bob.expect("message")["text"] == text


# ---------------------------------------------------------------- limits

def test_oversized_message_flood_and_garbage_refused_others_unaffected():
    with Stack("  max_message_bytes: 100\n") as s:
        ann, bob, eve = s.client(), s.client(), s.client()
        for c, n in ((ann, "ann"), (bob, "bob"), (eve, "eve")):
            c.join("Casino", n)
        eve.send("say", text="x" * 101)
        e = eve.expect("error")
        assert e["code"] == "too_long" and "100" in e["message"]
        # Far over the frame bound: gathered no further, refused the same way.
        eve.ws.send_text(json.dumps({"type": "say", "text": "y" * 5000}))
        assert eve.expect("error")["code"] == "too_long"
        eve.ws.send_text("{not json")
        assert eve.expect("error")["code"] == "bad_json"
        eve.send("dance")
        e = eve.expect("error")
        assert e["code"] == "unknown_type" and e["ref"] == "dance"
        eve.ws.send_binary(b"\x00\x01")
        assert eve.expect("error")["code"] == "bad_json"
        # A flood: 60 messages at once, against 5 a second with a burst of 10.
        for i in range(60):
            eve.send("say", text="flood %d" % i)
        limited = 0
        for _ in range(60):
            m = eve.expect("error") if limited < 40 else None
            if m is None:
                break
            assert m["code"] == "rate_limited", m
            limited += 1
        assert limited >= 40, limited
        delivered = [m for m in bob.quiet(0.5) if m["type"] == "message"]
        assert 5 <= len(delivered) <= 20, len(delivered)
        # Others carry on at once; eve too, after a pause.
        ann.send("say", text="still fine")
        assert bob.expect("message", text="still fine")["from"] == "ann"
        time.sleep(1.0)
        eve.send("say", text="calm again")
        assert ann.expect("message", text="calm again")["from"] == "eve"


def test_connection_limit_answers_with_an_error_frame():
    with Stack("  max_connections: 2\n") as s:
        s.client()
        s.client()
        ws = WebSocket.connect("127.0.0.1", s.pp, "/chat/ws",
                               headers=[("Origin", "http://127.0.0.1:%d" % s.pp)],
                               subprotocol=PROTO, timeout=WAIT)
        try:
            op, payload = ws.recv(WAIT)
            msg = json.loads(payload)
            assert msg["type"] == "error" and msg["code"] == "server_full", msg
            op, payload = ws.recv(WAIT)
            assert op == WS_CLOSE and int.from_bytes(payload[:2], "big") == 1013, payload
        finally:
            ws.close(wait=False)


# ---------------------------------------------------------------- support

def test_support_queue_order_positions_no_show_and_leaving():
    with Stack() as s:
        custs = [s.client() for _ in range(3)]
        for i, c in enumerate(custs):
            c.send("support", name="cust%d" % i)
            assert c.expect("queued")["position"] == i + 1
            time.sleep(0.05)
        # Without credentials there is no staff role.
        fake = s.client()
        fake.send("staff")
        assert fake.expect("error")["code"] == "not_staff"
        staff = s.client(path="/chat/staff/ws",
                         headers=[("Authorization", "Bearer " + TOKEN)])
        assert staff.welcome["staff"] is True
        staff.send("staff")
        q = staff.expect("queue")["customers"]
        assert [c["name"] for c in q] == ["cust0", "cust1", "cust2"]
        assert all(c["waited_s"] >= 0 for c in q)
        # The oldest is taken; the others move up.
        staff.send("take", name="ann")
        j = staff.expect("joined")
        assert j["kind"] == "support" and j["users"] == ["ann"]
        offer = custs[0].expect("offer")
        assert offer["room"] == j["room"] and offer["staff"] == "ann"
        assert custs[1].expect("queued", position=1)["waiting"] == 2
        assert custs[2].expect("queued", position=2)["waiting"] == 2
        custs[0].send("arrive")
        assert custs[0].expect("joined")["users"] == ["ann", "cust0"]
        custs[0].send("say", text="my order is late")
        assert staff.expect("message")["text"] == "my order is late"
        staff.send("say", text="on it")
        assert custs[0].expect("message", text="on it")["from"] == "ann"
        staff.send("leave")
        staff.expect("left")
        # A no-show: cust1 is offered but never arrives -> back to the front.
        staff.send("staff")
        staff.send("take", name="ann")
        staff.expect("joined")
        assert custs[1].expect("offer")
        assert custs[2].expect("queued", position=1, waiting=1)
        assert staff.expect("no_show", timeout=WAIT)["name"] == "cust1"
        assert staff.expect("left")["reason"] == "no_show"
        assert custs[1].expect("queued", position=1, waiting=2)
        assert custs[2].expect("queued", position=2, waiting=2)
        q = staff.expect("queue", timeout=WAIT)["customers"]
        while len(q) != 2:
            q = staff.expect("queue")["customers"]
        assert [c["name"] for c in q] == ["cust1", "cust2"], q
        # A customer who leaves is removed.
        custs[1].send("leave")
        custs[1].expect("left")
        assert custs[2].expect("queued", position=1, waiting=1)
        q = staff.expect("queue")["customers"]
        while len(q) != 1:
            q = staff.expect("queue")["customers"]
        assert [c["name"] for c in q] == ["cust2"]
        # A customer whose connection closes for good is removed after the
        # grace (3 s here).
        custs[2].close()
        wait_for(lambda: staff.expect("queue", timeout=WAIT)["customers"] == [],
                 timeout=WAIT * 2)


def test_staff_access_rules():
    with Stack() as s:
        try:
            Chat(s.pp, path="/chat/staff/ws")
            assert False, "staff socket without credentials"
        except WebSocketError as e:
            assert e.status == 401
        try:
            Chat(s.pp, origin="http://evil.example")
            assert False, "foreign Origin accepted"
        except WebSocketError as e:
            assert e.status == 403
        # Pages: public chat page through the proxy, staff page needs auth.
        r = fetch(s.pp, "GET", "/chat/")
        assert r.status == 200 and b"chat" in r.body.lower()
        assert "script-src 'self'" in r.header("content-security-policy")
        assert fetch(s.pp, "GET", "/chat").status == 302
        assert fetch(s.pp, "GET", "/chat/staff/").status == 401
        r = fetch(s.pp, "GET", "/chat/staff/?token=" + TOKEN)
        assert r.status == 302 and r.header("location") == "/chat/staff/"
        cookie = r.header("set-cookie").split(";")[0]
        assert fetch(s.pp, "GET", "/chat/staff/", headers=[("Cookie", cookie)]).status == 200
        staff = s.client(path="/chat/staff/ws", headers=[("Cookie", cookie)])
        assert staff.welcome["staff"] is True
        # The dashboard itself stays private.
        assert fetch(s.dp, "GET", "/api/stats").status == 401


# ---------------------------------------------------------------- random

def test_random_match_pairs_strangers_and_rerolls():
    with Stack() as s:
        a, b, c = s.client(), s.client(), s.client()
        a.send("random", name="cat")
        a.expect("waiting")
        b.send("random", name="dog")
        jb = b.expect("joined")
        ja = a.expect("joined")
        assert ja["room"] == jb["room"] and ja["kind"] == "random"
        assert sorted(ja["users"]) == ["cat", "dog"]
        a.send("say", text="hello stranger")
        assert b.expect("message")["text"] == "hello stranger"
        # b re-rolls: a sees b leave; b waits (a is its last partner); c
        # comes and is paired with b.
        b.send("random", name="dog")
        assert a.expect("presence", event="leave")["name"] == "dog"
        b.expect("waiting")
        c.send("random", name="cow")
        jc = c.expect("joined")
        assert sorted(jc["users"]) == ["cow", "dog"]
        b.expect("joined", room=jc["room"])
        # Same nickname on both sides is told apart.
        a.send("leave")
        a.expect("left")
        d, e = s.client(), s.client()
        d.send("random", name="sam")
        d.expect("waiting")
        e.send("random", name="sam")
        assert sorted(e.expect("joined")["users"]) == ["sam", "sam (2)"]


def test_modes_and_default_from_config():
    with Stack("  modes: [random]\n  default: random\n") as s:
        a = s.client()
        assert a.welcome["modes"] == ["random"] and a.welcome["default"] == "random"
        a.send("join", room="Lobby", name="a")
        assert a.expect("error")["code"] == "mode_disabled"
        a.send("support", name="a")
        assert a.expect("error")["code"] == "mode_disabled"


# ---------------------------------------------------------------- reconnect

def test_resume_after_a_dropped_connection_is_not_announced_again():
    with Stack() as s:
        ann, bob = s.client(), s.client()
        token = ann.join("Dining", "ann")["resume"]
        bob.join("Dining", "bob")
        ann.expect("presence", event="join")
        ann.send("say", text="before")
        bob.expect("message", text="before")
        ann.drop()
        bob.send("say", text="while away")
        ann2 = s.client()
        ann2.send("resume", token=token)
        j = ann2.expect("joined")
        assert j["resumed"] is True and j["name"] == "ann" and j["users"] == ["ann", "bob"]
        assert [m["text"] for m in j["history"]] == ["before", "while away"]
        ann2.send("say", text="back")
        assert bob.expect("message", text="back")["from"] == "ann"
        # bob saw neither a leave nor a second join of ann's.
        assert not [m for m in bob.seen if m["type"] == "presence" and m["name"] == "ann"]
        # An unknown token is refused; the page then joins afresh.
        x = s.client()
        x.send("resume", token="0" * 32)
        assert x.expect("error")["code"] == "resume_failed"
        # A user that does not come back within the grace is announced gone.
        ann2.drop()
        p = bob.expect("presence", event="leave", timeout=WAIT * 2)
        assert p["name"] == "ann" and p["users"] == ["bob"]


# ---------------------------------------------------------------- logging

def test_chat_lines_not_logged_by_default_and_truncated_when_on():
    secret = "the-secret-words-%d" % os.getpid()
    with Stack() as s:
        a = s.client(headers=[("X-Forwarded-For", "203.0.113.77")])
        a.join("Lobby", "ann")
        a.send("say", text=secret)
        a.expect("message")
        time.sleep(0.2)
        assert secret not in s.sb.stderr_text() + s.sb.stdout_text()
    with Stack("  log: on\n") as s:
        a = s.client(headers=[("X-Forwarded-For", "203.0.113.77")])
        a.join("Lobby", "ann")
        a.send("say", text=secret)
        a.expect("message")
        text = wait_for(lambda: (lambda t: t if secret in t else None)(
            s.sb.stderr_text() + s.sb.stdout_text()), timeout=WAIT)
        line = [ln for ln in text.splitlines() if secret in ln][0]
        assert "203.0.113.0/24" in line and "203.0.113.77" not in line, line
