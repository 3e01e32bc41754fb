// chat.test.mjs - the chat demo in a real browser (Debian's chromium, driven
// by playwright-core; no browser download), reached through the proxy.
//
//     node --test tests/browser/chat.test.mjs
//
// tests/integration/test_browser_chat.py starts sb-backends and ./switchboard
// (dashboard on with a token and a chat: section; a pool `chat` whose server
// is the dashboard's listen address; a route /chat -> chat), then runs this
// file with:
//
//   SB_PROXY_URL        http://127.0.0.1:PORT/   the proxy: every page is opened here
//   SB_DASHBOARD_URL    http://127.0.0.1:PORT/   the dashboard (never opened by a page)
//   SB_DASHBOARD_TOKEN  the dashboard.auth.token (staff)
//   SB_CHAT_ROOMS       JSON list of chat.rooms
//   SB_SCREENSHOT_DIR   where the screenshots go (tests/out/screenshots)
//   SB_CHROMIUM         the browser (default /usr/bin/chromium)
//   SB_SLOW             1 for a sanitized build: waits stretch
//
// Every user is a browser context of its own (own cookies, own
// sessionStorage). The tests run in order and share users; each says what it
// leaves behind.

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import http from 'node:http';
import path from 'node:path';
import { chromium } from 'playwright-core';

function need(name) {
    const v = process.env[name];
    if (!v) throw new Error(`${name} is not set (run through tests/integration/test_browser_chat.py)`);
    return v;
}

const PROXY = new URL(need('SB_PROXY_URL'));
const DASH = new URL(need('SB_DASHBOARD_URL'));
const TOKEN = need('SB_DASHBOARD_TOKEN');
const ROOMS = JSON.parse(process.env.SB_CHAT_ROOMS || '["Lobby"]');
const SHOTS = process.env.SB_SCREENSHOT_DIR || path.resolve('tests/out/screenshots');
const CHROMIUM = process.env.SB_CHROMIUM || '/usr/bin/chromium';
const SLOW = process.env.SB_SLOW === '1';
const STRETCH = SLOW ? 3 : 1;
const TITLE = 'Switchboard chat';

let browser = null;
const users = {};           // name -> User
const problems = [];        // console errors, page errors, dialogs, foreign requests

// ---- helpers -------------------------------------------------------------------

function sleep(ms) {
    return new Promise((r) => setTimeout(r, ms));
}

function request(url, { headers = {} } = {}) {
    return new Promise((resolve, reject) => {
        const req = http.request(url, { headers, agent: false }, (res) => {
            const parts = [];
            res.on('data', (d) => parts.push(d));
            res.on('end', () => resolve({ status: res.statusCode, headers: res.headers, body: Buffer.concat(parts).toString() }));
        });
        req.setTimeout(10000, () => req.destroy(new Error(`timeout: GET ${url}`)));
        req.on('error', reject);
        req.end();
    });
}

/* One chat user: a browser context, its page, what it sent and received. */
class User {
    constructor(name) {
        this.name = name;
        this.sent = [];         // frames the page sent, parsed
        this.received = [];     // frames the page received, parsed
        this.sockets = [];      // WebSocket URLs
        this.dialogs = 0;
    }

    async open({ staff = false, viewport = { width: 1440, height: 900 }, route = null } = {}) {
        this.context = await browser.newContext({ viewport });
        this.context.setDefaultTimeout(10000 * STRETCH);
        this.context.on('request', (r) => {
            const u = new URL(r.url());
            if (u.protocol === 'data:' || u.protocol === 'blob:') return;
            if (u.host !== PROXY.host) problems.push(`${this.name}: request to ${r.url()}`);
        });
        const page = this.page = await this.context.newPage();
        page.on('console', (m) => {
            if (m.type() === 'error') problems.push(`${this.name}: console error: ${m.text()}`);
        });
        page.on('pageerror', (e) => problems.push(`${this.name}: page error: ${e.message}`));
        page.on('dialog', async (d) => {
            this.dialogs++;
            problems.push(`${this.name}: a ${d.type()} dialog: ${d.message()}`);
            await d.dismiss().catch(() => {});
        });
        page.on('websocket', (ws) => {
            this.sockets.push(ws.url());
            const parse = (f) => {
                try { return JSON.parse(typeof f.payload === 'string' ? f.payload : ''); } catch (e) { return null; }
            };
            ws.on('framesent', (f) => { const m = parse(f); if (m) this.sent.push({ at: Date.now(), ...m }); });
            ws.on('framereceived', (f) => { const m = parse(f); if (m) this.received.push({ at: Date.now(), ...m }); });
        });
        if (route) await page.routeWebSocket(/\/chat\/(staff\/)?ws$/, route);
        const url = new URL(staff ? `/chat/staff/?token=${TOKEN}` : '/chat/', PROXY);
        const resp = await page.goto(url.href, { waitUntil: 'load' });
        assert.equal(resp.status(), 200, `${this.name}: GET ${url.pathname}`);
        await page.waitForSelector('#conn[data-state="live"]');
        await page.fill('#name', this.name);
        return this;
    }

    async close() {
        if (this.context) await this.context.close().catch(() => {});
        this.context = null;
    }

    sentOf(type) {
        return this.sent.filter((m) => m.type === type);
    }

