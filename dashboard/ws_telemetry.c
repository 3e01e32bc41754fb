/*
 * ws_telemetry.c - the "switchboard.telemetry" WebSocket protocol: live
 * aggregates for the dashboard page. Messages (text, JSON):
 *
 *   {"type":"snapshot","seq":N,"stats":{...}}
 *       first, and again whenever the client fell behind: the whole model,
 *       as /api/stats has it (its "recent" holds the last requests).
 *   {"type":"delta","seq":N,"since":S,"delta":{...}}
 *       at dashboard.push_hz, only when the model changed: tm_delta_json()
 *       since the client's last seq, without "recent" (see "events").
 *   {"type":"events","seq":N,"since":S,"skipped":K,"recent":[...]}
 *       the requests that finished since the last events message, oldest
 *       first (the map's arcs, the tail), at most one per slot (below). At
 *       most DASH_EVENTS_PER_MSG: when more came, an even sample of them
 *       (every n-th; K left out), so that arcs keep the traffic's rhythm
 *       and which requests are shown does not depend on when in the slot
 *       they finished. Each request as in tm_recent_json(), without the
 *       fields that hold their default ("city" "", "lat"/"lon" null,
 *       "tunnel" false), coordinates to EVENTS_COORD_DIGITS digits.
 *   {"type":"ping"}
 *       after 10 s without any other message.
 *
 * Two cursors per client: delta_seq (the model its view reflects, advanced
 * by snapshot and deltas) and event_seq (recent requests sent up to).
 *
 * Clock: deltas go on a timer at push_hz. Each push interval is cut into
 * equal slots of at most EVENT_SLOT_MAX_US (4 Hz: three of 83 ms; 10 Hz
 * and above: one), the last one ending at the push tick. The aggregator
 * thread calls dashboard_wake() after each drain that changed the model;
 * lws_cancel_service() makes this thread run
 * LWS_CALLBACK_EVENT_WAIT_CANCELLED, where events go out at once if no
 * events message went in the current slot, else at the next slot. The push
 * tick sends the events still due before the deltas, so the map and the
 * tail keep up with the counters. A request waits at most one slot for its
 * frame, plus the aggregator's tick and the writes; a viewer gets at most
 * one events message per slot, and at 4 Hz twelve a second.
 *
 * Fan-out: one pass over the clients per slot and per push tick, one clock
 * for all of them, so clients stay at the same cursors and a
 * message is built (serialised) once per pass and shared by reference; per
 * client a pass costs one enqueue. Only a client that just got a snapshot
 * sits at another cursor, and it joins the others after its first message.
 * Snapshots are shared too, for SNAPSHOT_REUSE_US.
 *
 * Slow clients: each has a queue bounded in messages and bytes. When a new
 * message does not fit, the queue is dropped and the client's next write is
 * a fresh snapshot, built when the socket can take it: a slow reader costs
 * at most one queue, never an unbounded backlog.
 *
 * Thread: the dashboard's service thread only. Ownership: a client's queue
 * holds one reference to each queued message, dash_tel.snapshot one to the
 * last snapshot (until PROTOCOL_DESTROY); lws owns the per-session memory,
 * which CLOSED releases from the clients list.
 */
#include <inttypes.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#include "dashboard/dashboard-internal.h"
#include "proxy/proxy.h"
#include "telemetry/telemetry.h"

/* 25 a message, 300 requests a second at 4 Hz: three times what the page
 * animates (CONF.blipsPerSec in app.js), plenty for its sampled panels, and
 * half the bytes of 50. Past a few hundred requests a second, these bytes
 * are most of what a thousand viewers cost. */
#define DASH_EVENTS_PER_MSG  25
/* Requests read per events message, before the sample: the aggregator holds
 * 200 by default (recent_max), more than a 100 ms interval brings below
 * 2000 requests a second. */
#define EVENTS_SCAN_MAX      4096
/* 100 ms: arcs still look continuous on the map, the wait for the next
 * slot keeps request-to-frame delay well inside 250 ms, and a viewer costs
 * 12 events writes a second at 4 Hz (it cost 20). */
#define EVENT_SLOT_MAX_US    100000
#define EVENTS_COORD_DIGITS  7      /* 52.52437, 151.2093: metres, for a map */
#define PING_INTERVAL_US     (10 * 1000000)
#define PASS_CACHE           8      /* distinct cursors shared in one pass */
/* A snapshot this young is good for a client that asks: the deltas that
 * follow bring it up to date like any other. */
