/*
 * chat.js - Switchboard's chat demo page.
 *
 * One WebSocket (subprotocol "switchboard.chat") to /chat/ws, or to
 * /chat/staff/ws when the page is /chat/staff/ (the dashboard's auth rides
 * along as the sb_token cookie). The page is reached through the proxy, so
 * the socket goes to location.host, whatever that is. The protocol is the
 * header comment of dashboard/chat.h; in short: "welcome" first, then
 * rooms / joined / message / presence / typing / left / queued / offer /
 * queue / no_show / waiting / error frames, one JSON object each.
 *
 * What the page keeps across a reconnect: the conversation (room, users,
 * messages already shown, keyed by message id per room) and the last
 * joined.resume token. After a reconnect it sends {"type":"resume"} first;
 * a resumed "joined" only adds messages it has not shown yet. If the server
 * has forgotten the user (resume_failed) a room is joined again under the
 * same name.
 *
 * Messages are text. A tiny Markdown subset (**bold**, *italics*,
 * _italics_, `code`, [text](http(s) URL) and bare http(s) URLs) becomes DOM
 * nodes built with createElement/textContent; nothing is ever parsed as
 * HTML. CSP: no inline script or style, so sizes go through the CSSOM.
 */
'use strict';

(function () {

const CONF = {
    protocol: 'switchboard.chat',
    backoffMin: 500,            // ms, doubling per failed attempt...
    backoffMax: 10000,          // ...up to this, ±25% jitter
    typingEvery: 2000,          // send typing:true at most this often
    typingIdle: 3000,           // typing:false after this long without input
    typingShow: 6000,           // a typer shown this long without news
    noticeMs: 4000,             // error notices fade after this
    counterFrom: 0.8,           // byte counter shown from this share of the limit
    nameKey: 'sb-chat-name',
    title: 'Switchboard chat',
};

const MODES = ['rooms', 'support', 'random'];
const MODE_OF_KIND = { room: 'rooms', support: 'support', random: 'random' };

const ERRORS = {
    bad_json: 'Something went wrong (bad request)',
    unknown_type: 'Something went wrong (unknown request)',
    bad_request: 'Something went wrong (bad request)',
    too_long: 'Message too long',
    rate_limited: 'Too fast — wait a moment',
    name_invalid: 'That name is not allowed',
    room_invalid: 'That room name is not allowed',
    name_taken: 'That name is taken — pick another',
    no_such_room: 'That room does not exist (any more)',
    room_exists: 'A room with that name exists already',
    rooms_locked: 'New rooms cannot be added here',
    room_limit: 'You cannot add more rooms',
    mode_disabled: 'That is switched off here',
    not_staff: 'Only staff can do that',
    not_in_room: 'You are not in a conversation',
    busy: 'Busy — finish the current conversation first',
    queue_empty: 'Nobody is waiting',
    resume_failed: 'Could not pick up where you left off',
    server_full: 'The chat is full — try again later',
};

// ---- helpers ------------------------------------------------------------------

const $ = (id) => document.getElementById(id);

function el(tag, cls, text) {
    const e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text !== undefined && text !== null) e.textContent = text;
    return e;
}

function setText(node, text) {
    text = text == null ? '' : String(text);
    if (node.textContent !== text) node.textContent = text;
}

function show(node, on) {
    if (node.hidden === !!on) node.hidden = !on;
}

const utf8 = new TextEncoder();
function byteLength(s) {
    return utf8.encode(s).length;
}

function codePoints(s) {
    return Array.from(s).length;
}

function parseTime(ts) {
    const t = typeof ts === 'string' ? Date.parse(ts) : NaN;
    return isFinite(t) ? t : Date.now();
}

const timeFmt = new Intl.DateTimeFormat(undefined, { hour: 'numeric', minute: '2-digit' });
const fullFmt = new Intl.DateTimeFormat(undefined, { dateStyle: 'medium', timeStyle: 'medium' });

function timeNode(ts) {
    const t = new Date(parseTime(ts));
    const node = el('time', 'msg-time', timeFmt.format(t));
    node.dateTime = t.toISOString();
    node.title = fullFmt.format(t);
    return node;
}

/* "0:07", "3:05", "1:02:09" */
function fmtWait(ms) {
    const s = Math.max(0, Math.floor(ms / 1000));
    const h = Math.floor(s / 3600);
    const m = Math.floor((s % 3600) / 60);
    const ss = String(s % 60).padStart(2, '0');
    return h ? `${h}:${String(m).padStart(2, '0')}:${ss}` : `${m}:${ss}`;
}

function fmtMinutes(ms) {
    const m = Math.floor(Math.max(0, ms) / 60000);
    if (m < 1) return 'less than a minute';
    return m === 1 ? '1 min' : `${m} min`;
}

function plural(n, one, many) {
    return `${n} ${n === 1 ? one : many}`;
}

// ---- Markdown, the safe subset --------------------------------------------------

/* Groups: 1 `code`, 2 **bold**, 3-4 [text](url), 5 bare URL, 6 *it*, 7 _it_. */
const MD_SRC = '`([^`\\n]+)`' +
    '|\\*\\*([^\\s*](?:[^*\\n]*?[^\\s*])?)\\*\\*' +
    '|\\[([^\\[\\]\\n]{1,300})\\]\\((https?:\\/\\/[^\\s()<>]+)\\)' +
    '|(https?:\\/\\/[^\\s<>"]+)' +
    '|(?<![\\w*])\\*([^\\s*](?:[^*\\n]*?[^\\s*])?)\\*(?![\\w*])' +
    '|(?<![\\w_])_([^\\s_](?:[^_\\n]*?[^\\s_])?)_(?![\\w_])';

function safeUrl(s) {
    try {
        const u = new URL(s);
        return u.protocol === 'http:' || u.protocol === 'https:' ? u.href : null;
    } catch (e) {
        return null;
    }
}

function link(href, text) {
    const a = el('a', 'msg-link', text);
    a.href = href;
    a.target = '_blank';
    a.rel = 'noopener noreferrer nofollow';
    return a;
}

/* Appends `text` to `parent` as text nodes and the few elements above. */
function renderText(parent, text, depth) {
    depth = depth || 0;
    const re = new RegExp(MD_SRC, 'gi');
    let at = 0;
    let m;
    const flush = (end) => {
        if (end > at) parent.appendChild(document.createTextNode(text.slice(at, end)));
    };
    while ((m = re.exec(text)) !== null) {
        let end = m.index + m[0].length;
        let node = null;
        if (m[1] !== undefined) {
            node = el('code', null, m[1]);
        } else if (m[2] !== undefined) {
            node = el('strong');
            if (depth < 2) renderText(node, m[2], depth + 1);
            else node.textContent = m[2];
        } else if (m[3] !== undefined) {
            const href = safeUrl(m[4]);
            if (href) node = link(href, m[3]);
        } else if (m[5] !== undefined) {
            // Sentence punctuation after a URL is not part of it.
            let url = m[5];
            for (;;) {
                if (/[.,;:!?'"*_]$/.test(url)) url = url.slice(0, -1);
                else if (/\)$/.test(url) && url.split('(').length < url.split(')').length) url = url.slice(0, -1);
                else break;
            }
            const href = url.length > 8 ? safeUrl(url) : null;
            if (href) {
                node = link(href, url);
                end = m.index + url.length;
                re.lastIndex = end;
            }
        } else {
            const inner = m[6] !== undefined ? m[6] : m[7];
            node = el('em');
            if (depth < 2) renderText(node, inner, depth + 1);
            else node.textContent = inner;
        }
        if (!node) continue;            // not a safe link: stays text
        flush(m.index);
        parent.appendChild(node);
        at = end;
    }
    flush(text.length);
}

// ---- state ----------------------------------------------------------------------

const S = {
    welcome: null,
    staff: false,
    modes: [],
    limits: { max_name_length: 30, max_message_bytes: 2000, rate: 5, burst: 10, history: 50 },
    mode: null,                 // the tab shown
    landed: false,
    me: '',                     // the name the server knows us by in `conv`
    conv: null,                 // {room, kind, users, ended, endedText, strangerGone}
    resumeToken: null,          // this user's token (welcome, joined)
    freshToken: null,           // the new connection's own, while a resume is out
    resuming: false,            // resume sent, no answer yet
    rejoin: null,               // {room, name} to join when resume fails
    rejoining: null,            // ...that join, sent
    renaming: null,             // the name a rename asked for
    seen: new Map(),            // room -> Set of message ids shown
    rooms: [],
    queue: null,                // customer: {position, waiting, since}
    queueSince: 0,
    asking: false,              // support sent, nothing back yet
    offer: null,                // customer: {room, staff}
    randomWaiting: false,
    randomSince: 0,
    staffQueue: [],             // [{name, since, waited_s, at}]
    staffWatching: false,
    typers: new Map(),          // name -> expiry (ms)
    unread: 0,
    lastSent: '',
};

// ---- the connection --------------------------------------------------------------

const Conn = {
    ws: null,
    attempt: 0,
    timer: 0,
    retryAt: 0,
    state: 'connecting',
    reconnects: 0,
    opened: 0,

    url() {
        const staff = location.pathname.startsWith('/chat/staff/');
        const scheme = location.protocol === 'https:' ? 'wss:' : 'ws:';
        return `${scheme}//${location.host}${staff ? '/chat/staff/ws' : '/chat/ws'}`;
    },

    setState(state, text) {
        this.state = state;
        const c = $('conn');
        if (c.dataset.state !== state) c.dataset.state = state;
        setText($('conn-text'), text);
        document.body.classList.toggle('offline', state !== 'live');
        updateComposer();
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
        this.opened++;
        ws.onmessage = (e) => {
            if (this.ws === ws) receive(e.data);
        };
        ws.onclose = (e) => {
            if (this.ws !== ws) return;
            this.ws = null;
            lostConnection();
            this.retry(e.code === 1008 ? 'refused' : 'disconnected');
        };
        ws.onerror = () => { /* onclose follows */ };
    },

    retry(why) {
        const base = Math.min(CONF.backoffMax, CONF.backoffMin * Math.pow(2, this.attempt));
        const delay = Math.round(base * (0.75 + Math.random() * 0.5));
        this.attempt++;
        this.retryAt = performance.now() + delay;
        this.why = why;
        this.setState('down', `${why} · retry in ${Math.max(1, Math.ceil(delay / 1000))} s`);
        clearTimeout(this.timer);
        this.timer = setTimeout(() => this.open(), delay);
    },

    /* The welcome came: the connection is good. */
    live() {
        if (this.attempt) this.reconnects++;
        this.attempt = 0;
        this.setState('live', 'live');
    },

    send(obj) {
        const ws = this.ws;
        if (!ws || ws.readyState !== WebSocket.OPEN || this.state !== 'live') return false;
        try {
            ws.send(JSON.stringify(obj));
            return true;
        } catch (e) {
            return false;
        }
    },

    /* For the tests and the console: as if the network dropped. */
    drop() {
        const ws = this.ws;
        if (!ws) return;
        this.ws = null;
        try { ws.close(4000, 'closed by the page'); } catch (e) { /* closed already */ }
        lostConnection();
        this.retry('disconnected');
    },

    tick() {
        if (this.state === 'down' && this.timer) {
            const left = Math.max(0, this.retryAt - performance.now());
            setText($('conn-text'), `${this.why} · retry in ${Math.max(1, Math.ceil(left / 1000))} s`);
        }
    },
};

/* Sends, or says that it cannot. */
function send(obj) {
    if (Conn.send(obj)) return true;
    toast('Not connected — reconnecting…');
    return false;
}

function lostConnection() {
    S.resuming = false;
    S.typers.clear();
    Typing.reset();
    renderTyping();
}

// ---- incoming -----------------------------------------------------------------

function receive(data) {
    let m;
    try {
        m = JSON.parse(data);
    } catch (e) {
        console.warn('chat: unreadable frame');
        return;
    }
    if (!m || typeof m !== 'object' || typeof m.type !== 'string') return;
    const h = HANDLERS[m.type];
    if (h) h(m);
}

const HANDLERS = {
    welcome(m) {
        Conn.live();
        S.welcome = m;
        S.staff = m.staff === true;
        S.modes = Array.isArray(m.modes) ? m.modes.filter((x) => MODES.includes(x)) : [];
        Object.assign(S.limits, m.limits || {});
        $('name').maxLength = S.limits.max_name_length || 30;
        show($('create-form'), m.addable_rooms === true);
        buildTabs();
        if (!S.landed) {
            S.landed = true;
            let mode = S.modes.includes(m.default) ? m.default : S.modes[0];
            if (S.staff && S.modes.includes('support')) mode = 'support';
            S.mode = mode || null;
        } else if (!S.modes.includes(S.mode)) {
            S.mode = S.modes[0] || null;
        }
        // Back to where we were (room, queue place, offer, wait): the
        // previous connection's token first. welcome.resume is the token of
        // the user this connection starts as; it is ours unless the resume
        // brings the old user back.
        S.staffWatching = false;
        const fresh = typeof m.resume === 'string' && m.resume ? m.resume : null;
        const busy = inConv() || S.queue || S.asking || S.offer || S.randomWaiting;
        if (busy && S.resumeToken) {
            S.resuming = true;
            S.freshToken = fresh;
            S.rejoin = inConv() && S.conv.kind === 'room' ? { room: S.conv.room, name: S.me } : null;
            Conn.send({ type: 'resume', token: S.resumeToken });
        } else {
            S.resumeToken = fresh;
            if (busy) startAgain();
        }
        if (S.staff) watchQueue();
        if (S.mode === 'rooms' && !inConv()) Conn.send({ type: 'rooms' });
        render();
    },

    rooms(m) {
        S.rooms = Array.isArray(m.rooms) ? m.rooms : [];
        renderRooms();
    },

    joined(m) {
        const same = S.conv && S.conv.room === m.room;
        const kind = MODE_OF_KIND[m.kind] ? m.kind : 'room';
        S.resuming = false;
        S.freshToken = null;
        S.rejoin = null;
        S.rejoining = null;
        S.asking = false;
        S.queue = null;
        S.offer = null;
        S.randomWaiting = false;
        if (typeof m.resume === 'string' && m.resume) S.resumeToken = m.resume;
        if (typeof m.name === 'string') setMe(m.name);
        if (!same) {
            $('log').replaceChildren();
            S.seen.set(m.room, new Set());
            S.typers.clear();
        }
        S.conv = { room: m.room, kind, users: Array.isArray(m.users) ? m.users : [], ended: false, strangerGone: false };
        S.mode = MODE_OF_KIND[kind];
        render();
        const history = Array.isArray(m.history) ? m.history : [];
        const atBottom = !same || Scroll.atBottom();
        for (const msg of history) addMessage(msg, { history: true, quiet: true });
        if (!same && !m.resumed) {
            const who = kind === 'random' ? 'You are talking to a stranger' :
                kind === 'support' ? (S.staff ? `You are helping ${others().join(', ') || 'a customer'}` :
                    `${others().join(', ') || 'Our staff'} from the team is here to help`) :
                    `You joined ${m.room}`;
            addSys(who, null, { quiet: true });
        } else if (same && !m.resumed) {
            addSys(`You are back in ${m.room}`, null, { quiet: true });
        }
        if (atBottom) Scroll.toBottom();
        renderTyping();
        if (kind === 'room') $('text').focus({ preventScroll: true });
    },

    message(m) {
        if (!S.conv || m.room !== S.conv.room) return;
        addMessage(m, {});
    },

    presence(m) {
        if (!S.conv || m.room !== S.conv.room) return;
        if (Array.isArray(m.users)) S.conv.users = m.users;
        const name = String(m.name == null ? '' : m.name);
        if (m.event === 'rename') {
            const old = String(m.old == null ? '' : m.old);
            if (old === S.me) {
                setMe(name);
                S.renaming = null;
            }
            if (old === name) {         // nothing changed
                renderRoom();
                return;
            }
            if (S.typers.delete(old)) renderTyping();
            addSys(old === S.me || name === S.me ? `You are now ${name}` : `${old} is now ${name}`, m.ts);
        } else if (m.event === 'join') {
            if (name !== S.me) addSys(S.conv.kind === 'random' ? 'A stranger joined' : `${name} joined`, m.ts);
            if (S.conv.kind === 'random' && others().length) S.conv.strangerGone = false;
        } else if (m.event === 'leave') {
            S.typers.delete(name);
            renderTyping();
            if (name !== S.me) {
                if (S.conv.kind === 'random') {
                    addSys('The stranger left', m.ts);
                    S.conv.strangerGone = true;
                } else if (S.conv.kind === 'support') {
                    addSys(`${name} left the conversation`, m.ts);
                    if (!others().length) S.conv.strangerGone = true;
                } else {
                    addSys(`${name} left`, m.ts);
                }
            }
        }
        renderRoom();
    },

    typing(m) {
        if (!S.conv || m.room !== S.conv.room || m.name === S.me) return;
        if (m.active) S.typers.set(String(m.name), Date.now() + CONF.typingShow);
        else S.typers.delete(String(m.name));
        renderTyping();
    },

    left(m) {
        if (!S.conv || m.room !== S.conv.room || S.conv.ended) return;
        const kind = S.conv.kind;
        Typing.reset();
        S.typers.clear();
        if ((m.reason === 'leave' && !S.conv.strangerGone) || (m.reason === 'no_show' && S.staff)) {
            // Staff whose customer did not come: straight back to the queue
            // (the no_show frame says why).
            endConv();
            return;
        }
        // Put out of the conversation by someone else: say so, keep the log.
        S.conv.ended = true;
        let text = 'The conversation has ended.';
        if (kind === 'random') text = 'The stranger left.';
        else if (m.reason === 'no_show') text = 'The customer did not arrive.';
        else if (kind === 'support') text = 'The conversation has ended.';
        else if (m.reason === 'closed') text = 'This room was closed.';
        S.conv.endedText = text;
        render();
        if (S.staff) watchQueue();
    },

    queued(m) {
        S.asking = false;
        S.offer = null;
        const since = parseTime(m.since);
        S.queue = {
            position: Number(m.position) || 0,
            waiting: Number(m.waiting) || 0,
            since,
            name: (S.queue && S.queue.name) || S.queueName || currentName(),
        };
        S.resuming = false;
        S.freshToken = null;
        if (S.mode !== 'support' && !inConv()) S.mode = 'support';
        render();
    },

    offer(m) {
        S.resuming = false;
        S.freshToken = null;
        S.offer = { room: m.room, staff: String(m.staff == null ? '' : m.staff) };
        Conn.send({ type: 'arrive' });
        render();
    },

    queue(m) {
        const now = Date.now();
        S.staffQueue = (Array.isArray(m.customers) ? m.customers : []).map((c) => ({
            name: String(c.name == null ? '' : c.name),
            waited: Number(c.waited_s) * 1000 || Math.max(0, now - parseTime(c.since)),
            at: now,
        }));
        renderStaff();
    },

    no_show(m) {
        staffNotice(`${m.name} did not arrive; they are back at the front of the queue.`);
        // Waiting alone in the private room for them: back to the queue.
        if (S.staff && inConv() && S.conv.kind === 'support' && !others().length) {
            send({ type: 'leave' });
            endConv();
        }
    },

    waiting() {
        S.resuming = false;
        S.freshToken = null;
        S.randomWaiting = true;
        if (!S.randomSince) S.randomSince = Date.now();
        render();
    },

    error(m) {
        const code = String(m.code || '');
        const ref = String(m.ref || '');
        const text = ERRORS[code] || (typeof m.message === 'string' && m.message) || 'Something went wrong';
        if (code === 'resume_failed') {
            S.resuming = false;
            S.resumeToken = S.freshToken || null;
            S.freshToken = null;
            const rj = S.rejoin;
            S.rejoin = null;
            if (rj && rj.room && rj.name) {
                // Forgotten by the server: into the same room again, same name.
                S.rejoining = rj;
                Conn.send({ type: 'join', room: rj.room, name: rj.name });
            } else if (!inConv() && (S.queue || S.asking || S.offer || S.randomWaiting)) {
                startAgain();
            } else if (S.conv && !S.conv.ended) {
                S.conv.ended = true;
                S.conv.endedText = 'The conversation ended while you were away.';
                render();
            }
            return;
        }
        if (S.rejoining && ref === 'join') {
            // Could not get back in (the name went to someone else...).
            const room = S.rejoining.room;
            S.rejoining = null;
            if (S.conv && !S.conv.ended && S.conv.room === room) {
                S.conv.ended = true;
                S.conv.endedText = `Could not get back into ${room}: ${text}.`;
            }
            if (code === 'name_taken' || code === 'name_invalid') fieldError('name', text);
            render();
            return;
        }
        if (code === 'bad_json' || code === 'unknown_type' || code === 'bad_request')
            console.warn('chat: the server refused', ref, code, m.message || '');
        if (ref === 'leave' && code === 'not_in_room') return;
        if (ref === 'rename') S.renaming = null;
        if (code === 'room_invalid') {
            fieldError('create', m.message || text);
            failedStart(ref);
            return;
        }
        if (code === 'name_invalid' || code === 'name_taken') {
            fieldError('name', text);
            $('name').focus();
            failedStart(ref);
            return;
        }
        if (ref === 'create' || ((ref === 'join') && (code === 'no_such_room' || code === 'room_limit'))) {
            fieldError('create', text);
            failedStart(ref);
            if (ref === 'join') toast(text);
            return;
        }
        if (ref === 'say' || ref === 'typing') {
            if (ref === 'say' && !$('text').value && S.lastSent) {
                $('text').value = S.lastSent;
                Composer.changed();
            }
            if (ref === 'typing' && code === 'rate_limited') return;
            composerNotice(code === 'too_long' ? 'Message too long' : text);
            return;
        }
        if (ref === 'take' || ref === 'staff') {
            staffNotice(text);
            return;
        }
        failedStart(ref);
        toast(text);
    },
};

/* Forgotten by the server while queued or waiting: ask again, same name. */
function startAgain() {
    if (S.queue || S.asking || S.offer) {
        const name = (S.queue && S.queue.name) || S.queueName || currentName();
        S.offer = null;
        S.asking = true;
        Conn.send({ type: 'support', name });
    } else if (S.randomWaiting) {
        Conn.send({ type: 'random', name: S.randomName || currentName() });
    }
    render();
}

/* A request to start something was refused: back to the start view. */
function failedStart(ref) {
    if (ref === 'support') { S.asking = false; S.queue = null; }
    if (ref === 'random') { S.randomWaiting = false; S.randomSince = 0; }
    render();
}

function watchQueue() {
    if (Conn.send({ type: 'staff' })) S.staffWatching = true;
}

// ---- the name ----------------------------------------------------------------------

function currentName() {
    return $('name').value.trim();
}

function setMe(name) {
    S.me = name;
    const f = $('name');
    if (document.activeElement !== f || f.value.trim() === name) f.value = name;
    try { sessionStorage.setItem(CONF.nameKey, name); } catch (e) { /* private mode */ }
}

/* The name for a request, or null (with the reason next to the field). */
function needName() {
    const n = currentName();
    const max = S.limits.max_name_length || 30;
    if (!n) {
        fieldError('name', 'Pick a name first');
        $('name').focus();
        return null;
    }
    if (codePoints(n) > max) {
        fieldError('name', `At most ${max} characters`);
        $('name').focus();
        return null;
    }
    fieldError('name', '');
    return n;
}

function fieldError(which, text) {
    const node = $(which + '-error');
    const input = $(which === 'name' ? 'name' : 'create-name');
    setText(node, text || '');
    show(node, !!text);
    input.classList.toggle('invalid', !!text);
    if (text) input.setAttribute('aria-invalid', 'true');
    else input.removeAttribute('aria-invalid');
}

// ---- notices -------------------------------------------------------------------------

function timedNotice(node, text) {
    clearTimeout(node._timer);
    setText(node, text);
    show(node, !!text);
    if (text) node._timer = setTimeout(() => show(node, false), CONF.noticeMs);
}

function composerNotice(text) {
    timedNotice($('notice'), text);
}

function staffNotice(text) {
    clearTimeout($('staff-notice')._timer);
    setText($('staff-notice'), text);
    show($('staff-notice'), true);
    $('staff-notice')._timer = setTimeout(() => show($('staff-notice'), false), 3 * CONF.noticeMs);
}

function toast(text) {
    if (inConvShown()) composerNotice(text);
    else timedNotice($('toast'), text);
}

// ---- views ---------------------------------------------------------------------------

function inConv() {
    return !!(S.conv && !S.conv.ended);
}

function inConvShown() {
    return !!(S.conv && S.mode === MODE_OF_KIND[S.conv.kind]);
}

function others() {
    return S.conv ? S.conv.users.filter((u) => u !== S.me) : [];
}

function buildTabs() {
    const tabs = $('tabs');
    for (const b of tabs.querySelectorAll('.tab')) {
        const on = S.modes.includes(b.dataset.mode);
        show(b, on);
        if (b.dataset.mode === 'support') setText(b.firstChild, S.staff ? 'Support queue' : 'Support');
    }
    show(tabs, S.modes.length > 1);
}

function setMode(mode) {
    if (!S.modes.includes(mode) || S.mode === mode) return;
    S.mode = mode;
    if (mode === 'rooms' && !inConv()) Conn.send({ type: 'rooms' });
    render();
}

function render() {
    const ready = !!S.welcome;
    show($('view-loading'), !ready);
    if (!ready) return;
    if (!S.mode) {
        show($('view-loading'), true);
        setText($('view-loading').firstElementChild, 'The chat is switched off.');
    }
    for (const b of $('tabs').querySelectorAll('.tab')) {
        const sel = b.dataset.mode === S.mode;
        b.setAttribute('aria-selected', sel ? 'true' : 'false');
        b.tabIndex = sel ? 0 : -1;
        // A dot on the tab that holds a conversation or a wait.
        const busy = !sel && ((S.conv && MODE_OF_KIND[S.conv.kind] === b.dataset.mode && !S.conv.ended) ||
            (b.dataset.mode === 'support' && (S.queue || S.offer)) ||
            (b.dataset.mode === 'random' && S.randomWaiting));
        let badge = b.querySelector('.badge');
        if (busy && !badge) {
            badge = el('span', 'badge');
            badge.setAttribute('aria-label', '(active)');
            b.appendChild(badge);
        } else if (!busy && badge) {
            badge.remove();
        }
    }
    const conv = inConvShown();
    show($('view-room'), conv);
    $('main').classList.toggle('in-room', conv);
    show($('view-rooms'), !conv && S.mode === 'rooms');
    show($('view-support'), !conv && S.mode === 'support');
    show($('view-random'), !conv && S.mode === 'random');
    if (conv) renderRoom();
    else if (S.mode === 'rooms') renderRooms();
    else if (S.mode === 'support') renderSupport();
    else if (S.mode === 'random') renderRandom();
    renderTitle();
}

function renderRooms() {
    const list = $('room-list');
    const have = new Map();
    for (const li of list.children) have.set(li.dataset.room, li);
    const want = S.rooms.filter((r) => r && typeof r.name === 'string');
    let total = 0;
    want.forEach((r, i) => {
        let li = have.get(r.name);
        if (!li) {
            li = el('li', 'room');
            li.dataset.room = r.name;
            const title = el('div', 'room-title');
            title.appendChild(el('span', 'room-name', r.name));
            const tag = el('span', 'tag');
            title.appendChild(tag);
            li.appendChild(title);
            li.appendChild(el('div', 'room-count'));
            const btn = el('button', 'btn primary join', 'Join');
            btn.type = 'button';
            btn.setAttribute('aria-label', 'Join ' + r.name);
            li.appendChild(btn);
            li.appendChild(el('div', 'room-names'));
        }
        have.delete(r.name);
        if (list.children[i] !== li) list.insertBefore(li, list.children[i] || null);
        const users = Number(r.users) || 0;
        total += users;
        const names = Array.isArray(r.names) ? r.names.map(String) : [];
        setText(li.querySelector('.tag'), r.fixed === false ? 'added' : '');
        const count = li.querySelector('.room-count');
        setText(count, users ? plural(users, 'person', 'people') : 'empty');
        count.classList.toggle('some', users > 0);
        li.classList.toggle('busy', users > 0);
        const shown = names.slice(0, 8).join(', ') + (names.length > 8 ? ` +${names.length - 8}` : '');
        const nn = li.querySelector('.room-names');
        setText(nn, shown);
        nn.title = names.join(', ');
    });
    for (const li of have.values()) li.remove();
    setText($('lobby-note'), want.length ? `${plural(total, 'person', 'people')} chatting` : '');
    if (!want.length && !list.querySelector('.empty')) {
        const li = el('li', 'empty', S.welcome && S.welcome.addable_rooms ? 'No rooms yet — add one below.' : 'No rooms.');
        list.appendChild(li);
    }
}

function renderSupport() {
    show($('support-customer'), !S.staff);
    show($('support-staff'), S.staff);
    if (S.staff) {
        renderStaff();
        return;
    }
    const waiting = !!(S.queue || S.asking) && !S.offer;
    show($('support-idle'), !waiting && !S.offer);
    show($('support-waiting'), waiting);
    show($('support-offer'), !!S.offer);
    if (S.offer) setText($('offer-staff'), S.offer.staff || 'Someone');
    if (S.queue) {
        setText($('queue-pos'), S.queue.position || '–');
        setText($('queue-of'), S.queue.waiting > 1 ? ` of ${S.queue.waiting}` : '');
    } else {
        setText($('queue-pos'), '…');
        setText($('queue-of'), '');
    }
    tickWaits();
}

function renderStaff() {
    const list = $('staff-queue');
    const have = new Map();
    for (const li of list.children) have.set(li.dataset.name, li);
    S.staffQueue.forEach((c, i) => {
        let li = have.get(c.name);
        if (!li) {
            li = el('li', 'queue-item');
            li.dataset.name = c.name;
            li.appendChild(el('span', 'q-pos'));
            li.appendChild(el('span', 'q-name', c.name));
            li.appendChild(el('span', 'q-wait'));
        }
        have.delete(c.name);
        if (list.children[i] !== li) list.insertBefore(li, list.children[i] || null);
        setText(li.querySelector('.q-pos'), `${i + 1}.`);
    });
    for (const li of have.values()) li.remove();
    show($('staff-empty'), S.staffQueue.length === 0);
    setText($('staff-note'), S.staffQueue.length ? `${plural(S.staffQueue.length, 'customer', 'customers')} waiting` : '');
    $('take-next').disabled = S.staffQueue.length === 0 || inConv();
    $('take-next').title = inConv() ? 'Finish the current conversation first' : '';
    tickWaits();
}

function renderRandom() {
    show($('random-idle'), !S.randomWaiting);
    show($('random-waiting'), S.randomWaiting);
    tickWaits();
}

function renderRoom() {
    const c = S.conv;
    if (!c) return;
    const title = c.kind === 'random' ? 'A stranger' :
        c.kind === 'support' ? (S.staff ? others().join(', ') || c.room : 'Support') : c.room;
    setText($('room-name'), title);
    $('room-name').title = c.room;
    setText($('room-kind'), c.kind === 'random' ? 'random' : c.kind === 'support' ? 'private' : '');
    setText($('room-count'), c.ended || c.kind === 'random' ? '' : `${plural(c.users.length, 'person', 'people')} here`);
    show($('room-count'), !c.ended && c.kind !== 'random');
    // Users: ours first.
    const ul = $('user-list');
    const names = c.ended ? [] : c.users.slice().sort((a, b) => (b === S.me) - (a === S.me));
    const items = ul.children;
    for (let i = 0; i < names.length; i++) {
        let li = items[i];
        if (!li) li = ul.appendChild(el('li'));
        const shown = c.kind === 'random' && names[i] !== S.me ? `${names[i]} (stranger)` : names[i];
        setText(li, shown);
        li.classList.toggle('me', names[i] === S.me);
    }
    while (ul.children.length > names.length) ul.lastChild.remove();
    // The end of a conversation.
    const gone = c.ended || c.strangerGone;
    show($('ended'), gone);
    if (gone) {
        let text = c.endedText;
        if (!c.ended) {
            text = c.kind === 'random' ? 'The stranger left.' :
                c.kind === 'support' ? (S.staff ? 'The customer left.' : 'The conversation has ended.') :
                    'Everyone else has left.';
        }
        setText($('ended-text'), text);
        show($('new-stranger'), c.kind === 'random' && S.modes.includes('random'));
        setText($('ended-back'), 'Close');
    }
    show($('leave'), !gone);
    updateComposer();
}

function renderTitle() {
    const t = S.unread > 0 ? `(${S.unread}) ${CONF.title}` : CONF.title;
    if (document.title !== t) document.title = t;
}

// ---- waits that tick ------------------------------------------------------------------

function tickWaits() {
    const now = Date.now();
    if (S.queue && !$('support-waiting').hidden) setText($('queue-wait'), fmtWait(now - S.queue.since));
    else if (S.asking) setText($('queue-wait'), '0:00');
    if (S.randomWaiting && !$('random-waiting').hidden) setText($('random-wait'), fmtWait(now - S.randomSince));
    if (S.staff && !$('support-staff').hidden) {
        for (const li of $('staff-queue').children) {
            const c = S.staffQueue.find((x) => x.name === li.dataset.name);
            if (!c) continue;
            const ms = c.waited + (now - c.at);
            const w = li.querySelector('.q-wait');
            setText(w, `waiting ${fmtMinutes(ms)}`);
            w.title = fmtWait(ms);
            w.classList.toggle('long', ms >= 5 * 60000);
        }
    }
}

// ---- the log ----------------------------------------------------------------------------

const Scroll = {
    atBottom() {
        const log = $('log');
        return log.scrollHeight - log.scrollTop - log.clientHeight < 40;
    },
    toBottom() {
        const log = $('log');
        log.scrollTop = log.scrollHeight;
        show($('new-pill'), false);
    },
    /* Appends `node`; follows only when the view was at the bottom. */
    append(node, force) {
        const hidden = $('view-room').hidden;
        const was = hidden || this.atBottom();
        $('log').appendChild(node);
        // Keep the log bounded: a long-lived room would grow without end.
        const log = $('log');
        while (log.children.length > 1000) log.firstElementChild.remove();
        if (was || force) this.toBottom();
        else show($('new-pill'), true);
    },
};

function addMessage(m, opts) {
    if (!S.conv || typeof m !== 'object' || m === null) return;
    const room = S.conv.room;
    let seen = S.seen.get(room);
    if (!seen) S.seen.set(room, seen = new Set());
    const id = Number(m.id);
    if (Number.isFinite(id)) {
        if (seen.has(id)) return;
        seen.add(id);
    }
    const from = String(m.from == null ? '' : m.from);
    const mine = from === S.me;
    const li = el('li', 'msg' + (mine ? ' mine' : ''));
    if (Number.isFinite(id)) li.dataset.id = String(id);
    li.dataset.from = from;
    const t = parseTime(m.ts);
    li._t = t;
    const prev = $('log').lastElementChild;
    if (prev && prev.classList.contains('msg') && prev.dataset.from === from && t - prev._t < 120000)
        li.classList.add('cont');
    const head = el('div', 'msg-head');
    head.appendChild(el('span', 'msg-from', S.conv.kind === 'random' && !mine ? 'stranger' : from));
    head.appendChild(timeNode(m.ts));
    li.appendChild(head);
    const body = el('div', 'msg-text');
    renderText(body, String(m.text == null ? '' : m.text));
    li.appendChild(body);
    if (S.typers.delete(from)) renderTyping();
    Scroll.append(li, mine && !opts.history);
    if (!opts.history && !mine && document.visibilityState === 'hidden') {
        S.unread++;
        renderTitle();
    }
}

function addSys(text, ts, opts) {
    const li = el('li', 'sys');
    li.appendChild(timeNode(ts));
    li.appendChild(el('span', 'sys-text', text));
    Scroll.append(li, opts && opts.quiet);
}

function renderTyping() {
    const now = Date.now();
    for (const [n, until] of S.typers) if (until < now || !S.conv || !S.conv.users.includes(n)) S.typers.delete(n);
    const names = Array.from(S.typers.keys());
    const label = (n) => (S.conv && S.conv.kind === 'random' ? 'The stranger' : n);
    let text = '';
    if (names.length === 1) text = `${label(names[0])} is typing…`;
    else if (names.length === 2) text = `${names[0]} and ${names[1]} are typing…`;
    else if (names.length > 2) text = 'Several people are typing…';
    setText($('typing'), text);
}

// ---- composing ------------------------------------------------------------------------

/* typing:true at most every CONF.typingEvery while the user types (a
 * refused one is sent late, not dropped); typing:false on send, on an empty
 * composer and after CONF.typingIdle without a key. */
const Typing = {
    active: false,
    typing: false,
    lastSent: -Infinity,
    idleTimer: 0,
    deferTimer: 0,
    input(hasText) {
        clearTimeout(this.idleTimer);
        if (!hasText) {
            this.stop();
            return;
        }
        this.typing = true;
        this.idleTimer = setTimeout(() => this.stop(), CONF.typingIdle);
        const now = Date.now();
        const due = this.lastSent + CONF.typingEvery;
        if (now >= due) this.sendActive();
        else if (!this.active && !this.deferTimer)
            this.deferTimer = setTimeout(() => {
                this.deferTimer = 0;
                if (this.typing) this.sendActive();
            }, due - now);
    },
    sendActive() {
        if (Conn.send({ type: 'typing', active: true })) {
            this.active = true;
            this.lastSent = Date.now();
        }
    },
    stop() {
        clearTimeout(this.idleTimer);
        clearTimeout(this.deferTimer);
        this.deferTimer = 0;
        this.typing = false;
        if (this.active) {
            this.active = false;
            Conn.send({ type: 'typing', active: false });
        }
    },
    reset() {
        clearTimeout(this.idleTimer);
        clearTimeout(this.deferTimer);
        this.deferTimer = 0;
        this.typing = false;
        this.active = false;
    },
};

const Composer = {
    bytes: 0,
    changed() {
        const ta = $('text');
        this.bytes = byteLength(ta.value);
        const max = S.limits.max_message_bytes || 2000;
        const near = this.bytes >= max * CONF.counterFrom;
        show($('counter'), near);
        if (near) setText($('counter'), `${this.bytes} / ${max}`);
        $('counter').classList.toggle('over', this.bytes > max);
        // Grow with the text, up to the CSS max-height.
        ta.style.height = 'auto';
        ta.style.height = Math.min(ta.scrollHeight + 2, 140) + 'px';
        updateComposer();
    },
    submit() {
        const ta = $('text');
        const text = ta.value.replace(/^\s*\n|\s+$/g, '');
        if (!text.trim() || !inConv() || S.conv.strangerGone) return;
        const max = S.limits.max_message_bytes || 2000;
        if (byteLength(text) > max) {
            composerNotice(`Message too long (${byteLength(text)} of ${max} bytes)`);
            return;
        }
        Typing.stop();
        if (!send({ type: 'say', text })) return;
        S.lastSent = text;
        ta.value = '';
        this.changed();
        ta.focus();
    },
};

function updateComposer() {
    const c = S.conv;
    const open = !!(c && !c.ended && !c.strangerGone);
    const ta = $('text');
    ta.disabled = !open;
    const max = S.limits.max_message_bytes || 2000;
    $('send').disabled = !open || Conn.state !== 'live' || Composer.bytes > max || !ta.value.trim();
    ta.placeholder = !open ? 'The conversation has ended' :
        Conn.state !== 'live' ? 'Reconnecting… (you can keep typing)' : 'Write a message…';
}

// ---- actions ------------------------------------------------------------------------------

/* Out of whatever we are in (room, queue, wait) before starting something else. */
function leaveAll() {
    if (inConv() || S.queue || S.asking || S.offer || S.randomWaiting) send({ type: 'leave' });
    endConv(true);
    S.queue = null;
    S.asking = false;
    S.offer = null;
    S.randomWaiting = false;
    S.randomSince = 0;
}

function endConv(quiet) {
    Typing.reset();
    S.typers.clear();
    S.conv = null;
    S.rejoin = null;
    show($('new-pill'), false);
    if (quiet) return;
    if (S.mode === 'rooms') Conn.send({ type: 'rooms' });
    if (S.staff) watchQueue();
    render();
}

function joinRoom(room) {
    const name = needName();
    if (!name || !room) return;
    if (S.queue || S.asking || S.randomWaiting) leaveAll();
    send({ type: 'join', room, name });
}

function startSupport() {
    const name = needName();
    if (!name) return;
    leaveAll();
    if (!send({ type: 'support', name })) return;
    S.asking = true;
    S.queue = null;
    S.queueName = name;
    render();
}

function startRandom() {
    const name = needName();
    if (!name) return;
    leaveAll();
    if (!send({ type: 'random', name })) return;
    S.randomName = name;
    S.randomWaiting = true;
    S.randomSince = Date.now();
    S.mode = 'random';
    render();
}

function leaveConv() {
    if (!S.conv) return;
    if (!S.conv.ended) send({ type: 'leave' });
    endConv();
}

function start() {
    if (/[?&]token=/.test(location.search)) {
        // The cookie is set by now: keep the token out of the address bar.
        const u = new URL(location.href);
        u.searchParams.delete('token');
        history.replaceState(null, '', u.pathname + (u.search === '?' ? '' : u.search) + u.hash);
    }
    try {
        const saved = sessionStorage.getItem(CONF.nameKey);
        if (saved) $('name').value = saved;
    } catch (e) { /* private mode */ }

    $('tabs').addEventListener('click', (e) => {
        const b = e.target.closest('.tab');
        if (b) setMode(b.dataset.mode);
    });
    $('tabs').addEventListener('keydown', (e) => {
        if (e.key !== 'ArrowRight' && e.key !== 'ArrowLeft') return;
        const tabs = Array.from($('tabs').querySelectorAll('.tab:not([hidden])'));
        const i = tabs.indexOf(document.activeElement);
        if (i < 0) return;
        const next = tabs[(i + (e.key === 'ArrowRight' ? 1 : tabs.length - 1)) % tabs.length];
        next.focus();
        setMode(next.dataset.mode);
    });

    const name = $('name');
    name.addEventListener('input', () => {
        fieldError('name', '');
        const v = currentName();
        if (v && !inConv()) {
            try { sessionStorage.setItem(CONF.nameKey, v); } catch (e) { /* private mode */ }
        }
    });
    const rename = () => {
        const v = currentName();
        if (!inConv() || !v || v === S.me || v === S.renaming) return;
        if (needName() && send({ type: 'rename', name: v })) S.renaming = v;
    };
    name.addEventListener('change', rename);
    $('name-form').addEventListener('submit', (e) => {
        e.preventDefault();
        if (inConv()) rename();
        else if (needName()) name.blur();
    });

    $('room-list').addEventListener('click', (e) => {
        const b = e.target.closest('button.join');
        if (b) joinRoom(b.closest('.room').dataset.room);
    });
    $('create-form').addEventListener('submit', (e) => {
        e.preventDefault();
        const room = $('create-name').value.trim();
        if (!room) {
            fieldError('create', 'Give the room a name');
            return;
        }
        const n = needName();
        if (!n) return;
        fieldError('create', '');
        if (send({ type: 'create', room, name: n })) $('create-name').value = '';
    });
    $('create-name').addEventListener('input', () => fieldError('create', ''));

    $('ask-help').addEventListener('click', startSupport);
    $('support-cancel').addEventListener('click', () => { leaveAll(); render(); });
    $('random-start').addEventListener('click', startRandom);
    $('random-cancel').addEventListener('click', () => { leaveAll(); render(); });
    $('take-next').addEventListener('click', () => {
        const n = needName();
        if (n) send({ type: 'take', name: n });
    });

    $('leave').addEventListener('click', leaveConv);
    $('ended-back').addEventListener('click', leaveConv);
    $('new-stranger').addEventListener('click', startRandom);
    $('room-count').addEventListener('click', () => {
        const c = document.querySelector('.convo');
        const on = c.classList.toggle('show-users');
        $('room-count').setAttribute('aria-expanded', on ? 'true' : 'false');
    });

    const ta = $('text');
    ta.addEventListener('input', () => {
        Composer.changed();
        if (inConv()) Typing.input(ta.value.trim() !== '');
    });
    ta.addEventListener('keydown', (e) => {
        if (e.key === 'Enter' && !e.shiftKey && !e.isComposing) {
            e.preventDefault();
            Composer.submit();
        }
    });
    $('composer').addEventListener('submit', (e) => {
        e.preventDefault();
        Composer.submit();
    });
    $('log').addEventListener('scroll', () => {
        if (Scroll.atBottom()) show($('new-pill'), false);
    }, { passive: true });
    $('new-pill').addEventListener('click', () => Scroll.toBottom());

    document.addEventListener('visibilitychange', () => {
        if (document.visibilityState === 'visible' && S.unread) {
            S.unread = 0;
            renderTitle();
        }
    });

    Composer.changed();
    render();
    Conn.open();
    setInterval(() => {
        Conn.tick();
        tickWaits();
        if (S.typers.size) renderTyping();
    }, 1000);

    // For the browser tests and for poking at from the console.
    Object.defineProperty(window, '__chat', {
        value: Object.freeze({
            drop: () => Conn.drop(),
            get state() { return Conn.state; },
            get room() { return S.conv ? S.conv.room : null; },
            get me() { return S.me; },
            get unread() { return S.unread; },
            get sockets() { return Conn.opened; },
            get reconnects() { return Conn.reconnects; },
        }),
    });
}

if (document.readyState === 'loading') document.addEventListener('DOMContentLoaded', start);
else start();

})();
