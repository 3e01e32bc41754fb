/*
 * proxy-internal.h - types shared by the files of proxy/. Never included from
 * another directory.
 *
 * Ownership, from the top:
 *
 *   struct proxy (main thread)
 *     ├── struct px_runtime *current     one config generation, refcounted,
 *     │                                   read-only once published
 *     ├── struct px_listen_set[]         listening sockets, one per worker
 *     │                                   per address (SO_REUSEPORT)
 *     └── struct px_worker[]             one thread + one event_base each
 *           ├── struct px_gen *gen        this worker's view of a runtime:
 *           │                              per-worker balancer state, idle
 *           │                              backend connections per server
 *           ├── struct px_client (list)   accepted client connections
 *           │     └── struct px_exchange  the request being served, if any
 *           │           ├── struct px_upstream  its backend connection
 *           │           └── struct px_pipe      a body being spliced
 *           ├── struct px_exchange (spares)   finished, kept for reuse
 *           ├── struct px_pipe (pool)          empty pipes kept for reuse
 *           └── struct px_upstream (idle lists in px_gen)
 *
 * Threads: everything reachable from a worker is touched by that worker's
 * thread only, except px_runtime (read-only, refcount atomic), the lb_server
 * atomics, the proxy-wide connection counter, and the worker's mailbox (under
 * its mutex; see worker.c).
 */
#ifndef SWITCHBOARD_PROXY_INTERNAL_H
#define SWITCHBOARD_PROXY_INTERNAL_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <sys/queue.h>
#include <sys/socket.h>
#include <netinet/in.h>

#include <event2/buffer.h>
#include <event2/event.h>
#include <event2/event_struct.h>
#include <http_parser.h>

#include "conf/conf.h"
#include "proxy/balance.h"
#include "proxy/proxy.h"
#include "telemetry/telemetry.h"

/* Output above this many bytes stops the reader that feeds it; reading
 * resumes once the output is below it again. Bounds memory per connection. */
#define PX_HIGH_WATERMARK   (256 * 1024)
/* First read size; grows while reads fill it, up to PX_READ_MAX. */
#define PX_READ_MIN         (16 * 1024)
#define PX_READ_MAX         (256 * 1024)
/* Headers per message, like HAProxy's global.tune.max_http_hdr default. */
#define PX_MAX_HEADERS      101
/* Headers a head indexes without an allocation of its own; most messages
 * have fewer, and an exchange in flight stays about 1 KiB. */
#define PX_INLINE_HEADERS   16
/* Idle backend connections kept per server per worker. */
#define PX_IDLE_PER_SERVER  256
/* How long an answered-to-be request goes without a watch on its client
 * (struct px_exchange: watch_pending). */
#define PX_ABORT_WATCH_MS   100
/* Empty evbuffers a worker keeps for reuse (two per active client). */
#define PX_SPARE_BUFS_MAX   128
/* An idle backend connection unused this long is closed. */
#define PX_BACKEND_IDLE_MS  30000
/* After an error answer, how long unread client bytes are drained before the
 * socket is closed, so the answer is not lost to a TCP reset. */
#define PX_LINGER_MS        2000

/* ---- config generation -------------------------------------------------- */

struct px_server {
    struct conf_addr addr;
    atomic_uint state_changes;  /* up/down transitions (health thread) */
    size_t index;               /* in its pool */
    size_t global_index;        /* in the runtime, for per-worker arrays */
    struct px_pool *pool;
};

struct px_pool {
    char *name;
    struct lb_pool lb;
    struct lb_server *lb_servers;   /* n_servers, owned */
    struct px_server *servers;      /* n_servers, owned */
    size_t n_servers;
    enum conf_hash_key hash_key;
    char  *hash_name;
    size_t hash_name_len;
    struct conf_health_check health_check;  /* path NULL: none; path owned */
    struct conf_outlier outlier;
    uint32_t retries;
    struct conf_queue queue;
    atomic_uint queued;         /* requests waiting, all workers */
    uint32_t retry_budget;      /* percent */
};