#define SNAPSHOT_REUSE_US    100000
/* The kernel's share of a slow client's backlog: without a bound, send
 * buffer autotuning lets it grow to tcp_wmem's maximum (4 MiB) before the
 * queue below even notices. 256 KiB still carries a few MB/s across the
 * world. */
#define SNDBUF_BYTES         (256 * 1024)

static struct dashboard *dash_of_tel(struct dash_tel *t)
{
    return lws_container_of(t, struct dashboard, tel);
}

/* ---- clients and their queues ------------------------------------------ */

static void client_link(struct dash_tel *t, struct dash_tel_client *c)
{
    c->prev = NULL;
    c->next = t->clients;
    if (t->clients)
        t->clients->prev = c;
    t->clients = c;
    c->linked = true;
    t->n_clients++;
}

static void client_unlink(struct dash_tel *t, struct dash_tel_client *c)
{
    if (!c->linked)
        return;
    if (c->prev)
        c->prev->next = c->next;
    else
        t->clients = c->next;
    if (c->next)
        c->next->prev = c->prev;
    c->linked = false;
    t->n_clients--;
}

static void queue_clear(struct dash_tel_client *c)
{
    while (c->count) {
        dash_msg_unref(c->queue[c->head]);
        c->head = (c->head + 1) % DASH_QUEUE_MAX;
        c->count--;
    }
    c->head = 0;
    c->queued_bytes = 0;
}

static struct dash_msg *queue_pop(struct dash_tel_client *c)
{
    struct dash_msg *m = c->queue[c->head];
    c->head = (c->head + 1) % DASH_QUEUE_MAX;
    c->count--;
    c->queued_bytes -= m->len;
    return m;
}

/* Queue `m` (a new reference is taken) for `c`. A client that cannot take
 * it is behind: its queue goes and a snapshot will replace it. */
static void enqueue(struct dash_tel *t, struct dash_tel_client *c, struct dash_msg *m)
{
    if (c->count == DASH_QUEUE_MAX || c->queued_bytes + m->len > DASH_QUEUE_BYTES_MAX) {
        queue_clear(c);
        c->need_snapshot = true;
        t->overflows++;
    } else {
        m->refs++;
        c->queue[(c->head + c->count) % DASH_QUEUE_MAX] = m;
        c->count++;
        c->queued_bytes += m->len;
    }
    lws_callback_on_writable(c->wsi);
}

/* ---- building messages ------------------------------------------------- */

/* The whole model; *seq receives its seq. */
static struct dash_msg *build_snapshot(struct dashboard *d, uint64_t *seq)
{
    static const char no_stats[] = "{\"type\":\"snapshot\",\"seq\":0,\"stats\":null}";
    *seq = 0;
    if (!d->agg)
        return dash_msg_new(no_stats, sizeof no_stats - 1);
    char *doc = tm_delta_json(d->agg, 0, seq);
    if (!doc)
        return NULL;
    char prefix[64];
    snprintf(prefix, sizeof prefix, "{\"type\":\"snapshot\",\"seq\":%" PRIu64 ",\"stats\":",
             *seq);
    struct dash_msg *m = dash_msg_wrap(prefix, doc, strlen(doc), "}");
    free(doc);
    return m;
}

/* A snapshot for one more client (a new reference, or NULL); *seq receives
 * its seq. Built anew when the last one is SNAPSHOT_REUSE_US old. */
static struct dash_msg *get_snapshot(struct dashboard *d, uint64_t *seq)
{
    struct dash_tel *t = &d->tel;
    int64_t now = dash_now_us();
    if (!t->snapshot || now - t->snapshot_us >= SNAPSHOT_REUSE_US) {
        uint64_t built_seq;
        struct dash_msg *m = build_snapshot(d, &built_seq);
        if (!m)
            return NULL;
        dash_msg_unref(t->snapshot);
        t->snapshot = m;                    /* the cache's reference */
        t->snapshot_seq = built_seq;
        t->snapshot_us = now;
        t->snapshot_builds++;
    }
    t->snapshot->refs++;
    *seq = t->snapshot_seq;
    return t->snapshot;
}

/* A delta since `since`. Its "recent" list goes: the events messages carry
 * recent requests, sooner. *seq receives the seq it brings the client to. */