    receivedOf(type) {
        return this.received.filter((m) => m.type === type);
    }

    async tab(mode) {
        await this.page.click(`#tab-${mode}`);
        await this.page.waitForSelector(`#tab-${mode}[aria-selected="true"]`);
    }

    async joinRoom(room) {
        await this.tab('rooms');
        await this.page.click(`#room-list .room[data-room="${room}"] button.join`);
        await this.page.waitForSelector('#view-room:not([hidden])');
        await this.page.waitForFunction((r) => document.getElementById('room-name').textContent === r, room);
    }

    async say(text) {
        await this.page.fill('#text', text);
        await this.page.press('#text', 'Enter');
        await this.page.waitForFunction(() => document.getElementById('text').value === '');
    }

    /* The log as [{id, from, text}] for messages and {sys} for announcements. */
    log() {
        return this.page.$$eval('#log > li', (lis) => lis.map((li) => li.classList.contains('msg')
            ? { id: Number(li.dataset.id), from: li.querySelector('.msg-from').textContent, text: li.querySelector('.msg-text').textContent }
            : { sys: li.querySelector('.sys-text').textContent }));
    }

    async waitForMessage(text, from) {
        await this.page.waitForFunction(({ text, from }) => Array.from(document.querySelectorAll('#log .msg'))
            .some((li) => li.querySelector('.msg-text').textContent === text &&
                (from === null || li.dataset.from === from)), { text, from: from || null }, { timeout: 5000 * STRETCH });
    }

    async shot(name, opts = {}) {
        await this.page.screenshot({ path: path.join(SHOTS, `chat-${name}.png`), ...opts });
    }
}

async function user(name, opts) {
    const u = new User(name);
    users[name] = u;
    return u.open(opts);
}

async function noOverflow(u, width) {
    const w = await u.page.evaluate(() => document.documentElement.scrollWidth);
    assert.ok(w <= width, `${u.name}: the page is ${w} px wide on a ${width} px screen`);
}

// ---- the browser -------------------------------------------------------------------

before(async () => {
    assert.ok(fs.existsSync(CHROMIUM), `${CHROMIUM} is missing: apt-get install -y chromium`);
    fs.mkdirSync(SHOTS, { recursive: true });
    browser = await chromium.launch({
        executablePath: CHROMIUM,
        headless: true,
        args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
            '--disable-background-networking', '--disable-component-update', '--disable-sync',
            '--disable-crash-reporter'],
        timeout: 60000,
    });
});

after(async () => {
    for (const u of Object.values(users)) await u.close();
    if (browser) await browser.close();
});

// ---- tests ---------------------------------------------------------------------------

test('the page loads through the proxy: CSP, assets, WebSocket to the proxy, tabs, lobby', async () => {
    // The page and its files come through the proxy's /chat route.
    for (const p of ['/chat/', '/chat/chat.js', '/chat/chat.css']) {
        const r = await request(new URL(p, PROXY));
        assert.equal(r.status, 200, `GET ${p} through the proxy`);
    }
    const page = await request(new URL('/chat/', PROXY));
    const csp = page.headers['content-security-policy'] || '';
    assert.match(csp, /script-src 'self'/, `CSP: ${csp}`);
    assert.doesNotMatch(csp, /unsafe-inline|unsafe-eval/, `CSP: ${csp}`);
    assert.doesNotMatch(page.body, /<script>|\sstyle=|\son[a-z]+=/i, 'inline script, style or handler in the page');
    // The staff page wants the dashboard's credentials.
    const staff = await request(new URL('/chat/staff/', PROXY));
    assert.ok(staff.status === 401 || staff.status === 403, `GET /chat/staff/ without the token: ${staff.status}`);

    const alice = await user('alice');
    assert.equal(new URL(alice.page.url()).host, PROXY.host, 'the page is not on the proxy');
    assert.notEqual(PROXY.host, DASH.host);
    assert.equal(alice.sockets.length, 1, `WebSockets: ${alice.sockets}`);
    const ws = new URL(alice.sockets[0]);
    assert.equal(ws.host, PROXY.host, `the WebSocket goes to ${ws.host}, not the proxy`);
    assert.equal(ws.pathname, '/chat/ws');
    assert.equal(await alice.page.title(), TITLE);
    assert.equal(await alice.page.textContent('#conn-text'), 'live');
    // A tab per mode, landing on the default one (rooms).
    const tabs = await alice.page.$$eval('#tabs .tab:not([hidden])', (bs) => bs.map((b) => [b.textContent, b.getAttribute('aria-selected')]));
    assert.deepEqual(tabs, [['Rooms', 'true'], ['Support', 'false'], ['Random', 'false']]);
    // The lobby lists the configured rooms, with Join buttons and the create form.
    await alice.page.waitForFunction((n) => document.querySelectorAll('#room-list .room').length >= n, ROOMS.length);
    const rooms = await alice.page.$$eval('#room-list .room', (lis) => lis.map((li) => li.dataset.room));
    assert.deepEqual([...rooms].sort(), [...ROOMS].sort());
    assert.ok(await alice.page.isVisible('#create-form'), 'no create-room form (addable_rooms is on)');
    assert.equal(await alice.page.$eval('#name', (i) => i.maxLength), 30, 'the name field is not limited to max_name_length');
    // Dark by default.
    const bg = await alice.page.evaluate(() => getComputedStyle(document.body).backgroundColor);
    assert.equal(bg, 'rgb(11, 15, 20)');
    await alice.shot('lobby-1440x900');
});

