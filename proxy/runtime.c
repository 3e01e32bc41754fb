/*
 * runtime.c - one config generation as the data path uses it.
 *
 * The main thread builds a px_runtime from a struct conf (start-up and every
 * SIGHUP) and publishes it to the workers. From then on it is read-only;
 * only the balancer atomics inside it (server state, in-flight counts) change.
 * It is freed when the last reference goes: the proxy holds one for the
 * current generation and each worker holds one for every generation it still
 * has requests in flight under (see px_gen in worker.c).
 *
 * Route matching is a linear walk: route tables are short, and the walk
 * touches only this read-only memory, so no lock is needed.
 */
#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "proxy/proxy-internal.h"

static char *lower_dup(const char *s)
{
    char *d = strdup(s);
    if (d)
        for (char *p = d; *p; p++)
            *p = (char)tolower((unsigned char)*p);
    return d;
}

static void pool_free(struct px_pool *pool)
{
    if (pool->lb.ops)
        lb_pool_fini(&pool->lb);
    free(pool->name);
    free(pool->hash_name);
    free(pool->health_check.path);
    free(pool->lb_servers);
    free(pool->servers);
}

static void runtime_free(struct px_runtime *rt)
{
    for (size_t i = 0; i < rt->n_pools; i++)
        pool_free(&rt->pools[i]);
    free(rt->pools);
    for (size_t i = 0; i < rt->n_routes; i++) {
        free(rt->routes[i].host);
        free(rt->routes[i].path_prefix);
    }
    free(rt->routes);
    free(rt->trusted);
    free(rt);
}

static int pool_build(struct px_pool *pool, const struct conf_pool *cp,
                      size_t *global_index, char *err, size_t errlen)
{
    pool->name = strdup(cp->name);
    pool->n_servers = cp->n_servers;
    pool->lb_servers = calloc(cp->n_servers, sizeof *pool->lb_servers);
    pool->servers = calloc(cp->n_servers, sizeof *pool->servers);
    pool->hash_key = cp->hash_key;
    pool->outlier = cp->outlier;
    pool->queue = cp->queue;
    atomic_init(&pool->queued, 0);
    pool->retries = cp->retries;
    pool->retry_budget = cp->retry_budget;
    pool->health_check = cp->health_check;
    pool->health_check.path = NULL;
    if (cp->health_check.path &&
        !(pool->health_check.path = strdup(cp->health_check.path)))
        goto nomem;
    if (cp->hash_name) {
        pool->hash_name = strdup(cp->hash_name);
        pool->hash_name_len = strlen(cp->hash_name);
    }
    if (!pool->name || !pool->lb_servers || !pool->servers ||
        (cp->hash_name && !pool->hash_name))
        goto nomem;
    for (size_t i = 0; i < cp->n_servers; i++) {
        struct px_server *s = &pool->servers[i];
        s->addr = cp->servers[i].addr;
        s->index = i;
        s->global_index = (*global_index)++;
        s->pool = pool;
        struct lb_server *lb = &pool->lb_servers[i];
        lb->weight = cp->servers[i].weight;
        lb->backup = cp->servers[i].backup;
        lb->max_conns = cp->servers[i].max_conns;
        lb->slow_start_ms = cp->slow_start;
        lb->id = s->addr.text;
        /* The operator's word first; health checks then move active
         * servers between up and down. */
        atomic_init(&lb->state, cp->servers[i].state == CONF_SERVER_DRAINING
                                ? LB_SERVER_DRAINING
                                : cp->servers[i].state == CONF_SERVER_DISABLED
                                ? LB_SERVER_DISABLED : LB_SERVER_UP);
        atomic_init(&lb->inflight, 0);
    }
    if (lb_pool_init(&pool->lb, pool->lb_servers, pool->n_servers,
                     cp->balance) < 0)
        goto nomem;
    return 0;
nomem:
    snprintf(err, errlen, "pool %s: out of memory", cp->name);
    return -1;
}

/* A server that stays in its pool at the same address keeps its state. */
static void carry_states(struct px_runtime *rt, const struct px_runtime *prev)
{
    for (size_t p = 0; p < rt->n_pools; p++) {
        struct px_pool *pool = &rt->pools[p];
        const struct px_pool *old = NULL;
        for (size_t q = 0; q < prev->n_pools && !old; q++)
            if (strcmp(prev->pools[q].name, pool->name) == 0)
                old = &prev->pools[q];
        if (!old)
            continue;
        for (size_t i = 0; i < pool->n_servers; i++) {
            /* Draining or disabled by the new config: that stands. */
            if (atomic_load(&pool->lb_servers[i].state) != LB_SERVER_UP)
                continue;
            for (size_t k = 0; k < old->n_servers; k++)
                if (strcmp(old->servers[k].addr.text, pool->servers[i].addr.text) == 0) {
                    /* Only what health checks found carries over. */
                    if (atomic_load(&old->lb_servers[k].state) == LB_SERVER_DOWN)
                        atomic_store(&pool->lb_servers[i].state, LB_SERVER_DOWN);
                    break;
                }
        }
    }
}