static struct dash_msg *build_delta(struct dashboard *d, uint64_t since, uint64_t *seq)
{
    char *text = tm_delta_json(d->agg, since, seq);
    if (!text)
        return NULL;
    json_t *doc = json_loads(text, 0, NULL);
    free(text);
    if (!doc)
        return NULL;
    json_object_del(doc, "recent");
    /* 17 significant digits give back exactly the doubles just parsed: a
     * page compares values such as totals.start_time with the snapshot's. */
    char *body = json_dumps(doc, JSON_COMPACT | JSON_REAL_PRECISION(17));
    json_decref(doc);
    if (!body)
        return NULL;
    char prefix[96];
    snprintf(prefix, sizeof prefix,
             "{\"type\":\"delta\",\"seq\":%" PRIu64 ",\"since\":%" PRIu64 ",\"delta\":",
             *seq, since);
    struct dash_msg *m = dash_msg_wrap(prefix, body, strlen(body), "}");
    free(body);
    return m;
}

/* Leave out of one recent request the fields the page reads as their
 * default when absent: for a client without a location, a quarter of its
 * bytes. */
static void trim_request(json_t *req)
{
    json_t *city = json_object_get(req, "city");
    if (json_is_string(city) && json_string_length(city) == 0)
        json_object_del(req, "city");
    if (json_is_null(json_object_get(req, "lat")))
        json_object_del(req, "lat");
    if (json_is_null(json_object_get(req, "lon")))
        json_object_del(req, "lon");
    if (json_is_false(json_object_get(req, "tunnel")))
        json_object_del(req, "tunnel");
}

/* Keep DASH_EVENTS_PER_MSG of the requests in `doc`'s "recent", evenly
 * spread, and count the others in "skipped". */
static void sample_requests(json_t *doc)
{
    json_t *all = json_object_get(doc, "recent");
    size_t n = json_array_size(all);
    if (n <= DASH_EVENTS_PER_MSG)
        return;
    json_t *kept = json_array();
    for (size_t k = 0; k < DASH_EVENTS_PER_MSG; k++) {
        /* the middle one of the k-th of DASH_EVENTS_PER_MSG equal parts */
        size_t middle = (2 * k + 1) * n / (2 * DASH_EVENTS_PER_MSG);
        json_array_append(kept, json_array_get(all, middle));
    }
    json_int_t skipped = json_integer_value(json_object_get(doc, "skipped"));
    json_object_set_new(doc, "skipped",
                        json_integer(skipped + (json_int_t)(n - DASH_EVENTS_PER_MSG)));
    json_object_set_new(doc, "recent", kept);
}

/* The recent requests after `since`, or NULL with *count 0 when there are
 * none. tm_recent_json() gives {"seq":..,"since":..,"skipped":..,"recent":[..]};
 * the message is that object, sampled and trimmed, with "type" first. */
static struct dash_msg *build_events(struct dashboard *d, uint64_t since, uint64_t *seq,
                                     size_t *count)
{
    char *text = tm_recent_json(d->agg, since, EVENTS_SCAN_MAX, seq, count);
    if (!text || *count == 0) {
        free(text);
        *count = 0;
        return NULL;
    }
    json_t *doc = json_loads(text, 0, NULL);
    free(text);
    if (!doc)
        return NULL;
    sample_requests(doc);
    json_t *req;
    size_t i;
    json_array_foreach(json_object_get(doc, "recent"), i, req)
        trim_request(req);
    *count = json_array_size(json_object_get(doc, "recent"));
    char *body = json_dumps(doc, JSON_COMPACT | JSON_REAL_PRECISION(EVENTS_COORD_DIGITS));
    json_decref(doc);
    struct dash_msg *m = NULL;
    if (body && body[0] == '{')
        m = dash_msg_wrap("{\"type\":\"events\",", body + 1, strlen(body + 1), "");
    free(body);
    return m;
}

/* Messages built during one pass over the clients, by cursor, so that
 * clients in step share one. */
enum built_kind { BUILT_DELTA, BUILT_EVENTS };

struct built {
    enum built_kind kind;
    uint64_t since, seq;
    size_t count;
    struct dash_msg *msg;               /* NULL: nothing to send */
};

struct pass {
    struct built b[PASS_CACHE];
    size_t n;
};

static const struct built *pass_get(struct dashboard *d, struct pass *p,
                                    enum built_kind kind, uint64_t since,
                                    struct built *scratch)
{
    for (size_t i = 0; i < p->n; i++)
        if (p->b[i].kind == kind && p->b[i].since == since)
            return &p->b[i];
    struct built *b = p->n < PASS_CACHE ? &p->b[p->n++] : scratch;
    if (b == scratch)
        dash_msg_unref(scratch->msg);
    memset(b, 0, sizeof *b);
    b->kind = kind;
    b->since = since;
    b->seq = since;
    if (kind == BUILT_DELTA) {
        b->msg = build_delta(d, since, &b->seq);
        b->count = b->msg != NULL;
    } else {
        b->msg = build_events(d, since, &b->seq, &b->count);
        d->tel.event_builds += b->msg != NULL;
    }
    return b;
}

