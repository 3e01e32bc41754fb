/*
 * conf.h - Switchboard configuration: a YAML file turned into plain data.
 *
 * The config module knows nothing of sockets, threads or event loops. It reads
 * a file with libyaml, checks every key against one table (name, type, where
 * it lands, default, bounds) and returns a `struct conf` that the caller owns
 * and releases with conf_free(). Errors name the place and the key:
 *
 *     conf/switchboard.yaml:12:7: pools.web.servers[1].weight: expected an
 *     integer from 1 to 256, got "heavy"
 *
 * Defaults live only in the key table in conf.c; the sample config and
 * man/switchboard.conf.5 document the same keys.
 *
 * Thread context: called from the main thread only (start-up, SIGHUP reload,
 * `-t`). The result is immutable once returned; workers may read it.
 */
#ifndef SWITCHBOARD_CONF_H
#define SWITCHBOARD_CONF_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>
#include <netinet/in.h>

/* Room for "FILE:LINE:COL: key: message". */
#define CONF_ERROR_MAX 512

/* A socket address given as "HOST:PORT", "[V6]:PORT" or "*:PORT". HOST may be
 * a name; it is resolved once, when the file is loaded. */
struct conf_addr {
    union {
        struct sockaddr     sa;
        struct sockaddr_in  sin;
        struct sockaddr_in6 sin6;
    } u;
    socklen_t len;
    char text[80];              /* normalised: "127.0.0.1:80", "[::1]:80" */
};

/* An address range "10.0.0.0/8", "::1/128"; a bare address is a /32 or /128. */
struct conf_cidr {
    int     family;             /* AF_INET or AF_INET6 */
    uint8_t addr[16];           /* network order; only 4 bytes used for v4 */
    uint8_t prefix_len;
};

enum conf_balance {
    CONF_BALANCE_ROUND_ROBIN,   /* smooth weighted round robin (nginx's) */
    CONF_BALANCE_LEAST_CONN,    /* fewest in-flight requests per weight */
    CONF_BALANCE_RANDOM2,       /* power of two random choices */
    CONF_BALANCE_HASH,          /* consistent hash on `hash_key` */
};

enum conf_hash_key {
    CONF_HASH_SOURCE,           /* client address (after trusted-proxy logic) */
    CONF_HASH_URI,              /* request target, query included */
    CONF_HASH_HEADER,           /* value of header `hash_name` */
    CONF_HASH_COOKIE,           /* value of cookie `hash_name` */
};

enum conf_log_format {
    CONF_LOG_COMBINED,
    CONF_LOG_JSON,
};

/* What the operator says of a server (health checks decide up or down only
 * for active ones). */
enum conf_server_state {
    CONF_SERVER_ACTIVE,         /* takes requests while up */
    CONF_SERVER_DRAINING,       /* finishes what it has, gets nothing new */
    CONF_SERVER_DISABLED,       /* out of rotation */
};

struct conf_server {
    struct conf_addr addr;
    enum conf_server_state state;   /* default active */
    unsigned weight;            /* 1..256, default 1 */
    bool     backup;            /* only used when no primary server can serve */
    unsigned max_conns;         /* requests at once; 0 = no limit */
    int      line, column;      /* where it was declared, for later messages */
};

/* Active health check of every server of a pool: GET `path` over a
 * connection of its own every `interval`. */
struct conf_health_check {
    char    *path;              /* NULL: no active check */
    uint32_t interval;          /* ms; default 2s */
    uint32_t timeout;           /* ms; default 1s */
    uint32_t rise;              /* successes to go up; default 2 */
    uint32_t fall;              /* failures to go down; default 3 */
    uint32_t expect_status;     /* 0 = any 2xx or 3xx; default 0 */
};

/* Passive outlier detection: consecutive failures (connect errors, 5xx)
 * eject a server for base_ejection_time, doubling while it keeps failing. */