struct px_route {
    char  *host;                /* lower case; NULL = any */
    bool   host_suffix;         /* host was "*.example.com": host = ".example.com" */
    char  *path_prefix;         /* NULL = any */
    size_t path_prefix_len;
    struct px_pool *pool;
};

struct px_runtime {
    atomic_int refs;            /* the proxy's, plus one per worker using it */
    unsigned generation;
    struct px_pool *pools;
    size_t n_pools;
    size_t n_servers_total;
    struct px_route *routes;
    size_t n_routes;
    struct conf_cidr *trusted;
    size_t n_trusted;
    struct conf_timeouts timeouts;
    struct conf_limits limits;
    bool access_log_on;
    enum conf_log_format access_log_format;
};

/* `prev` (may be NULL): the generation being replaced; each server that
 * keeps its pool and address keeps its state (a down server stays down). */
struct px_runtime *px_runtime_new(const struct conf *conf, unsigned generation,
                                  const struct px_runtime *prev,
                                  char *err, size_t errlen);
void px_runtime_ref(struct px_runtime *rt);
void px_runtime_unref(struct px_runtime *rt);
/* First matching route's pool, or NULL. `host` is lower case, no port. */
struct px_pool *px_route_match(const struct px_runtime *rt,
                               const char *host, size_t host_len,
                               const char *path, size_t path_len);
bool px_trusted(const struct px_runtime *rt, const struct sockaddr *sa);

/* ---- one connection's socket and buffers -------------------------------- */

struct px_conn {
    int fd;
    struct event rev;           /* readable, or a timeout while waiting */
    /* Writable while output is pending: most answers go out at once, so it
     * is allocated on first need, and an idle client gives it back. */
    struct event *wev;
    event_callback_fn on_writable;      /* wev's callback; rev's argument */
    struct evbuffer *in;
    struct evbuffer *out;
    uint32_t read_size;         /* adaptive read size */
    uint32_t read_timeout;      /* ms the pending read event was armed with */
    uint32_t write_timeout;
    bool reading;               /* rev is pending */
    bool writing;               /* wev is pending */
    bool eof;                   /* peer sent FIN */
    bool shut_wr;               /* we sent FIN */
    bool fin_follows;           /* closed as soon as the output is written */
    bool flush_notify;          /* queued: call on_writable after the write */
    uint32_t flush_slot;        /* 1 + index in its worker's px_flushq; 0: not queued */
};

/*
 * Output written at the end of the event-loop turn rather than as soon as it
 * is produced (as Redis does before it sleeps). One epoll_wait hands a worker
 * many ready sockets; answering each at once wakes the peer (backend or
 * client) for every single message, and a fast peer goes back to sleep in
 * between, so every write pays a cross-CPU wake-up. Written together, the
 * first write wakes the peer and the rest find it awake, and the peer takes
 * them in one epoll_wait of its own.
 */
struct px_flushq {
    struct px_conn **items;     /* NULL where a queued connection closed */
    uint32_t n, cap;
    bool flushing;              /* px_flushq_run is writing: write at once */
};

/* Queue `c` for the end of the turn. `notify`: its owner must look at it
 * after the write even when all went out (state waits on empty output).
 * Returns false when the write must happen now (while flushing, or out of
 * memory). */
bool px_flushq_add(struct px_flushq *q, struct px_conn *c, bool notify);
/* Before a queued connection is freed. */
void px_flushq_remove(struct px_flushq *q, struct px_conn *c);
/* Write every queued connection. Its on_writable callback runs when the
 * write failed, output is left, or notify was asked for. */
void px_flushq_run(struct px_flushq *q);
void px_flushq_free(struct px_flushq *q);

/* 1 bytes read, 0 EOF, -1 error (errno set), -2 nothing to read now. */
int  px_conn_read(struct px_conn *c);

/* A pipe that carries a large response body from the backend socket to the
 * client socket with splice(2), so its bytes are never copied through user
 * memory (io.c). Owned by one exchange while it holds data, else by its
 * worker's pool. */
struct px_pipe {
    int rd, wr;
    size_t len;                 /* bytes in the pipe */
    size_t cap;                 /* its capacity */
    uint32_t size;              /* the limits.pipe_size it was made for */
    bool full;                  /* the last splice into it found no room */
    struct px_pipe *next;       /* in the pool */
};