static void pass_end(struct pass *p, struct built *scratch)
{
    for (size_t i = 0; i < p->n; i++)
        dash_msg_unref(p->b[i].msg);
    dash_msg_unref(scratch->msg);
    p->n = 0;
}

/* ---- the two timers and the wake ---------------------------------------- */

static void push_tick(lws_sorted_usec_list_t *sul);
static void event_tick(lws_sorted_usec_list_t *sul);

static void arm_push(struct dashboard *d)
{
    struct dash_tel *t = &d->tel;
    if (t->push_armed || !t->n_clients)
        return;
    lws_sul_schedule(d->ctx, 0, &t->push_sul, push_tick, 1000000 / d->push_hz);
    t->push_armed = true;
    t->push_due_us = dash_now_us() + 1000000 / d->push_hz;
}

/* Events for every client that has recent requests it was not sent. All
 * clients go in one pass, so that they stay at one cursor and share one
 * message. True when some client got one. */
static bool events_pass(struct dashboard *d)
{
    struct dash_tel *t = &d->tel;
    if (!d->agg || !t->n_clients)
        return false;
    uint64_t seq = tm_aggregator_seq(d->agg);
    struct pass p = { .n = 0 };
    struct built scratch = { .msg = NULL };
    bool sent = false;
    for (struct dash_tel_client *c = t->clients; c; c = c->next) {
        if (c->need_snapshot || c->event_seq >= seq)
            continue;
        const struct built *b = pass_get(d, &p, BUILT_EVENTS, c->event_seq, &scratch);
        if (b->msg) {
            enqueue(t, c, b->msg);
            t->event_msgs++;
            sent = true;
        }
        if (b->seq > c->event_seq)
            c->event_seq = b->seq;
    }
    pass_end(&p, &scratch);
    return sent;
}

/* After events went at `now`: the next may go at the start of the next
 * slot, or, in the last slot, with the push tick (INT64_MAX). */
static void events_next_slot(struct dashboard *d, int64_t now)
{
    struct dash_tel *t = &d->tel;
    int64_t push_us = 1000000 / d->push_hz;
    int64_t slots = (push_us + EVENT_SLOT_MAX_US - 1) / EVENT_SLOT_MAX_US;
    int64_t slot_us = push_us / slots;
    /* Whole slots left before the tick (`now` may be a little before the
     * tick that armed push_due_us). */
    int64_t left = (t->push_due_us - now - 1) / slot_us;
    if (left > slots - 1)
        left = slots - 1;
    t->next_events_us = left > 0 ? t->push_due_us - left * slot_us : INT64_MAX;
}

static void event_tick(lws_sorted_usec_list_t *sul)
{
    struct dash_tel *t = lws_container_of(sul, struct dash_tel, event_sul);
    struct dashboard *d = dash_of_tel(t);
    t->event_armed = false;
    int64_t now = dash_now_us();
    if (now >= t->next_events_us && events_pass(d))
        events_next_slot(d, now);
}

/* The aggregator has news: events now if none went in this slot, else at
 * the next one (the push tick sends them when that is the next). */
static void events_wake(struct dashboard *d)
{
    struct dash_tel *t = &d->tel;
    if (t->event_armed || !d->agg || !t->n_clients || t->next_events_us == INT64_MAX)
        return;
    int64_t now = dash_now_us();
    if (now >= t->next_events_us) {
        if (events_pass(d))
            events_next_slot(d, now);
        return;
    }
    lws_sul_schedule(d->ctx, 0, &t->event_sul, event_tick, t->next_events_us - now);
    t->event_armed = true;
}

/* Deltas for clients whose view is behind the model, each after the events
 * not sent yet. A ping for those that heard nothing for PING_INTERVAL_US.
 * The tick ends a slot: the next begins. */
