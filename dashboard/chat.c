/*
 * chat.c - rooms, the support queue and random match-ups (see chat.h for
 * the protocol). No sockets here: the transport hands in whole messages and
 * takes out dash_msg frames; the clock comes from chat_ops.
 *
 * Ownership: the chat owns every user and room. A user outlives its
 * connection while it is "away" (reconnect_grace), so that a page that lost
 * its connection comes back into its room or queue place unannounced.
 * A room owns its history (references to the message frames). A room with
 * no members is freed at once unless it is one of the fixed rooms.
 *
 * Where a user is (struct chat_user.place):
 *   LOBBY        connected, nowhere yet (may watch the room list)
 *   IN_ROOM      a member of `room` (an open, support or random room)
 *   QUEUED       a support customer waiting in the queue
 *   OFFERED      a customer a staff member took: must "arrive" in time
 *   RANDOM_WAIT  waiting for a stranger
 *   STAFF_WATCH  staff watching the queue
 *
 * Thread: the dashboard's service thread only.
 */
#include <ctype.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/random.h>
#include <time.h>

#include "dashboard/chat.h"
#include "dashboard/dashboard-internal.h"
#include "proxy/proxy.h"

#define ROOM_NAME_MAX      40       /* bytes; conf.c checks fixed rooms alike */
#define ROOMS_NAMES_SHOWN  20       /* user names per room in the room list */
#define ROOMS_PUSH_US      500000   /* room list updates at most this often */
#define TYPING_REPEAT_US   2000000  /* "still typing" relayed at most this often */
#define TICK_US            250000

enum place { LOBBY, IN_ROOM, QUEUED, OFFERED, RANDOM_WAIT, STAFF_WATCH };
enum room_kind { ROOM_OPEN, ROOM_SUPPORT, ROOM_RANDOM };

static const char *const room_kind_names[] = { "room", "support", "random" };

struct chat_room;

/* An intrusive doubly linked list; each user is on at most one list per
 * link: `all` (every user), `member` (its room) and `line` (the support
 * queue, the random wait or the staff watchers). */
struct link {
    struct chat_user *prev, *next;
};

struct list {
    struct chat_user *head, *tail;
    size_t n;
};

struct chat_user {
    uint64_t id;
    void *conn;                     /* NULL while away */
    bool staff;
    char addr[48];                  /* truncated client address, for the log */
    char *name;                     /* nickname once it has one */
    enum place place;
    struct chat_room *room;         /* IN_ROOM; OFFERED: the room offered */
    struct list *line;              /* which `line` list it is on, if any */
    struct link all, member, line_link;
    char resume[33];                /* hex token; a reconnect presents it */
    int64_t away_until_us;          /* away: dropped at this time */
    int64_t offer_until_us;         /* OFFERED: back to the queue at this time */
    int64_t queued_wall_ms;         /* QUEUED/OFFERED: asked for help at */
    double tokens;                  /* rate limit: a token bucket */
    int64_t tokens_us;
    unsigned rooms_created;         /* rooms of its own that exist */
    bool watching_rooms;            /* LOBBY: wants room list updates */
    bool typing;
    int64_t typing_relayed_us;
    uint64_t last_partner;          /* random: not paired with again at once */
};

struct chat_room {
    char *name;
    enum room_kind kind;
    bool fixed, listed;
    uint64_t creator;               /* user id, 0 for none */
    struct list members;
    struct dash_msg **history;      /* ring of conf.history message frames */
    unsigned hist_head, hist_count;
    uint64_t next_id;
    struct chat_room *next;
};

struct chat {
    struct conf_chat conf;          /* scalars only; lists are not kept */
    const struct chat_ops *ops;
    void *ctx;
    struct chat_bus *bus;
    struct list all;
    size_t connected;
    struct chat_room *rooms;
    struct list queue;              /* support customers, oldest first */
    struct list random_wait;
    struct list staff_watch;
    uint64_t next_user_id, next_private_room;
    bool rooms_dirty;
    int64_t rooms_pushed_us;
    uint64_t messages, refused;
};

/* ---- small things ------------------------------------------------------- */

static int64_t mono_us(struct chat *c) { return c->ops->mono_us(c->ctx); }

static void list_push(struct list *l, struct chat_user *u, struct link *lk, bool front)
{
    size_t off = (size_t)((char *)lk - (char *)u);
#define LINK_OF(x) ((struct link *)((char *)(x) + off))
    lk->prev = lk->next = NULL;
    if (front) {
        lk->next = l->head;
        if (l->head)
            LINK_OF(l->head)->prev = u;
        l->head = u;
        if (!l->tail)
            l->tail = u;
    } else {
        lk->prev = l->tail;
        if (l->tail)
            LINK_OF(l->tail)->next = u;
        l->tail = u;
        if (!l->head)
            l->head = u;
    }
    l->n++;
}

static void list_remove(struct list *l, struct chat_user *u, struct link *lk)
{
    size_t off = (size_t)((char *)lk - (char *)u);
    if (lk->prev)
        LINK_OF(lk->prev)->next = lk->next;
    else
        l->head = lk->next;
    if (lk->next)
        LINK_OF(lk->next)->prev = lk->prev;
    else
        l->tail = lk->prev;
    lk->prev = lk->next = NULL;
    l->n--;
#undef LINK_OF
}

static void line_join(struct chat_user *u, struct list *l, bool front)
{
    list_push(l, u, &u->line_link, front);
    u->line = l;
}

static void line_leave(struct chat_user *u)
{
    if (u->line) {
        list_remove(u->line, u, &u->line_link);
        u->line = NULL;
    }
}