struct px_worker;
/* An empty pipe of limits.pipe_size `size`, from `w`'s pool or new; NULL
 * when none can be had (the caller copies instead). */
struct px_pipe *px_pipe_get(struct px_worker *w, uint32_t size);
/* Back to the pool if empty, else closed. */
void px_pipe_put(struct px_worker *w, struct px_pipe *pp);
void px_pipe_pool_free(struct px_worker *w);
/* Splice up to `max` bytes from socket `fd` into the pipe. Returns as
 * px_conn_read(); when the pipe has no room left it sets pp->full and
 * returns 1. */
int  px_pipe_fill(struct px_pipe *pp, int fd, size_t max);
/* Splice what the pipe holds to socket `fd`. 0 ok (maybe partial), -1
 * error (errno set). */
int  px_pipe_drain(struct px_pipe *pp, int fd);
/* Write what the socket takes. 0 ok (maybe partial), -1 error (errno set). */
int  px_conn_write(struct px_conn *c);
/* Arm or disarm the read event; `timeout_ms` 0 = none. Cheap when unchanged
 * and `rearm` is false. */
void px_conn_want_read(struct px_conn *c, bool on, uint32_t timeout_ms, bool rearm);
/* The same for the write event. Arming it for a connection queued in a
 * px_flushq waits for the flush: most writes then need no event at all. */
void px_conn_want_write(struct px_conn *c, bool on, uint32_t timeout_ms);
/* Set up the events of a connection whose fd is set: `on_readable` and
 * `on_writable` are called with `arg`. */
void px_conn_events(struct px_conn *c, struct event_base *base,
                    event_callback_fn on_readable, event_callback_fn on_writable,
                    void *arg);
/* Nothing waits to be written: give back the write event. */
void px_conn_drop_wev(struct px_conn *c);
void px_conn_close(struct px_conn *c);

/* ---- parsed message head ------------------------------------------------ */

/* Header names the data path acts on, recognised once per header (when its
 * value starts) so that framing checks, hop-by-hop removal and lookups
 * compare a byte instead of strings. */
enum px_hdr_id {
    PX_HDR_UNKNOWN = 0,         /* not classified yet */
    PX_HDR_OTHER,
    PX_HDR_HOST,
    PX_HDR_CONNECTION,
    PX_HDR_CONTENT_LENGTH,
    PX_HDR_TRANSFER_ENCODING,
    PX_HDR_KEEP_ALIVE,
    PX_HDR_PROXY_CONNECTION,
    PX_HDR_TE,
    PX_HDR_TRAILER,
    PX_HDR_UPGRADE,
    PX_HDR_X_FORWARDED_FOR,
    PX_HDR_X_FORWARDED_PROTO,
    PX_HDR_X_FORWARDED_HOST,
    PX_HDR_X_REAL_IP,
    PX_HDR_COOKIE,
};

struct px_header {
    uint32_t name_off, name_len;
    uint32_t value_off, value_len;
    uint8_t  id;                /* enum px_hdr_id */
};

/* The strict check of a message's raw bytes that runs ahead of http-parser
 * (px_wire_scan, http.c): head syntax, then chunked framing. All zero is the
 * start of a message. */
struct px_wire {
    uint8_t  state;
    uint8_t  count;             /* characters matched in the current token */
    bool     trailers;          /* after the last chunk */
    uint32_t line;              /* bytes of the current chunk-size line */
    uint64_t chunk_left;        /* data bytes left in the current chunk */
    const char *error;          /* why the bytes were refused, or NULL */
};

/* A request or response head as http-parser delivered it: every string lives
 * in `buf`, referenced by offset because `buf` grows. The index of headers
 * starts in hdr_inline and moves to an allocation of PX_MAX_HEADERS entries
 * past PX_INLINE_HEADERS; only its first n_hdr entries mean anything, so
 * starting a head over clears the fields before it, not the array. A head
 * points into itself: it never moves. */