test('two pages join the Lobby and chat: announcements, user count, messages in order', async () => {
    const alice = users.alice;
    const bob = await user('bob');
    await alice.joinRoom('Lobby');
    assert.equal(await alice.page.textContent('#room-count'), '1 person here');
    // Bob's lobby shows alice in the Lobby (rooms frames keep coming).
    await bob.page.waitForFunction(() => {
        const li = document.querySelector('#room-list .room[data-room="Lobby"]');
        return li && li.querySelector('.room-count').textContent === '1 person' &&
            li.querySelector('.room-names').textContent === 'alice';
    }, null, { timeout: 5000 * STRETCH });
    await bob.joinRoom('Lobby');
    for (const u of [alice, bob]) {
        await u.page.waitForFunction(() => document.getElementById('room-count').textContent === '2 people here');
        const names = await u.page.$$eval('#user-list li', (lis) => lis.map((li) => li.textContent).sort());
        assert.deepEqual(names, ['alice', 'bob'], `${u.name}'s user list`);
    }
    await alice.page.waitForFunction(() => Array.from(document.querySelectorAll('#log .sys-text'))
        .some((s) => s.textContent === 'bob joined'));
    // The session keeps the name.
    assert.equal(await bob.page.evaluate(() => sessionStorage.getItem('sb-chat-name')), 'bob');

    await alice.say('hello bob');
    await bob.waitForMessage('hello bob', 'alice');
    await bob.say('hi alice');
    await alice.say('how are you?');
    for (const u of [alice, bob]) {
        await u.waitForMessage('how are you?', 'alice');
        const msgs = (await u.log()).filter((x) => x.id);
        assert.deepEqual(msgs.map((m) => [m.from, m.text]),
            [['alice', 'hello bob'], ['bob', 'hi alice'], ['alice', 'how are you?']], `${u.name}'s log`);
        const ids = msgs.map((m) => m.id);
        assert.ok(ids.every((id, i) => i === 0 || id > ids[i - 1]), `ids out of order: ${ids}`);
        // Sender and local time (HH:MM) on each message.
        const time = await u.page.$eval('#log .msg .msg-time', (t) => [t.textContent, t.dateTime]);
        assert.match(time[0], /^\d{1,2}:\d{2}/, `time shown: ${time[0]}`);
        assert.match(time[1], /^\d{4}-\d\d-\d\dT/, `datetime: ${time[1]}`);
        const joins = (await u.log()).filter((x) => x.sys === 'bob joined').length;
        assert.equal(joins, u === alice ? 1 : 0, `${u.name} sees ${joins} "bob joined"`);
    }
    await alice.shot('room-1440x900');
});

test('messages are text: <script> stays literal, **bold** is bold, only http(s) links', async () => {
    const alice = users.alice;
    const bob = users.bob;
    const evil = '<script>alert(1)</script><img src=x onerror=alert(2)>';
    await alice.say(evil);
    await bob.waitForMessage(evil, 'alice');
    const md = '**bold** and *it* and `x<b>y</b>` see [docs](https://example.com/docs) or http://example.org/a_b_c. ' +
        '[bad](javascript:alert(3)) javascript:alert(4)';
    await alice.say(md);
    for (const u of [alice, bob])
        await u.page.waitForFunction(() => Array.from(document.querySelectorAll('#log .msg-text'))
            .some((t) => t.textContent.startsWith('bold and it and')));
    for (const u of [alice, bob]) {
        const r = await u.page.evaluate(() => {
            const texts = Array.from(document.querySelectorAll('#log .msg-text'));
            const x = texts[texts.length - 2];
            const m = texts[texts.length - 1];
            return {
                evilText: x.textContent,
                evilElements: x.children.length,
                scripts: document.querySelectorAll('script').length,
                imgs: document.querySelectorAll('#log img').length,
                strong: Array.from(m.querySelectorAll('strong')).map((e) => e.textContent),
                em: Array.from(m.querySelectorAll('em')).map((e) => e.textContent),
                code: Array.from(m.querySelectorAll('code')).map((e) => e.textContent),
                links: Array.from(m.querySelectorAll('a')).map((a) => [a.textContent, a.href, a.rel, a.target]),
                b: m.querySelectorAll('b').length,
                text: m.textContent,
            };
        });
        assert.equal(r.evilText, '<script>alert(1)</script><img src=x onerror=alert(2)>', `${u.name}: not literal`);
        assert.equal(r.evilElements, 0, `${u.name}: the message made elements`);
        assert.equal(r.scripts, 1, `${u.name}: a script element was added`);
        assert.equal(r.imgs, 0, `${u.name}: an img element was added`);
        assert.deepEqual(r.strong, ['bold']);
        assert.deepEqual(r.em, ['it']);
        assert.deepEqual(r.code, ['x<b>y</b>']);
        assert.equal(r.b, 0);
        const rel = 'noopener noreferrer nofollow';
        assert.deepEqual(r.links, [['docs', 'https://example.com/docs', rel, '_blank'],
            ['http://example.org/a_b_c', 'http://example.org/a_b_c', rel, '_blank']], `${u.name}: links`);
        assert.ok(r.text.includes('[bad](javascript:alert(3)) javascript:alert(4)'), `${u.name}: ${r.text}`);
    }
    await sleep(300);
    assert.equal(alice.dialogs + bob.dialogs, 0, 'a dialog fired');
});