struct conf_outlier {
    uint32_t consecutive_failures;  /* 0 = off; default 5 */
    uint32_t base_ejection_time;    /* ms; default 10s */
    uint32_t max_ejection_time;     /* ms; default 5m */
};

/* Where requests wait when every usable server is at max_conns. */
struct conf_queue {
    uint32_t size;              /* requests waiting, whole pool; 0 = no queue */
    uint32_t timeout;           /* ms a request may wait; then 503 */
};

struct conf_pool {
    char *name;
    struct conf_queue queue;
    struct conf_health_check health_check;
    struct conf_outlier outlier;
    uint32_t retries;               /* other servers tried after a failed
                                       connect; default 2 */
    uint32_t retry_budget;          /* retries as % of requests; default 20 */
    uint32_t slow_start;            /* ms a server that comes back takes to
                                       reach its full share; 0 = off */
    enum conf_balance  balance;
    enum conf_hash_key hash_key;
    char *hash_name;            /* header or cookie name; NULL otherwise */
    struct conf_server *servers;
    size_t n_servers;
    int line, column;
};

/* A route matches when every key it has matches; a route with neither key is
 * the default. First match wins. */
struct conf_route {
    char  *host;                /* NULL = any; "*.example.com" = any subdomain;
                                   compared case-insensitively without port */
    char  *path_prefix;         /* NULL = any */
    size_t pool;                /* index into conf.pools */
    int line, column;
};

/* Every duration is in milliseconds. */
struct conf_timeouts {
    uint32_t connect;           /* backend TCP connect; default 5s */
    uint32_t client_header;     /* first byte to end of request headers; 10s */
    uint32_t client_idle;       /* keep-alive wait between requests; 60s */
    uint32_t server;            /* backend silence while a response is due; 60s */
    uint32_t tunnel;            /* idle time of an upgraded connection; 1h */
    uint32_t shutdown;          /* SIGTERM grace for in-flight requests; 30s */
};

struct conf_limits {
    uint32_t max_header_bytes;  /* request line + headers; default 32768 */
    uint32_t max_connections;   /* client connections, whole process; 10000 */
    uint32_t pipe_size;         /* bytes a splice pipe holds, 0: no splicing;
                                   default 32768 */
};

struct conf_access_log {
    char *path;                 /* file path, "stderr", or NULL when "off" */
    enum conf_log_format format;
};

/* A path or other string in a list; keeps where it was written. */
struct conf_string {
    char *value;
    int line, column;
};

/* How the telemetry aggregator thread competes with the workers for CPU. */
enum conf_tm_priority {
    CONF_TM_PRIORITY_IDLE,      /* SCHED_IDLE: the time the workers leave */
    CONF_TM_PRIORITY_LOW,       /* nice 19 */
    CONF_TM_PRIORITY_NORMAL,    /* as the workers */
};

struct conf_telemetry {
    bool enabled;               /* default true */
    uint32_t ring_size;         /* records per worker ring; default 16384 */
    int priority;               /* enum conf_tm_priority; default idle */
    struct conf_string *geoip;  /* .mmdb files (1, or a v4/v6 pair); none = off */
    size_t n_geoip;
    bool has_location;          /* `location` given */
    double latitude, longitude; /* where this proxy stands, for map arcs */
};

/* A dashboard user: `password` is a crypt(3) hash ("$6$…", "$y$…"). */
struct conf_user {
    char *name;
    char *password;
    int line, column;
};

struct conf_dashboard {
    bool enabled;               /* default true */
    struct conf_addr listen;    /* default 127.0.0.1:8081 */
    uint32_t push_hz;           /* WebSocket updates a second; default 4 */
    char *token;                /* bearer token; NULL = none */
    char *token_file;           /* or read it from this file; NULL = none */
    struct conf_user *users;    /* Basic auth users */
    size_t n_users;
    struct conf_string *allowed_origins;  /* besides the dashboard's own */
    size_t n_allowed_origins;
    int line, column;           /* of the `dashboard` key, for messages */
};