struct px_head {
    char    *buf;
    uint32_t len, cap;
    uint32_t limit;             /* bytes allowed in buf (max_header_bytes) */
    uint32_t url_off, url_len;  /* request target (requests) */
    uint32_t reason_off, reason_len; /* reason phrase (responses) */
    unsigned n_hdr;
    bool     in_value;          /* last callback was a header value */
    bool     too_big;           /* limit or header count exceeded */
    uint32_t head_bytes;        /* raw bytes of the head seen so far */
    struct px_wire wire;        /* raw bytes of the message, checked */
    struct px_header *hdr;      /* hdr_inline, or allocated (owned) */
    unsigned hdr_cap;
    struct px_header hdr_inline[PX_INLINE_HEADERS];
};

/* ---- per-worker view of a config generation ----------------------------- */

struct px_upstream;
TAILQ_HEAD(px_upstream_list, px_upstream);

struct px_exchange;
TAILQ_HEAD(px_waitq, px_exchange);

struct px_gen {
    struct px_runtime *rt;
    void **lb_state;                    /* per pool */
    struct px_waitq *waitq;             /* per pool: requests waiting for a
                                           server slot (max_conns) */
    struct px_upstream_list *idle;      /* per server (global_index) */
    unsigned *idle_count;               /* per server */
    unsigned inflight;                  /* exchanges started under rt */
    /* Retry budget per pool, this worker's share: each request adds
     * retry_budget/100 of a token, each retry spends one. */
    double *retry_tokens;
    LIST_ENTRY(px_gen) link;
};

/* ---- connections and exchanges ----------------------------------------- */

enum px_body {
    PX_BODY_NONE,
    PX_BODY_LENGTH,             /* Content-Length */
    PX_BODY_CHUNKED,            /* through http-parser */
    PX_BODY_UNTIL_CLOSE,        /* response without framing */
};

struct px_exchange;
struct px_worker;

struct px_upstream {
    struct px_conn conn;
    struct px_worker *worker;
    struct px_gen *gen;         /* whose idle list it sits in, when idle */
    struct px_server *server;
    struct px_exchange *ex;     /* NULL while idle */
    bool connected;
    int  connect_error;         /* errno of a connect that failed at once */
    bool reused;                /* served an earlier request */
    TAILQ_ENTRY(px_upstream) idle_link;
};

enum px_client_state {
    PX_CLIENT_IDLE,             /* keep-alive, no request byte yet */
    PX_CLIENT_ACTIVE,           /* an exchange is running */
    PX_CLIENT_CLOSING,          /* flush output, then close */
    PX_CLIENT_LINGERING,        /* output flushed, FIN sent, draining input */
};

struct px_client {
    struct px_conn conn;
    struct px_worker *worker;
    struct px_exchange *ex;
    enum px_client_state state;
    union {
        struct sockaddr     sa;
        struct sockaddr_in  sin;
        struct sockaddr_in6 sin6;
    } peer;
    unsigned requests;
    bool counted;               /* holds a slot of max_connections */
    bool linger;                /* drain input before closing (after errors) */
    TAILQ_ENTRY(px_client) link;
};

enum px_phase {
    PX_PHASE_REQ_HEAD,          /* reading the request head */
    PX_PHASE_CONNECT,           /* waiting for a backend connection */
    PX_PHASE_RESP_HEAD,         /* request sent (or streaming), awaiting answer */
    PX_PHASE_RESP_BODY,         /* streaming the response body */
    PX_PHASE_TUNNEL,            /* after 101: bytes both ways */
    PX_PHASE_DONE,
};

struct px_exchange {
    struct px_client *client;
    struct px_upstream *up;
    struct px_gen *gen;
    struct px_pool *pool;
    struct px_server *server;
    enum px_phase phase;

    http_parser req_parser;
    http_parser resp_parser;

    enum px_body req_body;
    uint64_t req_remaining;     /* PX_BODY_LENGTH: bytes still to forward */
    bool req_done;              /* whole request read from the client */
    enum px_body resp_body;
    uint64_t resp_remaining;
    bool resp_done;
    bool resp_started;          /* a byte of the answer went to the client */
    bool resp_chunked_out;      /* we frame the answer as chunked */
    /* Splicing the body (Content-Length, large): resp_remaining counts what
     * has yet to enter the pipe; the answer is done once the pipe is empty
     * too. */
    struct px_pipe *pipe;
    bool no_splice;             /* splice(2) refused these sockets */

