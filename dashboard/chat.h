/*
 * chat.h - the chat demo's rooms, support queue and random match-ups, as a
 * state machine with no network in it. Private to dashboard/.
 *
 * ws_chat.c is the transport: it owns the libwebsockets connections, hands
 * every complete text message to chat_receive() and queues what the core
 * sends back (chat_ops.send). Unit tests drive the same functions with a
 * recording transport. Everything here runs on one thread (the dashboard's
 * service thread); nothing is locked.
 *
 * Room messages go through a bus (struct chat_bus): the core publishes a
 * room's events to it and the bus hands them back to chat_deliver() on every
 * instance that has members in the room. The in-process bus (chat_bus_local)
 * calls chat_deliver() at once; a Redis pub/sub bus can take its place so
 * that several Switchboards share rooms (see ARCHITECTURE.md).
 *
 * ---- The protocol (WebSocket subprotocol "switchboard.chat") ------------
 *
 * Text frames, one JSON object each, with a "type". Times are UTC,
 * "2026-11-24T07:40:00.123Z".
 *
 * Server -> client
 *   welcome   {"modes":["rooms","support","random"],"default":"rooms",
 *              "staff":false,"resume":"hex","addable_rooms":true,
 *              "addable_rooms_visible":true,"limits":{"max_name_length":30,
 *              "max_message_bytes":2000,"rate":5,"burst":10,"history":50}}
 *              first frame; `resume` (also in "joined") is this user's
 *              token: after a reconnect, "resume" with it gets the room,
 *              queue place or offer back
 *   rooms     {"rooms":[{"name":"Lobby","users":2,"names":["ann","bob"],
 *              "fixed":true}]}     answer to "rooms", then again (at most
 *              twice a second) while the list changes, until "join"
 *   joined    {"room":"Lobby","kind":"room"|"support"|"random","name":"ann",
 *              "users":["ann","bob"],"history":[message...],"resume":"hex",
 *              "resumed":false}      you are in; `history` is the room's
 *              last chat.history messages; keep `resume` for reconnecting
 *   message   {"room":"Lobby","id":17,"from":"ann","text":"hi","ts":"..."}
 *              `id` grows by one per room message (history included)
 *   presence  {"room":"Lobby","event":"join"|"leave"|"rename","name":"bob",
 *              "old":"bobby" (rename only),"users":["ann","bob"],"ts":"..."}
 *   typing    {"room":"Lobby","name":"bob","active":true}
 *   left      {"room":"Lobby","reason":"leave"|"no_show"|"closed"}
 *              you are out of the room (back in the lobby)
 *   queued    {"position":1,"waiting":3,"since":"..."}   support customer:
 *              your place in the queue (1 = next), sent when it changes
 *   offer     {"room":"support-4","staff":"ann"}   a staff member took you:
 *              answer {"type":"arrive"} within chat.no_show_timeout or go
 *              back to the front of the queue
 *   queue     {"customers":[{"name":"bob","since":"...","waited_s":42}]}
 *              staff: the waiting list, oldest first, sent when it changes
 *   no_show   {"name":"bob"}  staff: the customer did not arrive
 *   waiting   {}              random: nobody to pair with yet; wait
 *   error     {"code":"too_long","message":"...","ref":"say"}  the request
 *              named in `ref` was refused; nothing else changed. Codes:
 *              bad_json unknown_type bad_request too_long rate_limited
 *              name_invalid name_taken room_invalid no_such_room room_exists
 *              rooms_locked room_limit mode_disabled not_staff not_in_room
 *              busy queue_empty resume_failed server_full
 *
 * Client -> server
 *   rooms     {}                              the room list (lobby)
 *   join      {"room":"Lobby","name":"ann"}   enter a room (leaves any other)
 *   create    {"room":"Den","name":"ann"}     add a room and enter it
 *   say       {"text":"hello"}                a message to your room
 *   typing    {"active":true}
 *   rename    {"name":"annie"}                a new nickname in your room
 *   leave     {}                              out of room, queue or wait
 *   support   {"name":"bob"}                  customer: join the queue
 *   arrive    {}                              customer: accept an offer
 *   staff     {}                              staff: watch the queue
 *   take      {"name":"ann"}                  staff: take the oldest
 *              customer who is connected (a reconnecting one keeps its
 *              place)
 *   random    {"name":"cat"}                  pair with a stranger (never
 *              straight back with the one just left: then wait)
 *   resume    {"token":"hex"}                 after a reconnect: back into
 *              the room (or queue) under the same name, unannounced
 */
