/*
 * balance.c - what every load-balancing algorithm shares: mapping a configured
 * algorithm to its ops, a pool's life cycle, the "can this server take a new
 * request" test, primaries before backups, and the 64-bit key hash.
 *
 * The algorithms themselves live in balance_<name>.c and see a pool only
 * through `struct lb_ops`; this file knows none of their internals.
 *
 * Thread context: lb_pool_init() and lb_pool_fini() run on the main thread
 * when a config generation is built or retired, while no worker uses the pool.
 * lb_pick() and lb_server_usable() run on worker threads: they read the pool,
 * its shared state and the servers' atomics, and write only the calling
 * worker's own state. lb_hash64() is pure.
 */
#include "proxy/balance.h"

#include <errno.h>
#include <string.h>

const struct lb_ops *lb_ops_for(enum conf_balance balance)
{
    switch (balance) {
    case CONF_BALANCE_ROUND_ROBIN: return &lb_round_robin_ops;
    case CONF_BALANCE_LEAST_CONN:  return &lb_least_conn_ops;
    case CONF_BALANCE_RANDOM2:     return &lb_random2_ops;
    case CONF_BALANCE_HASH:        return &lb_hash_ops;
    }
    /* The config module only produces the values above; a stray value still
     * gets a working balancer rather than a NULL to trip over. */
    return &lb_round_robin_ops;
}

int lb_pool_init(struct lb_pool *pool, struct lb_server *servers,
                 size_t n_servers, enum conf_balance balance)
{
    pool->servers = servers;
    pool->n_servers = n_servers;
    pool->ops = lb_ops_for(balance);
    pool->shared = NULL;

    /* Every algorithm divides or multiplies by the weight; a zero would turn
     * "weighted" into "never" or "always" depending on the algorithm, so it is
     * refused here once rather than handled four ways. */
    for (size_t i = 0; i < n_servers; i++) {
        if (servers[i].weight == 0) {
            errno = EINVAL;
            return -1;
        }
    }

    if (pool->ops->init(pool) != 0) {
        pool->shared = NULL;
        return -1;
    }
    return 0;
}

void lb_pool_fini(struct lb_pool *pool)
{
    if (pool->ops != NULL)
        pool->ops->fini(pool);
    pool->shared = NULL;
}

bool lb_server_usable(const struct lb_pool *pool, size_t index,
                      const struct lb_request *req)
{
    if (index >= pool->n_servers)
        return false;
    if (req->exclude >= 0 && (size_t)req->exclude == index)
        return false;
    /* Relaxed: the state is advice from the health checker. A request picked
     * a moment after a server went down fails like any backend error and is
     * retried elsewhere; ordering against other memory buys nothing. */
    const struct lb_server *s = &pool->servers[index];
    if (atomic_load_explicit(&s->state, memory_order_relaxed) != LB_SERVER_UP)
        return false;
    if (s->max_conns && !req->ignore_full &&
        atomic_load_explicit(&s->inflight, memory_order_relaxed) >= s->max_conns)
        return false;
    if (req->now_ms == UINT64_MAX)
        return true;
    if (atomic_load_explicit(&s->ejected_until_ms, memory_order_relaxed) > req->now_ms)
        return false;
    /* Slow start, for every algorithm alike: a ramping server is a
     * candidate in a fraction of picks growing linearly to all of them, so
     * its share of traffic grows the same way. */
    if (s->slow_start_ms) {
        uint64_t start = atomic_load_explicit(&s->ramp_start_ms, memory_order_relaxed);
        if (start && req->now_ms < start + s->slow_start_ms) {
            uint64_t into = req->now_ms > start ? req->now_ms - start : 0;
            uint64_t share = (into * 65536u) / s->slow_start_ms;
            if ((req->random & 0xffffu) >= share + 1)
                return false;
        }
    }
    return true;
}

int lb_pick(const struct lb_pool *pool, void *worker_state,
            const struct lb_request *req)
{
    int index = pool->ops->pick(pool, worker_state, req, false);
    if (index < 0)
        index = pool->ops->pick(pool, worker_state, req, true);
    return index;
}

/*
 * lb_hash64: one 64-bit lane in the style of xxHash64 (each 8-byte block is
 * multiplied, rotated and folded into the state), finished with the
 * splitmix64 / murmur3 avalanche so that keys differing in one character,
 * such as "10.0.0.1" and "10.0.0.2", land far apart.
 *
 * Blocks are read as little-endian whatever the host, so a key hashes the same
 * on every machine: several Switchboard instances in front of the same
 * backends send a given client to the same server.
 *
 * The value is part of Switchboard's behaviour: changing this function moves
 * every hashed key to a new server. The unit tests pin known outputs.
 */
#define HASH_K1 UINT64_C(0x9e3779b185ebca87)
#define HASH_K2 UINT64_C(0xc2b2ae3d27d4eb4f)
#define HASH_K3 UINT64_C(0x165667b19e3779f9)
#define HASH_K4 UINT64_C(0x85ebca77c2b2ae63)

static inline uint64_t rotl64(uint64_t x, unsigned r)
{
    return (x << r) | (x >> (64 - r));
}

static inline uint64_t load_le64(const unsigned char *p)
{
    return (uint64_t)p[0]       | (uint64_t)p[1] << 8  |
           (uint64_t)p[2] << 16 | (uint64_t)p[3] << 24 |
           (uint64_t)p[4] << 32 | (uint64_t)p[5] << 40 |
           (uint64_t)p[6] << 48 | (uint64_t)p[7] << 56;
}

/* splitmix64's finaliser: a bijection in which every input bit affects every
 * output bit with probability close to one half. */
static inline uint64_t mix64(uint64_t x)
{
    x ^= x >> 30;
    x *= UINT64_C(0xbf58476d1ce4e5b9);
    x ^= x >> 27;
    x *= UINT64_C(0x94d049bb133111eb);
    x ^= x >> 31;
    return x;
}

/* For a fixed state this is a bijection of the block, so two keys of the same
 * length that differ only in one block cannot collide before the finaliser. */
static inline uint64_t hash_round(uint64_t h, uint64_t block)
{
    block *= HASH_K2;
    block = rotl64(block, 31);
    block *= HASH_K1;
    h ^= block;
    return rotl64(h, 27) * HASH_K1 + HASH_K4;
}

uint64_t lb_hash64(const void *data, size_t len, uint64_t seed)
{
    const unsigned char *p = data;
    /* Mixing the seed first makes seeds 0, 1, 2... (ring points of one
     * server) as unrelated as distinct random seeds; mixing the length keeps
     * "a" and "a\0" apart, since the tail is zero-padded. */
    uint64_t h = mix64(seed + HASH_K3) ^ ((uint64_t)len * HASH_K1);

    while (len >= 8) {
        h = hash_round(h, load_le64(p));
        p += 8;
        len -= 8;
    }
    if (len > 0) {
        uint64_t tail = 0;
        for (size_t i = 0; i < len; i++)
            tail |= (uint64_t)p[i] << (8 * i);
        h = hash_round(h, tail);
    }
    return mix64(h);
}