static void iso_time(int64_t wall_ms, char *out, size_t len)
{
    time_t s = (time_t)(wall_ms / 1000);
    struct tm tm;
    gmtime_r(&s, &tm);
    snprintf(out, len, "%04d-%02d-%02dT%02d:%02d:%02d.%03dZ", (tm.tm_year + 1900) % 10000,
             (tm.tm_mon + 1) % 100, tm.tm_mday % 100, tm.tm_hour % 100, tm.tm_min % 100,
             tm.tm_sec % 100, (int)(wall_ms % 1000));
}

static json_t *json_now(struct chat *c)
{
    char ts[32];
    iso_time(c->ops->wall_ms(c->ctx), ts, sizeof ts);
    return json_string(ts);
}

/* A frame {"type":type, ...fields}; `fields` is consumed (may be NULL). */
static struct dash_msg *frame(const char *type, json_t *fields)
{
    json_t *o = json_object();
    json_object_set_new(o, "type", json_string(type));
    if (fields)
        json_object_update(o, fields);
    json_decref(fields);
    char *text = json_dumps(o, JSON_COMPACT | JSON_PRESERVE_ORDER);
    json_decref(o);
    if (!text)
        return NULL;
    struct dash_msg *m = dash_msg_new(text, strlen(text));
    free(text);
    return m;
}

static void send_msg(struct chat *c, struct chat_user *u, struct dash_msg *m)
{
    if (m && u->conn)
        c->ops->send(c->ctx, u->conn, m);
}

static void send_frame(struct chat *c, struct chat_user *u, const char *type, json_t *fields)
{
    if (!u->conn) {
        json_decref(fields);
        return;
    }
    struct dash_msg *m = frame(type, fields);
    send_msg(c, u, m);
    dash_msg_unref(m);
}

static void send_error(struct chat *c, struct chat_user *u, const char *code,
                       const char *ref, const char *message)
{
    c->refused++;
    send_frame(c, u, "error", json_pack("{s:s, s:s, s:s?}", "code", code,
                                        "message", message, "ref", ref));
}

/* Publish an event of `room` on the bus; `fields` consumed. */
static void publish(struct chat *c, struct chat_room *r, const char *type, json_t *fields)
{
    json_t *o = json_object();
    json_object_set_new(o, "type", json_string(type));
    json_object_set_new(o, "room", json_string(r->name));
    json_object_update(o, fields);
    json_decref(fields);
    char *text = json_dumps(o, JSON_COMPACT | JSON_PRESERVE_ORDER);
    json_decref(o);
    if (!text)
        return;
    if (c->bus->ops->publish(c->bus, r->name, text, strlen(text)) < 0)
        sb_log(SB_LOG_WARN, "chat: a %s event of room \"%s\" could not be published",
               type, r->name);
    free(text);
}

static json_t *member_names(const struct chat_room *r, size_t max)
{
    json_t *a = json_array();
    size_t i = 0;
    for (struct chat_user *m = r->members.head; m && i < max; m = m->member.next, i++)
        json_array_append_new(a, json_string(m->name));
    return a;
}

/* The client's address without its host part: a /24 for IPv4, a /48 for
 * IPv6, enough to tell networks apart in a log and no more. */
static void truncate_addr(const char *addr, char *out, size_t len)
{
    if (!addr || !*addr) {
        snprintf(out, len, "-");
        return;
    }
    if (strchr(addr, ':')) {
        unsigned groups = 0;
        size_t i = 0;
        for (; addr[i] && i + 4 < len; i++) {
            if (addr[i] == ':' && ++groups == 3)
                break;
            out[i] = addr[i];
        }
        snprintf(out + i, len - i, "::/48");
        return;
    }
    const char *last = strrchr(addr, '.');
    size_t keep = last ? (size_t)(last - addr) : 0;
    if (keep + 6 > len)
        keep = len - 6;
    snprintf(out, len, "%.*s.0/24", (int)keep, addr);
}