struct px_runtime *px_runtime_new(const struct conf *conf, unsigned generation,
                                  const struct px_runtime *prev,
                                  char *err, size_t errlen)
{
    struct px_runtime *rt = calloc(1, sizeof *rt);
    if (!rt)
        goto nomem;
    atomic_init(&rt->refs, 1);
    rt->generation = generation;
    rt->timeouts = conf->timeouts;
    rt->limits = conf->limits;
    rt->access_log_on = conf->access_log.path != NULL;
    rt->access_log_format = conf->access_log.format;

    rt->pools = calloc(conf->n_pools ? conf->n_pools : 1, sizeof *rt->pools);
    if (!rt->pools)
        goto nomem;
    for (size_t i = 0; i < conf->n_pools; i++) {
        rt->n_pools++;
        if (pool_build(&rt->pools[i], &conf->pools[i], &rt->n_servers_total,
                       err, errlen) < 0)
            goto fail;
    }

    rt->routes = calloc(conf->n_routes ? conf->n_routes : 1, sizeof *rt->routes);
    if (!rt->routes)
        goto nomem;
    for (size_t i = 0; i < conf->n_routes; i++) {
        const struct conf_route *cr = &conf->routes[i];
        struct px_route *r = &rt->routes[i];
        rt->n_routes++;
        r->pool = &rt->pools[cr->pool];
        if (cr->host) {
            const char *h = cr->host;
            if (h[0] == '*' && h[1] == '.') {
                r->host_suffix = true;
                h++;                    /* keep the dot: ".example.com" */
            }
            if (!(r->host = lower_dup(h)))
                goto nomem;
        }
        if (cr->path_prefix) {
            if (!(r->path_prefix = strdup(cr->path_prefix)))
                goto nomem;
            r->path_prefix_len = strlen(r->path_prefix);
        }
    }

    if (conf->n_trusted_proxies) {
        rt->trusted = calloc(conf->n_trusted_proxies, sizeof *rt->trusted);
        if (!rt->trusted)
            goto nomem;
        memcpy(rt->trusted, conf->trusted_proxies,
               conf->n_trusted_proxies * sizeof *rt->trusted);
        rt->n_trusted = conf->n_trusted_proxies;
    }
    if (prev)
        carry_states(rt, prev);
    return rt;

nomem:
    snprintf(err, errlen, "out of memory building the configuration");
fail:
    if (rt)
        runtime_free(rt);
    return NULL;
}

void px_runtime_ref(struct px_runtime *rt)
{
    atomic_fetch_add_explicit(&rt->refs, 1, memory_order_relaxed);
}

void px_runtime_unref(struct px_runtime *rt)
{
    if (rt && atomic_fetch_sub_explicit(&rt->refs, 1, memory_order_acq_rel) == 1)
        runtime_free(rt);
}

static bool host_matches(const struct px_route *r, const char *host, size_t len)
{
    size_t rlen = strlen(r->host);
    if (!r->host_suffix)
        return len == rlen && memcmp(host, r->host, len) == 0;
    /* ".example.com" matches "a.example.com", not "example.com". */
    return len > rlen && memcmp(host + len - rlen, r->host, rlen) == 0;
}

struct px_pool *px_route_match(const struct px_runtime *rt,
                               const char *host, size_t host_len,
                               const char *path, size_t path_len)
{
    for (size_t i = 0; i < rt->n_routes; i++) {
        const struct px_route *r = &rt->routes[i];
        if (r->host && !host_matches(r, host, host_len))
            continue;
        if (r->path_prefix && (path_len < r->path_prefix_len ||
            memcmp(path, r->path_prefix, r->path_prefix_len) != 0))
            continue;
        return r->pool;
    }
    return NULL;
}

bool px_trusted(const struct px_runtime *rt, const struct sockaddr *sa)
{
    for (size_t i = 0; i < rt->n_trusted; i++)
        if (conf_cidr_match(&rt->trusted[i], sa))
            return true;
    return false;
}