test('the typing indicator shows on the other page, and typing frames are rate-limited', async () => {
    const alice = users.alice;
    const bob = users.bob;
    const t0 = Date.now();
    await alice.page.click('#text');
    // About 3.2 s of typing, a key every 160 ms.
    await alice.page.type('#text', 'I am typing a longer line', { delay: 130 });
    await bob.page.waitForFunction(() => document.getElementById('typing').textContent === 'alice is typing…',
        null, { timeout: 3000 * STRETCH });
    await bob.shot('typing-1440x900');
    const active = alice.sentOf('typing').filter((m) => m.at >= t0 && m.active === true);
    const span = (Date.now() - t0) / 1000;
    assert.ok(active.length >= 1, 'no typing frame sent');
    assert.ok(active.length <= Math.ceil(span / 2) + 1, `${active.length} typing:true frames in ${span.toFixed(1)} s`);
    const all = alice.sentOf('typing').filter((m) => m.active === true);
    for (let i = 1; i < all.length; i++)
        assert.ok(all[i].at - all[i - 1].at >= 1900, 'typing:true sent more often than every 2 s');
    // Sending ends it: active:false goes out and bob's indicator clears.
    await alice.page.press('#text', 'Enter');
    await bob.waitForMessage('I am typing a longer line', 'alice');
    await bob.page.waitForFunction(() => document.getElementById('typing').textContent === '', null, { timeout: 3000 * STRETCH });
    assert.equal(alice.sentOf('typing').filter((m) => m.at >= t0).pop().active, false, 'no typing:false on send');
    // 3 s idle ends it too.
    const t1 = Date.now();
    await alice.page.type('#text', 'hmm');
    const lastKey = Date.now();
    await bob.page.waitForFunction(() => document.getElementById('typing').textContent === 'alice is typing…');
    await bob.page.waitForFunction(() => document.getElementById('typing').textContent === '', null, { timeout: 6000 * STRETCH });
    const idle = alice.sentOf('typing').filter((m) => m.at >= t1);
    assert.equal(idle[idle.length - 1].active, false);
    const waited = idle[idle.length - 1].at - lastKey;
    assert.ok(waited >= 2700 && waited < 4500 * STRETCH, `typing:false ${waited} ms after the last key`);
    await alice.page.fill('#text', '');
});

test('a hidden tab counts unread messages in the title; visible again resets it', async () => {
    // Headless pages are always "visible" and a second tab does not hide the
    // first, so the page's document.visibilityState is overridden and the
    // visibilitychange event it listens to is fired, as a browser does when
    // the user switches tabs.
    const alice = users.alice;
    const bob = users.bob;
    const setVisible = (u, visible) => u.page.evaluate((v) => {
        Object.defineProperty(document, 'visibilityState', { configurable: true, get: () => (v ? 'visible' : 'hidden') });
        Object.defineProperty(document, 'hidden', { configurable: true, get: () => !v });
        document.dispatchEvent(new Event('visibilitychange'));
    }, visible);
    await setVisible(bob, false);
    for (const t of ['one', 'two', 'three']) await alice.say(`unread ${t}`);
    await bob.waitForMessage('unread three', 'alice');
    await bob.page.waitForFunction((t) => document.title === `(3) ${t}`, TITLE, { timeout: 3000 * STRETCH });
    // Bob's own messages and alice's title are not counted.
    assert.equal(await alice.page.title(), TITLE);
    await setVisible(bob, true);
    await bob.page.waitForFunction((t) => document.title === t, TITLE);
    await alice.say('seen at once');
    await bob.waitForMessage('seen at once', 'alice');
    assert.equal(await bob.page.title(), TITLE);
});

