/*
 * app.js - Switchboard's live traffic page.
 *
 * One WebSocket (subprotocol "switchboard.telemetry", same origin) brings
 * the model (dashboard/dashboard.h):
 *
 *   {"type":"snapshot","seq":N,"stats":{...}}  the aggregator's whole
 *       document (tm_stats_json), on connect and whenever asked ("resync");
 *   {"type":"delta","seq":N,"since":S,"delta":{...}}  tm_delta_json since S:
 *       the seconds and countries that changed, tables when they changed,
 *       totals always; S must be the seq the page holds, else it resyncs;
 *   {"type":"events","recent":[...]}  requests as they finish (the map's
 *       blips and the tail), rate-limited and sampled by the server; fields
 *       at their default are left out (no "city", "lat"/"lon", "tunnel"),
 *       which reads the same here as "", null and false;
 *   {"type":"ping"}  a keep-alive.
 *
 * Everything here is derived from that model:
 *
 *   - rates per country / server / pool are differences of the model's
 *     cumulative counters, sampled once a second while the page is open
 *     (History below);
 *   - panels the model has no breakdown for (paths of one country, countries
 *     of one backend, ...) are computed from the stream of recent requests the
 *     model sends, and say so ("from N sampled requests").
 *
 * Libraries (served by the dashboard itself, no CDN): d3-array + d3-geo
 * (projection), topojson-client + world-atlas countries-110m (the map),
 * uPlot (charts). Nothing is inserted as HTML: text goes in with textContent,
 * positions and widths through CSS custom properties (CSP: no inline style).
 */
'use strict';

