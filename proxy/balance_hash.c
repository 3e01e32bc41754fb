/*
 * balance_hash.c - consistent hashing on a ring, ketama style.
 *
 * Every server is placed on a 64-bit ring at 160 x weight points, point j of
 * a server being lb_hash64(server id, j). A request key is hashed onto the
 * same ring and goes to the server owning the first point at or after it.
 * Because a server's points depend only on its identity (the `id` text, e.g.
 * its address) and not on its position in the list, removing a server moves
 * only the keys it owned, about 1/N of them, and adding it back returns
 * exactly those keys; the other servers keep their clients and their caches.
 * The 160 points per unit of weight smooth out the arc lengths: a server's
 * share of the keys deviates from its weight's share by about 1/sqrt(160 x
 * weight), some 8% of itself at weight 1 and 4% at weight 4.
 *
 * A server that cannot take the request (down, excluded for a retry) is
 * skipped by walking forward along the ring, so its keys spread over its
 * neighbours in proportion to their arcs and come back when it is up again.
 * Primaries and backups sit on two separate rings, so a walk among primaries
 * never steps over backup points and the other way round. The walk is
 * bounded by the ring size, and a quick scan of the servers first makes the
 * "nothing usable" case cost O(servers) rather than O(ring).
 *
 * A missing key (NULL) hashes like the empty key: every such request goes to
 * the same server, which is as consistent as it can be.
 *
 * Thread context: the rings are built by init() on the main thread, only read
 * by workers afterwards, and freed by fini() once no worker uses the pool.
 * There is no per-worker state; worker_new() returns a placeholder that is
 * never written, because a NULL return means "out of memory".
 */
#include "proxy/balance.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define HASH_POINTS_PER_WEIGHT 160

struct ring_point {
    uint64_t hash;
    uint32_t server;
};

struct hash_ring {
    struct ring_point *points;  /* sorted by hash, then server */
    size_t n_points;
};

struct hash_shared {
    struct hash_ring rings[2];  /* [false]: primaries, [true]: backups */
};

static const char hash_no_worker_state;

static int point_cmp(const void *pa, const void *pb)
{
    const struct ring_point *a = pa, *b = pb;

    if (a->hash != b->hash)
        return a->hash < b->hash ? -1 : 1;
    /* Two servers on the same point (same id listed twice, or a 2^-64
     * accident): order by index so every worker and every reload agree. */
    return (a->server > b->server) - (a->server < b->server);
}

static int ring_build(struct hash_ring *ring, const struct lb_pool *pool,
                      bool backup)
{
    size_t n_points = 0;

    for (size_t i = 0; i < pool->n_servers; i++) {
        const struct lb_server *s = &pool->servers[i];
        if (s->backup != backup)
            continue;
        if (s->weight > (SIZE_MAX / sizeof *ring->points - n_points)
                        / HASH_POINTS_PER_WEIGHT) {
            errno = ENOMEM;
            return -1;
        }
        n_points += (size_t)s->weight * HASH_POINTS_PER_WEIGHT;
    }
    ring->n_points = 0;
    ring->points = NULL;
    if (n_points == 0)
        return 0;

    ring->points = malloc(n_points * sizeof *ring->points);
    if (ring->points == NULL)
        return -1;

    size_t k = 0;
    for (size_t i = 0; i < pool->n_servers; i++) {
        const struct lb_server *s = &pool->servers[i];
        char index_id[32];
        const char *id = s->id;

        if (s->backup != backup)
            continue;
        if (id == NULL) {
            snprintf(index_id, sizeof index_id, "#%zu", i);
            id = index_id;
        }
        size_t id_len = strlen(id);
        /* Point j does not depend on the weight, so raising a server's
         * weight only adds points: keys already on it stay on it. */
        for (size_t j = 0; j < (size_t)s->weight * HASH_POINTS_PER_WEIGHT; j++) {
            ring->points[k].hash = lb_hash64(id, id_len, j);
            ring->points[k].server = (uint32_t)i;
            k++;
        }
    }
    qsort(ring->points, n_points, sizeof *ring->points, point_cmp);
    ring->n_points = n_points;
    return 0;
}

static int hash_init(struct lb_pool *pool)
{
    if (pool->n_servers > UINT32_MAX) {
        errno = EINVAL;
        return -1;
    }
    struct hash_shared *shared = calloc(1, sizeof *shared);
    if (shared == NULL)
        return -1;
    if (ring_build(&shared->rings[false], pool, false) != 0 ||
        ring_build(&shared->rings[true], pool, true) != 0) {
        free(shared->rings[false].points);
        free(shared);
        return -1;
    }
    pool->shared = shared;
    return 0;
}

static void hash_fini(struct lb_pool *pool)
{
    struct hash_shared *shared = pool->shared;

    if (shared == NULL)
        return;
    free(shared->rings[false].points);
    free(shared->rings[true].points);
    free(shared);
    pool->shared = NULL;
}

static void *hash_worker_new(const struct lb_pool *pool, uint64_t seed)
{
    return (void *)&hash_no_worker_state;
}

static void hash_worker_free(void *worker_state)
{
}

/* Index of the first point with hash >= h, wrapping past the top to 0. */
static size_t ring_find(const struct hash_ring *ring, uint64_t h)
{
    size_t lo = 0, hi = ring->n_points;

    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (ring->points[mid].hash < h)
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo < ring->n_points ? lo : 0;
}

static int hash_pick(const struct lb_pool *pool, void *worker_state,
                     const struct lb_request *req, bool backup)
{
    const struct hash_shared *shared = pool->shared;
    const struct hash_ring *ring = &shared->rings[backup];
    bool any_usable = false;

    if (ring->n_points == 0)
        return -1;
    for (size_t i = 0; i < pool->n_servers && !any_usable; i++)
        any_usable = pool->servers[i].backup == backup &&
                     lb_server_usable(pool, i, req);
    if (!any_usable)
        return -1;

    uint64_t h = req->key != NULL ? lb_hash64(req->key, req->key_len, 0)
                                  : lb_hash64("", 0, 0);
    size_t at = ring_find(ring, h);
    for (size_t walked = 0; walked < ring->n_points; walked++) {
        uint32_t server = ring->points[at].server;
        if (lb_server_usable(pool, server, req))
            return (int)server;
        if (++at == ring->n_points)
            at = 0;
    }
    /* Every usable server went down between the scan and the walk. */
    return -1;
}

const struct lb_ops lb_hash_ops = {
    .name        = "hash",
    .init        = hash_init,
    .fini        = hash_fini,
    .worker_new  = hash_worker_new,
    .worker_free = hash_worker_free,
    .pick        = hash_pick,
};