test('the log follows only at the bottom, else a "new messages" pill; error frames show as a notice', async () => {
    const alice = users.alice;
    const bob = users.bob;
    await bob.page.setViewportSize({ width: 360, height: 640 });
    // Enough lines to scroll (paced: the server allows 5 a second).
    for (let i = 0; i < 6; i++) {
        await alice.say(`line ${i}\nsecond row\nthird row`);
        await sleep(220);
    }
    await bob.waitForMessage('line 5\nsecond row\nthird row', 'alice');
    assert.ok(await bob.page.$eval('#log', (l) => l.scrollHeight > l.clientHeight + 100), 'the log does not scroll');
    assert.ok(await bob.page.$eval('#log', (l) => l.scrollHeight - l.scrollTop - l.clientHeight < 40), 'not at the bottom');
    assert.ok(await bob.page.isHidden('#new-pill'));
    await bob.page.$eval('#log', (l) => { l.scrollTop = 0; });
    await sleep(100);
    await alice.say('while bob reads back');
    await bob.waitForMessage('while bob reads back', 'alice');
    await bob.page.waitForSelector('#new-pill:not([hidden])');
    assert.equal(await bob.page.$eval('#log', (l) => l.scrollTop), 0, 'the log moved while bob read back');
    await bob.shot('room-360x640-pill');
    await bob.page.click('#new-pill');
    await bob.page.waitForSelector('#new-pill', { state: 'hidden' });
    assert.ok(await bob.page.$eval('#log', (l) => l.scrollHeight - l.scrollTop - l.clientHeight < 40));
    await noOverflow(bob, 360);
    await bob.shot('room-360x640');

    // Too fast: a burst of messages past chat.burst; the server refuses with
    // rate_limited and the page says so near the composer, keeping the text.
    await sleep(2500);
    const before = bob.receivedOf('error').length;
    await bob.page.evaluate(async () => {
        const ta = document.getElementById('text');
        for (let i = 0; i < 16; i++) {
            ta.value = `burst ${i}`;
            ta.dispatchEvent(new Event('input'));
            ta.dispatchEvent(new KeyboardEvent('keydown', { key: 'Enter', bubbles: true, cancelable: true }));
        }
    });
    await bob.page.waitForFunction(() => {
        const n = document.getElementById('notice');
        return !n.hidden && n.textContent === 'Too fast — wait a moment';
    }, null, { timeout: 3000 * STRETCH });
    const errs = bob.receivedOf('error').slice(before);
    assert.ok(errs.some((e) => e.code === 'rate_limited' && e.ref === 'say'), `errors: ${JSON.stringify(errs)}`);
    await bob.shot('room-360x640-notice');
    // Too long: the composer counts UTF-8 bytes near the limit and refuses.
    await bob.page.fill('#text', 'é'.repeat(999));
    assert.equal(await bob.page.textContent('#counter'), '1998 / 2000');
    assert.ok(await bob.page.isEnabled('#send'));
    await bob.page.fill('#text', 'é'.repeat(1001));
    assert.equal(await bob.page.textContent('#counter'), '2002 / 2000');
    assert.ok(await bob.page.$eval('#counter', (c) => c.classList.contains('over')));
    assert.ok(await bob.page.isDisabled('#send'));
    await bob.page.press('#text', 'Enter');
    await bob.page.waitForFunction(() => /^Message too long/.test(document.getElementById('notice').textContent));
    await bob.page.fill('#text', '');
    await bob.page.setViewportSize({ width: 1440, height: 900 });
    // The page still works after all that.
    await sleep(2500);
    await bob.say('still here');
    await alice.waitForMessage('still here', 'bob');
});

test('after the WebSocket dies the page reconnects and resumes: same name, no second join, no duplicates', async () => {
    const alice = users.alice;
    const bob = users.bob;
    const aliceLog0 = await alice.log();
    const bobIds0 = (await bob.log()).filter((x) => x.id).map((x) => x.id);
    const resumeToken = bob.receivedOf('joined').pop().resume;
    assert.ok(resumeToken, 'joined had no resume token');
    const sentBefore = bob.sent.length;
    await bob.page.evaluate(() => window.__chat.drop());
    assert.equal(await bob.page.getAttribute('#conn', 'data-state'), 'down');
    // A message while bob is away reaches him after the resume, once.
    await alice.say('while you were away');
    await bob.page.waitForSelector('#conn[data-state="live"]', { timeout: 8000 * STRETCH });
    await bob.waitForMessage('while you were away', 'alice');
    // The first thing the new connection said was the resume, with the token.
    const after = bob.sent.slice(sentBefore);
    assert.deepEqual(after[0], { at: after[0].at, type: 'resume', token: resumeToken }, `sent after reconnecting: ${JSON.stringify(after)}`);
    const joined = bob.receivedOf('joined').pop();
    assert.equal(joined.resumed, true, `joined after the resume: ${JSON.stringify(joined)}`);
    assert.equal(joined.name, 'bob');
    assert.equal(bob.sockets.length, 2);
    // No duplicates, nothing lost.
    const ids = (await bob.log()).filter((x) => x.id).map((x) => x.id);
    assert.equal(new Set(ids).size, ids.length, `duplicate messages: ${ids}`);
    assert.deepEqual(ids.slice(0, bobIds0.length), bobIds0);
    assert.equal(ids.length, bobIds0.length + 1);
    assert.equal((await bob.log()).filter((x) => x.sys && /joined/.test(x.sys)).length, 1, 'bob\'s page announced the join again');
    // Bob is still bob, in the Lobby with alice; alice saw no leave or join.
    assert.equal(await bob.page.evaluate(() => window.__chat.me), 'bob');
    assert.equal(await bob.page.textContent('#room-name'), 'Lobby');
    await bob.page.waitForFunction(() => document.getElementById('room-count').textContent === '2 people here');
    await bob.say('back again');
    await alice.waitForMessage('back again', 'bob');
    const aliceNew = (await alice.log()).slice(aliceLog0.length);
    assert.deepEqual(aliceNew.filter((x) => x.sys), [], `alice saw announcements: ${JSON.stringify(aliceNew)}`);
    assert.equal((await alice.log()).filter((x) => x.sys === 'bob joined').length, 1);
    assert.equal(await alice.page.textContent('#room-count'), '2 people here');
});