    bool head_request;          /* method HEAD: the answer has no body */
    bool client_keepalive;      /* client may send another request */
    bool client_http10;
    bool upgrade;               /* client asked Connection: upgrade */
    bool expect_continue;

    bool queued;                /* in gen->waitq[pool] */
    uint64_t queued_ns;
    TAILQ_ENTRY(px_exchange) wait_link;

    /* Once the request is read, the client is watched for an abort only
     * after PX_ABORT_WATCH_MS: most answers come sooner, and a client read
     * event armed and disarmed per request costs two epoll_ctl calls. */
    bool watch_pending;         /* in worker->unwatched */
    bool watch_due;             /* waited long enough: arm the client read */
    TAILQ_ENTRY(px_exchange) watch_link;

    size_t req_out_len;         /* of req_out */
    unsigned retries;

    /* What the access log and telemetry report. */
    char client_addr[INET6_ADDRSTRLEN];
    uint8_t client_ip[16];
    uint8_t client_family;      /* 4 or 6 */
    int status;
    const char *reason;         /* why the proxy answered itself, or NULL */
    uint64_t bytes_in, bytes_out;
    uint64_t resp_head_bytes;   /* of bytes_out: status lines and headers */
    uint64_t t_start_ns, t_connect_start_ns, t_connect_ns, t_first_byte_ns;
    int64_t  wall_start_us;
    uint64_t tunnel_last_ns;

    /* From here on, what a recycled exchange keeps (session.c: spares):
     * buffers, and the heads, which start over with px_head_reset(). */
    char *req_out;              /* serialised request head, for a retry */
    size_t req_out_cap;
    struct px_exchange *next_spare;
    struct px_head req;
    struct px_head resp;
};

/* ---- workers ----------------------------------------------------------- */

struct px_listener {
    int fd;
    struct event ev;
    struct px_worker *worker;
    char addr[80];
    bool paused;
    int8_t nodelay_inherited;   /* accepted sockets come with TCP_NODELAY
                                   (-1: not known before the first one) */
    LIST_ENTRY(px_listener) link;
};

enum px_msg_type {
    PX_MSG_RUNTIME,             /* adopt msg.rt (a reference is passed along) */
    PX_MSG_LISTEN_ADD,          /* start accepting on msg.fd */
    PX_MSG_LISTEN_DEL,          /* stop accepting on msg.fd (the worker closes it) */
    PX_MSG_SHUTDOWN,            /* stop accepting, finish in-flight, exit */
    PX_MSG_HARD_STOP,           /* close everything now and exit */
};

struct px_msg {
    enum px_msg_type type;
    struct px_runtime *rt;
    int fd;
    char addr[80];
    STAILQ_ENTRY(px_msg) link;
};

struct px_worker {
    unsigned id;
    struct proxy *proxy;
    pthread_t thread;
    struct event_base *base;
    struct event notify;        /* activated by the main thread */
    struct event retry_accept;  /* re-enables paused listeners */
    struct event queue_ev;      /* dispatches waiting requests */

    pthread_mutex_t mailbox_lock;
    STAILQ_HEAD(, px_msg) mailbox;      /* protected by mailbox_lock */

    struct px_gen *gen;                 /* current */
    LIST_HEAD(, px_gen) old_gens;       /* still serving requests */
    LIST_HEAD(, px_listener) listeners;
    TAILQ_HEAD(, px_client) clients;
    unsigned n_clients;
    bool draining;
    uint64_t rng_seed;
    uint64_t rng;               /* xorshift state for per-pick randomness */
    struct px_exchange *spares; /* finished exchanges kept for reuse */
    unsigned n_spares;
    struct px_pipe *pipes;      /* empty pipes kept for reuse */
    unsigned n_pipes_free;
    unsigned n_pipes;           /* open, in the pool or in use */
    struct tm_ring *ring;       /* telemetry; NULL when off. Owned by proxy */
    bool joined;                /* main thread: the thread has been joined */
    struct geo_cache *geo_cache;        /* this worker's, for the access log */
    struct px_flushq flushq;            /* output waiting for the turn's end */
    uint64_t turn_now_ns;               /* px_turn_now_ns(); 0: not read yet */
    /* Empty evbuffers given back by idle and closed clients, for the next
     * client that has bytes to move (session.c: client_buffers). */
    struct evbuffer *spare_bufs[PX_SPARE_BUFS_MAX];
    unsigned n_spare_bufs;
    TAILQ_HEAD(, px_exchange) unwatched;    /* oldest first: watch_pending */
    struct event watch_ev;              /* arms the client reads that are due */
};

