/*
 * test_chat.c - the chat's state machines (dashboard/chat.c) without a
 * network: a recording transport keeps each connection's frames, and the
 * clocks are the test's, so grace periods and no-show timeouts run in no
 * time. Rooms (join, leave, rename clash, history, deletion of an emptied
 * user room), the support queue (order, positions, re-queue on no-show, a
 * leaving customer removed), random match-ups, limits, resume, and a bus
 * that is not the local one.
 */
#include "check.h"

#include <jansson.h>
#include <stdlib.h>
#include <string.h>

#include "conf/conf.h"
#include "dashboard/chat.h"
#include "dashboard/dashboard-internal.h"

/* ---- a recording transport ------------------------------------------------ */

#define MAX_FRAMES 256

struct conn {
    struct chat_user *user;
    json_t *frames[MAX_FRAMES];
    size_t n, read;             /* recorded, and consumed by next_frame() */
    bool dropped;
};

static int64_t clock_us = 1000000;

static void rec_send(void *ctx, void *connp, struct dash_msg *m)
{
    struct conn *c = connp;
    if (c->n < MAX_FRAMES)
        c->frames[c->n++] = json_loads((const char *)m->data + LWS_PRE, 0, NULL);
}

static void rec_drop(void *ctx, void *connp)
{
    ((struct conn *)connp)->dropped = true;
}

static int64_t fake_wall_ms(void *ctx) { return 1795000000000 + clock_us / 1000; }
static int64_t fake_mono_us(void *ctx) { return clock_us; }

static const struct chat_ops rec_ops = { rec_send, rec_drop, fake_wall_ms, fake_mono_us };

static struct conf *conf_of(const char *chat_yaml)
{
    char yaml[2048], err[CONF_ERROR_MAX];
    snprintf(yaml, sizeof yaml, "listen: [127.0.0.1:1]\npools: {w: {servers: [127.0.0.1:2]}}\n"
             "chat:\n  enabled: true\n%s", chat_yaml);
    struct conf *c = conf_load_string("test.yaml", yaml, err, sizeof err);
    if (!c)
        fprintf(stderr, "%s\n", err);
    return c;
}

static struct chat *chat_of(const char *chat_yaml, struct conf **confp)
{
    *confp = conf_of(chat_yaml);
    return *confp ? chat_new(&(*confp)->chat, &rec_ops, NULL) : NULL;
}

static struct conn *connect_user(struct chat *chat, bool staff)
{
    struct conn *c = calloc(1, sizeof *c);
    c->user = chat_connect(chat, c, staff, "198.51.100.7");
    return c;
}

static void conn_free(struct conn *c)
{
    for (size_t i = 0; i < c->n; i++)
        json_decref(c->frames[i]);
    free(c);
}

