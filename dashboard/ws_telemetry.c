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
 *       the requests that finished since the last events message, newest
 *       last, sent as soon as the aggregator has them (the map's arcs); at
 *       most DASH_EVENTS_PER_MSG per message (K older ones left out) and
 *       DASH_EVENTS_HZ messages a second per client.
 *   {"type":"ping"}
 *       after 10 s without any other message.
 *
 * Two cursors per client: delta_seq (the model its view reflects, advanced
 * by snapshot and deltas) and event_seq (recent requests sent up to).
 *
 * Wake path: the aggregator thread calls dashboard_wake() after each drain
 * that changed the model; lws_cancel_service() makes this thread run
 * LWS_CALLBACK_EVENT_WAIT_CANCELLED, where the events go out at once (the
 * request-to-map delay is the aggregator's tick plus one write). Deltas run
 * on a timer at push_hz. A message built for one client is shared (by
 * reference) with every other client at the same cursor.
 *
 * Slow clients: each has a queue bounded in messages and bytes. When a new
 * message does not fit, the queue is dropped and the client's next write is
 * a fresh snapshot, built when the socket can take it: a slow reader costs
 * at most one queue, never an unbounded backlog.
 *
 * Thread: the dashboard's service thread only. Ownership: a client's queue
 * holds one reference to each queued message; lws owns the per-session
 * memory, which CLOSED releases from the clients list.
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

#define DASH_EVENTS_PER_MSG  50
#define DASH_EVENTS_HZ       20
#define EVENT_INTERVAL_US    (1000000 / DASH_EVENTS_HZ)
#define PING_INTERVAL_US     (10 * 1000000)
#define PASS_CACHE           8      /* distinct cursors shared in one pass */
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

/* The recent requests after `since`, or NULL with *count 0 when there are
 * none. tm_recent_json() gives {"seq":..,"since":..,"skipped":..,"recent":[..]};
 * the message is that object with "type" first. */
static struct dash_msg *build_events(struct dashboard *d, uint64_t since, uint64_t *seq,
                                     size_t *count)
{
    *count = 0;
    char *text = tm_recent_json(d->agg, since, DASH_EVENTS_PER_MSG, seq, count);
    if (!text)
        return NULL;
    struct dash_msg *m = NULL;
    if (*count > 0 && text[0] == '{')
        m = dash_msg_wrap("{\"type\":\"events\",", text + 1, strlen(text + 1), "");
    free(text);
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
}

/* Deltas for clients whose view is behind the model; a ping for those that
 * heard nothing for PING_INTERVAL_US. */
static void push_tick(lws_sorted_usec_list_t *sul)
{
    struct dash_tel *t = lws_container_of(sul, struct dash_tel, push_sul);
    struct dashboard *d = dash_of_tel(t);
    t->push_armed = false;
    uint64_t seq = d->agg ? tm_aggregator_seq(d->agg) : 0;
    int64_t now = dash_now_us();
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
}

/* Events for every client that has new recent requests and may be sent one
 * now; the others are served when their rate limit allows. */
static void events_pass(struct dashboard *d)
{
    struct dash_tel *t = &d->tel;
    if (!d->agg || !t->n_clients)
        return;
    uint64_t seq = tm_aggregator_seq(d->agg);
    int64_t now = dash_now_us(), next_due = INT64_MAX;
    struct pass p = { .n = 0 };
    struct built scratch = { .msg = NULL };
    for (struct dash_tel_client *c = t->clients; c; c = c->next) {
        if (c->need_snapshot || c->event_seq >= seq)
            continue;
        if (now < c->next_event_us) {
            if (c->next_event_us < next_due)
                next_due = c->next_event_us;
            continue;
        }
        const struct built *b = pass_get(d, &p, BUILT_EVENTS, c->event_seq, &scratch);
        if (b->msg) {
            enqueue(t, c, b->msg);
            c->next_event_us = now + EVENT_INTERVAL_US;
            t->event_msgs++;
        }
        if (b->seq > c->event_seq)
            c->event_seq = b->seq;
    }
    pass_end(&p, &scratch);
    if (next_due != INT64_MAX && !t->event_armed) {
        lws_sul_schedule(d->ctx, 0, &t->event_sul, event_tick, next_due - now);
        t->event_armed = true;
    }
}

static void event_tick(lws_sorted_usec_list_t *sul)
{
    struct dash_tel *t = lws_container_of(sul, struct dash_tel, event_sul);
    t->event_armed = false;
    events_pass(dash_of_tel(t));
}

/* ---- writing ------------------------------------------------------------ */

static int on_writeable(struct lws *wsi, struct dashboard *d, struct dash_tel_client *c)
{
    struct dash_msg *m;
    if (c->need_snapshot) {
        queue_clear(c);
        uint64_t seq;
        if (!(m = build_snapshot(d, &seq)))
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
        events_pass(dash_of(wsi));
        return 0;
    case LWS_CALLBACK_PROTOCOL_DESTROY:
        d = dash_of(wsi);
        lws_sul_cancel(&d->tel.push_sul);
        lws_sul_cancel(&d->tel.event_sul);
        d->tel.push_armed = d->tel.event_armed = false;
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
