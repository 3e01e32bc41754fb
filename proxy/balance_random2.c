/*
 * balance_random2.c - power of two random choices.
 *
 * Two distinct usable servers are drawn at random, each with probability
 * proportional to its weight, and the one with the lower inflight / weight
 * takes the request; on equal load the first drawn wins. Looking at only two
 * servers keeps the pick cheap and, unlike "least loaded of all", does not
 * make every worker stampede onto the same momentarily idle server: each
 * worker's view of the in-flight counts is slightly stale, and randomness
 * keeps that staleness from synchronising them. Two samples are enough to
 * shrink the worst-loaded server's queue exponentially compared with one.
 *
 * Weights are honoured even when every server is idle: all loads are then
 * equal, the first draw wins, and the first draw is weighted. The second draw
 * leaves out the first server, so a heavy server is never compared with
 * itself.
 *
 * Each pick takes one snapshot of the usable servers with running weight sums
 * (a server's state may change under our feet; drawing from a snapshot means
 * a draw can never fall off the end), then maps two random numbers into it by
 * binary search.
 *
 * Thread context: no shared state. The random generator (xoshiro256**,
 * seeded through splitmix64 from the worker's seed) and the snapshot buffer
 * belong to one worker; in-flight counts are the servers' atomics, read
 * without ordering.
 */
#include "proxy/balance.h"

#include <stdlib.h>

struct r2_candidate {
    uint64_t weight_end;        /* sum of weights up to and including this one */
    size_t   server;
};

struct r2_worker {
    uint64_t rng[4];            /* xoshiro256** state */
    size_t   n_servers;
    struct r2_candidate candidates[];   /* scratch for one pick */
};

static inline uint64_t rotl64(uint64_t x, unsigned r)
{
    return (x << r) | (x >> (64 - r));
}

static uint64_t splitmix64_next(uint64_t *state)
{
    uint64_t z = (*state += UINT64_C(0x9e3779b97f4a7c15));
    z = (z ^ (z >> 30)) * UINT64_C(0xbf58476d1ce4e5b9);
    z = (z ^ (z >> 27)) * UINT64_C(0x94d049bb133111eb);
    return z ^ (z >> 31);
}

static uint64_t xoshiro_next(uint64_t s[4])
{
    uint64_t result = rotl64(s[1] * 5, 7) * 9;
    uint64_t t = s[1] << 17;

    s[2] ^= s[0];
    s[3] ^= s[1];
    s[1] ^= s[2];
    s[0] ^= s[3];
    s[2] ^= t;
    s[3] = rotl64(s[3], 45);
    return result;
}

/* Uniform in [0, bound), bound > 0. Values below 2^64 mod bound are thrown
 * away so that every result is exactly equally likely; with weight sums in
 * the thousands a retry happens about once in 10^15 draws. */
static uint64_t random_below(uint64_t s[4], uint64_t bound)
{
    uint64_t threshold = (0 - bound) % bound;
    for (;;) {
        uint64_t r = xoshiro_next(s);
        if (r >= threshold)
            return r % bound;
    }
}

/* The candidate whose weight range [weight_end - weight, weight_end) holds r. */
static size_t candidate_at(const struct r2_candidate *c, size_t n, uint64_t r)
{
    size_t lo = 0, hi = n - 1;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (c[mid].weight_end > r)
            hi = mid;
        else
            lo = mid + 1;
    }
    return lo;
}

static int r2_init(struct lb_pool *pool)
{
    return 0;
}

static void r2_fini(struct lb_pool *pool)
{
}

static void *r2_worker_new(const struct lb_pool *pool, uint64_t seed)
{
    struct r2_worker *w = malloc(sizeof *w +
                                 pool->n_servers * sizeof w->candidates[0]);
    if (w == NULL)
        return NULL;
    w->n_servers = pool->n_servers;
    /* splitmix64 spreads any seed, even 0 or consecutive worker numbers, into
     * a state that is not all zero, which xoshiro would be stuck at. */
    uint64_t sm = seed;
    for (int i = 0; i < 4; i++)
        w->rng[i] = splitmix64_next(&sm);
    return w;
}

static void r2_worker_free(void *worker_state)
{
    free(worker_state);
}

static int r2_pick(const struct lb_pool *pool, void *worker_state,
                   const struct lb_request *req, bool backup)
{
    struct r2_worker *w = worker_state;
    struct r2_candidate *c = w->candidates;
    uint64_t total = 0;
    size_t n = 0;

    for (size_t i = 0; i < w->n_servers; i++) {
        const struct lb_server *s = &pool->servers[i];

        if (s->backup != backup || !lb_server_usable(pool, i, req))
            continue;
        total += s->weight;
        c[n].weight_end = total;
        c[n].server = i;
        n++;
    }
    if (n == 0)
        return -1;
    if (n == 1)
        return (int)c[0].server;

    size_t a = candidate_at(c, n, random_below(w->rng, total));
    uint64_t a_weight = pool->servers[c[a].server].weight;
    uint64_t a_start = c[a].weight_end - a_weight;

    /* Draw over the other servers' weights by skipping a's range. */
    uint64_t r = random_below(w->rng, total - a_weight);
    if (r >= a_start)
        r += a_weight;
    size_t b = candidate_at(c, n, r);

    const struct lb_server *sa = &pool->servers[c[a].server];
    const struct lb_server *sb = &pool->servers[c[b].server];
    uint64_t load_a = atomic_load_explicit(&sa->inflight, memory_order_relaxed);
    uint64_t load_b = atomic_load_explicit(&sb->inflight, memory_order_relaxed);

    /* load_b / weight_b < load_a / weight_a, without dividing. */
    if (load_b * sa->weight < load_a * sb->weight)
        return (int)c[b].server;
    return (int)c[a].server;
}

const struct lb_ops lb_random2_ops = {
    .name        = "random2",
    .init        = r2_init,
    .fini        = r2_fini,
    .worker_new  = r2_worker_new,
    .worker_free = r2_worker_free,
    .pick        = r2_pick,
};
