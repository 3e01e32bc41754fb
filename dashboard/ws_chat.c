/*
 * ws_chat.c - the "switchboard.chat" WebSocket protocol: the transport of
 * the chat (chat.c has the rooms, queue and match-ups; chat.h the protocol).
 *
 * Each connection has a queue of frames (shared dash_msg references: one
 * room message is serialised once and queued on every member) written one
 * per LWS_CALLBACK_SERVER_WRITEABLE. A reader that lets its queue reach
 * CHAT_QUEUE_MAX frames or CHAT_QUEUE_BYTES_MAX bytes is cut off: its user
 * is "away" and a reconnect resumes it, with the room's history, instead of
 * the server buffering without bound.
 *
 * Incoming messages may arrive in fragments; they are gathered up to a
 * bound derived from chat.max_message_bytes (JSON may escape each byte into
 * six). A longer message is skipped to its end and refused with "too_long";
 * the connection stays up.
 *
 * The client address is the peer's, or, when the peer is this machine (the
 * proxy in front of the chat), the last X-Forwarded-For entry, which that
 * proxy appended.
 *
 * Thread: the dashboard's service thread only.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "dashboard/chat.h"
#include "dashboard/dashboard-internal.h"
#include "proxy/proxy.h"

static struct dashboard *dash_of_chat(struct dash_chat *ch)
{
    return (struct dashboard *)((char *)ch - offsetof(struct dashboard, chat));
}

/* ---- the core's view of a connection ------------------------------------- */

static void queue_clear(struct dash_chat_client *cl)
{
    while (cl->count) {
        dash_msg_unref(cl->queue[cl->head]);
        cl->head = (cl->head + 1) % CHAT_QUEUE_MAX;
        cl->count--;
    }
    cl->queued_bytes = 0;
}

/* chat_ops.send: queue a frame; a reader too far behind is cut off. */
static void op_send(void *ctx, void *conn, struct dash_msg *m)
{
    struct dash_chat *ch = ctx;
    struct dash_chat_client *cl = conn;
    if (cl->closing)
        return;
    if (cl->count == CHAT_QUEUE_MAX || cl->queued_bytes + m->len > CHAT_QUEUE_BYTES_MAX) {
        ch->overflows++;
        cl->closing = true;
        queue_clear(cl);
        lws_callback_on_writable(cl->wsi);
        return;
    }
    m->refs++;
    cl->queue[(cl->head + cl->count++) % CHAT_QUEUE_MAX] = m;
    cl->queued_bytes += m->len;
    if (cl->count == 1)
        lws_callback_on_writable(cl->wsi);
}

/* chat_ops.drop: the user moved to a newer connection; close this one. */
static void op_drop(void *ctx, void *conn)
{
    struct dash_chat_client *cl = conn;
    cl->user = NULL;
    cl->closing = true;
    queue_clear(cl);
    lws_callback_on_writable(cl->wsi);
}

static int64_t op_wall_ms(void *ctx)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static int64_t op_mono_us(void *ctx)
{
    return dash_now_us();
}

static const struct chat_ops chat_transport = {
    .send = op_send, .drop = op_drop, .wall_ms = op_wall_ms, .mono_us = op_mono_us,
};

/* ---- timer ------------------------------------------------------------------- */

static void chat_tick_cb(lws_sorted_usec_list_t *sul)
{
    struct dash_chat *ch = lws_container_of(sul, struct dash_chat, tick_sul);
    int64_t next = chat_tick(ch->chat);
    lws_sul_schedule(dash_of_chat(ch)->ctx, 0, &ch->tick_sul, chat_tick_cb, next);
}

int dash_chat_start(struct dashboard *d, const struct conf_chat *conf)
{
    struct dash_chat *ch = &d->chat;
    ch->max_connections = conf->max_connections;
    /* JSON may write a byte of text as \uXXXX; the rest of a "say" is small. */
    ch->max_frame = 6 * (size_t)conf->max_message_bytes + 1024;
    if (!(ch->chat = chat_new(conf, &chat_transport, ch)))
        return -1;
    ch->enabled = true;
    return 0;
}

/* Service thread, once it runs (the timer needs the context). */
void dash_chat_arm(struct dashboard *d)
{
    if (d->chat.enabled)
        lws_sul_schedule(d->ctx, 0, &d->chat.tick_sul, chat_tick_cb, 250000);
}

void dash_chat_stop(struct dashboard *d)
{
    chat_free(d->chat.chat);
    d->chat.chat = NULL;
    d->chat.enabled = false;
}

/* ---- the connection ------------------------------------------------------------- */

static bool is_loopback(const char *a)
{
    return strncmp(a, "127.", 4) == 0 || strcmp(a, "::1") == 0 ||
           strncmp(a, "::ffff:127.", 11) == 0;
}

/* The client's address: the peer's, unless the peer is this machine (the
 * proxy in front); then X-Forwarded-For is walked from the right past
 * loopback entries (this machine's proxies), and the first other entry is
 * the client. */
static void client_addr(struct lws *wsi, char *out, size_t len)
{
    lws_get_peer_simple(wsi, out, len);
    char xff[512];
    if (!is_loopback(out) || lws_hdr_copy(wsi, xff, sizeof xff, WSI_TOKEN_X_FORWARDED_FOR) <= 0)
        return;
    for (;;) {
        char *comma = strrchr(xff, ',');
        char *entry = comma ? comma + 1 : xff;
        entry += strspn(entry, " \t");
        entry[strcspn(entry, " \t")] = '\0';
        if (*entry && strlen(entry) < len) {
            memcpy(out, entry, strlen(entry) + 1);
            if (!is_loopback(entry))
                return;
        }
        if (!comma)
            return;
        *comma = '\0';
    }
}