static void log_line(struct chat *c, const struct chat_user *u, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static void log_line(struct chat *c, const struct chat_user *u, const char *fmt, ...)
{
    if (!c->conf.log)
        return;
    char text[2600];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(text, sizeof text, fmt, ap);
    va_end(ap);
    sb_log(SB_LOG_INFO, "chat: %s (%s): %s", u->name ? u->name : "-", u->addr, text);
}

/* ---- names ---------------------------------------------------------------- */

/* A nickname or room name as sent: valid UTF-8 (jansson checked it), no
 * control characters, no space at either end, 1..max_chars characters and
 * at most max_bytes bytes. */
static bool name_ok(const char *s, size_t max_chars, size_t max_bytes)
{
    size_t len = strlen(s), chars = 0;
    if (len == 0 || len > max_bytes || isspace((unsigned char)s[0]) ||
        isspace((unsigned char)s[len - 1]))
        return false;
    for (size_t i = 0; i < len; i++) {
        unsigned char ch = (unsigned char)s[i];
        if (ch < 0x20 || ch == 0x7f)
            return false;
        /* U+0080..U+009F (C1 controls) and U+2028/2029 (line breaks). */
        if (ch == 0xc2 && i + 1 < len && (unsigned char)s[i + 1] < 0xa0)
            return false;
        if (ch == 0xe2 && i + 2 < len && (unsigned char)s[i + 1] == 0x80 &&
            ((unsigned char)s[i + 2] == 0xa8 || (unsigned char)s[i + 2] == 0xa9))
            return false;
        if ((ch & 0xc0) != 0x80)
            chars++;
    }
    return chars <= max_chars;
}

static struct chat_user *member_named(const struct chat_room *r, const char *name,
                                      const struct chat_user *except)
{
    for (struct chat_user *m = r->members.head; m; m = m->member.next)
        if (m != except && strcasecmp(m->name, name) == 0)
            return m;
    return NULL;
}

/* `name` checked for `u`; on failure an error frame and NULL. */
static const char *nickname_arg(struct chat *c, struct chat_user *u, json_t *req,
                                const char *ref)
{
    const char *name = json_string_value(json_object_get(req, "name"));
    if (!name) {
        send_error(c, u, "bad_request", ref, "a nickname is needed (\"name\")");
        return NULL;
    }
    if (!name_ok(name, c->conf.max_name_length, 4 * c->conf.max_name_length)) {
        char why[120];
        snprintf(why, sizeof why, "a nickname has 1 to %u characters, no control "
                 "characters and no space at either end", c->conf.max_name_length);
        send_error(c, u, "name_invalid", ref, why);
        return NULL;
    }
    return name;
}

static int set_name(struct chat_user *u, const char *name)
{
    char *copy = strdup(name);
    if (!copy)
        return -1;
    free(u->name);
    u->name = copy;
    return 0;
}

/* ---- rooms ---------------------------------------------------------------- */

static struct chat_room *room_find(struct chat *c, const char *name)
{
    for (struct chat_room *r = c->rooms; r; r = r->next)
        if (strcmp(r->name, name) == 0)
            return r;
    return NULL;
}

static struct chat_room *room_find_nocase(struct chat *c, const char *name)
{
    for (struct chat_room *r = c->rooms; r; r = r->next)
        if (strcasecmp(r->name, name) == 0)
            return r;
    return NULL;
}

static struct chat_room *room_new(struct chat *c, const char *name, enum room_kind kind)
{
    struct chat_room *r = calloc(1, sizeof *r);
    if (!r || !(r->name = strdup(name)) ||
        (c->conf.history && !(r->history = calloc(c->conf.history, sizeof *r->history)))) {
        if (r)
            free(r->name);
        free(r);
        return NULL;
    }
    r->kind = kind;
    r->listed = kind == ROOM_OPEN;
    r->next_id = 1;
    r->next = c->rooms;
    c->rooms = r;
    c->rooms_dirty = true;
    return r;
}

static void room_free(struct chat *c, struct chat_room *r)
{
    for (struct chat_room **p = &c->rooms; *p; p = &(*p)->next)
        if (*p == r) {
            *p = r->next;
            break;
        }
    for (unsigned i = 0; i < r->hist_count; i++)
        dash_msg_unref(r->history[(r->hist_head + i) % c->conf.history]);
    if (r->creator)
        for (struct chat_user *u = c->all.head; u; u = u->all.next)
            if (u->id == r->creator && u->rooms_created)
                u->rooms_created--;
    free(r->history);
    free(r->name);
    free(r);
    c->rooms_dirty = true;
}

/* The user leaves its room; `announce` tells the others. An emptied room
 * that is not fixed goes away. */
static void room_leave(struct chat *c, struct chat_user *u, bool announce)
{
    struct chat_room *r = u->room;
    if (!r || u->place != IN_ROOM)
        return;
    list_remove(&r->members, u, &u->member);
    u->room = NULL;
    u->place = LOBBY;
    u->typing = false;
    c->rooms_dirty = true;
    log_line(c, u, "left %s", r->name);
    if (announce && r->members.n)
        publish(c, r, "presence", json_pack("{s:s, s:s, s:o, s:o}", "event", "leave",
                                            "name", u->name, "users",
                                            member_names(r, (size_t)-1), "ts", json_now(c)));
    if (r->members.n == 0 && !r->fixed)
        room_free(c, r);
}

/* "joined" for `u` in its room: the frame is built by jansson, then the
 * history (already serialised message frames) is spliced in as raw JSON. */
static void send_joined(struct chat *c, struct chat_user *u, bool resumed)
{
    struct chat_room *r = u->room;
    json_t *o = json_pack("{s:s, s:s, s:s, s:s, s:o, s:s, s:b}", "type", "joined",
                          "room", r->name, "kind", room_kind_names[r->kind], "name",
                          u->name, "users", member_names(r, (size_t)-1),
                          "resume", u->resume, "resumed", resumed);
    char *head = o ? json_dumps(o, JSON_COMPACT | JSON_PRESERVE_ORDER) : NULL;
    json_decref(o);
    if (!head)
        return;
    size_t head_len = strlen(head) - 1;     /* without the closing brace */
    size_t len = head_len + sizeof ",\"history\":[]}";
    for (unsigned i = 0; i < r->hist_count; i++)
        len += r->history[(r->hist_head + i) % c->conf.history]->len + 1;
    char *text = malloc(len);
    if (text) {
        char *p = text;
        memcpy(p, head, head_len);
        p += head_len;
        p += sprintf(p, ",\"history\":[");
        for (unsigned i = 0; i < r->hist_count; i++) {
            const struct dash_msg *m = r->history[(r->hist_head + i) % c->conf.history];
            if (i)
                *p++ = ',';
            memcpy(p, m->data + LWS_PRE, m->len);
            p += m->len;
        }
        p += sprintf(p, "]}");
        struct dash_msg *m = dash_msg_new(text, (size_t)(p - text));
        send_msg(c, u, m);
        dash_msg_unref(m);
    }
    free(text);
    free(head);
}

/* Put `u` (named already, in no room) into `r`, without a word. */
static void room_add(struct chat *c, struct chat_user *u, struct chat_room *r)
{
    line_leave(u);
    u->watching_rooms = false;
    list_push(&r->members, u, &u->member, false);
    u->room = r;
    u->place = IN_ROOM;
    c->rooms_dirty = true;
    log_line(c, u, "joined %s", r->name);
}

/* …and tell it and the others. */
static void room_enter(struct chat *c, struct chat_user *u, struct chat_room *r)
{
    room_add(c, u, r);
    send_joined(c, u, false);
    if (r->members.n > 1)
        publish(c, r, "presence", json_pack("{s:s, s:s, s:o, s:o}", "event", "join",
                                            "name", u->name, "users",
                                            member_names(r, (size_t)-1), "ts", json_now(c)));
}

static json_t *rooms_list(struct chat *c, const struct chat_user *viewer)
{
    json_t *a = json_array();
    /* Fixed rooms first, in their configured order (chat_new created them
     * last to first at the head), then the others, newest first. */
    size_t n = 0;
    for (struct chat_room *r = c->rooms; r; r = r->next)
        n++;
    struct chat_room **v = calloc(n ? n : 1, sizeof *v);
    if (!v)
        return a;
    size_t i = 0;
    for (struct chat_room *r = c->rooms; r; r = r->next)
        if (r->fixed)
            v[i++] = r;
    for (struct chat_room *r = c->rooms; r; r = r->next)
        if (!r->fixed)
            v[i++] = r;
    for (size_t k = 0; k < i; k++) {
        struct chat_room *r = v[k];
        if (r->kind != ROOM_OPEN || (!r->listed && r != viewer->room))
            continue;
        json_array_append_new(a, json_pack("{s:s, s:I, s:o, s:b}", "name", r->name,
                                           "users", (json_int_t)r->members.n, "names",
                                           member_names(r, ROOMS_NAMES_SHOWN),
                                           "fixed", r->fixed));
    }
    free(v);
    return a;
}

static void send_rooms(struct chat *c, struct chat_user *u)
{
    send_frame(c, u, "rooms", json_pack("{s:o}", "rooms", rooms_list(c, u)));
}

/* ---- the support queue ---------------------------------------------------- */

static void queue_changed(struct chat *c)
{
    char ts[32];
    int64_t now_ms = c->ops->wall_ms(c->ctx);
    unsigned pos = 0;
    json_t *customers = json_array();
    for (struct chat_user *q = c->queue.head; q; q = q->line_link.next) {
        pos++;
        iso_time(q->queued_wall_ms, ts, sizeof ts);
        send_frame(c, q, "queued", json_pack("{s:I, s:I, s:s}", "position", (json_int_t)pos,
                                             "waiting", (json_int_t)c->queue.n, "since", ts));
        json_array_append_new(customers, json_pack("{s:s, s:s, s:I}", "name", q->name,
                                                   "since", ts, "waited_s",
                                                   (json_int_t)((now_ms - q->queued_wall_ms)
                                                                / 1000)));
    }
    struct dash_msg *m = frame("queue", json_pack("{s:o}", "customers", customers));
    for (struct chat_user *s = c->staff_watch.head; s; s = s->line_link.next)
        send_msg(c, s, m);
    dash_msg_unref(m);
}

static void queue_add(struct chat *c, struct chat_user *u, bool front)
{
    line_join(u, &c->queue, front);
    u->place = QUEUED;
    queue_changed(c);
}

/* An offered customer did not arrive (or its staff member went away):
 * back to the front of the queue. */
static void offer_undo(struct chat *c, struct chat_user *cust, const char *why)
{
    struct chat_room *r = cust->room;
    cust->room = NULL;
    log_line(c, cust, "support offer undone (%s)", why);
    if (r) {
        /* The staff member is told and goes back to watching the queue. */
        struct chat_user *staff = r->members.head;
        while (staff) {
            struct chat_user *next = staff->member.next;
            send_frame(c, staff, "no_show", json_pack("{s:s}", "name", cust->name));
            send_frame(c, staff, "left", json_pack("{s:s, s:s}", "room", r->name,
                                                   "reason", "no_show"));
            room_leave(c, staff, false);
            if (staff->conn) {
                staff->place = STAFF_WATCH;
                line_join(staff, &c->staff_watch, false);
            }
            staff = next;
        }
    }
    queue_add(c, cust, true);
}

/* ---- leaving whatever it is in --------------------------------------------- */

static void leave_all(struct chat *c, struct chat_user *u, bool announce)
{
    switch (u->place) {
    case IN_ROOM: {
        struct chat_room *r = u->room;
        /* A staff member leaving a support room before the customer
         * arrived gives the customer its place back. */
        if (r->kind == ROOM_SUPPORT)
            for (struct chat_user *o = c->all.head; o; o = o->all.next)
                if (o->place == OFFERED && o->room == r) {
                    o->room = NULL;
                    queue_add(c, o, true);
                    send_frame(c, o, "left", json_pack("{s:s, s:s}", "room", r->name,
                                                       "reason", "closed"));
                }
        room_leave(c, u, announce);
        break;
    }
    case QUEUED:
        line_leave(u);
        u->place = LOBBY;
        queue_changed(c);
        break;
    case OFFERED: {
        struct chat_room *r = u->room;
        u->room = NULL;
        u->place = LOBBY;
        if (r)
            for (struct chat_user *s = r->members.head; s;) {
                struct chat_user *next = s->member.next;
                send_frame(c, s, "no_show", json_pack("{s:s}", "name", u->name));
                send_frame(c, s, "left", json_pack("{s:s, s:s}", "room", r->name,
                                                   "reason", "no_show"));
                room_leave(c, s, false);
                if (s->conn) {
                    s->place = STAFF_WATCH;
                    line_join(s, &c->staff_watch, false);
                }
                s = next;
            }
        queue_changed(c);
        break;
    }
    case RANDOM_WAIT:
    case STAFF_WATCH:
        line_leave(u);
        u->place = LOBBY;
        break;
    case LOBBY:
        break;
    }
    u->watching_rooms = false;
}

/* ---- requests --------------------------------------------------------------- */

static bool mode_on(struct chat *c, struct chat_user *u, enum conf_chat_mode m,
                    const char *ref)
{
    if (c->conf.modes & (1u << m))
        return true;
    char why[80];
    snprintf(why, sizeof why, "the %s mode is not enabled here", conf_chat_mode_name(m));
    send_error(c, u, "mode_disabled", ref, why);
    return false;
}

/* Token bucket: `rate` a second, `burst` at once. */
static bool rate_ok(struct chat *c, struct chat_user *u)
{
    int64_t now = mono_us(c);
    u->tokens += (double)(now - u->tokens_us) * c->conf.rate / 1e6;
    if (u->tokens > c->conf.burst)
        u->tokens = c->conf.burst;
    u->tokens_us = now;
    if (u->tokens < 1)
        return false;
    u->tokens -= 1;
    return true;
}

static void do_join(struct chat *c, struct chat_user *u, json_t *req, bool create)
{
    const char *ref = create ? "create" : "join";
    if (!mode_on(c, u, CONF_CHAT_ROOMS, ref))
        return;
    const char *room = json_string_value(json_object_get(req, "room"));
    if (!room) {
        send_error(c, u, "bad_request", ref, "a room name is needed (\"room\")");
        return;
    }
    const char *name = nickname_arg(c, u, req, ref);
    if (!name)
        return;
    struct chat_room *r;
    if (create) {
        if (!c->conf.addable_rooms) {
            send_error(c, u, "rooms_locked", ref, "new rooms cannot be added here");
            return;
        }
        if (!name_ok(room, ROOM_NAME_MAX, ROOM_NAME_MAX)) {
            send_error(c, u, "room_invalid", ref, "a room name has 1 to 40 bytes, no "
                       "control characters and no space at either end");
            return;
        }
        if (room_find_nocase(c, room) || strncasecmp(room, "support-", 8) == 0 ||
            strncasecmp(room, "random-", 7) == 0) {
            send_error(c, u, "room_exists", ref, "a room of that name exists: join it");
            return;
        }
        if (u->rooms_created >= c->conf.max_rooms_per_user) {
            char why[80];
            snprintf(why, sizeof why, "you may have at most %u rooms of your own",
                     c->conf.max_rooms_per_user);
            send_error(c, u, "room_limit", ref, why);
            return;
        }
        leave_all(c, u, true);
        if (set_name(u, name) < 0 || !(r = room_new(c, room, ROOM_OPEN)))
            return;
        r->listed = c->conf.addable_rooms_visible;
        r->creator = u->id;
        u->rooms_created++;
    } else {
        r = room_find(c, room);
        if (!r || r->kind != ROOM_OPEN) {
            send_error(c, u, "no_such_room", ref, "there is no such room");
            return;
        }
        if (u->place == IN_ROOM && u->room == r) {
            send_error(c, u, "bad_request", ref, "you are in this room already");
            return;
        }
        if (member_named(r, name, u)) {
            send_error(c, u, "name_taken", ref, "someone in this room has that "
                       "nickname: pick another");
            return;
        }
        leave_all(c, u, true);
        /* Leaving may have emptied and freed a room, never `r`: `u` was not
         * in it. */
        if (set_name(u, name) < 0)
            return;
    }
    room_enter(c, u, r);
}

static void do_say(struct chat *c, struct chat_user *u, json_t *req)
{
    const char *text = json_string_value(json_object_get(req, "text"));
    if (!text) {
        send_error(c, u, "bad_request", "say", "a message needs \"text\"");
        return;
    }
    size_t len = json_string_length(json_object_get(req, "text"));
    if (len != strlen(text)) {
        send_error(c, u, "bad_request", "say", "a message cannot contain NUL");
        return;
    }
    if (len > c->conf.max_message_bytes) {
        char why[80];
        snprintf(why, sizeof why, "a message has at most %u bytes", c->conf.max_message_bytes);
        send_error(c, u, "too_long", "say", why);
        return;
    }
    size_t blank = 0;
    while (blank < len && isspace((unsigned char)text[blank]))
        blank++;
    if (blank == len) {
        send_error(c, u, "bad_request", "say", "an empty message is not sent");
        return;
    }
    if (u->place != IN_ROOM) {
        send_error(c, u, "not_in_room", "say", "join a room first");
        return;
    }
    struct chat_room *r = u->room;
    c->messages++;
    u->typing = false;
    log_line(c, u, "said in %s: %s", r->name, text);
    publish(c, r, "message", json_pack("{s:I, s:s, s:s, s:o}", "id",
                                       (json_int_t)r->next_id++, "from", u->name,
                                       "text", text, "ts", json_now(c)));
}

static void do_typing(struct chat *c, struct chat_user *u, json_t *req)
{
    if (u->place != IN_ROOM)
        return;                 /* stale indicator after a leave: ignore */
    bool active = json_is_true(json_object_get(req, "active"));
    int64_t now = mono_us(c);
    if (active == u->typing && (!active || now - u->typing_relayed_us < TYPING_REPEAT_US))
        return;
    u->typing = active;
    u->typing_relayed_us = now;
    publish(c, u->room, "typing", json_pack("{s:s, s:b}", "name", u->name, "active", active));
}

static void do_rename(struct chat *c, struct chat_user *u, json_t *req)
{
    if (u->place != IN_ROOM) {
        send_error(c, u, "not_in_room", "rename", "join a room first");
        return;
    }
    const char *name = nickname_arg(c, u, req, "rename");
    if (!name)
        return;
    if (member_named(u->room, name, u)) {
        send_error(c, u, "name_taken", "rename", "someone in this room has that "
                   "nickname: pick another");
        return;
    }
    if (strcmp(name, u->name) == 0)
        return;                 /* nothing changes, nothing to announce */
    char *old = u->name;
    u->name = NULL;
    if (set_name(u, name) < 0) {
        u->name = old;
        return;
    }
    c->rooms_dirty = true;
    log_line(c, u, "was %s", old);
    publish(c, u->room, "presence", json_pack("{s:s, s:s, s:s, s:o, s:o}", "event",
                                              "rename", "name", u->name, "old", old,
                                              "users", member_names(u->room, (size_t)-1),
                                              "ts", json_now(c)));
    free(old);
}

static void do_support(struct chat *c, struct chat_user *u, json_t *req)
{
    if (!mode_on(c, u, CONF_CHAT_SUPPORT, "support"))
        return;
    if (u->place == QUEUED || u->place == OFFERED) {
        send_error(c, u, "busy", "support", "you are in the queue already");
        return;
    }
    const char *name = nickname_arg(c, u, req, "support");
    if (!name)
        return;
    leave_all(c, u, true);
    if (set_name(u, name) < 0)
        return;
    u->queued_wall_ms = c->ops->wall_ms(c->ctx);
    log_line(c, u, "asked for help");
    queue_add(c, u, false);
}

static void do_staff(struct chat *c, struct chat_user *u)
{
    if (!mode_on(c, u, CONF_CHAT_SUPPORT, "staff"))
        return;
    if (!u->staff) {
        send_error(c, u, "not_staff", "staff", "staff only: open /chat/staff/ and "
                   "log in");
        return;
    }
    leave_all(c, u, true);
    u->place = STAFF_WATCH;
    line_join(u, &c->staff_watch, false);
    queue_changed(c);
}

static void do_take(struct chat *c, struct chat_user *u, json_t *req)
{
    if (!mode_on(c, u, CONF_CHAT_SUPPORT, "take"))
        return;
    if (!u->staff) {
        send_error(c, u, "not_staff", "take", "staff only");
        return;
    }
    const char *name = nickname_arg(c, u, req, "take");
    if (!name)
        return;
    /* The oldest customer who is here: one whose page is reconnecting
     * keeps its place, but would only cost the staff member a no-show. */
    struct chat_user *cust = c->queue.head;
    while (cust && !cust->conn)
        cust = cust->line_link.next;
    if (!cust) {
        send_error(c, u, "queue_empty", "take", c->queue.n ? "nobody who is waiting is "
                   "connected right now" : "nobody is waiting");
        return;
    }
    leave_all(c, u, true);
    char room[32];
    snprintf(room, sizeof room, "support-%llu", (unsigned long long)++c->next_private_room);
    struct chat_room *r = room_new(c, room, ROOM_SUPPORT);
    if (!r || set_name(u, name) < 0)
        return;
    line_leave(cust);
    cust->place = OFFERED;
    cust->room = r;
    cust->offer_until_us = mono_us(c) + (int64_t)c->conf.no_show_timeout_ms * 1000;
    log_line(c, u, "took %s into %s", cust->name, r->name);
    room_enter(c, u, r);
    send_frame(c, cust, "offer", json_pack("{s:s, s:s}", "room", r->name, "staff", u->name));
    queue_changed(c);
}

static void do_arrive(struct chat *c, struct chat_user *u)
{
    if (u->place != OFFERED || !u->room) {
        send_error(c, u, "bad_request", "arrive", "there is no offer to accept");
        return;
    }
    struct chat_room *r = u->room;
    u->room = NULL;
    u->place = LOBBY;
    if (member_named(r, u->name, u)) {
        char alt[160];
        snprintf(alt, sizeof alt, "%s (customer)", u->name);
        set_name(u, alt);
    }
    room_enter(c, u, r);
}

static void do_random(struct chat *c, struct chat_user *u, json_t *req)
{
    if (!mode_on(c, u, CONF_CHAT_RANDOM, "random"))
        return;
    const char *name = nickname_arg(c, u, req, "random");
    if (!name)
        return;
    leave_all(c, u, true);
    if (set_name(u, name) < 0)
        return;
    struct chat_user *peer = c->random_wait.head;
    while (peer && (peer->id == u->last_partner || u->id == peer->last_partner))
        peer = peer->line_link.next;
    if (!peer) {
        u->place = RANDOM_WAIT;
        line_join(u, &c->random_wait, false);
        send_frame(c, u, "waiting", NULL);
        return;
    }
    line_leave(peer);
    peer->place = LOBBY;
    char room[32];
    snprintf(room, sizeof room, "random-%llu", (unsigned long long)++c->next_private_room);
    struct chat_room *r = room_new(c, room, ROOM_RANDOM);
    if (!r)
        return;
    peer->last_partner = u->id;
    u->last_partner = peer->id;
    if (strcasecmp(peer->name, u->name) == 0) {
        char alt[160];
        snprintf(alt, sizeof alt, "%s (2)", u->name);
        set_name(u, alt);
    }
    /* Both are in before either hears of it: each sees the other at once. */
    room_add(c, peer, r);
    room_add(c, u, r);
    send_joined(c, peer, false);
    send_joined(c, u, false);
}

static void user_free(struct chat *c, struct chat_user *u);

/* A reconnecting page presents the token of its old user: the old user
 * takes this connection over, keeps its room or queue place and is not
 * announced again. Returns the user the connection now belongs to. */
static struct chat_user *do_resume(struct chat *c, struct chat_user *u, json_t *req)
{
    const char *token = json_string_value(json_object_get(req, "token"));
    struct chat_user *old = NULL;
    if (token && strlen(token) == sizeof u->resume - 1)
        for (struct chat_user *o = c->all.head; o; o = o->all.next)
            if (o != u && strcmp(o->resume, token) == 0) {
                old = o;
                break;
            }
    if (!old || u->place != LOBBY ||
        !(old->place == IN_ROOM || old->place == QUEUED || old->place == OFFERED)) {
        send_error(c, u, "resume_failed", "resume", "that place is gone: join again");
        return u;
    }
    /* An old connection still attached (a half-open socket the server has
     * not noticed yet) is closed: the page has moved on. */
    if (old->conn) {
        void *stale = old->conn;
        old->conn = NULL;
        c->connected--;
        c->ops->drop(c->ctx, stale);
    }
    old->conn = u->conn;
    old->away_until_us = 0;
    old->staff = old->staff || u->staff;
    memcpy(old->addr, u->addr, sizeof old->addr);
    old->tokens = u->tokens < old->tokens ? u->tokens : old->tokens;
    u->conn = NULL;             /* `old` holds the connection now (and counts) */
    user_free(c, u);
    log_line(c, old, "resumed");
    switch (old->place) {
    case IN_ROOM:
        send_joined(c, old, true);
        break;
    case QUEUED:
        queue_changed(c);
        break;
    case OFFERED:
        send_frame(c, old, "offer", json_pack("{s:s, s:s}", "room", old->room->name,
                                              "staff", old->room->members.head
                                              ? old->room->members.head->name : ""));
        break;
    default:
        break;
    }
    return old;
}

/* ---- entry points ------------------------------------------------------------- */

void chat_receive(struct chat *c, struct chat_user **userp, const char *text, size_t len)
{
    struct chat_user *u = *userp;
    json_error_t jerr;
    json_t *req = json_loadb(text, len, JSON_REJECT_DUPLICATES, &jerr);
    if (!req || !json_is_object(req)) {
        send_error(c, u, "bad_json", NULL, "a message is one JSON object");
        json_decref(req);
        return;
    }
    const char *type = json_string_value(json_object_get(req, "type"));
    if (!type) {
        send_error(c, u, "bad_request", NULL, "a message needs a \"type\"");
        json_decref(req);
        return;
    }
    /* Typing indicators are throttled on their own; everything else spends
     * from the bucket, so a flood of joins is refused like one of says. */
    if (strcmp(type, "typing") == 0) {
        do_typing(c, u, req);
    } else if (!rate_ok(c, u)) {
        char why[96];
        snprintf(why, sizeof why, "too fast: at most %u messages a second (%u at once)",
                 c->conf.rate, c->conf.burst);
        send_error(c, u, "rate_limited", type, why);
    } else if (strcmp(type, "say") == 0) {
        do_say(c, u, req);
    } else if (strcmp(type, "join") == 0) {
        do_join(c, u, req, false);
    } else if (strcmp(type, "create") == 0) {
        do_join(c, u, req, true);
    } else if (strcmp(type, "rooms") == 0) {
        if (mode_on(c, u, CONF_CHAT_ROOMS, "rooms")) {
            u->watching_rooms = u->place == LOBBY;
            send_rooms(c, u);
        }
    } else if (strcmp(type, "leave") == 0) {
        struct chat_room *r = u->place == IN_ROOM ? u->room : NULL;
        char *room = r ? strdup(r->name) : NULL;
        leave_all(c, u, true);
        send_frame(c, u, "left", json_pack("{s:s?, s:s}", "room", room, "reason", "leave"));
        free(room);
    } else if (strcmp(type, "rename") == 0) {
        do_rename(c, u, req);
    } else if (strcmp(type, "support") == 0) {
        do_support(c, u, req);
    } else if (strcmp(type, "arrive") == 0) {
        do_arrive(c, u);
    } else if (strcmp(type, "staff") == 0) {
        do_staff(c, u);
    } else if (strcmp(type, "take") == 0) {
        do_take(c, u, req);
    } else if (strcmp(type, "random") == 0) {
        do_random(c, u, req);
    } else if (strcmp(type, "resume") == 0) {
        *userp = do_resume(c, u, req);
    } else {
        send_error(c, u, "unknown_type", type, "unknown message type");
    }
    json_decref(req);
}

void chat_refuse_oversized(struct chat *c, struct chat_user *u)
{
    char why[96];
    snprintf(why, sizeof why, "a message has at most %u bytes", c->conf.max_message_bytes);
    send_error(c, u, "too_long", NULL, why);
}

struct chat_user *chat_connect(struct chat *c, void *conn, bool staff, const char *addr)
{
    struct chat_user *u = calloc(1, sizeof *u);
    if (!u)
        return NULL;
    unsigned char raw[16];
    if (getrandom(raw, sizeof raw, 0) != (ssize_t)sizeof raw) {
        free(u);
        return NULL;
    }
    for (size_t i = 0; i < sizeof raw; i++)
        sprintf(u->resume + 2 * i, "%02x", raw[i]);
    u->id = ++c->next_user_id;
    u->conn = conn;
    u->staff = staff;
    truncate_addr(addr, u->addr, sizeof u->addr);
    u->tokens = c->conf.burst;
    u->tokens_us = mono_us(c);
    list_push(&c->all, u, &u->all, false);
    c->connected++;

    json_t *modes = json_array();
    for (int m = 0; m < CONF_CHAT_MODES; m++)
        if (c->conf.modes & (1u << m))
            json_array_append_new(modes, json_string(conf_chat_mode_name(m)));
    send_frame(c, u, "welcome", json_pack(
        "{s:o, s:s, s:b, s:s, s:b, s:b, s:{s:I, s:I, s:I, s:I, s:I}}",
        "modes", modes, "default", conf_chat_mode_name(c->conf.default_mode),
        "staff", staff, "resume", u->resume, "addable_rooms", c->conf.addable_rooms,
        "addable_rooms_visible", c->conf.addable_rooms_visible, "limits",
        "max_name_length", (json_int_t)c->conf.max_name_length,
        "max_message_bytes", (json_int_t)c->conf.max_message_bytes,
        "rate", (json_int_t)c->conf.rate, "burst", (json_int_t)c->conf.burst,
        "history", (json_int_t)c->conf.history));
    return u;
}

static void user_free(struct chat *c, struct chat_user *u)
{
    leave_all(c, u, true);
    line_leave(u);
    if (u->conn)
        c->connected--;
    list_remove(&c->all, u, &u->all);
    free(u->name);
    free(u);
}

void chat_disconnect(struct chat *c, struct chat_user *u)
{
    if (!u)
        return;
    bool keep = c->conf.reconnect_grace_ms > 0 &&
                (u->place == IN_ROOM || u->place == QUEUED || u->place == OFFERED);
    if (!keep) {
        user_free(c, u);
        return;
    }
    u->conn = NULL;
    c->connected--;
    u->away_until_us = mono_us(c) + (int64_t)c->conf.reconnect_grace_ms * 1000;
    if (u->typing && u->place == IN_ROOM) {
        u->typing = false;
        publish(c, u->room, "typing", json_pack("{s:s, s:b}", "name", u->name,
                                                "active", false));
    }
}

int64_t chat_tick(struct chat *c)
{
    int64_t now = mono_us(c);
    for (struct chat_user *u = c->all.head; u;) {
        struct chat_user *next = u->all.next;
        if (u->place == OFFERED && now >= u->offer_until_us)
            offer_undo(c, u, "no show");
        if (!u->conn && u->away_until_us && now >= u->away_until_us)
            user_free(c, u);
        u = next;
    }
    if (c->rooms_dirty && now - c->rooms_pushed_us >= ROOMS_PUSH_US) {
        c->rooms_dirty = false;
        c->rooms_pushed_us = now;
        for (struct chat_user *u = c->all.head; u; u = u->all.next)
            if (u->watching_rooms && u->place == LOBBY && u->conn)
                send_rooms(c, u);
    }
    /* Staff see minutes waited grow without any change in the queue. */
    return TICK_US;
}

void chat_deliver(struct chat *c, const char *room, const char *json, size_t len)
{
    struct chat_room *r = room_find(c, room);
    if (!r)
        return;
    struct dash_msg *m = dash_msg_new(json, len);
    if (!m)
        return;
    if (c->conf.history && strncmp(json, "{\"type\":\"message\"", 17) == 0) {
        unsigned cap = c->conf.history;
        if (r->hist_count == cap) {
            dash_msg_unref(r->history[r->hist_head]);
            r->history[r->hist_head] = m;
            r->hist_head = (r->hist_head + 1) % cap;
        } else {
            r->history[(r->hist_head + r->hist_count++) % cap] = m;
        }
        m->refs++;
    }
    for (struct chat_user *u = r->members.head; u; u = u->member.next)
        send_msg(c, u, m);
    dash_msg_unref(m);
}

/* ---- the in-process bus ------------------------------------------------------- */

struct chat_bus_local {
    struct chat_bus base;
    struct chat *chat;
};

static int local_publish(struct chat_bus *bus, const char *room, const char *json,
                         size_t len)
{
    chat_deliver(((struct chat_bus_local *)bus)->chat, room, json, len);
    return 0;
}

static void local_free(struct chat_bus *bus)
{
    free(bus);
}

static const struct chat_bus_ops local_ops = { local_publish, local_free };

struct chat_bus *chat_bus_local_new(struct chat *chat)
{
    struct chat_bus_local *b = calloc(1, sizeof *b);
    if (!b)
        return NULL;
    b->base.ops = &local_ops;
    b->chat = chat;
    return &b->base;
}

/* ---- life cycle ----------------------------------------------------------------- */

struct chat *chat_new(const struct conf_chat *conf, const struct chat_ops *ops, void *ctx)
{
    struct chat *c = calloc(1, sizeof *c);
    if (!c)
        return NULL;
    c->conf = *conf;
    c->conf.mode_list = NULL;
    c->conf.n_mode_list = 0;
    c->conf.rooms = NULL;
    c->conf.n_rooms = 0;
    c->ops = ops;
    c->ctx = ctx;
    if (!(c->bus = chat_bus_local_new(c))) {
        free(c);
        return NULL;
    }
    /* Created last to first, so that the list shows them in order. */
    for (size_t i = conf->n_rooms; i-- > 0;) {
        struct chat_room *r = room_new(c, conf->rooms[i].value, ROOM_OPEN);
        if (!r) {
            chat_free(c);
            return NULL;
        }
        r->fixed = true;
    }
    return c;
}

void chat_set_bus(struct chat *c, struct chat_bus *bus)
{
    c->bus->ops->free(c->bus);
    c->bus = bus;
}

void chat_free(struct chat *c)
{
    if (!c)
        return;
    while (c->all.head) {
        struct chat_user *u = c->all.head;
        u->conn = NULL;         /* the transport closes its connections itself */
        u->place = LOBBY;       /* no announcements while tearing down */
        u->room = NULL;
        line_leave(u);
        list_remove(&c->all, u, &u->all);
        free(u->name);
        free(u);
    }
    while (c->rooms)
        room_free(c, c->rooms);
    c->bus->ops->free(c->bus);
    free(c);
}

void chat_counts(const struct chat *c, struct chat_counts *out)
{
    memset(out, 0, sizeof *out);
    out->users = c->all.n;
    out->connected = c->connected;
    for (const struct chat_room *r = c->rooms; r; r = r->next)
        out->rooms++;
    out->queued = c->queue.n;
    out->random_waiting = c->random_wait.n;
    out->messages = c->messages;
    out->refused = c->refused;
}