test('reconnecting backs off; when the server has forgotten the user the page joins the same room again, same name', async () => {
    // Bob's network is down for longer than chat.reconnect_grace (30 s): the
    // server lets him go; when he is back the resume fails and the page joins
    // the Lobby again as bob. Meanwhile the page retries with back-off.
    const alice = users.alice;
    const bob = users.bob;
    const ids0 = (await bob.log()).filter((x) => x.id).map((x) => x.id);
    let blocked = true;
    let attempts = 0;
    await bob.page.routeWebSocket(/\/chat\/ws$/, (ws) => {
        if (blocked) {
            attempts++;
            ws.close({ code: 1011, reason: 'blocked by the test' });
        } else {
            ws.connectToServer();
        }
    });
    const sentBefore = bob.sent.length;
    await bob.page.evaluate(() => window.__chat.drop());
    await bob.page.waitForSelector('#conn[data-state="down"]');
    // The server announces bob's leave once the grace is over.
    await alice.page.waitForFunction(() => document.getElementById('room-count').textContent === '1 person here',
        null, { timeout: 40000 * STRETCH, polling: 250 });
    assert.ok(await alice.page.$$eval('#log .sys-text', (s) => s.some((x) => x.textContent === 'bob left')));
    assert.match(await bob.page.textContent('#conn-text'), /retry in \d+ s|reconnecting/);
    assert.equal(await bob.page.getAttribute('#conn', 'data-state'), 'down');
    await bob.shot('reconnecting-1440x900');
    // 0.5 s doubling to 10 s: about 6 attempts in 30 s; none would be dozens.
    assert.ok(attempts >= 4 && attempts <= 10, `${attempts} attempts while blocked: no back-off?`);
    await alice.say('said while bob was gone');
    blocked = false;
    await bob.page.waitForSelector('#conn[data-state="live"]', { timeout: 15000 * STRETCH });
    await bob.page.waitForFunction(() => document.getElementById('room-count').textContent === '2 people here',
        null, { timeout: 5000 * STRETCH });
    const after = bob.sent.slice(sentBefore).map(({ at, ...m }) => m);
    assert.equal(after[0].type, 'resume', `sent after reconnecting: ${JSON.stringify(after)}`);
    assert.deepEqual(after[1], { type: 'join', room: 'Lobby', name: 'bob' }, `sent after the failed resume: ${JSON.stringify(after)}`);
    assert.ok(bob.receivedOf('error').some((e) => e.code === 'resume_failed'), 'no resume_failed');
    await bob.waitForMessage('said while bob was gone', 'alice');
    const ids = (await bob.log()).filter((x) => x.id).map((x) => x.id);
    assert.equal(new Set(ids).size, ids.length, `duplicate messages after rejoining: ${ids}`);
    assert.deepEqual(ids.slice(0, ids0.length), ids0);
    assert.equal(await bob.page.evaluate(() => window.__chat.me), 'bob');
    // Bob had left, so alice sees him join again: once.
    await alice.page.waitForFunction(() => Array.from(document.querySelectorAll('#log .sys-text'))
        .filter((s) => s.textContent === 'bob joined').length === 2);
    await bob.shot('rejoined-1440x900');
    await bob.page.unrouteAll({ behavior: 'ignoreErrors' }).catch(() => {});
    await bob.say('rejoined');
    await alice.waitForMessage('rejoined', 'bob');
});