(function () {

const CONF = {
    wsPath: 'ws',                   // relative to the page: /ws next to /
    protocol: 'switchboard.telemetry',
    backoffMin: 500,                // ms, doubles per failed attempt...
    backoffMax: 10000,              // ...up to this, with ±25% jitter
    staleMs: 20000,                 // nothing received for this long: reconnect
    blipsPerSec: 90,                // map: at most this many new blips a second
    blipPool: 400,                  // blip objects, reused
    blipLife: 1700,                 // ms a blip lives
    arcTravel: 650,                 // ms for an arc to reach the proxy
    sampleMax: 4000,                // recent requests kept for filtered panels
    sampleAgeMs: 300000,            // ...and no older than this
    tailRows: 25,
    topRows: 10,
    historyLen: 302,                // per-second samples of cumulative counters
    rateWindow: 5,                  // seconds, like the model's totals.rps
    errWindow: 10,                  // seconds for windowed error rates
};

// ---- small helpers --------------------------------------------------------

const $ = (id) => document.getElementById(id);

function el(tag, cls, text) {
    const e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text !== undefined) e.textContent = text;
    return e;
}

/* Set text only when it changed: no needless layout, no flicker. */
function setText(node, text) {
    text = text == null ? '' : String(text);
    if (node._t !== text) {
        node._t = text;
        node.textContent = text;
    }
}

function setClass(node, cls) {
    if (node._c !== cls) {
        node._c = cls;
        node.className = cls;
    }
}

function setVar(node, name, value) {
    const key = '_v' + name;
    if (node[key] !== value) {
        node[key] = value;
        node.style.setProperty(name, value);
    }
}

const nf0 = new Intl.NumberFormat('en-US', { maximumFractionDigits: 0 });
const nf1 = new Intl.NumberFormat('en-US', { minimumFractionDigits: 1, maximumFractionDigits: 1 });

function fmtInt(n) {
    return n == null || !isFinite(n) ? '–' : nf0.format(n);
}

function fmtCompact(n) {
    if (n == null || !isFinite(n)) return '–';
    if (n < 100000) return nf0.format(n);
    if (n < 1e6) return (n / 1e3).toFixed(0) + 'k';
    if (n < 1e9) return (n / 1e6).toFixed(n < 1e7 ? 2 : 1) + 'M';
    return (n / 1e9).toFixed(2) + 'G';
}

function fmtRate(r) {
    if (r == null || !isFinite(r)) return '–';
    if (r === 0) return '0';
    if (r < 10) return r.toFixed(r < 0.1 ? 2 : 1);
    if (r < 100000) return nf0.format(r);
    return (r / 1000).toFixed(0) + 'k';
}

function fmtPct(x, digits) {
    if (x == null || !isFinite(x)) return '–';
    const p = x * 100;
    if (p === 0) return '0%';
    if (p < 0.1) return '<0.1%';
    return p.toFixed(digits === undefined ? (p < 10 ? 1 : 0) : digits) + '%';
}

function fmtDur(us) {
    if (us == null || !isFinite(us)) return '–';
    if (us < 1000) return Math.round(us) + ' µs';
    const ms = us / 1000;
    if (ms < 10) return ms.toFixed(2) + ' ms';
    if (ms < 100) return ms.toFixed(1) + ' ms';
    if (ms < 1000) return Math.round(ms) + ' ms';
    const s = ms / 1000;
    if (s < 10) return s.toFixed(2) + ' s';
    if (s < 100) return s.toFixed(1) + ' s';
    return Math.round(s) + ' s';
}

/* Latency axis ticks (values in ms): 1 s, 100 ms, 10 ms, 1 ms, 100 µs. */
function fmtAxisMs(v) {
    if (v == null) return '';
    if (v >= 1000) return +(v / 1000).toPrecision(3) + ' s';
    if (v >= 1) return +v.toPrecision(3) + ' ms';
    return +(v * 1000).toPrecision(3) + ' µs';
}

function fmtUptime(s) {
    if (!isFinite(s)) return '';
    s = Math.floor(s);
    const d = Math.floor(s / 86400), h = Math.floor(s / 3600) % 24;
    const m = Math.floor(s / 60) % 60, sec = s % 60;
    if (d) return 'up ' + d + 'd ' + h + 'h';
    if (h) return 'up ' + h + 'h ' + m + 'm';
    if (m) return 'up ' + m + 'm ' + sec + 's';
    return 'up ' + sec + 's';
}

function pad2(n) { return n < 10 ? '0' + n : String(n); }

function fmtClock(ms) {
    const d = new Date(ms);
    return pad2(d.getHours()) + ':' + pad2(d.getMinutes()) + ':' + pad2(d.getSeconds());
}

function fmtClockMs(ms) {
    const d = new Date(ms), m = d.getMilliseconds();
    return fmtClock(ms) + '.' + (m < 10 ? '00' : m < 100 ? '0' : '') + m;
}

let regionNames = null;
try {
    regionNames = new Intl.DisplayNames(['en'], { type: 'region' });
} catch (e) {
    regionNames = null;
}
const nameCache = new Map();
function countryName(cc) {
    if (!cc || cc === 'XX') return 'Unknown';
    let n = nameCache.get(cc);
    if (n === undefined) {
        n = cc;
        try {
            if (regionNames) n = regionNames.of(cc) || cc;
        } catch (e) {
            n = cc;
        }
        nameCache.set(cc, n);
    }
    return n;
}

function statusClass(status) {
    if (!status) return 0;
    const c = Math.floor(status / 100);
    return c >= 1 && c <= 5 ? c : 0;
}

function quantiles(values, qs) {
    if (!values.length) return qs.map(() => null);
    values.sort((a, b) => a - b);
    return qs.map((q) => values[Math.min(values.length - 1, Math.max(0, Math.ceil(q * values.length) - 1))]);
}

const cssVars = getComputedStyle(document.documentElement);
const cssColor = (name) => cssVars.getPropertyValue(name).trim() || '#888';
const COLORS = {
    c1: cssColor('--c-none'), c2: cssColor('--c-2xx'), c3: cssColor('--c-3xx'),
    c4: cssColor('--c-4xx'), c5: cssColor('--c-5xx'), total: cssColor('--c-total'),
    sel: cssColor('--c-sel'), p50: cssColor('--p50'), p90: cssColor('--p90'),
    p99: cssColor('--p99'), p999: cssColor('--p999'), dim: cssColor('--text-dim'),
    faint: cssColor('--text-faint'), line: cssColor('--line-soft'), accent: cssColor('--accent'),
};
const CLASS_COLORS = [COLORS.c1, COLORS.c1, COLORS.c2, COLORS.c3, COLORS.c4, COLORS.c5];

// ---- the model as the page holds it ----------------------------------------

const M = {
    have: false,            // a snapshot arrived on this connection
    seq: 0,
    startTime: null,        // totals.start_time: a new value = a restarted proxy
    nowMs: 0,
    nowSec: 0,
    windowS: 300,
    windowStart: 0,
    uptime: 0,
    proxy: null,
    totals: {},
    latency: {},
    status: null,
    geo: null,
    series: new Map(),      // second -> { requests, errors, 2xx, ..., p50_us, ... }
    pools: [],
    servers: new Map(),     // "pool\0address" -> server object (with .pool)
    countries: new Map(),   // code -> { code, requests, errors, lat, lon }
    cities: [],
    paths: [],
    clients: [],
};

/* A rolling buffer of recent requests: the sample the filtered panels use. */
const sample = {
    buf: new Array(CONF.sampleMax),
    n: 0,                   // ever pushed
    push(ev) {
        this.buf[this.n % CONF.sampleMax] = ev;
        this.n++;
    },
    clear() {
        this.buf = new Array(CONF.sampleMax);
        this.n = 0;
    },
    /* Calls fn(ev) for kept events, newest first, until fn returns false. */
    each(fn) {
        const have = Math.min(this.n, CONF.sampleMax);
        const oldest = M.nowMs - CONF.sampleAgeMs;
        for (let k = 1; k <= have; k++) {
            const ev = this.buf[(this.n - k) % CONF.sampleMax];
            if (ev.time_ms < oldest) break;
            if (fn(ev) === false) break;
        }
    },
};

/*
 * History: once a second (of the model's clock), the cumulative request and
 * error counters of every country, server and pool, plus the totals. Rates
 * are differences over a few seconds; the filtered chart line is the
 * per-second difference.
 */
const History = {
    n: CONF.historyLen,
    t: new Float64Array(CONF.historyLen),     // seconds (model clock, fractional)
    count: 0,
    head: -1,
    lastSec: null,
    series: new Map(),                         // key -> Float64Array(2n): req, err

    reset() {
        this.count = 0;
        this.head = -1;
        this.lastSec = null;
        this.series.clear();
    },

    arr(key) {
        let a = this.series.get(key);
        if (!a) {
            // Older samples stay 0: the snapshot lists every country and
            // server with traffic, so one first seen later had none before.
            a = new Float64Array(2 * this.n);
            this.series.set(key, a);
        }
        return a;
    },

    sampleNow() {
        const sec = Math.floor(M.nowMs / 1000);
        if (sec === this.lastSec) return;
        this.lastSec = sec;
        this.head = (this.head + 1) % this.n;
        this.count = Math.min(this.count + 1, this.n);
        this.t[this.head] = M.nowMs / 1000;
        const h = this.head;
        const put = (key, req, err) => {
            const a = this.arr(key);
            a[2 * h] = req || 0;
            a[2 * h + 1] = err || 0;
        };
        put('t', M.totals.requests, M.totals.errors);
        for (const c of M.countries.values()) put('c:' + c.code, c.requests, c.errors);
        for (const p of M.pools) {
            put('p:' + p.name, p.requests, p.errors);
            for (const s of p.servers || []) put('s:' + p.name + '\0' + s.address, s.requests, s.errors);
        }
    },

    /* Index of the sample about `secs` seconds before the latest, or the oldest. */
    back(secs) {
        if (this.count < 1) return -1;
        const k = Math.min(secs, this.count - 1);
        return (this.head - k + this.n) % this.n;
    },

    /* [requests/s, errors/s, requests, errors] over the last `secs`
     * seconds, from the current counters; null when not known yet. */
    rate(key, cur, secs) {
        if (this.count < 1 || !cur) return null;
        const i = this.back(secs);
        const dt = M.nowMs / 1000 - this.t[i];
        if (dt < 0.9) return null;
        // A key not sampled yet appeared since the last sample: it had 0.
        const a = this.series.get(key);
        const dr = Math.max(0, (cur.requests || 0) - (a ? a[2 * i] : 0));
        const de = Math.max(0, (cur.errors || 0) - (a ? a[2 * i + 1] : 0));
        return [dr / dt, de / dt, dr, de];
    },

    /* Per-second request counts for `key`: Map second -> count. */
    perSecond(key) {
        const out = new Map();
        const a = this.series.get(key);
        if (!a || this.count < 2) return out;
        for (let k = this.count - 1; k >= 1; k--) {
            const i = (this.head - k + this.n) % this.n;
            const j = (i + 1) % this.n;
            const dt = this.t[j] - this.t[i];
            if (dt <= 0) continue;
            out.set(Math.floor(this.t[i]), Math.max(0, a[2 * j] - a[2 * i]) / dt);
        }
        return out;
    },
};

// ---- filter -------------------------------------------------------------------

/* null, {kind:'country', code}, {kind:'pool', pool}, {kind:'server', pool, server} */
let filter = null;

function filterKey(f) {
    if (!f) return '';
    if (f.kind === 'country') return 'c:' + f.code;
    if (f.kind === 'pool') return 'p:' + f.pool;
    return 's:' + f.pool + '\0' + f.server;
}

function filterLabel(f) {
    if (!f) return '';
    if (f.kind === 'country') return countryName(f.code) + ' (' + f.code + ')';
    if (f.kind === 'pool') return 'pool ' + f.pool;
    return f.pool + ' / ' + f.server;
}

function matches(ev, f) {
    if (!f) return true;
    if (f.kind === 'country') return ev.country === f.code;
    if (f.kind === 'pool') return ev.pool === f.pool;
    return ev.pool === f.pool && ev.server === f.server;
}

function setFilter(f) {
    if (f && filter && filterKey(f) === filterKey(filter)) f = null;    // click again: clear
    filter = f;
    const box = $('filter');
    box.hidden = !f;
    setText($('filter-text'), filterLabel(f));
    document.body.classList.toggle('filtered', !!f);
    Blips.clear();
    dirty.all();
    schedule();
}

// ---- applying messages ----------------------------------------------------------

function applyCommon(doc) {
    if (typeof doc.seq === 'number') M.seq = doc.seq;
    if (typeof doc.now_ms === 'number') M.nowMs = doc.now_ms;
    M.nowSec = Math.floor(M.nowMs / 1000);
    if (typeof doc.uptime_s === 'number') M.uptime = doc.uptime_s;
    if (typeof doc.window_s === 'number') M.windowS = doc.window_s;
    if (typeof doc.window_start === 'number') M.windowStart = doc.window_start;
    if ('proxy' in doc) M.proxy = doc.proxy && isFinite(doc.proxy.lat) ? doc.proxy : null;
    if (doc.totals) M.totals = doc.totals;
    if (doc.latency) M.latency = doc.latency;
    if (doc.status) M.status = doc.status;
    if (doc.geo) M.geo = doc.geo;
    if (doc.series) applySeries(doc.series);
    for (const s of M.series.keys())
        if (s < M.windowStart) M.series.delete(s);
    if (doc.pools) applyPools(doc.pools);
    if (doc.countries) {
        for (const c of doc.countries) M.countries.set(c.code, c);
        dirty.countries = dirty.map = true;
    }
    if (doc.cities) { M.cities = doc.cities; dirty.cities = true; }
    if (doc.paths) { M.paths = doc.paths; dirty.paths = true; }
    if (doc.clients) M.clients = doc.clients;
    dirty.counters = dirty.charts = dirty.backends = true;
}

function applySeries(s) {
    const t = s.t || [];
    const keys = Object.keys(s).filter((k) => k !== 't' && Array.isArray(s[k]));
    for (let i = 0; i < t.length; i++) {
        const row = {};
        for (const k of keys) row[k] = s[k][i];
        M.series.set(t[i], row);
    }
}

function applyPools(pools) {
    M.pools = pools;
    M.servers.clear();
    for (const p of pools)
        for (const s of p.servers || []) {
            s.pool = p.name;
            M.servers.set(p.name + '\0' + s.address, s);
        }
    dirty.backends = true;
}

/* Another proxy process (a restart): its counters started again. Seconds
 * only: deltas may carry start_time with less precision than snapshots. */
function restarted(start) {
    return M.startTime !== null && typeof start === 'number' && Math.abs(start - M.startTime) >= 1;
}

function applySnapshot(doc) {
    const start = doc.totals ? doc.totals.start_time : null;
    if (restarted(start)) {
        // Another proxy process: counters restarted.
        History.reset();
        M.countries.clear();
    }
    M.startTime = start;
    M.series.clear();
    M.countries.clear();
    sample.clear();
    Tail.clear();
    Blips.clear();
    seen.clear();
    applyCommon(doc);
    ingestRecent(doc.recent || [], false);
    M.have = true;
    History.sampleNow();
    dirty.all();
}

function applyDelta(doc) {
    if (doc.totals && restarted(doc.totals.start_time))
        return false;       // a different proxy answered: resync
    applyCommon(doc);
    ingestRecent(doc.recent || [], true);
    History.sampleNow();
    return true;
}

/* Recent requests may come both in deltas and in a faster event stream:
 * keep each once. */
const seen = {
    max: 3000,
    set: new Set(),
    ring: new Array(3000),  // keys in arrival order, to forget the oldest
    n: 0,
    key(ev) {
        return ev.time_ms + '|' + ev.client + '|' + ev.duration_us + '|' + ev.status + '|' + ev.path;
    },
    add(ev) {
        const k = this.key(ev);
        if (this.set.has(k)) return false;
        const slot = this.n % this.max;
        if (this.n >= this.max) this.set.delete(this.ring[slot]);
        this.ring[slot] = k;
        this.n++;
        this.set.add(k);
        return true;
    },
    clear() {
        this.set.clear();
        this.n = 0;
    },
};

function ingestRecent(list, live) {
    if (!list.length) return;
    const fresh = [];
    for (const ev of list) {
        if (!ev || typeof ev !== 'object' || !seen.add(ev)) continue;
        if (typeof ev.time_ms !== 'number') ev.time_ms = M.nowMs;
        sample.push(ev);
        fresh.push(ev);
    }
    if (!fresh.length) return;
    Tail.add(fresh);
    if (live) Blips.offer(fresh);
    dirty.tail = dirty.sampled = true;
}

// ---- connection ----------------------------------------------------------------------

const Conn = {
    ws: null,
    attempt: 0,
    retryAt: 0,
    timer: 0,
    lastMsg: 0,
    state: 'connecting',
    msgs: 0,
    lastArrival: 0,
    interval: 250,          // estimated delta interval (ms)
    evInterval: 250,        // estimated events interval (ms), for blip pacing
    lastEvents: 0,

    url() {
        const u = new URL(CONF.wsPath, location.href);
        u.protocol = location.protocol === 'https:' ? 'wss:' : 'ws:';
        u.search = '';
        u.hash = '';
        return u.href;
    },

    setState(state, text) {
        this.state = state;
        const c = $('conn');
        if (c.dataset.state !== state) c.dataset.state = state;
        setText($('conn-text'), text);
        document.body.classList.toggle('stale', state !== 'live');
    },

    open() {
        clearTimeout(this.timer);
        this.timer = 0;
        this.setState('connecting', this.attempt ? 'reconnecting…' : 'connecting…');
        let ws;
        try {
            ws = new WebSocket(this.url(), CONF.protocol);
        } catch (e) {
            this.retry('cannot connect');
            return;
        }
        this.ws = ws;
        M.have = false;
        this.lastMsg = performance.now();
        ws.onmessage = (e) => { if (this.ws === ws) this.message(e.data); };
        ws.onclose = (e) => {
            if (this.ws !== ws) return;
            this.ws = null;
            this.retry(e.code === 1008 ? 'refused' : 'disconnected');
        };
        ws.onerror = () => { /* onclose follows */ };
    },

    retry(why) {
        const base = Math.min(CONF.backoffMax, CONF.backoffMin * Math.pow(2, this.attempt));
        const delay = Math.round(base * (0.75 + Math.random() * 0.5));
        this.attempt++;
        this.retryAt = performance.now() + delay;
        this.setState('down', why + ' · retry in ' + Math.max(1, Math.ceil(delay / 1000)) + ' s');
        clearTimeout(this.timer);
        this.timer = setTimeout(() => this.open(), delay);
    },

    /* The server answers "resync" with a snapshot; until then deltas wait. */
    resync() {
        M.have = false;
        try {
            this.ws.send('resync');
        } catch (e) {
            this.drop();
        }
    },

    drop() {
        const ws = this.ws;
        if (ws) {
            this.ws = null;
            try { ws.close(4000, 'closed by the page'); } catch (e) { /* closed already */ }
            this.retry('disconnected');
        }
    },

    tick() {
        const now = performance.now();
        if (this.ws && now - this.lastMsg > CONF.staleMs) {
            this.drop();
            return;
        }
        if (this.state === 'down' && this.timer) {
            const left = Math.max(0, this.retryAt - now);
            const t = $('conn-text')._t || '';
            const why = t.split(' · ')[0];
            setText($('conn-text'), why + ' · retry in ' + Math.max(1, Math.ceil(left / 1000)) + ' s');
        }
    },

    message(data) {
        const now = performance.now();
        this.lastMsg = now;
        let msg;
        try {
            msg = JSON.parse(data);
        } catch (e) {
            console.warn('switchboard: unreadable message');
            return;
        }
        if (!msg || typeof msg !== 'object') return;
        const type = msg.type;
        if (type === 'ping' || type === 'pong') return;
        if (type === 'snapshot') {
            const doc = 'stats' in msg ? msg.stats : msg;
            if (!doc || typeof doc !== 'object') {
                // The proxy runs without telemetry: nothing to show.
                this.attempt = 0;
                this.setState('live', 'live · telemetry off');
                MapView.message('telemetry is off in this proxy’s configuration');
                return;
            }
            applySnapshot(doc);
            if (typeof msg.seq === 'number') M.seq = msg.seq;
            this.attempt = 0;
            this.msgs++;
            this.setState('live', 'live');
            schedule();
            return;
        }
        if (!M.have) return;        // nothing is applied before a snapshot
        if (type === 'delta') {
            const doc = msg.delta || msg.data || msg.stats || msg;
            if (doc.full) {
                applySnapshot(doc);
            } else {
                const since = typeof msg.since === 'number' ? msg.since : doc.since;
                if ((typeof since === 'number' && since !== M.seq) || !applyDelta(doc)) {
                    // A gap, or another proxy process: what we hold is no
                    // longer the model. Ask for a fresh snapshot.
                    this.resync();
                    return;
                }
            }
            if (typeof msg.seq === 'number') M.seq = msg.seq;
            if (this.lastArrival) {
                const gap = Math.min(2000, now - this.lastArrival);
                this.interval += (gap - this.interval) * 0.2;
            }
            this.lastArrival = now;
            this.msgs++;
            schedule();
            return;
        }
        // {"type":"events","recent":[...]}: requests as they finish, for
        // the map and the tail (rate-limited by the server; "skipped" ones
        // were left out).
        const list = msg.recent || msg.requests || msg.events;
        if (Array.isArray(list)) {
            if (this.lastEvents) {
                const gap = Math.min(1000, now - this.lastEvents);
                this.evInterval += (gap - this.evInterval) * 0.2;
            }
            this.lastEvents = now;
            ingestRecent(list, true);
            schedule();
        }
    },
};

// ---- rendering: dirty flags and one frame per change ----------------------------

const dirty = {
    counters: true, charts: true, backends: true, countries: true, cities: true,
    paths: true, tail: true, map: true, sampled: true,
    all() {
        this.counters = this.charts = this.backends = this.countries = this.cities = true;
        this.paths = this.tail = this.map = this.sampled = true;
    },
};

let scheduled = false;
function schedule() {
    if (scheduled) return;
    scheduled = true;
    requestAnimationFrame(render);
}

function render() {
    scheduled = false;
    if (!M.have && !M.nowMs) return;
    const sampledChanged = dirty.sampled;
    if (dirty.counters) { renderCounters(); dirty.counters = false; }
    if (dirty.charts) { Charts.render(); dirty.charts = false; }
    if (dirty.backends || (filter && sampledChanged)) { renderBackends(); dirty.backends = false; }
    if (dirty.countries || (filter && filter.kind !== 'country' && sampledChanged)) {
        renderCountries(); dirty.countries = false;
    }
    if (dirty.cities || (filter && sampledChanged)) { renderCities(); dirty.cities = false; }
    if (dirty.paths || (filter && sampledChanged)) { renderPaths(); dirty.paths = false; }
    if (dirty.tail) { Tail.render(); dirty.tail = false; }
    if (dirty.map || (filter && filter.kind !== 'country' && sampledChanged)) {
        MapView.paint(); dirty.map = false;
    }
    dirty.sampled = false;
    setText($('meta-uptime'), fmtUptime(M.uptime));
    setText($('meta-clock'), M.nowMs ? fmtClock(M.nowMs) : '');
}

// ---- headline counters ------------------------------------------------------------

/* Sum of a series key over the last `secs` whole seconds (like totals.rps). */
function seriesSum(key, secs) {
    let sum = 0;
    for (let s = M.nowSec - secs; s < M.nowSec; s++) {
        const row = M.series.get(s);
        if (row && row[key]) sum += row[key];
    }
    return sum;
}

/* The latest whole second with requests in the last few: its row. */
function lastFullSecond() {
    for (let s = M.nowSec - 1; s >= M.nowSec - CONF.rateWindow; s--) {
        const row = M.series.get(s);
        if (row && row.requests > 0) return row;
    }
    return null;
}

function sampleLatency(f) {
    const ds = [];
    const since = M.nowMs - 30000;
    sample.each((ev) => {
        if (ev.time_ms < since) return false;
        if (matches(ev, f)) ds.push(ev.duration_us);
        return true;
    });
    const q = quantiles(ds, [0.5, 0.99]);
    return { p50: q[0], p99: q[1], n: ds.length };
}

function renderCounters() {
    const T = M.totals || {};
    const f = filter;
    const counters = document.querySelector('.counters');
    counters.classList.toggle('filtered', !!f);
    let rps, eps, p50, p99, sRps, sEps, s50, s99, conns, sConns;
    const win = M.latency && M.latency.window;
    const fv = (id, on) => $(id).classList.toggle('fval', on);

    if (!f) {
        rps = T.rps;
        eps = seriesSum('errors', CONF.rateWindow) / CONF.rateWindow;
        const row = lastFullSecond();
        p50 = row ? row.p50_us : null;
        p99 = row ? row.p99_us : null;
        sRps = fmtCompact(T.requests) + ' total';
        sEps = rps > 0 ? fmtPct(eps / rps) + ' of requests' : fmtCompact(T.errors) + ' total';
        s50 = win && win.count ? '5 min: ' + fmtDur(win.p50_us) : 'last second';
        s99 = win && win.count ? '5 min: ' + fmtDur(win.p99_us) : 'last second';
        conns = T.client_connections;
        sConns = fmtInt(T.requests_inflight) + ' req in flight';
        ['k-rps', 'k-eps', 'k-p50', 'k-p99', 'k-conns'].forEach((id) => fv(id, false));
    } else if (f.kind === 'country') {
        const c = M.countries.get(f.code);
        const r = History.rate('c:' + f.code, c, CONF.rateWindow);
        rps = r ? r[0] : null;
        eps = r ? r[1] : null;
        const lat = sampleLatency(f);
        p50 = lat.p50;
        p99 = lat.p99;
        sRps = (c ? fmtCompact(c.requests) : '0') + ' requests from ' + f.code;
        sEps = c && c.requests ? fmtPct(c.errors / c.requests) + ' since start' : '';
        s50 = s99 = lat.n ? 'from ' + fmtInt(lat.n) + ' sampled (30 s)' : 'no sample yet';
        conns = T.client_connections;
        sConns = 'all traffic';
        ['k-rps', 'k-eps', 'k-p50', 'k-p99'].forEach((id) => fv(id, true));
        fv('k-conns', false);
    } else {
        const obj = f.kind === 'pool'
            ? M.pools.find((p) => p.name === f.pool)
            : M.servers.get(f.pool + '\0' + f.server);
        const r = History.rate(filterKey(f), obj, CONF.errWindow);
        rps = obj ? obj.rps : null;
        eps = r ? r[1] : null;
        const lat = obj && obj.latency;
        p50 = lat && lat.count ? lat.p50_us : null;
        p99 = lat && lat.count ? lat.p99_us : null;
        sRps = obj ? fmtCompact(obj.requests) + ' requests since start' : 'no requests';
        sEps = r && r[2] ? fmtPct(r[3] / r[2]) + ' of requests (10 s)' : '';
        s50 = s99 = 'last 10–20 s';
        let inflight = 0;
        if (f.kind === 'pool' && obj) for (const s of obj.servers || []) inflight += s.inflight || 0;
        else if (obj) inflight = obj.inflight || 0;
        conns = T.client_connections;
        sConns = fmtInt(inflight) + ' in flight on ' + (f.kind === 'pool' ? 'pool' : 'server');
        ['k-rps', 'k-eps', 'k-p50', 'k-p99'].forEach((id) => fv(id, true));
        fv('k-conns', false);
    }
    setText($('c-rps'), fmtRate(rps));
    setText($('s-rps'), sRps);
    setText($('c-eps'), fmtRate(eps));
    setText($('s-eps'), sEps);
    $('k-eps').classList.toggle('bad', eps > 0);
    setText($('c-p50'), fmtDur(p50));
    setText($('s-p50'), s50);
    setText($('c-p99'), fmtDur(p99));
    setText($('s-p99'), s99);
    setText($('c-conns'), fmtInt(conns));
    setText($('s-conns'), sConns);
    setText($('c-tunnels'), fmtInt(T.tunnels));
    setText($('s-tunnels'), fmtCompact(T.tunnels_opened) + ' opened');
    const title = (f ? '' : fmtRate(T.rps) + ' req/s · ') + 'Switchboard';
    if (document.title !== title) document.title = title;
}

// ---- charts (uPlot) -------------------------------------------------------------------

const Charts = {
    rps: null,
    lat: null,
    selShown: false,

    xAxis() {
        return Object.assign(this.axis((u, vals) => vals.map((v) => {
            const d = new Date(v * 1000);
            return pad2(d.getHours()) + ':' + pad2(d.getMinutes()) + (d.getSeconds() ? ':' + pad2(d.getSeconds()) : '');
        })), { space: 60 });
    },

    axis(values) {
        const a = {
            stroke: COLORS.dim,
            grid: { stroke: COLORS.line, width: 1 },
            ticks: { stroke: COLORS.line, width: 1, size: 4 },
            font: '11px system-ui, sans-serif',
        };
        if (values) a.values = values;
        return a;
    },

    size(div) {
        const legend = div.querySelector('.u-legend');
        const lh = legend ? legend.offsetHeight : 24;
        return {
            width: Math.max(120, div.clientWidth - 8),
            height: Math.max(80, div.clientHeight - lh - 4),
        };
    },

    init() {
        if (typeof uPlot !== 'function') return;
        const rdiv = $('chart-rps'), ldiv = $('chart-lat');
        const line = (label, stroke, extra) => Object.assign({
            label, stroke, width: 1.5, points: { show: false },
            value: (u, v) => (v == null ? '–' : fmtRate(v)),
        }, extra || {});
        const common = {
            cursor: { drag: { x: false, y: false }, points: { size: 5 } },
            legend: { live: true },
        };
        const s = this.size(rdiv);
        this.rps = new uPlot(Object.assign({}, common, {
            width: s.width, height: s.height,
            scales: { x: { time: true }, y: { range: (u, min, max) => [0, max > 0 ? max * 1.08 : 1] } },
            axes: [this.xAxis(), Object.assign(this.axis((u, vals) => vals.map(fmtRate)), { size: 46 })],
            series: [
                { value: (u, v) => (v == null ? '–' : fmtClock(v * 1000)) },
                line('total', COLORS.total, { width: 1.25, fill: 'rgba(214,222,232,0.05)' }),
                line('2xx', COLORS.c2),
                line('3xx', COLORS.c3),
                line('4xx', COLORS.c4),
                line('5xx', COLORS.c5, { width: 1.75 }),
                line('filter', COLORS.sel, { width: 2, dash: [5, 3], show: false }),
            ],
        }), [[], [], [], [], [], [], []], rdiv);
        const ms = (v) => (v == null ? '–' : fmtDur(v * 1000));
        const s2 = this.size(ldiv);
        this.lat = new uPlot(Object.assign({}, common, {
            width: s2.width, height: s2.height,
            scales: {
                x: { time: true },
                y: {
                    distr: 3, log: 10,
                    range: (u, min, max) => {
                        if (!(min > 0) || !(max > 0)) return [0.1, 1000];
                        const lo = Math.pow(10, Math.floor(Math.log10(min)));
                        const hi = Math.pow(10, Math.ceil(Math.log10(max * 1.05)));
                        return [lo, hi > lo ? hi : lo * 10];
                    },
                },
            },
            axes: [this.xAxis(), Object.assign(this.axis((u, vals) => vals.map(fmtAxisMs)), { size: 54, space: 14 })],
            series: [
                { value: (u, v) => (v == null ? '–' : fmtClock(v * 1000)) },
                { label: 'p50', stroke: COLORS.p50, width: 1.5, points: { show: false }, value: (u, v) => ms(v), spanGaps: false },
                { label: 'p90', stroke: COLORS.p90, width: 1.25, points: { show: false }, value: (u, v) => ms(v) },
                { label: 'p99', stroke: COLORS.p99, width: 1.5, points: { show: false }, value: (u, v) => ms(v) },
                { label: 'p99.9', stroke: COLORS.p999, width: 1, points: { show: false }, value: (u, v) => ms(v) },
            ],
        }), [[], [], [], [], []], ldiv);
        const ro = new ResizeObserver(() => this.resize());
        ro.observe(rdiv);
        ro.observe(ldiv);
    },

    resize() {
        for (const [u, div] of [[this.rps, $('chart-rps')], [this.lat, $('chart-lat')]]) {
            if (!u) continue;
            const s = this.size(div);
            if (s.width !== u.width || s.height !== u.height) u.setSize(s);
        }
    },

    render() {
        if (!this.rps || !M.windowStart) return;
        const end = M.nowSec - 1;       // the current second is still filling
        const start = Math.max(M.windowStart, end - M.windowS + 1);
        const n = Math.max(0, end - start + 1);
        const x = new Array(n), tot = new Array(n), c2 = new Array(n), c3 = new Array(n);
        const c4 = new Array(n), c5 = new Array(n), sel = new Array(n);
        const p50 = new Array(n), p90 = new Array(n), p99 = new Array(n), p999 = new Array(n);
        const per = filter ? this.filterSeries() : null;
        for (let i = 0; i < n; i++) {
            const s = start + i;
            const r = M.series.get(s);
            x[i] = s;
            const req = r ? r.requests || 0 : 0;
            tot[i] = req;
            c2[i] = r ? r['2xx'] || 0 : 0;
            c3[i] = r ? r['3xx'] || 0 : 0;
            c4[i] = r ? r['4xx'] || 0 : 0;
            c5[i] = r ? r['5xx'] || 0 : 0;
            sel[i] = per ? (per.has(s) ? per.get(s) : null) : null;
            const has = req > 0;
            p50[i] = has ? r.p50_us / 1000 : null;
            p90[i] = has ? r.p90_us / 1000 : null;
            p99[i] = has ? r.p99_us / 1000 : null;
            p999[i] = has ? r.p999_us / 1000 : null;
        }
        const show = !!filter;
        if (show !== this.selShown) {
            this.rps.setSeries(6, { show });
            this.selShown = show;
        }
        if (show) {
            const lbl = this.rps.root.querySelectorAll('.u-legend .u-series')[6];
            const label = lbl && lbl.querySelector('.u-label');
            if (label) setText(label, filterLabel(filter).slice(0, 28));
        }
        $('chart-rps').classList.toggle('with-filter', show);
        this.rps.setData([x, tot, c2, c3, c4, c5, sel]);
        this.lat.setData([x, p50, p90, p99, p999]);
        // Not hovering: the legend shows the latest second.
        for (const u of [this.rps, this.lat])
            if (n && (u.cursor.idx == null || u.cursor.left < 0)) u.setLegend({ idx: n - 1 });
        this.resize();      // the legend may have wrapped differently
    },

    /* The filtered key's requests per second (since the page opened). */
    filterSeries() {
        return History.perSecond(filterKey(filter));
    },
};

// ---- keyed table rows, updated in place -------------------------------------------

/*
 * rows(tbody, items, key, make, update): one <tr> per item, found by key,
 * created once by make(item) (which returns the tr and keeps its cells on
 * it), updated by update(tr, item). Order follows items; rows for keys no
 * longer present go.
 */
function rows(tbody, items, keyOf, make, update, emptyText) {
    const map = tbody._rows || (tbody._rows = new Map());
    const want = new Set();
    let prev = null;
    for (const it of items) {
        const k = keyOf(it);
        want.add(k);
        let tr = map.get(k);
        if (!tr) {
            tr = make(it);
            tr._key = k;
            map.set(k, tr);
        }
        update(tr, it);
        const next = prev ? prev.nextSibling : tbody.firstChild;
        if (next !== tr) tbody.insertBefore(tr, next);
        prev = tr;
    }
    for (const [k, tr] of map)
        if (!want.has(k)) {
            tr.remove();
            map.delete(k);
        }
    let empty = tbody._empty;
    if (!items.length) {
        if (!empty) {
            const cols = tbody.parentNode.querySelectorAll('thead th').length;
            empty = tbody._empty = el('tr', 'empty');
            const td = el('td');
            td.colSpan = cols;
            empty.appendChild(td);
        }
        setText(empty.firstChild, emptyText || 'nothing yet');
        if (empty.parentNode !== tbody) tbody.appendChild(empty);
    } else if (empty && empty.parentNode) {
        empty.remove();
    }
}

function cells(tr, n, classes) {
    if (tr.classList.contains('click')) tr.tabIndex = 0;
    tr._td = [];
    for (let i = 0; i < n; i++) {
        const td = el('td', classes && classes[i] ? classes[i] : '');
        tr.appendChild(td);
        tr._td.push(td);
    }
    return tr._td;
}

/* A share cell: a bar (its width a CSS variable, relative to the table's
 * largest share) and the share in figures. */
function shareCell(td) {
    const box = el('span', 'sh'), w = el('span', 'sw');
    td._bar = el('span', 'sbar');
    td._pct = el('span', 'sp');
    w.appendChild(td._bar);
    box.appendChild(w);
    box.appendChild(td._pct);
    td.appendChild(box);
}

function setShare(td, x, max, title) {
    const v = max > 0 ? Math.max(0, Math.min(1, (x || 0) / max)) : 0;
    setVar(td._bar, '--w', v.toFixed(4));
    setText(td._pct, fmtPct(x || 0));
    td.title = title || '';
}

function maxShare(items) {
    let m = 0;
    for (const it of items) if (it.share > m) m = it.share;
    return m;
}

function countryCell(td) {
    td._cc = el('span', 'cc');
    td._name = document.createTextNode('');
    td.appendChild(td._cc);
    td.appendChild(td._name);
}

function setCountry(td, code) {
    setText(td._cc, code || '??');
    const name = countryName(code);
    if (td._name.data !== name) td._name.data = name;
}

// ---- backends ---------------------------------------------------------------------

/* For a country filter: who served that country's sampled requests. */
function sampledBy(f, keyOf) {
    const counts = new Map();
    let n = 0;
    sample.each((ev) => {
        if (matches(ev, f)) {
            const k = keyOf(ev);
            counts.set(k, (counts.get(k) || 0) + 1);
            n++;
        }
    });
    return { counts, n };
}

function renderBackends() {
    const table = $('t-backends');
    const tbody = table.tBodies[0];
    const byCountry = filter && filter.kind === 'country';
    table.classList.toggle('filtered', byCountry);
    let share = null;
    if (byCountry) share = sampledBy(filter, (ev) => ev.pool + '\0' + ev.server);
    const items = [];
    for (const p of M.pools) {
        items.push({ pool: p });
        for (const s of p.servers || [])
            if (s.listed !== false || s.requests > 0)      // a removed, idle server: no row
                items.push({ pool: p, server: s });
    }
    const note = $('be-note');
    if (byCountry) {
        setText(note, 'In filter: share of ' + fmtInt(share.n) + ' sampled requests from ' + filter.code);
        note.classList.add('filtered');
    } else {
        setText(note, 'click a row to filter · latency: last 10–20 s · errors: last 10 s');
        note.classList.remove('filtered');
    }
    rows(tbody, items,
        (it) => (it.server ? 's:' + it.pool.name + '\0' + it.server.address : 'p:' + it.pool.name),
        (it) => {
            const tr = el('tr', it.server ? 'srv click' : 'pool click');
            const td = cells(tr, 9, ['l', 'l', '', '', '', '', '', '', 'fcol']);
            td[0]._main = document.createTextNode('');
            td[0]._tag = el('span', 'tag');
            td[0].appendChild(td[0]._main);
            td[0].appendChild(td[0]._tag);
            if (it.server) {
                td[1]._st = el('span', 'state');
                td[1].appendChild(td[1]._st);
            }
            tr.addEventListener('click', () => {
                const f = tr._item.server
                    ? { kind: 'server', pool: tr._item.pool.name, server: tr._item.server.address }
                    : { kind: 'pool', pool: tr._item.pool.name };
                setFilter(f);
            });
            return tr;
        },
        (tr, it) => {
            tr._item = it;
            const td = tr._td;
            const obj = it.server || it.pool;
            const key = it.server ? 's:' + it.pool.name + '\0' + it.server.address : 'p:' + it.pool.name;
            let tag = '';
            if (it.server) {
                const s = it.server;
                if (td[0]._main.data !== s.address) td[0]._main.data = s.address;
                const tags = [];
                if (s.backup) tags.push('backup');
                if (s.weight && s.weight !== 1) tags.push('weight ' + s.weight);
                if (s.listed === false) tags.push('not configured');
                tag = tags.join(' · ');
                const st = s.state || 'unknown';
                setClass(td[1]._st, 'state ' + st);
                setText(td[1]._st, st);
                td[1].title = s.listed === false ? 'seen in requests, not in the current configuration' : '';
                tr.classList.toggle('is-down', st === 'down' || st === 'disabled');
                setText(td[6], fmtInt(s.inflight));
            } else {
                const p = it.pool;
                const name = 'pool ' + p.name;
                if (td[0]._main.data !== name) td[0]._main.data = name;
                // Servers no longer configured (a reload removed them) keep
                // their counts but are not part of the pool's health.
                const list = (p.servers || []).filter((s) => s.listed !== false);
                const up = list.filter((s) => s.state === 'up').length;
                tag = list.length + (list.length === 1 ? ' server' : ' servers');
                if (p.no_server) tag += ' · ' + fmtInt(p.no_server) + ' without a server';
                setText(td[1], list.length ? up + '/' + list.length + ' up' : '');
                td[1].className = 'l' + (up < list.length ? ' num-bad' : ' dim');
                let inflight = 0;
                for (const s of list) inflight += s.inflight || 0;
                setText(td[6], fmtInt(inflight));
            }
            setText(td[0]._tag, tag);
            setText(td[2], fmtRate(obj.rps));
            const r = History.rate(key, obj, CONF.errWindow);
            let errText, errTitle;
            if (r && r[2] > 0) {
                errText = fmtPct(r[3] / r[2]);
                errTitle = fmtInt(r[3]) + ' errors in ' + fmtInt(r[2]) + ' requests, last 10 s';
            } else {
                errText = obj.requests ? fmtPct(obj.errors / obj.requests) : '–';
                errTitle = 'since start: ' + fmtInt(obj.errors) + ' errors in ' + fmtInt(obj.requests) + ' requests';
            }
            setText(td[3], errText);
            td[3].title = errTitle;
            td[3].classList.toggle('num-bad', (r && r[3] > 0) || (!(r && r[2] > 0) && obj.errors > 0 && it.server && it.server.state === 'down'));
            const lat = obj.latency || {};
            setText(td[4], lat.count ? fmtDur(lat.p50_us) : '–');
            setText(td[5], lat.count ? fmtDur(lat.p99_us) : '–');
            setText(td[7], fmtCompact(obj.requests));
            if (it.server && it.server.codes) {
                const codes = Object.entries(it.server.codes).map(([c, n]) => c + ': ' + n).join(', ');
                td[7].title = codes ? 'status codes since start: ' + codes : '';
            }
            if (byCountry) {
                const c = it.server
                    ? share.counts.get(it.pool.name + '\0' + it.server.address) || 0
                    : Array.from(share.counts.entries())
                        .filter(([k]) => k.split('\0')[0] === it.pool.name)
                        .reduce((a, [, v]) => a + v, 0);
                setText(td[8], share.n ? fmtPct(c / share.n) : '–');
            } else {
                setText(td[8], '');
            }
            const sel = filter && ((filter.kind === 'pool' && !it.server && filter.pool === it.pool.name) ||
                (filter.kind === 'server' && it.server && filter.pool === it.pool.name &&
                 filter.server === it.server.address));
            tr.classList.toggle('sel', !!sel);
        },
        'no backends yet');
}

// ---- countries, cities, paths ------------------------------------------------------

/* Per-country requests/s from the History; totals for shares. */
function countryRates() {
    const list = [];
    let total = 0;
    for (const c of M.countries.values()) {
        const r = History.rate('c:' + c.code, c, CONF.rateWindow);
        const rps = r ? r[0] : null;
        list.push({ c, rps });
        if (rps) total += rps;
    }
    return { list, total };
}

function renderCountries() {
    const tbody = $('t-countries').tBodies[0];
    const note = $('co-note');
    let items;
    const sampleMode = filter && filter.kind !== 'country';
    if (sampleMode) {
        // Countries of one backend: the model has no such breakdown, the
        // sample of recent requests does.
        const obj = filter.kind === 'pool' ? M.pools.find((p) => p.name === filter.pool)
            : M.servers.get(filter.pool + '\0' + filter.server);
        const counts = new Map();
        const errs = new Map();
        let n = 0;
        sample.each((ev) => {
            if (!matches(ev, filter)) return true;
            n++;
            counts.set(ev.country, (counts.get(ev.country) || 0) + 1);
            if (ev.status >= 500) errs.set(ev.country, (errs.get(ev.country) || 0) + 1);
            return true;
        });
        const rps = obj && obj.rps ? obj.rps : 0;
        items = Array.from(counts.entries())
            .sort((a, b) => b[1] - a[1]).slice(0, CONF.topRows)
            .map(([code, k]) => ({
                code, rps: n ? rps * k / n : null, share: n ? k / n : 0,
                requests: k, errRate: k ? (errs.get(code) || 0) / k : null, est: true,
            }));
        setText(note, 'from ' + fmtInt(n) + ' sampled requests of ' + filterLabel(filter) + ' · req/s estimated');
        note.classList.add('filtered');
    } else {
        const { list, total } = countryRates();
        const totalReq = M.totals.requests || 0;
        list.sort((a, b) => ((b.rps || 0) - (a.rps || 0)) || (b.c.requests - a.c.requests));
        let top = list.slice(0, CONF.topRows);
        if (filter && !top.some((x) => x.c.code === filter.code)) {
            const mine = list.find((x) => x.c.code === filter.code);
            if (mine) top = top.slice(0, CONF.topRows - 1).concat([mine]);
        }
        items = top.map(({ c, rps }) => ({
            code: c.code, rps,
            share: total > 0 ? (rps || 0) / total : (totalReq ? c.requests / totalReq : 0),
            requests: c.requests, errRate: c.requests ? c.errors / c.requests : null,
        }));
        setText(note, M.countries.size ? fmtInt(M.countries.size) + ' countries · click to filter' : '');
        note.classList.remove('filtered');
    }
    const top = maxShare(items);
    rows(tbody, items, (it) => it.code,
        (it) => {
            const tr = el('tr', 'click');
            const td = cells(tr, 5, ['l trunc', '', 'l share', '', '']);
            countryCell(td[0]);
            shareCell(td[2]);
            tr.addEventListener('click', () => setFilter({ kind: 'country', code: tr._key }));
            return tr;
        },
        (tr, it) => {
            const td = tr._td;
            setCountry(td[0], it.code);
            setText(td[1], (it.est && it.rps != null ? '≈' : '') + fmtRate(it.rps));
            setShare(td[2], it.share, top, fmtPct(it.share) + (it.est ? ' of the sample' : ' of req/s'));
            setText(td[3], fmtCompact(it.requests));
            setText(td[4], fmtPct(it.errRate));
            td[4].classList.toggle('num-bad', it.errRate > 0.05);
            tr.classList.toggle('sel', !!(filter && filter.kind === 'country' && filter.code === it.code));
        },
        sampleMode ? 'no sampled requests for this filter yet' : 'no requests yet');
}

/* Top `key`s of the sampled requests that match the filter. */
function sampledTop(keyOf) {
    const counts = new Map();
    const extra = new Map();
    let n = 0;
    sample.each((ev) => {
        if (!matches(ev, filter)) return true;
        n++;
        const k = keyOf(ev);
        if (k == null) return true;
        counts.set(k, (counts.get(k) || 0) + 1);
        if (!extra.has(k)) extra.set(k, ev);
        return true;
    });
    const top = Array.from(counts.entries()).sort((a, b) => b[1] - a[1]).slice(0, CONF.topRows);
    return { top, n, extra };
}

function renderCities() {
    const tbody = $('t-cities').tBodies[0];
    const note = $('ci-note');
    let items;
    if (filter) {
        const { top, n, extra } = sampledTop((ev) => (ev.city ? ev.country + '\0' + ev.city : null));
        items = top.map(([k, cnt]) => ({
            key: k, city: extra.get(k).city, country: extra.get(k).country, requests: cnt, share: n ? cnt / n : 0,
        }));
        setText(note, 'from ' + fmtInt(n) + ' sampled requests');
        note.classList.add('filtered');
    } else {
        const total = M.totals.requests || 0;
        items = M.cities.slice(0, CONF.topRows).map((c) => ({
            key: c.country + '\0' + c.city, city: c.city, country: c.country,
            requests: c.requests, share: total ? c.requests / total : 0,
        }));
        setText(note, 'since start');
        note.classList.remove('filtered');
    }
    const top = maxShare(items);
    rows(tbody, items, (it) => it.key,
        () => {
            const tr = el('tr', 'click');
            const td = cells(tr, 3, ['l trunc', 'l share', '']);
            countryCell(td[0]);
            shareCell(td[1]);
            tr.addEventListener('click', () => setFilter({ kind: 'country', code: tr._item.country }));
            return tr;
        },
        (tr, it) => {
            tr._item = it;
            const td = tr._td;
            setText(td[0]._cc, it.country);
            if (td[0]._name.data !== it.city) td[0]._name.data = it.city;
            td[0].title = it.city + ', ' + countryName(it.country);
            setShare(td[1], it.share, top, fmtPct(it.share) + (filter ? ' of the sample' : ' of all requests'));
            setText(td[2], fmtCompact(it.requests));
        },
        filter ? 'no sampled requests with a city for this filter yet' : 'no cities yet');
}

function renderPaths() {
    const tbody = $('t-paths').tBodies[0];
    const note = $('pa-note');
    let items;
    if (filter) {
        const { top, n } = sampledTop((ev) => ev.path);
        items = top.map(([p, cnt]) => ({ path: p, requests: cnt, share: n ? cnt / n : 0 }));
        setText(note, 'from ' + fmtInt(n) + ' sampled requests');
        note.classList.add('filtered');
    } else {
        const total = M.totals.requests || 0;
        items = M.paths.slice(0, CONF.topRows).map((p) => ({
            path: p.path, requests: p.requests, share: total ? p.requests / total : 0,
        }));
        setText(note, 'since start');
        note.classList.remove('filtered');
    }
    const top = maxShare(items);
    rows(tbody, items, (it) => it.path,
        () => {
            const tr = el('tr');
            const td = cells(tr, 3, ['l trunc', 'l share', '']);
            shareCell(td[1]);
            return tr;
        },
        (tr, it) => {
            const td = tr._td;
            setText(td[0], it.path || '(none)');
            td[0].title = it.path;
            setShare(td[1], it.share, top, fmtPct(it.share) + (filter ? ' of the sample' : ' of all requests'));
            setText(td[2], fmtCompact(it.requests));
        },
        filter ? 'no sampled requests for this filter yet' : 'no paths yet');
}

// ---- live tail ----------------------------------------------------------------------

const Tail = {
    buf: [],                // newest last, at most 400
    paused: false,
    pausedNew: 0,
    rows: null,

    clear() {
        this.buf.length = 0;
        this.pausedNew = 0;
    },

    add(list) {
        if (this.paused) {
            let k = 0;
            for (const ev of list) if (matches(ev, filter)) k++;
            this.pausedNew += k;
            return;
        }
        for (const ev of list) this.buf.push(ev);
        if (this.buf.length > 400) this.buf.splice(0, this.buf.length - 400);
    },

    toggle() {
        this.paused = !this.paused;
        const b = $('tail-pause');
        b.setAttribute('aria-pressed', String(this.paused));
        setText(b, this.paused ? 'Resume' : 'Pause');
        if (!this.paused) {
            // Resume where the stream is now.
            this.buf.length = 0;
            const have = [];
            sample.each((ev) => { have.push(ev); return have.length < 400; });
            this.buf = have.reverse();
            this.pausedNew = 0;
        }
        dirty.tail = true;
        schedule();
    },

    init() {
        const tbody = $('t-tail').tBodies[0];
        this.rows = [];
        for (let i = 0; i < CONF.tailRows; i++) {
            const tr = el('tr');
            const td = cells(tr, 7, ['l dim', 'l', 'l trunc', 'l path', '', 'l trunc', '']);
            countryCell(td[2]);
            td[4]._st = el('span', 'st');
            td[4].appendChild(td[4]._st);
            tr.hidden = true;
            tbody.appendChild(tr);
            this.rows.push(tr);
        }
        this.empty = el('tr', 'empty');
        const td = el('td');
        td.colSpan = 7;
        this.empty.appendChild(td);
        tbody.appendChild(this.empty);
        $('tail-pause').addEventListener('click', () => this.toggle());
    },

    render() {
        if (!this.rows) return;
        const note = $('tail-note');
        if (this.paused) {
            setText(note, 'paused · ' + fmtInt(this.pausedNew) + ' new since');
            note.classList.add('filtered');
            return;
        }
        note.classList.toggle('filtered', !!filter);
        setText(note, filter ? 'only ' + filterLabel(filter) : 'newest first · a sample when busy');
        let shown = 0;
        for (let i = this.buf.length - 1; i >= 0 && shown < this.rows.length; i--) {
            const ev = this.buf[i];
            if (!matches(ev, filter)) continue;
            this.fill(this.rows[shown], ev);
            shown++;
        }
        for (let i = 0; i < this.rows.length; i++) {
            const hide = i >= shown;
            if (this.rows[i].hidden !== hide) this.rows[i].hidden = hide;
        }
        this.empty.hidden = shown > 0;
        setText(this.empty.firstChild, filter ? 'no recent requests for this filter' : 'no requests yet');
    },

    fill(tr, ev) {
        const td = tr._td;
        setText(td[0], fmtClockMs(ev.time_ms));
        setText(td[1], ev.client || '');
        setCountry(td[2], ev.country);
        const where = ev.city ? ev.city : countryName(ev.country);
        if (td[2]._name.data !== where) td[2]._name.data = where;
        td[2].title = countryName(ev.country) + (ev.city ? ' · ' + ev.city : '');
        const req = (ev.method || '') + ' ' + (ev.path || '');
        setText(td[3], req);
        td[3].title = (ev.host ? ev.host : '') + (ev.path || '');
        const sc = statusClass(ev.status);
        setClass(td[4]._st, 'st s' + sc);
        setText(td[4]._st, ev.status ? String(ev.status) + (ev.tunnel ? ' ⇅' : '') : '—');
        setText(td[5], ev.pool ? ev.pool + (ev.server ? ' / ' + ev.server : ' · no server') : '(no pool)');
        td[5].title = td[5]._t;
        setText(td[6], fmtDur(ev.duration_us));
    },
};

// ---- the map -------------------------------------------------------------------------

/* world-atlas ids are ISO 3166-1 numeric; the model speaks alpha-2. */
const ISO_NUM = '242:FJ 834:TZ 732:EH 124:CA 840:US 398:KZ 860:UZ 598:PG 360:ID 032:AR 152:CL ' +
    '180:CD 706:SO 404:KE 729:SD 148:TD 332:HT 214:DO 643:RU 044:BS 238:FK 578:NO 304:GL 260:TF ' +
    '626:TL 710:ZA 426:LS 484:MX 858:UY 076:BR 068:BO 604:PE 170:CO 591:PA 188:CR 558:NI 340:HN ' +
    '222:SV 320:GT 084:BZ 862:VE 328:GY 740:SR 250:FR 218:EC 630:PR 388:JM 192:CU 716:ZW 072:BW ' +
    '516:NA 686:SN 466:ML 478:MR 204:BJ 562:NE 566:NG 120:CM 768:TG 288:GH 384:CI 324:GN 624:GW ' +
    '430:LR 694:SL 854:BF 140:CF 178:CG 266:GA 226:GQ 894:ZM 454:MW 508:MZ 748:SZ 024:AO 108:BI ' +
    '376:IL 422:LB 450:MG 275:PS 270:GM 788:TN 012:DZ 400:JO 784:AE 634:QA 414:KW 368:IQ 512:OM ' +
    '548:VU 116:KH 764:TH 418:LA 104:MM 704:VN 408:KP 410:KR 496:MN 356:IN 050:BD 064:BT 524:NP ' +
    '586:PK 004:AF 762:TJ 417:KG 795:TM 364:IR 760:SY 051:AM 752:SE 112:BY 804:UA 616:PL 040:AT ' +
    '348:HU 498:MD 642:RO 440:LT 428:LV 233:EE 276:DE 100:BG 300:GR 792:TR 008:AL 191:HR 756:CH ' +
    '442:LU 056:BE 528:NL 620:PT 724:ES 372:IE 540:NC 090:SB 554:NZ 036:AU 144:LK 156:CN 158:TW ' +
    '380:IT 208:DK 826:GB 352:IS 031:AZ 268:GE 608:PH 458:MY 096:BN 705:SI 246:FI 703:SK 203:CZ ' +
    '232:ER 392:JP 600:PY 887:YE 682:SA 010:AQ 196:CY 504:MA 818:EG 434:LY 231:ET 262:DJ 800:UG ' +
    '646:RW 070:BA 807:MK 688:RS 499:ME 780:TT 728:SS';
const ISO_BY_NAME = { 'N. Cyprus': 'CY', 'Somaliland': 'SO', 'Kosovo': 'XK' };
const isoByNum = new Map(ISO_NUM.split(' ').map((p) => p.split(':')));

const MapView = {
    ready: false,
    features: [],
    paths: [],              // <path> per feature
    byCode: new Map(),      // code -> [<path>]
    projection: null,
    w: 0, h: 0, dpr: 1,
    proxyXY: null,
    hoverCode: null,
    tipXY: [0, 0],

    async init() {
        if (typeof d3 === 'undefined' || typeof topojson === 'undefined') {
            this.message('map libraries missing');
            return;
        }
        let topo;
        try {
            const r = await fetch('lib/countries-110m.json', { credentials: 'same-origin' });
            if (!r.ok) throw new Error('HTTP ' + r.status);
            topo = await r.json();
        } catch (e) {
            this.message('map data unavailable');
            return;
        }
        const fc = topojson.feature(topo, topo.objects.countries);
        const g = $('map-countries');
        const svgNS = 'http://www.w3.org/2000/svg';
        for (const f of fc.features) {
            const code = isoByNum.get(f.id) || ISO_BY_NAME[f.properties && f.properties.name];
            if (code === 'AQ') continue;        // room for the rest
            f.code = code || '';
            const p = document.createElementNS(svgNS, 'path');
            p.dataset.cc = f.code;
            const title = document.createElementNS(svgNS, 'title');
            title.textContent = f.code ? countryName(f.code) : (f.properties && f.properties.name) || '';
            p.appendChild(title);
            g.appendChild(p);
            this.features.push(f);
            this.paths.push(p);
            if (f.code) {
                if (!this.byCode.has(f.code)) this.byCode.set(f.code, []);
                this.byCode.get(f.code).push(p);
            }
        }
        this.fc = { type: 'FeatureCollection', features: this.features };
        // The box takes the projected world's shape, so no room is wasted.
        const b = d3.geoPath(d3.geoNaturalEarth1()).bounds(this.fc);
        const aspect = (b[1][0] - b[0][0]) / (b[1][1] - b[0][1]);
        if (isFinite(aspect) && aspect > 0) setVar($('map'), '--map-aspect', aspect.toFixed(3));
        const svg = $('map-svg');
        svg.addEventListener('pointermove', (e) => this.hover(e));
        svg.addEventListener('pointerleave', () => this.hover(null));
        svg.addEventListener('click', (e) => {
            const p = e.target.closest && e.target.closest('path');
            if (p && p.dataset.cc) setFilter({ kind: 'country', code: p.dataset.cc });
        });
        new ResizeObserver(() => this.resize()).observe($('map'));
        this.ready = true;
        this.resize();
        dirty.map = true;
        schedule();
    },

    message(text) {
        const m = $('map-empty');
        setText(m, text);
        m.hidden = !text;
    },

    resize() {
        if (!this.ready) return;
        const box = $('map');
        const w = box.clientWidth, h = box.clientHeight;
        if (w < 10 || h < 10) return;
        if (w === this.w && h === this.h && this.dpr === (window.devicePixelRatio || 1)) return;
        this.w = w;
        this.h = h;
        this.dpr = window.devicePixelRatio || 1;
        const svg = $('map-svg');
        svg.setAttribute('viewBox', '0 0 ' + w + ' ' + h);
        this.projection = d3.geoNaturalEarth1().fitExtent([[6, 6], [w - 6, h - 6]], this.fc);
        const gen = d3.geoPath(this.projection);
        for (let i = 0; i < this.features.length; i++)
            this.paths[i].setAttribute('d', gen(this.features[i]) || '');
        const cv = $('map-fx');
        cv.width = Math.round(w * this.dpr);
        cv.height = Math.round(h * this.dpr);
        Blips.resized();
        this.placeProxy();
    },

    /* The proxy's marker: an element (its pulse is a CSS animation). */
    placeProxy() {
        this.proxyXY = this.ready && M.proxy ? this.projection([M.proxy.lon, M.proxy.lat]) : null;
        const m = $('map-proxy');
        m.hidden = !this.proxyXY;
        if (this.proxyXY) {
            setVar(m, '--px', this.proxyXY[0].toFixed(1) + 'px');
            setVar(m, '--py', this.proxyXY[1].toFixed(1) + 'px');
        }
    },

    project(lon, lat) {
        return this.projection ? this.projection([lon, lat]) : null;
    },

    /* Choropleth classes, from per-country request rates (or, filtered by a
     * backend, from that backend's sampled requests). */
    paint() {
        if (!this.ready) return;
        this.placeProxy();
        const svg = $('map-svg');
        const byCountry = filter && filter.kind === 'country';
        svg.classList.toggle('filtered', !!byCountry);
        const share = new Map();
        const note = $('map-note');
        if (filter && !byCountry) {
            const { counts, n } = sampledBy(filter, (ev) => ev.country);
            for (const [code, k] of counts) share.set(code, k / n);
            setText(note, 'colours: ' + fmtInt(n) + ' sampled requests of ' + filterLabel(filter));
            note.classList.add('filtered');
            setText($('map-scale-text'), 'share of the sample');
        } else {
            const { list, total } = countryRates();
            const totalReq = M.totals.requests || 0;
            for (const { c, rps } of list) {
                const s = total > 0 ? (rps || 0) / total : (totalReq ? c.requests / totalReq : 0);
                share.set(c.code, s);
            }
            note.classList.toggle('filtered', !!byCountry);
            let text = byCountry ? 'showing ' + filterLabel(filter) + ' · click it again to clear' : '';
            if (M.geo && M.geo.enabled === false) text = 'geolocation is off: no map data';
            setText(note, text);
            setText($('map-scale-text'), total > 0 ? 'share of req/s' : 'share of requests');
        }
        for (let i = 0; i < this.paths.length; i++) {
            const p = this.paths[i];
            const s = share.get(p.dataset.cc) || 0;
            let lv = 0;
            if (s > 0) lv = s >= 0.2 ? 5 : s >= 0.08 ? 4 : s >= 0.02 ? 3 : s >= 0.005 ? 2 : 1;
            let cls = lv ? 'lv' + lv : '';
            if (byCountry && p.dataset.cc === filter.code) cls += ' sel';
            if (p._c !== cls) {
                p._c = cls;
                p.setAttribute('class', cls);
            }
        }
        if (!M.totals.requests) this.message(Conn.state === 'live' ? 'waiting for the first request…' : '');
        else this.message('');
        if (this.hoverCode) this.showTip();
    },

    hover(e) {
        const tip = $('map-tip');
        if (!e) {
            this.hoverCode = null;
            tip.hidden = true;
            return;
        }
        const p = e.target.closest && e.target.closest('path');
        const code = p ? p.dataset.cc : null;
        if (!code) {
            this.hoverCode = null;
            tip.hidden = true;
            return;
        }
        const box = $('map').getBoundingClientRect();
        this.tipXY = [e.clientX - box.left, e.clientY - box.top];
        this.hoverCode = code;
        this.showTip();
    },

    showTip() {
        const tip = $('map-tip');
        const code = this.hoverCode;
        if (!tip._lines) {
            tip._lines = [el('div'), el('div'), el('div', 'dim')];
            tip._lines[0].appendChild(el('b'));
            tip._lines.forEach((l) => tip.appendChild(l));
        }
        const c = M.countries.get(code);
        const { total } = countryRates();
        const r = c ? History.rate('c:' + code, c, CONF.rateWindow) : null;
        setText(tip._lines[0].firstChild, countryName(code) + ' (' + code + ')');
        let line2;
        if (!c) line2 = 'no requests';
        else if (r) line2 = fmtRate(r[0]) + ' req/s · ' + fmtPct(total > 0 ? r[0] / total : 0) + ' of traffic';
        else line2 = fmtPct(M.totals.requests ? c.requests / M.totals.requests : 0) + ' of requests';
        setText(tip._lines[1], line2);
        setText(tip._lines[2], c ? fmtInt(c.requests) + ' requests · ' + fmtPct(c.requests ? c.errors / c.requests : 0) + ' errors' : '');
        tip.hidden = false;
        const tw = tip.offsetWidth, th = tip.offsetHeight;
        let x = this.tipXY[0] + 14, y = this.tipXY[1] + 14;
        if (x + tw > this.w - 4) x = this.tipXY[0] - tw - 12;
        if (y + th > this.h - 4) y = this.tipXY[1] - th - 12;
        setVar(tip, '--tx', Math.max(2, x) + 'px');
        setVar(tip, '--ty', Math.max(2, y) + 'px');
    },
};

// ---- blips and arcs (canvas, one requestAnimationFrame loop) -------------------------

const Blips = {
    pool: [],
    active: 0,
    queue: [],              // pending { at, lon, lat, cls }
    tokens: CONF.blipsPerSec / 2,
    lastRefill: performance.now(),
    arcCache: new Map(),
    ctx: null,
    running: false,
    spawned: 0,

    init() {
        const cv = $('map-fx');
        this.ctx = cv.getContext('2d');
        for (let i = 0; i < CONF.blipPool; i++)
            this.pool.push({ on: false, x: 0, y: 0, born: 0, cls: 2, arc: null });
        document.addEventListener('visibilitychange', () => {
            if (document.hidden) this.clear();
            else this.start();
        });
        this.start();
    },

    clear() {
        this.queue.length = 0;
        for (const b of this.pool) b.on = false;
        this.active = 0;
    },

    /* Positions changed: blips on screen go, queued ones (kept as lon/lat)
     * stay. */
    resized() {
        this.arcCache.clear();
        for (const b of this.pool) b.on = false;
        this.active = 0;
    },

    /* New live requests: keep what the budget allows, spread evenly over the
     * batch, and play them back one push interval late, at their pace. */
    offer(list) {
        if (document.hidden || !MapView.ready) return;
        const now = performance.now();
        this.tokens = Math.min(CONF.blipsPerSec / 2,
            this.tokens + (now - this.lastRefill) / 1000 * CONF.blipsPerSec);
        this.lastRefill = now;
        const cand = [];
        for (const ev of list)
            if (ev.lat != null && ev.lon != null && matches(ev, filter)) cand.push(ev);
        if (!cand.length) return;
        const take = Math.min(cand.length, Math.floor(this.tokens));
        if (take <= 0) return;
        this.tokens -= take;
        let maxEnd = -Infinity;
        for (const ev of cand) maxEnd = Math.max(maxEnd, ev.time_ms + (ev.duration_us || 0) / 1000);
        const span = Math.min(1000, Math.max(50, Conn.evInterval));
        const step = cand.length / take;
        for (let k = 0; k < take; k++) {
            const ev = cand[Math.floor(k * step)];
            const end = ev.time_ms + (ev.duration_us || 0) / 1000;
            const lag = Math.max(-span, Math.min(0, end - maxEnd));
            this.queue.push({ at: now + span + lag, lon: ev.lon, lat: ev.lat, cls: statusClass(ev.status) });
        }
        if (this.queue.length > CONF.blipPool * 2) this.queue.splice(0, this.queue.length - CONF.blipPool * 2);
        this.start();
    },

    arcFor(lon, lat) {
        const key = lon.toFixed(2) + ',' + lat.toFixed(2);
        let a = this.arcCache.get(key);
        if (a !== undefined) return a;
        a = null;
        if (M.proxy && MapView.projection) {
            const interp = d3.geoInterpolate([lon, lat], [M.proxy.lon, M.proxy.lat]);
            const N = 24;
            const pts = new Float32Array(2 * (N + 1));
            let ok = true;
            for (let i = 0; i <= N; i++) {
                const xy = MapView.project.apply(MapView, interp(i / N));
                if (!xy) { ok = false; break; }
                pts[2 * i] = xy[0];
                pts[2 * i + 1] = xy[1];
                // Across the map's edge (antimeridian): no arc.
                if (i && Math.abs(pts[2 * i] - pts[2 * i - 2]) > MapView.w / 3) { ok = false; break; }
            }
            if (ok) a = pts;
        }
        if (this.arcCache.size > 3000) this.arcCache.clear();
        this.arcCache.set(key, a);
        return a;
    },

    spawn(now) {
        let i = 0;
        while (i < this.queue.length && this.queue[i].at <= now) i++;
        if (!i) return;
        const due = this.queue.splice(0, i);
        let free = 0;
        for (const q of due) {
            while (free < this.pool.length && this.pool[free].on) free++;
            if (free >= this.pool.length) break;
            const xy = MapView.project(q.lon, q.lat);
            if (!xy) continue;
            const b = this.pool[free];
            b.on = true;
            b.x = xy[0];
            b.y = xy[1];
            b.born = now;
            b.cls = q.cls;
            b.arc = this.arcFor(q.lon, q.lat);
            this.active++;
            this.spawned++;
        }
    },

    start() {
        if (this.running || !this.ctx) return;
        this.running = true;
        this.next();
    },

    /* The next frame: at once while blips move; otherwise a timer for the
     * first queued one (an idle page may get no animation frames at all). */
    next() {
        if (document.hidden) {
            this.running = false;
        } else if (this.active) {
            requestAnimationFrame(() => this.frame());
        } else if (this.queue.length) {
            const wait = Math.max(0, this.queue[0].at - performance.now());
            setTimeout(() => this.frame(), wait);
        } else {
            this.running = false;
        }
    },

    frame() {
        const now = performance.now();
        this.spawn(now);
        const ctx = this.ctx;
        const dpr = MapView.dpr;
        ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
        ctx.clearRect(0, 0, MapView.w, MapView.h);
        const life = CONF.blipLife, travel = CONF.arcTravel;
        const scale = Math.max(0.55, Math.min(1, MapView.w / 900));
        let active = 0;
        ctx.lineCap = 'round';
        for (let cls = 0; cls <= 5; cls++) {
            const color = CLASS_COLORS[cls];
            ctx.strokeStyle = color;
            ctx.fillStyle = color;
            for (const b of this.pool) {
                if (!b.on || b.cls !== cls) continue;
                const age = now - b.born;
                if (age >= life) {
                    b.on = false;
                    continue;
                }
                active++;
                const t = age / life;
                const fade = 1 - t;
                // arc: a comet from the client towards the proxy
                if (b.arc) {
                    const n = b.arc.length / 2 - 1;
                    const head = Math.min(1, age / travel) * n;
                    const tail = Math.max(0, head - n * 0.45);
                    const hi = Math.floor(head);
                    ctx.globalAlpha = 0.5 * fade;
                    ctx.lineWidth = 1.2;
                    ctx.beginPath();
                    let k = Math.floor(tail);
                    ctx.moveTo(b.arc[2 * k], b.arc[2 * k + 1]);
                    for (k = k + 1; k <= hi; k++) ctx.lineTo(b.arc[2 * k], b.arc[2 * k + 1]);
                    if (head > hi && hi < n) {
                        const f = head - hi;
                        ctx.lineTo(b.arc[2 * hi] + (b.arc[2 * hi + 2] - b.arc[2 * hi]) * f,
                                   b.arc[2 * hi + 1] + (b.arc[2 * hi + 3] - b.arc[2 * hi + 1]) * f);
                    }
                    ctx.stroke();
                }
                // blip: a dot and a widening ring
                ctx.globalAlpha = fade;
                ctx.beginPath();
                ctx.arc(b.x, b.y, 2.2 * scale, 0, 6.2832);
                ctx.fill();
                ctx.globalAlpha = 0.8 * fade;
                ctx.lineWidth = 1.2;
                ctx.beginPath();
                ctx.arc(b.x, b.y, (2.5 + 9 * t) * scale, 0, 6.2832);
                ctx.stroke();
            }
        }
        this.active = active;
        ctx.globalAlpha = 1;
        this.next();
    },
};

// ---- start ------------------------------------------------------------------------------

function start() {
    // A ?token=... link has set the cookie by now: keep the token out of the
    // address bar, history and bookmarks.
    if (/[?&]token=/.test(location.search)) {
        const u = new URL(location.href);
        u.searchParams.delete('token');
        history.replaceState(null, '', u.pathname + (u.search === '?' ? '' : u.search) + u.hash);
    }
    $('filter-clear').addEventListener('click', () => setFilter(null));
    document.addEventListener('keydown', (e) => {
        if (e.key === 'Escape' && filter) setFilter(null);
        // Clickable rows work from the keyboard too.
        const tr = e.target.closest && e.target.closest('tr.click');
        if (tr && (e.key === 'Enter' || e.key === ' ')) {
            e.preventDefault();
            tr.click();
        }
    });
    Tail.init();
    Charts.init();
    Blips.init();
    MapView.init();
    Conn.open();
    setInterval(() => {
        Conn.tick();
        // Rates decay even without new messages.
        if (M.have && Conn.state === 'live') {
            dirty.counters = true;
            schedule();
        }
    }, 1000);
    // For the browser tests and for poking at from the console.
    Object.defineProperty(window, '__sb', {
        value: Object.freeze({
            drop: () => Conn.drop(),
            get state() { return Conn.state; },
            get seq() { return M.seq; },
            get messages() { return Conn.msgs; },
            get blips() { return Blips.spawned; },
            get filter() { return filter ? filterKey(filter) : ''; },
        }),
    });
}

if (document.readyState === 'loading') document.addEventListener('DOMContentLoaded', start);
else start();

})();