static void say(struct chat *chat, struct conn *c, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static void say(struct chat *chat, struct conn *c, const char *fmt, ...)
{
    char text[4096];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(text, sizeof text, fmt, ap);
    va_end(ap);
    chat_receive(chat, &c->user, text, strlen(text));
}

/* The next unread frame of `type` (others before it are skipped), or NULL. */
static json_t *next_of(struct conn *c, const char *type)
{
    while (c->read < c->n) {
        json_t *f = c->frames[c->read++];
        if (f && strcmp(json_string_value(json_object_get(f, "type")), type) == 0)
            return f;
    }
    return NULL;
}

/* The last frame of `type` ever received, or NULL (does not consume). */
static json_t *last_of(struct conn *c, const char *type)
{
    for (size_t i = c->n; i-- > 0;)
        if (c->frames[i] && strcmp(json_string_value(json_object_get(c->frames[i], "type")),
                                   type) == 0)
            return c->frames[i];
    return NULL;
}

static const char *str(json_t *o, const char *key)
{
    const char *s = json_string_value(json_object_get(o, key));
    return s ? s : "";
}

static long long num(json_t *o, const char *key)
{
    return json_integer_value(json_object_get(o, key));
}

static size_t count_of(struct conn *c, const char *type)
{
    size_t n = 0;
    for (size_t i = 0; i < c->n; i++)
        if (c->frames[i] && strcmp(str(c->frames[i], "type"), type) == 0)
            n++;
    return n;
}

static const char *error_code(struct conn *c)
{
    json_t *e = next_of(c, "error");
    return e ? str(e, "code") : "(none)";
}

/* ---- rooms ------------------------------------------------------------------ */

static void test_join_leave_and_presence(void)
{
    struct conf *conf;
    struct chat *chat = chat_of("", &conf);
    struct conn *a = connect_user(chat, false), *b = connect_user(chat, false);
    CHECK(next_of(a, "welcome"));
    say(chat, a, "{\"type\":\"join\",\"room\":\"Lobby\",\"name\":\"ann\"}");
    json_t *j = next_of(a, "joined");
    CHECK(j && strcmp(str(j, "room"), "Lobby") == 0 && json_array_size(json_object_get(j, "users")) == 1);
    say(chat, b, "{\"type\":\"join\",\"room\":\"Lobby\",\"name\":\"bob\"}");
    json_t *p = next_of(a, "presence");
    CHECK(p && strcmp(str(p, "event"), "join") == 0 && strcmp(str(p, "name"), "bob") == 0);
    CHECK(json_array_size(json_object_get(p, "users")) == 2);
    say(chat, a, "{\"type\":\"say\",\"text\":\"one\"}");
    say(chat, b, "{\"type\":\"say\",\"text\":\"two\"}");
    json_t *m1 = next_of(b, "message"), *m2 = next_of(b, "message");
    CHECK(m1 && m2 && strcmp(str(m1, "text"), "one") == 0 && strcmp(str(m2, "text"), "two") == 0);
    CHECK(m1 && m2 && num(m2, "id") == num(m1, "id") + 1);
    CHECK(m1 && strlen(str(m1, "ts")) == 24 && str(m1, "ts")[23] == 'Z');
    say(chat, b, "{\"type\":\"leave\"}");
    CHECK(next_of(b, "left"));
    p = next_of(a, "presence");
    CHECK(p && strcmp(str(p, "event"), "leave") == 0 && json_array_size(json_object_get(p, "users")) == 1);
    struct chat_counts n;
    chat_counts(chat, &n);
    CHECK(n.rooms == 6 && n.users == 2 && n.connected == 2 && n.messages == 2);
    chat_disconnect(chat, a->user);
    chat_disconnect(chat, b->user);
    chat_free(chat);
    conf_free(conf);
    conn_free(a);
    conn_free(b);
}

static void test_rename_clash_and_history(void)
{
    struct conf *conf;
    struct chat *chat = chat_of("  history: 3\n", &conf);
    struct conn *a = connect_user(chat, false), *b = connect_user(chat, false);
    say(chat, a, "{\"type\":\"join\",\"room\":\"Gym\",\"name\":\"ann\"}");
    say(chat, b, "{\"type\":\"join\",\"room\":\"Gym\",\"name\":\"Ann\"}");
    CHECK(strcmp(error_code(b), "name_taken") == 0);
    say(chat, b, "{\"type\":\"join\",\"room\":\"Gym\",\"name\":\" spaced\"}");
    CHECK(strcmp(error_code(b), "name_invalid") == 0);
    say(chat, b, "{\"type\":\"join\",\"room\":\"Gym\",\"name\":\"%s\"}",
        "abcdefghijklmnopqrstuvwxyz12345");      /* 31 > 30 */
    CHECK(strcmp(error_code(b), "name_invalid") == 0);
    say(chat, b, "{\"type\":\"join\",\"room\":\"Gym\",\"name\":\"bob\"}");
    CHECK(next_of(b, "joined"));
    say(chat, b, "{\"type\":\"rename\",\"name\":\"ANN\"}");
    CHECK(strcmp(error_code(b), "name_taken") == 0);
    say(chat, b, "{\"type\":\"rename\",\"name\":\"robert\"}");
    json_t *p = last_of(a, "presence");
    CHECK(p && strcmp(str(p, "event"), "rename") == 0 && strcmp(str(p, "old"), "bob") == 0);
    for (int i = 0; i < 5; i++) {
        clock_us += 1000000;    /* stay under the rate limit */
        say(chat, a, "{\"type\":\"say\",\"text\":\"m%d\"}", i);
    }
    struct conn *c = connect_user(chat, false);
    say(chat, c, "{\"type\":\"join\",\"room\":\"Gym\",\"name\":\"cat\"}");
    json_t *j = next_of(c, "joined");
    json_t *h = j ? json_object_get(j, "history") : NULL;
    CHECK(json_array_size(h) == 3);
    CHECK(h && strcmp(str(json_array_get(h, 0), "text"), "m2") == 0 &&
          strcmp(str(json_array_get(h, 2), "text"), "m4") == 0);
    chat_free(chat);
    conf_free(conf);
    conn_free(a);
    conn_free(b);
    conn_free(c);
}

static void test_user_room_deleted_when_empty(void)
{
    struct conf *conf;
    struct chat *chat = chat_of("  max_rooms_per_user: 1\n", &conf);
    struct conn *a = connect_user(chat, false), *b = connect_user(chat, false);
    say(chat, a, "{\"type\":\"create\",\"room\":\"Den\",\"name\":\"ann\"}");
    CHECK(next_of(a, "joined"));
    say(chat, b, "{\"type\":\"join\",\"room\":\"Den\",\"name\":\"bob\"}");
    CHECK(next_of(b, "joined"));
    struct chat_counts n;
    chat_counts(chat, &n);
    CHECK(n.rooms == 7);
    say(chat, a, "{\"type\":\"create\",\"room\":\"Den2\",\"name\":\"ann\"}");
    CHECK(strcmp(error_code(a), "room_limit") == 0);
    say(chat, a, "{\"type\":\"leave\"}");
    chat_counts(chat, &n);
    CHECK(n.rooms == 7);                /* bob is still there */
    say(chat, b, "{\"type\":\"leave\"}");
    chat_counts(chat, &n);
    CHECK(n.rooms == 6);
    say(chat, a, "{\"type\":\"join\",\"room\":\"Den\",\"name\":\"ann\"}");
    CHECK(strcmp(error_code(a), "no_such_room") == 0);
    /* A fixed room stays when it empties. */
    say(chat, a, "{\"type\":\"join\",\"room\":\"Casino\",\"name\":\"ann\"}");
    say(chat, a, "{\"type\":\"leave\"}");
    chat_counts(chat, &n);
    CHECK(n.rooms == 6);
    /* The creator's count follows the rooms that exist. */
    say(chat, a, "{\"type\":\"create\",\"room\":\"Den3\",\"name\":\"ann\"}");
    json_t *j = last_of(a, "joined");
    CHECK(j && strcmp(str(j, "room"), "Den3") == 0);
    chat_free(chat);
    conf_free(conf);
    conn_free(a);
    conn_free(b);
}

/* ---- support ------------------------------------------------------------------ */

static void test_support_queue_order_and_no_show(void)
{
    struct conf *conf;
    struct chat *chat = chat_of("  no_show_timeout: 2s\n", &conf);
    struct conn *cust[3], *staff = connect_user(chat, true), *fake = connect_user(chat, false);
    for (int i = 0; i < 3; i++) {
        cust[i] = connect_user(chat, false);
        clock_us += 1000000;
        say(chat, cust[i], "{\"type\":\"support\",\"name\":\"c%d\"}", i);
        json_t *q = last_of(cust[i], "queued");
        CHECK(q && num(q, "position") == i + 1);
    }
    say(chat, fake, "{\"type\":\"take\",\"name\":\"x\"}");
    CHECK(strcmp(error_code(fake), "not_staff") == 0);
    say(chat, staff, "{\"type\":\"staff\"}");
    json_t *q = last_of(staff, "queue");
    json_t *list = q ? json_object_get(q, "customers") : NULL;
    CHECK(json_array_size(list) == 3 && strcmp(str(json_array_get(list, 0), "name"), "c0") == 0);
    CHECK(num(json_array_get(list, 0), "waited_s") == 2);

    /* Take: the oldest is offered; the others move up. */
    say(chat, staff, "{\"type\":\"take\",\"name\":\"sam\"}");
    json_t *offer = last_of(cust[0], "offer");
    CHECK(offer && strcmp(str(offer, "staff"), "sam") == 0);
    CHECK(num(last_of(cust[1], "queued"), "position") == 1);
    CHECK(num(last_of(cust[2], "queued"), "position") == 2);
    /* No show: after the timeout c0 is back at the front. */
    clock_us += 2500000;
    chat_tick(chat);
    CHECK(last_of(staff, "no_show") != NULL);
    CHECK(num(last_of(cust[0], "queued"), "position") == 1);
    CHECK(num(last_of(cust[1], "queued"), "position") == 2);
    list = json_object_get(last_of(staff, "queue"), "customers");
    CHECK(json_array_size(list) == 3 && strcmp(str(json_array_get(list, 0), "name"), "c0") == 0);
    /* Taken again, and this time it arrives. */
    say(chat, staff, "{\"type\":\"take\",\"name\":\"sam\"}");
    say(chat, cust[0], "{\"type\":\"arrive\"}");
    json_t *j = last_of(cust[0], "joined");
    CHECK(j && strcmp(str(j, "kind"), "support") == 0 &&
          json_array_size(json_object_get(j, "users")) == 2);
    clock_us += 5000000;
    chat_tick(chat);
    CHECK(count_of(staff, "no_show") == 1);
    /* A customer who leaves the queue is removed. */
    say(chat, cust[1], "{\"type\":\"leave\"}");
    CHECK(num(last_of(cust[2], "queued"), "position") == 1);
    struct chat_counts n;
    chat_counts(chat, &n);
    CHECK(n.queued == 1);
    /* The support room goes away when both have left. */
    size_t rooms_before = (chat_counts(chat, &n), n.rooms);
    say(chat, cust[0], "{\"type\":\"leave\"}");
    say(chat, staff, "{\"type\":\"leave\"}");
    chat_counts(chat, &n);
    CHECK(n.rooms == rooms_before - 1);
    chat_free(chat);
    conf_free(conf);
    for (int i = 0; i < 3; i++)
        conn_free(cust[i]);
    conn_free(staff);
    conn_free(fake);
}

static void test_queued_customer_keeps_place_across_reconnect(void)
{
    struct conf *conf;
    struct chat *chat = chat_of("  reconnect_grace: 10s\n", &conf);
    struct conn *a = connect_user(chat, false), *b = connect_user(chat, false);
    say(chat, a, "{\"type\":\"support\",\"name\":\"a\"}");
    say(chat, b, "{\"type\":\"support\",\"name\":\"b\"}");
    /* The page keeps the token from "welcome": a dropped customer comes
     * back to its place. */
    char token[40];
    snprintf(token, sizeof token, "%s", str(last_of(a, "welcome"), "resume"));
    CHECK(strlen(token) == 32);
    chat_disconnect(chat, a->user);
    struct conn *a2 = connect_user(chat, false);
    say(chat, a2, "{\"type\":\"resume\",\"token\":\"%s\"}", token);
    CHECK(num(last_of(a2, "queued"), "position") == 1);
    a = (conn_free(a), a2);
    chat_disconnect(chat, a->user);
    struct chat_counts n;
    chat_counts(chat, &n);
    CHECK(n.queued == 2 && n.connected == 1);
    clock_us += 11000000;
    chat_tick(chat);
    chat_counts(chat, &n);
    CHECK(n.queued == 1 && n.users == 1);
    CHECK(num(last_of(b, "queued"), "position") == 1);
    chat_free(chat);
    conf_free(conf);
    conn_free(a);
    conn_free(b);
}

/* ---- random ------------------------------------------------------------------- */

static void test_random_pairs_and_rerolls(void)
{
    struct conf *conf;
    struct chat *chat = chat_of("", &conf);
    struct conn *a = connect_user(chat, false), *b = connect_user(chat, false),
                *c = connect_user(chat, false);
    say(chat, a, "{\"type\":\"random\",\"name\":\"a\"}");
    CHECK(last_of(a, "waiting") != NULL);
    say(chat, b, "{\"type\":\"random\",\"name\":\"b\"}");
    json_t *ja = last_of(a, "joined"), *jb = last_of(b, "joined");
    CHECK(ja && jb && strcmp(str(ja, "room"), str(jb, "room")) == 0);
    CHECK(ja && json_array_size(json_object_get(ja, "users")) == 2);
    /* b re-rolls: not paired with a again at once. */
    say(chat, b, "{\"type\":\"random\",\"name\":\"b\"}");
    CHECK(count_of(b, "waiting") == 1);
    say(chat, a, "{\"type\":\"random\",\"name\":\"a\"}");
    CHECK(count_of(a, "waiting") == 2);
    struct chat_counts n;
    chat_counts(chat, &n);
    CHECK(n.random_waiting == 2);
    say(chat, c, "{\"type\":\"random\",\"name\":\"c\"}");
    json_t *jc = last_of(c, "joined");
    CHECK(jc && json_array_size(json_object_get(jc, "users")) == 2);
    chat_counts(chat, &n);
    CHECK(n.random_waiting == 1);
    /* A waiting user who disconnects is not kept. */
    struct chat_user *waiting = count_of(a, "joined") == 2 ? b->user : a->user;
    chat_disconnect(chat, waiting);
    chat_counts(chat, &n);
    CHECK(n.random_waiting == 0);
    chat_free(chat);
    conf_free(conf);
    conn_free(a);
    conn_free(b);
    conn_free(c);
}

/* ---- limits, errors, resume, bus ------------------------------------------------ */

static void test_limits_and_bad_input(void)
{
    struct conf *conf;
    struct chat *chat = chat_of("  max_message_bytes: 10\n  rate: 2\n  burst: 3\n", &conf);
    struct conn *a = connect_user(chat, false), *b = connect_user(chat, false);
    say(chat, a, "{\"type\":\"join\",\"room\":\"Lobby\",\"name\":\"a\"}");
    say(chat, b, "{\"type\":\"join\",\"room\":\"Lobby\",\"name\":\"b\"}");
    say(chat, a, "{\"type\":\"say\",\"text\":\"12345678901\"}");
    CHECK(strcmp(error_code(a), "too_long") == 0);
    say(chat, a, "not json");
    CHECK(strcmp(error_code(a), "bad_json") == 0);
    say(chat, a, "[1,2]");
    CHECK(strcmp(error_code(a), "bad_json") == 0);
    clock_us += 10000000;      /* the join and the long say spent tokens */
    say(chat, a, "{\"type\":\"fly\"}");
    CHECK(strcmp(error_code(a), "unknown_type") == 0);
    say(chat, a, "{\"text\":\"x\"}");
    CHECK(strcmp(error_code(a), "bad_request") == 0);
    say(chat, a, "{\"type\":\"say\",\"text\":\"   \"}");
    CHECK(strcmp(error_code(a), "bad_request") == 0);
    chat_refuse_oversized(chat, a->user);
    CHECK(strcmp(error_code(a), "too_long") == 0);
    /* The bucket: refill at 2/s, burst 3; everything above counts. */
    clock_us += 10000000;
    size_t before = count_of(b, "message");
    for (int i = 0; i < 10; i++)
        say(chat, a, "{\"type\":\"say\",\"text\":\"f%d\"}", i);
    CHECK(count_of(b, "message") - before == 3);
    CHECK(count_of(a, "error") >= 7);
    clock_us += 1000000;
    say(chat, a, "{\"type\":\"say\",\"text\":\"ok\"}");
    say(chat, a, "{\"type\":\"say\",\"text\":\"ok2\"}");
    say(chat, a, "{\"type\":\"say\",\"text\":\"no\"}");
    CHECK(count_of(b, "message") - before == 5);
    /* b was never limited. */
    say(chat, b, "{\"type\":\"say\",\"text\":\"fine\"}");
    CHECK(strcmp(str(last_of(a, "message"), "text"), "fine") == 0);
    chat_free(chat);
    conf_free(conf);
    conn_free(a);
    conn_free(b);
}

static void test_resume_is_silent_and_takes_over(void)
{
    struct conf *conf;
    struct chat *chat = chat_of("  reconnect_grace: 5s\n", &conf);
    struct conn *a = connect_user(chat, false), *b = connect_user(chat, false);
    say(chat, a, "{\"type\":\"join\",\"room\":\"Dining\",\"name\":\"a\"}");
    char token[40];
    snprintf(token, sizeof token, "%s", str(last_of(a, "joined"), "resume"));
    CHECK(strlen(token) == 32);
    say(chat, b, "{\"type\":\"join\",\"room\":\"Dining\",\"name\":\"b\"}");
    size_t presence_before = count_of(b, "presence");
    /* A half-open old connection: the new one takes over and the old is
     * dropped; nobody hears of it. */
    struct conn *a2 = connect_user(chat, false);
    say(chat, a2, "{\"type\":\"resume\",\"token\":\"%s\"}", token);
    CHECK(a->dropped);
    json_t *j = last_of(a2, "joined");
    CHECK(j && json_is_true(json_object_get(j, "resumed")) && strcmp(str(j, "name"), "a") == 0);
    CHECK(count_of(b, "presence") == presence_before);
    struct chat_counts n;
    chat_counts(chat, &n);
    CHECK(n.users == 2 && n.connected == 2);
    /* Away past the grace: announced gone. */
    chat_disconnect(chat, a2->user);
    clock_us += 4000000;
    chat_tick(chat);
    CHECK(count_of(b, "presence") == presence_before);
    clock_us += 2000000;
    chat_tick(chat);
    json_t *p = last_of(b, "presence");
    CHECK(p && strcmp(str(p, "event"), "leave") == 0 && strcmp(str(p, "name"), "a") == 0);
    struct conn *a3 = connect_user(chat, false);
    say(chat, a3, "{\"type\":\"resume\",\"token\":\"%s\"}", token);
    CHECK(strcmp(error_code(a3), "resume_failed") == 0);
    chat_free(chat);
    conf_free(conf);
    conn_free(a);
    conn_free(a2);
    conn_free(a3);
    conn_free(b);
}

/* A bus that records what is published and delivers it later: a stand-in
 * for a Redis one, to show room events only reach members through it. */
struct recording_bus {
    struct chat_bus base;
    struct chat *chat;
    char *room[16], *json[16];
    int n;
};

static int rb_publish(struct chat_bus *bus, const char *room, const char *json, size_t len)
{
    struct recording_bus *b = (struct recording_bus *)bus;
    if (b->n == 16)
        return -1;
    b->room[b->n] = strdup(room);
    b->json[b->n] = strndup(json, len);
    b->n++;
    return 0;
}

static void rb_free(struct chat_bus *bus)
{
    struct recording_bus *b = (struct recording_bus *)bus;
    for (int i = 0; i < b->n; i++) {
        free(b->room[i]);
        free(b->json[i]);
    }
    free(b);
}

static const struct chat_bus_ops rb_ops = { rb_publish, rb_free };

static void test_room_events_go_through_the_bus(void)
{
    struct conf *conf;
    struct chat *chat = chat_of("", &conf);
    struct recording_bus *bus = calloc(1, sizeof *bus);
    bus->base.ops = &rb_ops;
    bus->chat = chat;
    chat_set_bus(chat, &bus->base);
    struct conn *a = connect_user(chat, false), *b = connect_user(chat, false);
    say(chat, a, "{\"type\":\"join\",\"room\":\"Lobby\",\"name\":\"a\"}");
    say(chat, b, "{\"type\":\"join\",\"room\":\"Lobby\",\"name\":\"b\"}");
    say(chat, a, "{\"type\":\"say\",\"text\":\"via bus\"}");
    CHECK(count_of(b, "message") == 0);        /* not delivered yet */
    CHECK(bus->n == 2);                         /* b's join, a's message */
    for (int i = 0; i < bus->n; i++)
        chat_deliver(chat, bus->room[i], bus->json[i], strlen(bus->json[i]));
    CHECK(strcmp(str(last_of(b, "message"), "text"), "via bus") == 0);
    chat_deliver(chat, "no-such-room", "{}", 2);   /* ignored */
    chat_free(chat);
    conf_free(conf);
    conn_free(a);
    conn_free(b);
}

int main(void)
{
    RUN(test_join_leave_and_presence);
    RUN(test_rename_clash_and_history);
    RUN(test_user_room_deleted_when_empty);
    RUN(test_support_queue_order_and_no_show);
    RUN(test_queued_customer_keeps_place_across_reconnect);
    RUN(test_random_pairs_and_rerolls);
    RUN(test_limits_and_bad_input);
    RUN(test_resume_is_silent_and_takes_over);
    RUN(test_room_events_go_through_the_bus);
    return check_done();
}