test('support: the customer queues, staff sees and takes them, both talk privately', async () => {
    const carol = await user('carol');
    const staff = await user('sam', { staff: true });
    // The token left the address bar; the staff socket is /chat/staff/ws on the proxy.
    assert.doesNotMatch(staff.page.url(), /token=/);
    assert.equal(new URL(staff.page.url()).pathname, '/chat/staff/');
    assert.equal(new URL(staff.sockets[0]).host, PROXY.host);
    assert.equal(new URL(staff.sockets[0]).pathname, '/chat/staff/ws');
    assert.equal(staff.receivedOf('welcome')[0].staff, true);
    assert.equal(carol.receivedOf('welcome')[0].staff, false);
    // Staff land on the queue.
    await staff.page.waitForSelector('#tab-support[aria-selected="true"]');
    await staff.page.waitForSelector('#support-staff:not([hidden])');
    assert.ok(await staff.page.isVisible('#staff-empty'));
    assert.ok(await staff.page.isDisabled('#take-next'));

    await carol.tab('support');
    assert.ok(await carol.page.isHidden('#support-staff'), 'a customer sees the staff view');
    await carol.page.click('#ask-help');
    await carol.page.waitForFunction(() => document.getElementById('queue-pos').textContent === '1');
    const w0 = await carol.page.textContent('#queue-wait');
    await staff.page.waitForFunction(() => Array.from(document.querySelectorAll('#staff-queue .q-name')).map((e) => e.textContent).join() === 'carol');
    assert.match(await staff.page.textContent('#staff-queue .q-wait'), /^waiting (less than a minute|\d+ min)$/);
    await sleep(2100);
    const w1 = await carol.page.textContent('#queue-wait');
    assert.notEqual(w0, w1, `the wait does not tick: ${w0} ${w1}`);
    assert.match(w1, /^0:0[1-9]$/);
    await carol.shot('support-waiting-1440x900');
    await staff.shot('staff-queue-1440x900');
    // The customer's connection drops: the page resumes its place in the
    // queue (welcome.resume), and staff still see carol once.
    const carolSent = carol.sent.length;
    await carol.page.evaluate(() => window.__chat.drop());
    await carol.page.waitForSelector('#conn[data-state="live"]', { timeout: 8000 * STRETCH });
    await carol.page.waitForFunction(() => document.getElementById('queue-pos').textContent === '1');
    const resent = carol.sent.slice(carolSent);
    assert.equal(resent[0].type, 'resume', `sent after reconnecting: ${JSON.stringify(resent)}`);
    assert.equal(resent[0].token, carol.receivedOf('welcome')[0].resume);
    assert.ok(await carol.page.isVisible('#support-waiting'));
    await sleep(300);
    assert.equal(await staff.page.$$eval('#staff-queue .q-name', (e) => e.map((x) => x.textContent).join()), 'carol');

    await staff.page.click('#take-next');
    // The customer got an offer and arrived at once.
    await carol.page.waitForSelector('#view-room:not([hidden])');
    assert.ok(carol.receivedOf('offer').length >= 1, 'no offer');
    assert.equal(carol.sentOf('arrive').length, 1, 'the customer did not arrive');
    assert.ok(carol.sentOf('arrive')[0].at - carol.receivedOf('offer')[0].at < 1000, 'arrive was not sent at once');
    await staff.page.waitForSelector('#view-room:not([hidden])');
    const room = carol.receivedOf('joined').pop();
    assert.equal(room.kind, 'support');
    for (const u of [carol, staff]) {
        await u.page.waitForFunction(() => document.getElementById('room-count').textContent === '2 people here');
        const names = await u.page.$$eval('#user-list li', (lis) => lis.map((li) => li.textContent).sort());
        assert.deepEqual(names, ['carol', 'sam']);
    }
    await carol.say('my proxy is on fire');
    await staff.waitForMessage('my proxy is on fire', 'carol');
    await staff.say('have you tried `reload`?');
    await carol.waitForMessage('have you tried reload?', 'sam');
    assert.equal(await carol.page.$eval('#log .msg:last-child code', (c) => c.textContent), 'reload');
    // Nobody else saw it.
    assert.equal((await users.alice.log()).filter((x) => x.text === 'my proxy is on fire').length, 0);
    await carol.shot('support-room-1440x900');
    // The staff member ends it: the customer is told, staff is back at the queue.
    await staff.page.click('#leave');
    await staff.page.waitForSelector('#support-staff:not([hidden])');
    await carol.page.waitForSelector('#ended:not([hidden])', { timeout: 5000 * STRETCH });
    await carol.shot('support-ended-1440x900');
    await carol.page.click('#ended-back');
    await carol.page.waitForSelector('#support-idle:not([hidden])');
});

test('support: a customer who does not arrive is a no-show for staff and back at the front of the queue', async () => {
    // Gina's page answers the offer, but the test drops her "arrive" on the
    // way (the page and the server talk through a route that forwards all
    // else): after chat.no_show_timeout (30 s) staff are told.
    const staff = users.sam;
    let dropped = 0;
    const gina = await user('gina', {
        route: (ws) => {
            const server = ws.connectToServer();
            ws.onMessage((m) => {
                if (typeof m === 'string' && /"type":"arrive"/.test(m)) dropped++;
                else server.send(m);
            });
        },
    });
    await gina.tab('support');
    await gina.page.click('#ask-help');
    await gina.page.waitForFunction(() => document.getElementById('queue-pos').textContent === '1');
    await staff.page.waitForFunction(() => Array.from(document.querySelectorAll('#staff-queue .q-name')).map((e) => e.textContent).join() === 'gina');
    await staff.page.click('#take-next');
    await gina.page.waitForSelector('#support-offer:not([hidden])');
    assert.equal(await gina.page.textContent('#offer-staff'), 'sam');
    await gina.shot('support-offer-1440x900');
    assert.equal(dropped, 1, 'the page did not answer the offer with arrive');
    await staff.page.waitForSelector('#staff-notice:not([hidden])', { timeout: 40000 * STRETCH });
    assert.match(await staff.page.textContent('#staff-notice'), /^gina did not arrive/);
    await staff.page.waitForSelector('#support-staff:not([hidden])');
    await staff.shot('staff-no-show-1440x900');
    // Gina is back at the front of the queue, waiting again.
    await gina.page.waitForSelector('#support-waiting:not([hidden])', { timeout: 5000 * STRETCH });
    assert.equal(await gina.page.textContent('#queue-pos'), '1');
    await staff.page.waitForFunction(() => Array.from(document.querySelectorAll('#staff-queue .q-name')).map((e) => e.textContent).join() === 'gina');
    await gina.page.click('#support-cancel');
    await staff.page.waitForSelector('#staff-empty:not([hidden])', { timeout: 5000 * STRETCH });
    await gina.close();
});