static int on_established(struct lws *wsi, struct dashboard *d, struct dash_chat_client *cl)
{
    struct dash_chat *ch = &d->chat;
    memset(cl, 0, sizeof *cl);
    cl->wsi = wsi;
    ch->n_clients++;
    if (!ch->enabled)
        return -1;
    if (ch->n_clients > ch->max_connections) {
        /* Tell the page why, then close: a refused upgrade's body would
         * never reach its script. */
        static const char full[] = "{\"type\":\"error\",\"code\":\"server_full\","
                                   "\"message\":\"the chat is full: try again later\"}";
        struct dash_msg *m = dash_msg_new(full, sizeof full - 1);
        if (m) {
            cl->queue[0] = m;
            cl->count = 1;
            cl->queued_bytes = m->len;
        }
        cl->closing = true;
        cl->refused_full = true;
        ch->refused_full++;
        lws_callback_on_writable(wsi);
        return 0;
    }
    char addr[64] = "", uri[64] = "";
    client_addr(wsi, addr, sizeof addr);
    lws_hdr_copy(wsi, uri, sizeof uri, WSI_TOKEN_GET_URI);
    /* The upgrade gate (http.c) let /chat/staff/ through only with the
     * dashboard's credentials. */
    bool staff = strncmp(uri, "/chat/staff/", 12) == 0;
    if (!(cl->user = chat_connect(ch->chat, cl, staff, addr)))
        return -1;
    return 0;
}

static int on_receive(struct lws *wsi, struct dashboard *d, struct dash_chat_client *cl,
                      const char *in, size_t len)
{
    struct dash_chat *ch = &d->chat;
    if (!cl->user || cl->closing)
        return 0;
    bool last = lws_is_final_fragment(wsi) && !lws_remaining_packet_payload(wsi);
    if (lws_frame_is_binary(wsi) && lws_is_first_fragment(wsi))
        cl->rx_skip = true;     /* the protocol is text frames only */
    if (!cl->rx_skip) {
        if (cl->rx_len + len > ch->max_frame) {
            cl->rx_skip = true;
            cl->rx_too_long = true;
        } else {
            if (cl->rx_len + len > cl->rx_cap) {
                size_t cap = cl->rx_cap ? cl->rx_cap : 1024;
                while (cap < cl->rx_len + len)
                    cap *= 2;
                char *n = realloc(cl->rx, cap);
                if (!n)
                    return -1;
                cl->rx = n;
                cl->rx_cap = cap;
            }
            memcpy(cl->rx + cl->rx_len, in, len);
            cl->rx_len += len;
        }
    }
    if (!last)
        return 0;
    if (cl->rx_skip) {
        if (cl->rx_too_long)
            chat_refuse_oversized(ch->chat, cl->user);
        else
            chat_receive(ch->chat, &cl->user, "binary", 6);   /* bad_json */
    } else {
        chat_receive(ch->chat, &cl->user, cl->rx, cl->rx_len);
    }
    cl->rx_len = 0;
    cl->rx_skip = cl->rx_too_long = false;
    /* A big buffer from one long message is not kept for a chatty but
     * small-talking client. */
    if (cl->rx_cap > 8192) {
        free(cl->rx);
        cl->rx = NULL;
        cl->rx_cap = 0;
    }
    return 0;
}

static int on_writeable(struct lws *wsi, struct dash_chat_client *cl)
{
    if (cl->count) {
        struct dash_msg *m = cl->queue[cl->head];
        cl->head = (cl->head + 1) % CHAT_QUEUE_MAX;
        cl->count--;
        cl->queued_bytes -= m->len;
        int n = lws_write(wsi, m->data + LWS_PRE, m->len, LWS_WRITE_TEXT);
        dash_msg_unref(m);
        if (n < 0)
            return -1;
        if (cl->count || cl->closing) {
            lws_callback_on_writable(wsi);
            return 0;
        }
    }
    if (cl->closing) {
        /* 1013: try again later (RFC 6455's registry; lws has no name for
         * it). Otherwise the reader fell too far behind, or moved on. */
        const char *why = cl->refused_full ? "chat full" : "closed";
        lws_close_reason(wsi, cl->refused_full ? (enum lws_close_status)1013
                                               : LWS_CLOSE_STATUS_POLICY_VIOLATION,
                         (unsigned char *)why, strlen(why));
        return -1;
    }
    return 0;
}

int dash_chat_callback(struct lws *wsi, enum lws_callback_reasons reason, void *user,
                       void *in, size_t len)
{
    struct dash_chat_client *cl = user;
    struct dashboard *d = dash_of(wsi);
    switch (reason) {
    case LWS_CALLBACK_ESTABLISHED:
        return on_established(wsi, d, cl);
    case LWS_CALLBACK_RECEIVE:
        return on_receive(wsi, d, cl, in, len);
    case LWS_CALLBACK_SERVER_WRITEABLE:
        return on_writeable(wsi, cl);
    case LWS_CALLBACK_CLOSED:
        if (cl->wsi) {
            d->chat.n_clients--;
            if (cl->user)
                chat_disconnect(d->chat.chat, cl->user);
            cl->user = NULL;
            queue_clear(cl);
            free(cl->rx);
            cl->rx = NULL;
            cl->wsi = NULL;
        }
        return 0;
    default:
        return 0;
    }
}