#ifndef SWITCHBOARD_DASHBOARD_CHAT_H
#define SWITCHBOARD_DASHBOARD_CHAT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "conf/conf.h"

struct chat;
struct chat_user;
struct dash_msg;

/* What the core needs from its transport. `conn` is the transport's handle
 * of a connection, never NULL in these calls. */
struct chat_ops {
    /* Queue `msg` for the connection (take a reference to keep it). */
    void (*send)(void *ctx, void *conn, struct dash_msg *msg);
    /* The connection's user was taken over by a newer connection (resume):
     * close it. The core has already forgotten `conn`. */
    void (*drop)(void *ctx, void *conn);
    /* Wall-clock time in ms since the epoch (for "ts"), and a monotonic
     * clock in µs (for limits and timers). Tests substitute their own. */
    int64_t (*wall_ms)(void *ctx);
    int64_t (*mono_us)(void *ctx);
};

/* ---- the room bus: the one seam between instances ---------------------- */

struct chat_bus;

struct chat_bus_ops {
    /* Hand `json` (an event of room `room`) to chat_deliver() of every
     * instance, this one included. 0, or -1 when it could not be sent. */
    int (*publish)(struct chat_bus *bus, const char *room, const char *json, size_t len);
    void (*free)(struct chat_bus *bus);
};

struct chat_bus {
    const struct chat_bus_ops *ops;
};

/* The in-process bus: publish() is a direct call of chat_deliver(). */
struct chat_bus *chat_bus_local_new(struct chat *chat);

/* A bus delivers one of `room`'s events: the members on this instance get
 * it. Safe to call for a room this instance does not have. */
void chat_deliver(struct chat *chat, const char *room, const char *json, size_t len);

/* ---- the core --------------------------------------------------------- */

/* A new chat for `conf` (copied). NULL when out of memory. */
struct chat *chat_new(const struct conf_chat *conf, const struct chat_ops *ops, void *ctx);
/* Uses `bus` (owned from now on) instead of the local one. */
void chat_set_bus(struct chat *chat, struct chat_bus *bus);
void chat_free(struct chat *chat);

/* A connection opened: sends "welcome". `staff` when it carried dashboard
 * credentials; `addr` is the client's address (for the log, truncated
 * there). NULL when out of memory. */
struct chat_user *chat_connect(struct chat *chat, void *conn, bool staff, const char *addr);

/* One complete text message from the connection of *user. A "resume" may
 * hand the connection to the user it had before: *user is then replaced
 * (the fresh one is freed). */
void chat_receive(struct chat *chat, struct chat_user **user, const char *text, size_t len);

/* A message longer than the transport accepts: refused with "too_long". */
void chat_refuse_oversized(struct chat *chat, struct chat_user *user);

/* The connection closed. A user in a room or queue is kept for
 * chat.reconnect_grace (unannounced) so that a reconnect can resume. */
void chat_disconnect(struct chat *chat, struct chat_user *user);

/* Expire graces and offers, send coalesced lobby and queue updates. Call a
 * few times a second. Returns µs until it wants to be called again. */
int64_t chat_tick(struct chat *chat);

/* Counters, for tests and the log. */
struct chat_counts {
    size_t users, connected, rooms, queued, random_waiting;
    uint64_t messages, refused;
};
void chat_counts(const struct chat *chat, struct chat_counts *out);

#endif