struct px_listen_set {
    struct conf_addr addr;
    int *fds;                   /* one per worker */
    bool handed;                /* the workers own (and close) the fds */
};

struct proxy {
    struct px_runtime *rt;              /* current; written by the main
                                           thread under rt_lock */
    pthread_mutex_t rt_lock;            /* guards rt against proxy_servers() */
    struct tm_ring **rings;             /* per worker; NULL: telemetry off */
    struct px_worker *workers;
    unsigned n_workers;
    struct px_listen_set *listens;
    size_t n_listens;
    unsigned generation;
    atomic_uint connections;            /* client connections, all workers */
    struct tm_gauges gauges;            /* read by the telemetry aggregator */
    const struct geo_db *geo;           /* borrowed; NULL: no geolocation */
    _Atomic uint32_t max_connections;   /* of the current runtime; set by
                                         * main, read by every worker */
    struct px_health *health;           /* health-check thread */
    int access_log_fd;                  /* -1 when off */
    char *access_log_path;
    bool started;
    bool stopping;                      /* SHUTDOWN posted */
    bool hard_stopping;                 /* HARD_STOP posted */
};

void px_worker_post(struct px_worker *w, struct px_msg *msg);
void *px_worker_main(void *arg);
/* One event-loop turn (event_base_loop flags), then the queued output. */
int  px_worker_turn(struct px_worker *w, int loop_flags);
/* A worker's spare evbuffers go, when it stops. */
void px_spare_bufs_free(struct px_worker *w);
/* watch_ev's callback: arm the client reads of exchanges now due. */
void px_abort_watch_due(struct px_worker *w);
/* Building a worker without its thread (proxy.c, and tests/fuzz, which
 * drives its event_base in-process): set it up, then give it a runtime
 * (one reference passes to the worker); px_client_accept() hands it
 * connections. */
int  px_worker_init(struct px_worker *w, struct proxy *proxy, unsigned id);
void px_worker_give(struct px_worker *w, struct px_runtime *rt);
void px_worker_add_listener(struct px_worker *w, int fd, const char *addr);
void px_worker_destroy(struct px_worker *w);
void px_worker_client_closed(struct px_worker *w);
/* The generation's idle list for `server` and its balancer state. */
struct px_gen *px_worker_gen(struct px_worker *w);
void px_gen_release(struct px_worker *w, struct px_gen *gen);

/* ---- sessions (session.c) ---------------------------------------------- */

void px_client_accept(struct px_worker *w, int fd, const struct sockaddr *sa,
                      socklen_t len);
/* The same; `nodelay_set`: the socket has TCP_NODELAY already (inherited
 * from its listener), so no setsockopt() is needed. */
void px_client_start(struct px_worker *w, int fd, const struct sockaddr *sa,
                     socklen_t len, bool nodelay_set);
void px_client_shutdown_idle(struct px_worker *w);
/* Give freed server slots to waiting requests; expire those waiting too
 * long. Runs from w->queue_ev. */
void px_dispatch_queues(struct px_worker *w);
void px_client_close_all(struct px_worker *w);
/* Free the exchanges kept for reuse (the worker is going away). */
void px_exchange_spares_free(struct px_worker *w);

/* ---- backend connections (upstream.c) ---------------------------------- */

/* An idle connection to `server`, or a new one being connected. NULL with
 * errno set when the socket cannot be created. */
struct px_upstream *px_upstream_get(struct px_worker *w, struct px_gen *gen,
                                    struct px_server *server, bool *reused);