static void push_tick(lws_sorted_usec_list_t *sul)
{
    struct dash_tel *t = lws_container_of(sul, struct dash_tel, push_sul);
    struct dashboard *d = dash_of_tel(t);
    t->push_armed = false;
    int64_t now = dash_now_us();
    bool events_sent = events_pass(d);
    uint64_t seq = d->agg ? tm_aggregator_seq(d->agg) : 0;
    struct pass p = { .n = 0 };
    struct built scratch = { .msg = NULL };
    static const char ping[] = "{\"type\":\"ping\"}";
    struct dash_msg *ping_msg = NULL;
    for (struct dash_tel_client *c = t->clients; c; c = c->next) {
        if (c->need_snapshot)
            continue;
        if (d->agg && seq > c->delta_seq) {
            const struct built *b = pass_get(d, &p, BUILT_DELTA, c->delta_seq, &scratch);
            if (b->msg) {
                enqueue(t, c, b->msg);
                c->delta_seq = b->seq;
                t->deltas++;
            }
        } else if (c->count == 0 && now - c->last_write_us >= PING_INTERVAL_US) {
            if (!ping_msg)
                ping_msg = dash_msg_new(ping, sizeof ping - 1);
            if (ping_msg) {
                enqueue(t, c, ping_msg);
                c->last_write_us = now;         /* one ping per interval */
                t->pings++;
            }
        }
    }
    dash_msg_unref(ping_msg);
    pass_end(&p, &scratch);
    arm_push(d);
    if (events_sent)
        events_next_slot(d, now);
    else
        t->next_events_us = 0;                  /* the next news goes at once */
}

/* ---- writing ------------------------------------------------------------ */

static int on_writeable(struct lws *wsi, struct dashboard *d, struct dash_tel_client *c)
{
    struct dash_msg *m;
    if (c->need_snapshot) {
        queue_clear(c);
        uint64_t seq;
        if (!(m = get_snapshot(d, &seq)))
            return -1;          /* out of memory: drop this client */
        c->need_snapshot = false;
        c->delta_seq = c->event_seq = seq;
        d->tel.snapshots++;
    } else if (c->count) {
        m = queue_pop(c);
    } else {
        return 0;
    }
    int n = lws_write(wsi, m->data + LWS_PRE, m->len, LWS_WRITE_TEXT);
    bool ok = n >= (int)m->len;
    dash_msg_unref(m);
    if (!ok)
        return -1;
    c->last_write_us = dash_now_us();
    if (c->count || c->need_snapshot)
        lws_callback_on_writable(wsi);
    return 0;
}

int dash_telemetry_callback(struct lws *wsi, enum lws_callback_reasons reason, void *user,
                            void *in, size_t len)
{
    struct dash_tel_client *c = user;
    struct dashboard *d;
    switch (reason) {
    case LWS_CALLBACK_ESTABLISHED:
        d = dash_of(wsi);
        memset(c, 0, sizeof *c);
        c->wsi = wsi;
        c->need_snapshot = true;
        setsockopt(lws_get_socket_fd(wsi), SOL_SOCKET, SO_SNDBUF, &(int){ SNDBUF_BYTES },
                   sizeof(int));
        c->last_write_us = dash_now_us();
        client_link(&d->tel, c);
        arm_push(d);
        lws_callback_on_writable(wsi);
        return 0;
    case LWS_CALLBACK_SERVER_WRITEABLE:
        return on_writeable(wsi, dash_of(wsi), c);
    case LWS_CALLBACK_RECEIVE:
        /* Nothing is expected from the page; "resync" asks for a snapshot. */
        if (len == 6 && memcmp(in, "resync", 6) == 0 && !c->need_snapshot) {
            queue_clear(c);
            c->need_snapshot = true;
            lws_callback_on_writable(wsi);
        }
        return 0;
    case LWS_CALLBACK_CLOSED:
        d = dash_of(wsi);
        client_unlink(&d->tel, c);
        queue_clear(c);
        return 0;
    case LWS_CALLBACK_EVENT_WAIT_CANCELLED:
        events_wake(dash_of(wsi));
        return 0;
    case LWS_CALLBACK_PROTOCOL_DESTROY:
        d = dash_of(wsi);
        lws_sul_cancel(&d->tel.push_sul);
        lws_sul_cancel(&d->tel.event_sul);
        d->tel.push_armed = d->tel.event_armed = false;
        dash_msg_unref(d->tel.snapshot);
        d->tel.snapshot = NULL;
        return 0;
    case LWS_CALLBACK_ADD_HEADERS: {
        struct lws_process_html_args *args = in;
        unsigned char *p = (unsigned char *)args->p;
        if (dash_security_headers(wsi, &p, p + args->max_len) < 0)
            return -1;
        args->p = (char *)p;
        return 0;
    }
    default:
        return 0;
    }
}
