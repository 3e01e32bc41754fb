/*
 * balance.h - load-balancing algorithms behind one small function table.
 *
 * A pool is an array of servers plus one `struct lb_ops`. Adding an algorithm
 * means adding one file `balance_<name>.c` that defines its ops and one row in
 * lb_ops_for() (balance.c).
 *
 * State comes in two kinds, kept apart so that no lock is taken on the request
 * path:
 *   - shared state, built once per config generation by ops->init() and only
 *     read afterwards (e.g. the consistent-hash ring);
 *   - per-worker state, created by ops->worker_new() and touched only by the
 *     worker thread that owns it (e.g. smooth round-robin current weights, the
 *     random number generator).
 * The only fields written by several threads are the atomics in lb_server.
 *
 * Backup servers: lb_pick() first asks the algorithm for a primary server; only
 * when no primary is usable does it ask again among the backups.
 */
#ifndef SWITCHBOARD_PROXY_BALANCE_H
#define SWITCHBOARD_PROXY_BALANCE_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "conf/conf.h"

enum lb_server_state {
    LB_SERVER_UP = 0,
    LB_SERVER_DOWN,             /* health checks or ejection say no */
    LB_SERVER_DRAINING,         /* finishes what it has, gets nothing new */
    LB_SERVER_DISABLED,         /* taken out by the operator */
};

struct lb_server {
    unsigned weight;            /* configured weight, >= 1 */
    bool     backup;
    unsigned max_conns;         /* 0 = no limit on inflight */
    /* Stable identity, e.g. the address text "10.0.0.7:8080"; borrowed, must
     * outlive the pool. The hash ring is placed by it, not by the index, so
     * adding or removing one server leaves the other servers' keys where
     * they were. NULL falls back to the index (stable only while the server
     * list is unchanged). */
    const char *id;
    atomic_int  state;          /* enum lb_server_state; any thread */
    atomic_uint inflight;       /* requests being served now, all workers */
    /* Passive outlier detection (any worker): */
    atomic_uint consecutive_failures;
    atomic_uint ejections;      /* in a row, for the growing back-off */
    _Atomic uint64_t ejected_until_ms;  /* monotonic ms; 0 = not ejected */
    /* Slow start: for slow_start_ms after ramp_start_ms (monotonic), the
     * server takes a growing share of the picks it would otherwise get. */
    uint32_t slow_start_ms;             /* 0 = off */
    _Atomic uint64_t ramp_start_ms;
};

/* What the caller knows of the request, for algorithms that need it. */
struct lb_request {
    const void *key;            /* bytes to hash (hash balancer); may be NULL */
    size_t      key_len;
    int         exclude;        /* server index not to pick (retry), or -1 */
    uint64_t    now_ms;         /* monotonic ms, to skip ejected servers;
                                   UINT64_MAX = ignore ejections */
    bool        ignore_full;    /* count servers at max_conns as usable */
    uint32_t    random;         /* uniform per pick, for slow start */
};

struct lb_pool;

struct lb_ops {
    const char *name;
    /* Build shared state for `pool`. 0 on success, -1 on allocation failure. */
    int   (*init)(struct lb_pool *pool);
    void  (*fini)(struct lb_pool *pool);
    /* Per-worker mutable state; NULL return means out of memory. */
    void *(*worker_new)(const struct lb_pool *pool, uint64_t seed);
    void  (*worker_free)(void *worker_state);
    /* Pick a usable server among those whose `backup` flag equals `backup`.
     * Returns its index, or -1 when none is usable. Must not block. */
    int   (*pick)(const struct lb_pool *pool, void *worker_state,
                  const struct lb_request *req, bool backup);
};

struct lb_pool {
    struct lb_server *servers;  /* owned by the caller of lb_pool_init() */
    size_t n_servers;
    const struct lb_ops *ops;
    void *shared;               /* owned by ops; set by init() */
};

/* The ops for a configured algorithm. Never NULL. */
const struct lb_ops *lb_ops_for(enum conf_balance balance);

/* Set pool->ops and build its shared state. 0 on success, -1 on failure. */
int  lb_pool_init(struct lb_pool *pool, struct lb_server *servers,
                  size_t n_servers, enum conf_balance balance);
void lb_pool_fini(struct lb_pool *pool);

/* A server can take a new request: up, and not `req->exclude`. */
bool lb_server_usable(const struct lb_pool *pool, size_t index,
                      const struct lb_request *req);

/* Pick a server for one request: primaries first, then backups. Returns the
 * server index or -1 when no server can take it (caller answers 503). */
int  lb_pick(const struct lb_pool *pool, void *worker_state,
             const struct lb_request *req);

/* 64-bit hash used for keys and ring points (stable across runs). */
uint64_t lb_hash64(const void *data, size_t len, uint64_t seed);

extern const struct lb_ops lb_round_robin_ops;
extern const struct lb_ops lb_least_conn_ops;
extern const struct lb_ops lb_random2_ops;
extern const struct lb_ops lb_hash_ops;

#endif