/* Put a healthy connection back into its idle list, or close it. */
void px_upstream_release(struct px_upstream *up, struct px_gen *from,
                         bool reusable);
void px_upstream_close(struct px_upstream *up);
void px_gen_close_idle(struct px_gen *gen);
/* Move idle connections of `from` to the server of `to` with the same address. */
void px_gen_migrate_idle(struct px_gen *from, struct px_gen *to);

/* ---- HTTP helpers (http.c) --------------------------------------------- */

void px_head_init(struct px_head *h, uint32_t limit);
void px_head_free(struct px_head *h);
/* Forget the content, keep the buffer (a 1xx answer before the final one,
 * an exchange used again). */
void px_head_reset(struct px_head *h);
extern const http_parser_settings px_request_settings;
extern const http_parser_settings px_response_settings;
/* Value of the first header named `name` (case-insensitive), or NULL. */
const char *px_head_get(const struct px_head *h, const char *name,
                        uint32_t *len);
/* The same for a header the data path knows (enum px_hdr_id). */
const char *px_head_find(const struct px_head *h, enum px_hdr_id id,
                         uint32_t *len);
/* Classify the headers not classified yet (one without a value callback). */
void px_head_classify(struct px_head *h);
bool px_token_list_has(const char *list, size_t len, const char *token);
bool px_token_list_has_n(const char *list, size_t len, const char *token,
                         size_t token_len);
bool px_header_is(const struct px_head *h, const struct px_header *hd,
                  const char *name);
bool px_is_token(const char *s, size_t len);
bool px_is_field_value(const char *s, size_t len);
bool px_is_decimal(const char *s, size_t len);
/* Check `len` raw bytes of a message before http-parser sees them. Returns
 * how many may be parsed: all of them, fewer when the head or the chunked
 * message ends inside (px_wire_end() says which), or up to the first bad
 * byte (w->error says why). */
size_t px_wire_scan(struct px_wire *w, const char *data, size_t len,
                    bool response);
/* 1: the head ended (its last LF scanned; http-parser leaves that LF
 * unconsumed); 2: the chunked message ended; 0: neither. */
int  px_wire_end(const struct px_wire *w);
/* The request line got past a well-formed method (a token, then SP). */
bool px_wire_past_method(const struct px_wire *w);
/* The head announced a chunked body: check it next. */
void px_wire_chunked(struct px_wire *w);
int  px_head_add_url(struct px_head *h, const char *at, size_t len);
int  px_head_add_reason(struct px_head *h, const char *at, size_t len);
int  px_head_add_field(struct px_head *h, const char *at, size_t len);
int  px_head_add_value(struct px_head *h, const char *at, size_t len);
const char *px_status_reason(int status);

/* ---- client address (xff.c) ------------------------------------------- */

void px_sockaddr_text(const struct sockaddr *sa, char *out, size_t len);
bool px_parse_ip(const char *s, size_t len, struct sockaddr_storage *ss);
/* The client: the peer, or the rightmost untrusted X-Forwarded-For entry
 * when the peer is a trusted proxy. */
void px_client_address(const struct px_runtime *rt, const struct sockaddr *peer,
                       const struct px_head *req, struct sockaddr_storage *out);

/* ---- health checks (health.c) ------------------------------------------ */

struct px_health;
struct px_health *px_health_start(struct px_runtime *rt);
void px_health_update(struct px_health *h, struct px_runtime *rt);
void px_health_stop(struct px_health *h);

/* ---- telemetry tap (tap.c) --------------------------------------------- */

void px_tap_emit(struct px_worker *w, const struct px_exchange *ex,
                 enum tm_kind kind);

/* ---- logs (log.c) ------------------------------------------------------ */

void px_access_log(struct proxy *proxy, const struct px_runtime *rt,
                   const struct px_exchange *ex);

/* Monotonic nanoseconds. */
uint64_t px_now_ns(void);
/* px_now_ns() as of the first call in the worker's current turn: what
 * happened in one turn happened at one time, as nginx and HAProxy reckon
 * request times per event-loop iteration, and a turn that answers many
 * requests reads the clock once. */
uint64_t px_turn_now_ns(struct px_worker *w);

#endif
