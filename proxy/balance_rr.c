/*
 * balance_rr.c - smooth weighted round robin, as nginx does it.
 *
 * Each server has a current weight, starting at zero. For every pick, each
 * usable server's current weight grows by its weight; the server with the
 * largest current weight wins and has the sum of the weights taken off. Over
 * any window of sum-of-weights picks every server is chosen exactly `weight`
 * times, and the picks of a heavy server are spread out instead of coming in
 * a burst: weights 5, 1, 1 give a a b a c a a, not a a a a a b c. Servers that
 * are down, excluded or on the other side of the backup line neither gain nor
 * lose current weight, so they rejoin where they left off.
 *
 * Why per worker: the current weights change on every pick. Shared, they
 * would need a lock or a compare-and-swap loop on the hottest path; per
 * worker, each worker runs its own exact sequence and the sum over workers
 * keeps the configured proportions.
 *
 * Thread context: no shared state (init and fini do nothing). The current
 * weights belong to one worker and are touched only by its thread; server
 * states are read through lb_server_usable().
 */
#include "proxy/balance.h"

#include <stdlib.h>

struct rr_worker {
    size_t  n_servers;
    int64_t current[];          /* current weight of each server */
};

static int rr_init(struct lb_pool *pool)
{
    return 0;
}

static void rr_fini(struct lb_pool *pool)
{
}

static void *rr_worker_new(const struct lb_pool *pool, uint64_t seed)
{
    struct rr_worker *w = calloc(1, sizeof *w +
                                    pool->n_servers * sizeof w->current[0]);
    if (w == NULL)
        return NULL;
    w->n_servers = pool->n_servers;
    return w;
}

static void rr_worker_free(void *worker_state)
{
    free(worker_state);
}

static int rr_pick(const struct lb_pool *pool, void *worker_state,
                   const struct lb_request *req, bool backup)
{
    struct rr_worker *w = worker_state;
    int64_t total = 0;
    int best = -1;

    for (size_t i = 0; i < w->n_servers; i++) {
        const struct lb_server *s = &pool->servers[i];

        if (s->backup != backup || !lb_server_usable(pool, i, req))
            continue;
        w->current[i] += s->weight;
        total += s->weight;
        /* Strictly greater: on a tie the earlier server wins, which is what
         * makes the sequence for a given set of weights deterministic. */
        if (best < 0 || w->current[i] > w->current[best])
            best = (int)i;
    }
    if (best >= 0)
        w->current[best] -= total;
    return best;
}

const struct lb_ops lb_round_robin_ops = {
    .name        = "round_robin",
    .init        = rr_init,
    .fini        = rr_fini,
    .worker_new  = rr_worker_new,
    .worker_free = rr_worker_free,
    .pick        = rr_pick,
};