test('random: two strangers are paired, one leaves, the other re-rolls', async () => {
    const dave = await user('dave', { viewport: { width: 360, height: 740 } });
    const erin = await user('erin');
    await dave.tab('random');
    await dave.page.click('#random-start');
    await dave.page.waitForSelector('#random-waiting:not([hidden])');
    await dave.page.waitForFunction(() => document.getElementById('random-wait').textContent !== '');
    assert.ok(dave.receivedOf('waiting').length >= 1, 'no waiting frame');
    await noOverflow(dave, 360);
    await dave.shot('random-waiting-360x740');
    await erin.tab('random');
    await erin.page.click('#random-start');
    for (const u of [dave, erin]) {
        await u.page.waitForSelector('#view-room:not([hidden])');
        const j = u.receivedOf('joined').pop();
        assert.equal(j.kind, 'random');
        assert.deepEqual([...j.users].sort(), ['dave', 'erin']);
    }
    await erin.say('hello stranger');
    await dave.waitForMessage('hello stranger', 'erin');
    await dave.say('hi there');
    await erin.waitForMessage('hi there', 'dave');
    await noOverflow(dave, 360);
    await dave.shot('random-room-360x740');
    // Erin leaves: dave is told and offered a new stranger.
    await erin.page.click('#leave');
    await dave.page.waitForSelector('#ended:not([hidden])', { timeout: 5000 * STRETCH });
    assert.match(await dave.page.textContent('#ended-text'), /stranger left/i);
    assert.ok(await dave.page.isVisible('#new-stranger'));
    assert.ok(await dave.page.isDisabled('#text'), 'the composer is open with nobody there');
    await dave.shot('random-left-360x740');
    const sentBefore = dave.sent.length;
    await dave.page.click('#new-stranger');
    await dave.page.waitForSelector('#random-waiting:not([hidden])');
    const types = dave.sent.slice(sentBefore).map((m) => m.type);
    assert.ok(types.includes('random'), `sent on re-roll: ${types}`);
    if (types.includes('leave')) assert.ok(types.indexOf('leave') < types.indexOf('random'));
    // A new stranger comes along and is paired with dave.
    const frank = await user('frank');
    await frank.tab('random');
    await frank.page.click('#random-start');
    await dave.page.waitForSelector('#view-room:not([hidden])');
    await frank.page.waitForSelector('#view-room:not([hidden])');
    assert.deepEqual([...dave.receivedOf('joined').pop().users].sort(), ['dave', 'frank']);
    await dave.page.click('#leave');
    await frank.page.waitForSelector('#ended:not([hidden])', { timeout: 5000 * STRETCH });
    await frank.page.click('#ended-back');
    await frank.page.waitForSelector('#random-idle:not([hidden])');
});

test('a room can be created; screenshots; no console errors, dialogs or requests to other hosts', async () => {
    const alice = users.alice;
    await alice.page.click('#leave');
    await alice.page.waitForSelector('#view-rooms:not([hidden])');
    await alice.page.fill('#create-name', 'Den');
    await alice.page.click('#create-form button[type="submit"]');
    await alice.page.waitForFunction(() => document.getElementById('room-name').textContent === 'Den');
    await users.bob.page.click('#leave');
    await users.bob.page.waitForFunction(() => {
        const li = document.querySelector('#room-list .room[data-room="Den"]');
        return li && li.querySelector('.room-names').textContent === 'alice' && li.querySelector('.tag').textContent === 'added';
    }, null, { timeout: 5000 * STRETCH });
    await users.bob.shot('lobby-after-create-1440x900');
    await users.bob.page.setViewportSize({ width: 360, height: 740 });
    await noOverflow(users.bob, 360);
    await users.bob.shot('lobby-360x740');
    await users.bob.page.setViewportSize({ width: 1440, height: 900 });
    // A name already in the room is refused next to the name field.
    await users.bob.page.fill('#name', 'alice');
    await users.bob.page.click('#room-list .room[data-room="Den"] button.join');
    await users.bob.page.waitForSelector('#name-error:not([hidden])', { timeout: 5000 * STRETCH });
    assert.match(await users.bob.page.textContent('#name-error'), /taken/);
    await users.bob.shot('name-taken-1440x900');
    await users.bob.page.fill('#name', 'bob');

    // Renaming in a room: everyone there sees it, once.
    await users.bob.joinRoom('Den');
    await alice.page.fill('#name', 'alicia');
    await alice.page.press('#name', 'Enter');
    await alice.page.locator('#text').focus();
    for (const u of [alice, users.bob])
        await u.page.waitForFunction(() => Array.from(document.querySelectorAll('#user-list li')).map((l) => l.textContent).sort().join() === 'alicia,bob');
    await users.bob.page.waitForFunction(() => Array.from(document.querySelectorAll('#log .sys-text')).some((s) => s.textContent === 'alice is now alicia'));
    assert.deepEqual(alice.sentOf('rename').map((m) => m.name), ['alicia'], 'rename sent more than once');
    assert.equal((await alice.log()).filter((x) => x.sys === 'You are now alicia').length, 1);
    assert.equal(await alice.page.evaluate(() => window.__chat.me), 'alicia');
    assert.equal(await alice.page.evaluate(() => sessionStorage.getItem('sb-chat-name')), 'alicia');

    // Error frames: only the ones these tests provoked.
    const expected = new Set(['rate_limited', 'name_taken', 'resume_failed']);
    // (gina's page is closed by now; its frames were checked above.)
    for (const u of Object.values(users)) {
        const odd = u.receivedOf('error').filter((e) => !expected.has(e.code));
        assert.deepEqual(odd, [], `${u.name} got unexpected error frames`);
    }
    for (const u of Object.values(users))
        for (const s of u.sockets) assert.equal(new URL(s).host, PROXY.host, `${u.name}: WebSocket to ${s}`);
    assert.deepEqual(problems, [], 'console errors, dialogs or requests to other hosts');
});