enum conf_chat_mode {
    CONF_CHAT_ROOMS,            /* open rooms with a lobby */
    CONF_CHAT_SUPPORT,          /* a customer queue served by staff */
    CONF_CHAT_RANDOM,           /* one-to-one with a stranger */
    CONF_CHAT_MODES
};

/* The chat demo, served by the dashboard server (see dashboard/chat.h). */
struct conf_chat {
    bool enabled;               /* default false; needs dashboard.enabled */
    struct conf_string *mode_list;  /* as written, for messages */
    size_t n_mode_list;
    unsigned modes;             /* bits 1 << enum conf_chat_mode; default all */
    int default_mode;           /* enum conf_chat_mode; default rooms */
    struct conf_string *rooms;  /* fixed rooms; default Lobby … Nightclub */
    size_t n_rooms;
    bool addable_rooms;         /* users may create rooms; default true */
    bool addable_rooms_visible; /* …listed in the lobby; default true */
    uint32_t max_name_length;   /* characters; default 30 */
    uint32_t history;           /* messages a joiner gets; default 50 */
    uint32_t max_message_bytes; /* of a message's text; default 2000 */
    uint32_t rate;              /* messages a second per connection; 5 */
    uint32_t burst;             /* …and at once; 10 */
    uint32_t max_rooms_per_user;/* rooms one user created that exist; 3 */
    uint32_t max_connections;   /* chat WebSockets at once; 10000 */
    uint32_t reconnect_grace_ms;/* a dropped user keeps its place; 30s */
    uint32_t no_show_timeout_ms;/* an offered customer must arrive; 30s */
    bool log;                   /* chat lines in the log; default off */
    int line, column;           /* of the `chat` key, for messages */
};

struct conf {
    char *file;                 /* path the config was read from */

    struct conf_addr *listen;
    size_t n_listen;
    /* Accept a client connection once its first bytes arrive (Linux
     * TCP_DEFER_ACCEPT; nginx's `deferred`, HAProxy's `defer-accept`): HTTP
     * clients speak first. Default true. */
    bool defer_accept;

    unsigned workers;           /* resolved: "auto" becomes the core count */

    struct conf_pool *pools;
    size_t n_pools;

    struct conf_route *routes;  /* ends with a default route if one exists */
    size_t n_routes;

    struct conf_cidr *trusted_proxies;
    size_t n_trusted_proxies;

    struct conf_timeouts   timeouts;
    struct conf_limits     limits;
    struct conf_access_log access_log;
    struct conf_telemetry  telemetry;
    struct conf_dashboard  dashboard;
    struct conf_chat       chat;
};

/*
 * Read and check the YAML file at `path`. On success returns a new struct
 * conf owned by the caller. On failure returns NULL and writes one line
 * "FILE:LINE:COL: message" (no trailing newline) into `err`.
 */
struct conf *conf_load(const char *path, char *err, size_t errlen);

/* Same, from a string; `name` is used as FILE in messages. For tests. */
struct conf *conf_load_string(const char *name, const char *yaml,
                              char *err, size_t errlen);

void conf_free(struct conf *conf);

/* Value parsers shared with the rest of Switchboard. Each returns 0 on
 * success, -1 with a short reason in `err` (no file:line). */
int conf_parse_duration(const char *text, uint32_t *ms, char *err, size_t errlen);
int conf_parse_addr(const char *text, struct conf_addr *out, char *err, size_t errlen);
int conf_parse_cidr(const char *text, struct conf_cidr *out, char *err, size_t errlen);

/* True when `addr` (AF_INET or AF_INET6 sockaddr) lies in `cidr`. An IPv4
 * address mapped into IPv6 (::ffff:a.b.c.d) matches IPv4 ranges. */
bool conf_cidr_match(const struct conf_cidr *cidr, const struct sockaddr *addr);

const char *conf_balance_name(enum conf_balance b);
/* "rooms", "support", "random". */
const char *conf_chat_mode_name(enum conf_chat_mode m);

#endif
