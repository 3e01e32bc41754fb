/*
 * test_balance.c - the load-balancing algorithms: distribution against the
 * configured weights, the exact smooth round-robin sequence, consistent-hash
 * stability when servers come and go, backups, exclusion and the key hash.
 *
 * Every run is deterministic (fixed seeds, fixed keys), so the tolerances
 * below are checks of the algorithms, not of luck. Measured figures are
 * printed on lines starting with '#'.
 */
#include "check.h"

#include <inttypes.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "proxy/balance.h"

#define MAX_SERVERS 16
#define PICKS       100000
/* Where randomness is involved (random2, simulated completions), 100,000
 * picks give a server with a tenth of the weight a standard deviation of
 * about 1% of its share, so 2% would be a two sigma bound. Ten times more
 * picks make 2% a six sigma one. */
#define RANDOM_PICKS    1000000

struct fixture {
    struct lb_server servers[MAX_SERVERS];
    char ids[MAX_SERVERS][64];
    struct lb_pool pool;
    void *worker;
};

/* A pool of `n` servers. weights, backups and ids may be NULL: weight 1, no
 * backups, ids "10.0.0.<i+1>:80". Returns 0 on success. */
static int fixture_init(struct fixture *f, enum conf_balance balance, size_t n,
                        const unsigned *weights, const bool *backups,
                        const char *const *ids)
{
    memset(f, 0, sizeof *f);
    for (size_t i = 0; i < n; i++) {
        struct lb_server *s = &f->servers[i];
        s->weight = weights ? weights[i] : 1;
        s->backup = backups ? backups[i] : false;
        if (ids)
            snprintf(f->ids[i], sizeof f->ids[i], "%s", ids[i]);
        else
            snprintf(f->ids[i], sizeof f->ids[i], "10.0.0.%zu:80", i + 1);
        s->id = f->ids[i];
        atomic_init(&s->state, LB_SERVER_UP);
        atomic_init(&s->inflight, 0);
    }
    if (lb_pool_init(&f->pool, f->servers, n, balance) != 0)
        return -1;
    f->worker = f->pool.ops->worker_new(&f->pool, 42);
    if (f->worker == NULL) {
        lb_pool_fini(&f->pool);
        return -1;
    }
    return 0;
}

static void fixture_fini(struct fixture *f)
{
    f->pool.ops->worker_free(f->worker);
    lb_pool_fini(&f->pool);
}

static void set_state(struct fixture *f, size_t i, enum lb_server_state st)
{
    atomic_store(&f->servers[i].state, st);
}

static int pick(struct fixture *f, int exclude)
{
    struct lb_request req = { .key = NULL, .key_len = 0, .exclude = exclude };
    return lb_pick(&f->pool, f->worker, &req);
}

static int pick_key(struct fixture *f, const char *key)
{
    struct lb_request req = { .key = key, .key_len = strlen(key), .exclude = -1 };
    return lb_pick(&f->pool, f->worker, &req);
}

/* Largest |share / expected - 1| over the servers, where the expected share
 * of server i is weights[i] / sum(weights). */
static double worst_share_error(const unsigned long *counts,
                                const unsigned *weights, size_t n)
{
    unsigned long total = 0, weight_sum = 0;
    double worst = 0;

    for (size_t i = 0; i < n; i++) {
        total += counts[i];
        weight_sum += weights[i];
    }
    for (size_t i = 0; i < n; i++) {
        double share = (double)counts[i] / (double)total;
        double expected = (double)weights[i] / (double)weight_sum;
        double err = share / expected - 1;
        if (err < 0)
            err = -err;
        if (err > worst)
            worst = err;
    }
    return worst;
}

static void print_shares(const char *what, const unsigned long *counts, size_t n)
{
    unsigned long total = 0;

    for (size_t i = 0; i < n; i++)
        total += counts[i];
    printf("# %s: shares", what);
    for (size_t i = 0; i < n; i++)
        printf(" %.4f", (double)counts[i] / (double)total);
    printf("\n");
}

/* ---- lb_hash64 ---------------------------------------------------------- */

static void test_hash64_deterministic(void)
{
    const char *key = "10.0.0.1";
    uint64_t h = lb_hash64(key, strlen(key), 0);

    CHECK(h == lb_hash64(key, strlen(key), 0));
    CHECK(h == lb_hash64("10.0.0.1", 8, 0));
    CHECK(h != lb_hash64(key, strlen(key), 1));
    CHECK(lb_hash64("a", 1, 0) != lb_hash64("a\0", 2, 0));
    CHECK(lb_hash64("", 0, 0) == lb_hash64(NULL, 0, 0));
    CHECK(lb_hash64("", 0, 0) != lb_hash64("", 0, 1));

    /* The values are part of Switchboard's behaviour (they decide which
     * server a hashed key lands on, on every host): pin them. */
    CHECKF(lb_hash64("", 0, 0) == UINT64_C(0x155c40b635671f15),
           "got 0x%016" PRIx64, lb_hash64("", 0, 0));
    CHECKF(lb_hash64("10.0.0.1", 8, 0) == UINT64_C(0x4fd883f85ddb0f92),
           "got 0x%016" PRIx64, lb_hash64("10.0.0.1", 8, 0));
    CHECKF(lb_hash64("/index.html?user=42", 19, 7) == UINT64_C(0x1fff2761819204bc),
           "got 0x%016" PRIx64, lb_hash64("/index.html?user=42", 19, 7));
}

/* Chi-square of `n` values over 16 buckets chosen by 4 bits at `shift`. */
static double chi_square16(const uint64_t *h, size_t n, unsigned shift)
{
    unsigned long buckets[16] = { 0 };
    double expected = (double)n / 16, chi = 0;

    for (size_t i = 0; i < n; i++)
        buckets[(h[i] >> shift) & 15]++;
    for (int b = 0; b < 16; b++) {
        double d = (double)buckets[b] - expected;
        chi += d * d / expected;
    }
    return chi;
}

static void test_hash64_spreads_similar_keys(void)
{
    uint64_t h[255];
    char key[32];
    double worst_chi = 0;

    for (int i = 1; i <= 255; i++) {
        int len = snprintf(key, sizeof key, "10.0.0.%d", i);
        h[i - 1] = lb_hash64(key, (size_t)len, 0);
    }
    /* Every 4-bit slice of the hash, not only the top or the bottom, must be
     * uniform: a ring uses the top bits, a modulo the bottom ones. 16 buckets
     * have 15 degrees of freedom; 37.7 is the 0.1% critical value. */
    for (unsigned shift = 0; shift < 64; shift += 4) {
        double chi = chi_square16(h, 255, shift);
        if (chi > worst_chi)
            worst_chi = chi;
    }
    printf("# hash64 10.0.0.1..255: worst chi-square over 16 nibbles %.1f "
           "(15 df, 0.1%% critical 37.7)\n", worst_chi);
    CHECKF(worst_chi < 37.7, "chi-square %.1f", worst_chi);

    /* Avalanche: flipping one input bit flips each output bit with
     * probability 1/2. */
    unsigned long flips[64] = { 0 };
    unsigned long trials = 0;
    for (int i = 0; i < 2000; i++) {
        unsigned char buf[12];
        int len = snprintf((char *)buf, sizeof buf, "10.0.%d.%d", i / 250,
                           i % 250);
        uint64_t base = lb_hash64(buf, (size_t)len, 0);
        for (int bit = 0; bit < len * 8; bit++) {
            buf[bit / 8] ^= (unsigned char)(1u << (bit % 8));
            uint64_t d = base ^ lb_hash64(buf, (size_t)len, 0);
            buf[bit / 8] ^= (unsigned char)(1u << (bit % 8));
            for (int o = 0; o < 64; o++)
                flips[o] += (d >> o) & 1;
            trials++;
        }
    }
    double lo = 1, hi = 0;
    for (int o = 0; o < 64; o++) {
        double p = (double)flips[o] / (double)trials;
        if (p < lo) lo = p;
        if (p > hi) hi = p;
    }
    printf("# hash64 avalanche over %lu one-bit flips: every output bit flips "
           "with p in [%.4f, %.4f]\n", trials, lo, hi);
    CHECKF(lo > 0.48 && hi < 0.52, "p in [%.4f, %.4f]", lo, hi);
}

/* ---- lb_ops_for, pool life cycle ---------------------------------------- */

static void test_ops_for(void)
{
    CHECK(lb_ops_for(CONF_BALANCE_ROUND_ROBIN) == &lb_round_robin_ops);
    CHECK(lb_ops_for(CONF_BALANCE_LEAST_CONN) == &lb_least_conn_ops);
    CHECK(lb_ops_for(CONF_BALANCE_RANDOM2) == &lb_random2_ops);
    CHECK(lb_ops_for(CONF_BALANCE_HASH) == &lb_hash_ops);
    CHECK(strcmp(lb_round_robin_ops.name, "round_robin") == 0);
    CHECK(strcmp(lb_least_conn_ops.name, "least_conn") == 0);
    CHECK(strcmp(lb_random2_ops.name, "random2") == 0);
    CHECK(strcmp(lb_hash_ops.name, "hash") == 0);
}

static const enum conf_balance all_balances[] = {
    CONF_BALANCE_ROUND_ROBIN, CONF_BALANCE_LEAST_CONN,
    CONF_BALANCE_RANDOM2, CONF_BALANCE_HASH,
};
#define N_BALANCES (sizeof all_balances / sizeof all_balances[0])

static void test_empty_pool(void)
{
    for (size_t b = 0; b < N_BALANCES; b++) {
        struct fixture f;
        CHECK(fixture_init(&f, all_balances[b], 0, NULL, NULL, NULL) == 0);
        CHECKF(pick(&f, -1) == -1, "%s", f.pool.ops->name);
        CHECKF(pick_key(&f, "k") == -1, "%s", f.pool.ops->name);
        fixture_fini(&f);
    }
}

static void test_zero_weight_refused(void)
{
    const unsigned weights[] = { 1, 0 };

    for (size_t b = 0; b < N_BALANCES; b++) {
        struct fixture f;
        CHECK(fixture_init(&f, all_balances[b], 2, weights, NULL, NULL) == -1);
    }
}

/* ---- round robin -------------------------------------------------------- */

static void test_rr_smooth_sequence(void)
{
    const unsigned weights[] = { 5, 1, 1 };
    const char expected[] = "aabacaa" "aabacaa" "aabacaa";
    char got[sizeof expected];
    struct fixture f;

    CHECK(fixture_init(&f, CONF_BALANCE_ROUND_ROBIN, 3, weights, NULL, NULL) == 0);
    for (size_t i = 0; i < sizeof expected - 1; i++)
        got[i] = (char)('a' + pick(&f, -1));
    got[sizeof expected - 1] = '\0';
    printf("# rr weights 5,1,1: %s\n", got);
    CHECKF(strcmp(got, expected) == 0, "got %s", got);
    fixture_fini(&f);
}

static void test_rr_weights(void)
{
    const unsigned weights[] = { 1, 2, 3, 4 };
    unsigned long counts[4] = { 0 };
    struct fixture f;

    CHECK(fixture_init(&f, CONF_BALANCE_ROUND_ROBIN, 4, weights, NULL, NULL) == 0);
    for (int i = 0; i < PICKS; i++)
        counts[pick(&f, -1)]++;
    print_shares("rr weights 1,2,3,4", counts, 4);
    /* Every window of 10 picks holds exactly 1, 2, 3, 4. */
    CHECK(counts[0] == 10000 && counts[1] == 20000 &&
          counts[2] == 30000 && counts[3] == 40000);
    CHECK(worst_share_error(counts, weights, 4) < 0.02);
    fixture_fini(&f);
}

static void test_rr_down_server_skipped(void)
{
    const unsigned weights[] = { 1, 2, 3, 4 };
    const unsigned rest[] = { 1, 3, 4 };
    unsigned long counts[4] = { 0 }, rest_counts[3];
    struct fixture f;

    CHECK(fixture_init(&f, CONF_BALANCE_ROUND_ROBIN, 4, weights, NULL, NULL) == 0);
    set_state(&f, 1, LB_SERVER_DOWN);
    for (int i = 0; i < PICKS; i++)
        counts[pick(&f, -1)]++;
    CHECK(counts[1] == 0);
    rest_counts[0] = counts[0];
    rest_counts[1] = counts[2];
    rest_counts[2] = counts[3];
    CHECK(worst_share_error(rest_counts, rest, 3) < 0.02);

    /* Back up: it rejoins its share. */
    set_state(&f, 1, LB_SERVER_UP);
    memset(counts, 0, sizeof counts);
    for (int i = 0; i < PICKS; i++)
        counts[pick(&f, -1)]++;
    CHECK(worst_share_error(counts, weights, 4) < 0.02);
    fixture_fini(&f);
}

static void test_rr_workers_independent(void)
{
    const unsigned weights[] = { 5, 1, 1 };
    struct fixture f;

    CHECK(fixture_init(&f, CONF_BALANCE_ROUND_ROBIN, 3, weights, NULL, NULL) == 0);
    void *other = f.pool.ops->worker_new(&f.pool, 7);
    CHECK(other != NULL);
    struct lb_request req = { .exclude = -1 };
    char a[8], b[8];
    for (int i = 0; i < 7; i++) {
        a[i] = (char)('a' + lb_pick(&f.pool, f.worker, &req));
        b[i] = (char)('a' + lb_pick(&f.pool, other, &req));
    }
    a[7] = b[7] = '\0';
    CHECK(strcmp(a, "aabacaa") == 0);
    CHECK(strcmp(b, "aabacaa") == 0);
    f.pool.ops->worker_free(other);
    fixture_fini(&f);
}

/* ---- least connections -------------------------------------------------- */

static void test_lc_idle_equal_weights_even(void)
{
    unsigned long counts[5] = { 0 };
    const unsigned weights[] = { 1, 1, 1, 1, 1 };
    struct fixture f;

    /* Nothing in flight: every pick is a five-way tie, shared in turn. */
    CHECK(fixture_init(&f, CONF_BALANCE_LEAST_CONN, 5, NULL, NULL, NULL) == 0);
    for (int i = 0; i < PICKS; i++)
        counts[pick(&f, -1)]++;
    print_shares("least_conn idle, equal weights", counts, 5);
    for (int i = 0; i < 5; i++)
        CHECK(counts[i] == PICKS / 5);
    CHECK(worst_share_error(counts, weights, 5) < 0.02);
    fixture_fini(&f);
}

static void test_lc_idle_prefers_heaviest(void)
{
    const unsigned weights[] = { 1, 3 };
    struct fixture f;

    /* (0+1)/3 < (0+1)/1: without load the heaviest takes the request. */
    CHECK(fixture_init(&f, CONF_BALANCE_LEAST_CONN, 2, weights, NULL, NULL) == 0);
    for (int i = 0; i < 100; i++)
        CHECK(pick(&f, -1) == 1);
    fixture_fini(&f);
}

static void test_lc_lowest_load_per_weight(void)
{
    const unsigned weights[] = { 1, 2, 4 };
    struct fixture f;

    CHECK(fixture_init(&f, CONF_BALANCE_LEAST_CONN, 3, weights, NULL, NULL) == 0);
    /* (2+1)/1 = 3, (3+1)/2 = 2, (8+1)/4 = 2.25: server 1. */
    atomic_store(&f.servers[0].inflight, 2);
    atomic_store(&f.servers[1].inflight, 3);
    atomic_store(&f.servers[2].inflight, 8);
    CHECK(pick(&f, -1) == 1);
    /* (6+1)/4 = 1.75 < 2: server 2. */
    atomic_store(&f.servers[2].inflight, 6);
    CHECK(pick(&f, -1) == 2);
    /* Tied at 2 (servers 1 and 2): taken in turn. */
    atomic_store(&f.servers[2].inflight, 7);
    int first = pick(&f, -1), second = pick(&f, -1);
    CHECK((first == 1 && second == 2) || (first == 2 && second == 1));
    fixture_fini(&f);
}

/*
 * Steady load: `concurrency` requests are always in flight. Before each pick
 * one of them, chosen at random, completes - as if service times were
 * exponential and the same on every server. A server's share of the picks is
 * then its share of the completions, which follows its share of the
 * in-flight requests: the quantity least connections balances by weight.
 * `inflight_share` receives each server's time-averaged share of the
 * requests in flight.
 */
static uint64_t test_rng_next(uint64_t *state)
{
    uint64_t z = (*state += UINT64_C(0x9e3779b97f4a7c15));
    z = (z ^ (z >> 30)) * UINT64_C(0xbf58476d1ce4e5b9);
    z = (z ^ (z >> 27)) * UINT64_C(0x94d049bb133111eb);
    return z ^ (z >> 31);
}

static double test_rng_unit(uint64_t *state)
{
    return (double)(test_rng_next(state) >> 11) / 9007199254740992.0;
}

static void simulate_load(struct fixture *f, size_t n, unsigned concurrency,
                          int picks, unsigned long *counts,
                          unsigned long *inflight_sum)
{
    int *in_flight = malloc(concurrency * sizeof *in_flight);
    uint64_t rng = 12345 + concurrency;

    memset(counts, 0, n * sizeof *counts);
    if (inflight_sum)
        memset(inflight_sum, 0, n * sizeof *inflight_sum);
    /* Warm-up: fill up to `concurrency` before counting. */
    for (unsigned i = 0; i < concurrency; i++) {
        in_flight[i] = pick(f, -1);
        atomic_fetch_add(&f->servers[in_flight[i]].inflight, 1);
    }
    for (int i = 0; i < picks; i++) {
        size_t done = (size_t)(test_rng_next(&rng) % concurrency);
        atomic_fetch_sub(&f->servers[in_flight[done]].inflight, 1);
        int s = pick(f, -1);
        atomic_fetch_add(&f->servers[s].inflight, 1);
        in_flight[done] = s;
        counts[s]++;
        for (size_t j = 0; inflight_sum && j < n; j++)
            inflight_sum[j] += atomic_load(&f->servers[j].inflight);
    }
    free(in_flight);
}

static void test_lc_weighted_under_load(void)
{
    const unsigned weights[] = { 1, 2, 3, 4 };
    unsigned long counts[4], inflight[4];
    struct fixture f;
    char what[80];

    for (unsigned concurrency = 10; concurrency <= 1000; concurrency *= 10) {
        CHECK(fixture_init(&f, CONF_BALANCE_LEAST_CONN, 4, weights, NULL, NULL) == 0);
        simulate_load(&f, 4, concurrency, RANDOM_PICKS, counts, inflight);
        snprintf(what, sizeof what,
                 "least_conn weights 1,2,3,4, %u in flight, in-flight", concurrency);
        print_shares(what, inflight, 4);
        snprintf(what, sizeof what,
                 "least_conn weights 1,2,3,4, %u in flight, picks", concurrency);
        print_shares(what, counts, 4);
        double err_inflight = worst_share_error(inflight, weights, 4);
        double err = worst_share_error(counts, weights, 4);
        printf("# least_conn weights 1,2,3,4, %u in flight: worst relative "
               "error %.2f%% in flight, %.2f%% of picks\n",
               concurrency, err_inflight * 100, err * 100);
        CHECKF(err_inflight < 0.02, "%u in flight: error %.4f",
               concurrency, err_inflight);
        CHECKF(err < 0.02, "%u in flight: error %.4f", concurrency, err);
        fixture_fini(&f);
    }
}

/*
 * Why least connections: two servers of equal weight, one twice as fast.
 * Requests arrive with probability 0.8 per tick; a busy server finishes one
 * with probability 0.6 (fast) or 0.3 (slow) per tick. Round robin hands the
 * slow server 0.4 per tick, more than it can finish, and its queue grows
 * without bound; least connections sees the queue and sends it less.
 */
static void simulate_fast_and_slow(enum conf_balance balance, double *fast_share,
                                   unsigned *max_inflight)
{
    const double finish[2] = { 0.6, 0.3 };
    unsigned long counts[2] = { 0 };
    uint64_t rng = 99;
    struct fixture f;

    *max_inflight = 0;
    CHECK(fixture_init(&f, balance, 2, NULL, NULL, NULL) == 0);
    for (int tick = 0; tick < RANDOM_PICKS; tick++) {
        for (int i = 0; i < 2; i++) {
            if (atomic_load(&f.servers[i].inflight) > 0 &&
                test_rng_unit(&rng) < finish[i])
                atomic_fetch_sub(&f.servers[i].inflight, 1);
        }
        if (test_rng_unit(&rng) < 0.8) {
            int s = pick(&f, -1);
            counts[s]++;
            unsigned now = atomic_fetch_add(&f.servers[s].inflight, 1) + 1;
            if (now > *max_inflight)
                *max_inflight = now;
        }
    }
    *fast_share = (double)counts[0] / (double)(counts[0] + counts[1]);
    fixture_fini(&f);
}

static void test_lc_slow_server_gets_less(void)
{
    double lc_fast, rr_fast;
    unsigned lc_max, rr_max;

    simulate_fast_and_slow(CONF_BALANCE_LEAST_CONN, &lc_fast, &lc_max);
    simulate_fast_and_slow(CONF_BALANCE_ROUND_ROBIN, &rr_fast, &rr_max);
    printf("# one server twice as fast as the other, 89%% busy: least_conn "
           "sends it %.4f of requests, most in flight on a server %u; "
           "round_robin %.4f, %u\n", lc_fast, lc_max, rr_fast, rr_max);
    CHECKF(lc_fast > 0.6 && lc_fast < 0.72, "fast share %.4f", lc_fast);
    CHECKF(lc_max < 100, "queue reached %u", lc_max);
    CHECK(rr_max > 10 * lc_max);
}

/* ---- random2 ------------------------------------------------------------ */

static void test_r2_equal_weights_even(void)
{
    const unsigned weights[] = { 1, 1, 1, 1 };
    unsigned long counts[4] = { 0 };
    struct fixture f;

    CHECK(fixture_init(&f, CONF_BALANCE_RANDOM2, 4, weights, NULL, NULL) == 0);
    for (int i = 0; i < RANDOM_PICKS; i++)
        counts[pick(&f, -1)]++;
    print_shares("random2 idle, equal weights", counts, 4);
    double err = worst_share_error(counts, weights, 4);
    printf("# random2 idle, equal weights: worst relative error %.2f%%\n",
           err * 100);
    CHECKF(err < 0.02, "error %.4f", err);
    fixture_fini(&f);
}

static void test_r2_weights_idle(void)
{
    const unsigned weights[] = { 1, 3 };
    const unsigned weights4[] = { 1, 2, 3, 4 };
    unsigned long counts[4] = { 0 };
    struct fixture f;

    /* All idle: every comparison is a tie, the first (weighted) draw wins. */
    CHECK(fixture_init(&f, CONF_BALANCE_RANDOM2, 2, weights, NULL, NULL) == 0);
    for (int i = 0; i < RANDOM_PICKS; i++)
        counts[pick(&f, -1)]++;
    print_shares("random2 idle, weights 1,3", counts, 2);
    double err = worst_share_error(counts, weights, 2);
    printf("# random2 idle, weights 1,3: worst relative error %.2f%%\n",
           err * 100);
    CHECKF(err < 0.02, "error %.4f", err);
    fixture_fini(&f);

    memset(counts, 0, sizeof counts);
    CHECK(fixture_init(&f, CONF_BALANCE_RANDOM2, 4, weights4, NULL, NULL) == 0);
    for (int i = 0; i < RANDOM_PICKS; i++)
        counts[pick(&f, -1)]++;
    print_shares("random2 idle, weights 1,2,3,4", counts, 4);
    err = worst_share_error(counts, weights4, 4);
    printf("# random2 idle, weights 1,2,3,4: worst relative error %.2f%%\n",
           err * 100);
    CHECKF(err < 0.02, "error %.4f", err);
    fixture_fini(&f);
}

static void test_r2_weights_under_load(void)
{
    const unsigned weights[] = { 1, 3 };
    const unsigned weights4[] = { 1, 2, 3, 4 };
    unsigned long counts[4];
    struct fixture f;

    CHECK(fixture_init(&f, CONF_BALANCE_RANDOM2, 2, weights, NULL, NULL) == 0);
    simulate_load(&f, 2, 1000, RANDOM_PICKS, counts, NULL);
    print_shares("random2 weights 1,3, 1000 in flight", counts, 2);
    double err = worst_share_error(counts, weights, 2);
    printf("# random2 weights 1,3, 1000 in flight: worst relative error "
           "%.2f%%\n", err * 100);
    CHECKF(err < 0.02, "error %.4f", err);
    fixture_fini(&f);

    CHECK(fixture_init(&f, CONF_BALANCE_RANDOM2, 4, weights4, NULL, NULL) == 0);
    simulate_load(&f, 4, 1000, RANDOM_PICKS, counts, NULL);
    print_shares("random2 weights 1,2,3,4, 1000 in flight", counts, 4);
    err = worst_share_error(counts, weights4, 4);
    printf("# random2 weights 1,2,3,4, 1000 in flight: worst relative error "
           "%.2f%%\n", err * 100);
    CHECKF(err < 0.02, "error %.4f", err);
    fixture_fini(&f);
}

static void test_r2_lower_load_wins(void)
{
    const unsigned weights[] = { 1, 3 };
    struct fixture f;

    /* With two servers both are always drawn: the lower inflight/weight
     * wins every time. 5/1 > 9/3. */
    CHECK(fixture_init(&f, CONF_BALANCE_RANDOM2, 2, weights, NULL, NULL) == 0);
    atomic_store(&f.servers[0].inflight, 5);
    atomic_store(&f.servers[1].inflight, 9);
    for (int i = 0; i < 1000; i++)
        CHECK(pick(&f, -1) == 1);
    /* 2/1 < 9/3. */
    atomic_store(&f.servers[0].inflight, 2);
    for (int i = 0; i < 1000; i++)
        CHECK(pick(&f, -1) == 0);
    fixture_fini(&f);
}

static void test_r2_seeds_differ(void)
{
    struct fixture f;
    char a[65], b[65];

    CHECK(fixture_init(&f, CONF_BALANCE_RANDOM2, 8, NULL, NULL, NULL) == 0);
    void *w1 = f.pool.ops->worker_new(&f.pool, 1);
    void *w2 = f.pool.ops->worker_new(&f.pool, 2);
    struct lb_request req = { .exclude = -1 };
    for (int i = 0; i < 64; i++) {
        a[i] = (char)('0' + lb_pick(&f.pool, w1, &req));
        b[i] = (char)('0' + lb_pick(&f.pool, w2, &req));
    }
    a[64] = b[64] = '\0';
    CHECK(strcmp(a, b) != 0);
    f.pool.ops->worker_free(w1);
    f.pool.ops->worker_free(w2);
    fixture_fini(&f);
}

/* ---- consistent hash ---------------------------------------------------- */

static void make_key(char *buf, size_t size, int i)
{
    snprintf(buf, size, "10.%d.%d.%d", (i >> 16) & 255, (i >> 8) & 255, i & 255);
}

static void test_hash_spread_by_weight(void)
{
    const unsigned weights[] = { 1, 2, 3, 4 };
    const unsigned equal[] = { 1, 1, 1, 1, 1, 1, 1, 1, 1, 1 };
    unsigned long counts[10] = { 0 };
    char key[32];
    struct fixture f;

    CHECK(fixture_init(&f, CONF_BALANCE_HASH, 4, weights, NULL, NULL) == 0);
    for (int i = 0; i < PICKS; i++) {
        make_key(key, sizeof key, i);
        counts[pick_key(&f, key)]++;
    }
    print_shares("hash weights 1,2,3,4, 100k keys", counts, 4);
    double err = worst_share_error(counts, weights, 4);
    printf("# hash weights 1,2,3,4: worst relative error %.2f%%\n", err * 100);
    /* 160 points per unit of weight: a server's share has a standard
     * deviation of about 1/sqrt(160 x weight) of itself, 8% at weight 1.
     * The bounds are those of a ring, not of a perfect split. */
    CHECKF(err < 0.10, "error %.4f", err);
    fixture_fini(&f);

    memset(counts, 0, sizeof counts);
    CHECK(fixture_init(&f, CONF_BALANCE_HASH, 10, NULL, NULL, NULL) == 0);
    for (int i = 0; i < PICKS; i++) {
        make_key(key, sizeof key, i);
        counts[pick_key(&f, key)]++;
    }
    print_shares("hash 10 equal servers, 100k keys", counts, 10);
    err = worst_share_error(counts, equal, 10);
    printf("# hash 10 equal servers: worst relative error %.2f%%\n", err * 100);
    CHECKF(err < 0.15, "error %.4f", err);
    fixture_fini(&f);
}

static void test_hash_same_key_same_server(void)
{
    struct fixture f, g;
    char key[32];

    CHECK(fixture_init(&f, CONF_BALANCE_HASH, 5, NULL, NULL, NULL) == 0);
    /* A second pool built from the same servers: same answers. */
    CHECK(fixture_init(&g, CONF_BALANCE_HASH, 5, NULL, NULL, NULL) == 0);
    for (int i = 0; i < 1000; i++) {
        make_key(key, sizeof key, i);
        int s = pick_key(&f, key);
        CHECK(s >= 0);
        for (int r = 0; r < 3; r++)
            CHECK(pick_key(&f, key) == s);
        CHECK(pick_key(&g, key) == s);
    }
    /* No key: always the same server too. */
    int s = pick(&f, -1);
    CHECK(s >= 0);
    for (int r = 0; r < 10; r++)
        CHECK(pick(&f, -1) == s);
    CHECK(pick_key(&f, "") == s);
    fixture_fini(&f);
    fixture_fini(&g);
}

/*
 * Remove each server in turn from an N-server pool (the array is compacted,
 * so the other servers change index) and count the keys that change server
 * identity; then add it back at the end of the array and check every key is
 * where it was first.
 */
static void check_hash_remove_add(size_t n)
{
    static int owner[PICKS];
    char ids[MAX_SERVERS][64];
    const char *all[MAX_SERVERS], *rest[MAX_SERVERS];
    char key[32];
    struct fixture full, less, again;
    double worst = 0;
    unsigned long worst_stayers_moved = 0, removed_not_moved = 0;

    for (size_t i = 0; i < n; i++) {
        snprintf(ids[i], sizeof ids[i], "backend-%zu.example:8080", i);
        all[i] = ids[i];
    }
    CHECK(fixture_init(&full, CONF_BALANCE_HASH, n, NULL, NULL, all) == 0);
    for (int k = 0; k < PICKS; k++) {
        make_key(key, sizeof key, k);
        owner[k] = pick_key(&full, key);
    }

    for (size_t gone = 0; gone < n; gone++) {
        size_t m = 0;
        for (size_t i = 0; i < n; i++)
            if (i != gone)
                rest[m++] = ids[i];
        CHECK(fixture_init(&less, CONF_BALANCE_HASH, m, NULL, NULL, rest) == 0);
        rest[m] = ids[gone];
        CHECK(fixture_init(&again, CONF_BALANCE_HASH, m + 1, NULL, NULL, rest) == 0);

        unsigned long moved = 0, stayers_moved = 0, restored = 0;
        for (int k = 0; k < PICKS; k++) {
            make_key(key, sizeof key, k);
            const char *before = full.servers[owner[k]].id;
            const char *after = less.servers[pick_key(&less, key)].id;
            const char *back = again.servers[pick_key(&again, key)].id;
            bool changed = strcmp(before, after) != 0;
            moved += changed;
            if ((size_t)owner[k] == gone && !changed)
                removed_not_moved++;
            if ((size_t)owner[k] != gone && changed)
                stayers_moved++;
            restored += strcmp(before, back) == 0;
        }
        double fraction = (double)moved / PICKS;
        if (fraction > worst)
            worst = fraction;
        if (stayers_moved > worst_stayers_moved)
            worst_stayers_moved = stayers_moved;
        CHECKF(fraction <= 1.3 / (double)n,
               "N=%zu, removing %zu moved %.4f of keys", n, gone, fraction);
        CHECKF(restored == PICKS, "N=%zu, re-adding %zu restored %lu keys",
               n, gone, restored);
        fixture_fini(&less);
        fixture_fini(&again);
    }
    printf("# hash N=%zu: removing one server moves at most %.4f of keys "
           "(1/N = %.4f, bound 1.3/N = %.4f); keys of other servers moved: "
           "%lu; re-adding restores all\n",
           n, worst, 1.0 / (double)n, 1.3 / (double)n, worst_stayers_moved);
    CHECK(removed_not_moved == 0);
    CHECK(worst_stayers_moved == 0);
    fixture_fini(&full);
}

static void test_hash_remove_add_server(void)
{
    check_hash_remove_add(5);
    check_hash_remove_add(10);
}

static void test_hash_down_server_returns(void)
{
    static int owner[PICKS];
    char key[32];
    struct fixture f;
    unsigned long on_down = 0, moved_others = 0, still_on_down = 0, back = 0;

    CHECK(fixture_init(&f, CONF_BALANCE_HASH, 5, NULL, NULL, NULL) == 0);
    for (int k = 0; k < PICKS; k++) {
        make_key(key, sizeof key, k);
        owner[k] = pick_key(&f, key);
    }
    set_state(&f, 2, LB_SERVER_DOWN);
    for (int k = 0; k < PICKS; k++) {
        make_key(key, sizeof key, k);
        int s = pick_key(&f, key);
        if (owner[k] == 2) {
            on_down++;
            still_on_down += s == 2;
        } else {
            moved_others += s != owner[k];
        }
    }
    CHECK(on_down > 0);
    CHECK(still_on_down == 0);
    CHECK(moved_others == 0);
    set_state(&f, 2, LB_SERVER_UP);
    for (int k = 0; k < PICKS; k++) {
        make_key(key, sizeof key, k);
        back += pick_key(&f, key) == owner[k];
    }
    CHECK(back == PICKS);
    printf("# hash N=5, one down: its %lu keys moved, %lu others moved; all "
           "back when up\n", on_down, moved_others);
    fixture_fini(&f);
}

static void test_hash_id_fallback(void)
{
    struct fixture f;
    char key[32];

    /* Servers without an id are placed by index; still consistent. */
    CHECK(fixture_init(&f, CONF_BALANCE_HASH, 4, NULL, NULL, NULL) == 0);
    for (int i = 0; i < 4; i++)
        f.servers[i].id = NULL;
    lb_pool_fini(&f.pool);
    CHECK(lb_pool_init(&f.pool, f.servers, 4, CONF_BALANCE_HASH) == 0);
    unsigned long counts[4] = { 0 };
    for (int k = 0; k < 10000; k++) {
        make_key(key, sizeof key, k);
        int s = pick_key(&f, key);
        CHECK(s >= 0 && s < 4);
        if (s >= 0 && s < 4)
            counts[s]++;
        CHECK(pick_key(&f, key) == s);
    }
    for (int i = 0; i < 4; i++)
        CHECK(counts[i] > 2000);
    fixture_fini(&f);
}

/* ---- every algorithm: backups, exclusion, states ------------------------ */

static void test_backups(void)
{
    const bool backups[] = { false, false, true, true };
    char key[32];

    for (size_t b = 0; b < N_BALANCES; b++) {
        struct fixture f;
        const char *name = lb_ops_for(all_balances[b])->name;
        unsigned long counts[4] = { 0 };

        CHECK(fixture_init(&f, all_balances[b], 4, NULL, backups, NULL) == 0);
        for (int i = 0; i < 10000; i++) {
            make_key(key, sizeof key, i);
            counts[pick_key(&f, key)]++;
        }
        CHECKF(counts[2] == 0 && counts[3] == 0, "%s: backups got traffic", name);
        CHECKF(counts[0] > 0 && counts[1] > 0, "%s", name);

        /* One primary left: it takes everything. */
        set_state(&f, 0, LB_SERVER_DOWN);
        for (int i = 0; i < 1000; i++) {
            make_key(key, sizeof key, i);
            CHECKF(pick_key(&f, key) == 1, "%s", name);
        }

        /* No primary: backups share the traffic. */
        set_state(&f, 1, LB_SERVER_DRAINING);
        memset(counts, 0, sizeof counts);
        for (int i = 0; i < 10000; i++) {
            make_key(key, sizeof key, i);
            int s = pick_key(&f, key);
            CHECKF(s == 2 || s == 3, "%s picked %d", name, s);
            if (s >= 0)
                counts[s]++;
        }
        CHECKF(counts[2] > 0 && counts[3] > 0, "%s", name);

        /* A primary back: backups get nothing again. */
        set_state(&f, 0, LB_SERVER_UP);
        for (int i = 0; i < 1000; i++) {
            make_key(key, sizeof key, i);
            CHECKF(pick_key(&f, key) == 0, "%s", name);
        }

        /* Nothing up. */
        set_state(&f, 0, LB_SERVER_DISABLED);
        set_state(&f, 2, LB_SERVER_DOWN);
        set_state(&f, 3, LB_SERVER_DOWN);
        CHECKF(pick(&f, -1) == -1, "%s", name);
        CHECKF(pick_key(&f, "10.0.0.1") == -1, "%s", name);
        fixture_fini(&f);
    }
}

static void test_exclude(void)
{
    const unsigned weights[] = { 4, 1, 1 };
    const bool backups[] = { false, false, true };
    char key[32];

    for (size_t b = 0; b < N_BALANCES; b++) {
        struct fixture f;
        const char *name = lb_ops_for(all_balances[b])->name;

        CHECK(fixture_init(&f, all_balances[b], 3, weights, backups, NULL) == 0);
        /* The heaviest server is excluded: never picked, the other primary
         * takes it all, the backup stays out of it. */
        for (int i = 0; i < 5000; i++) {
            make_key(key, sizeof key, i);
            struct lb_request req = { .key = key, .key_len = strlen(key),
                                      .exclude = 0 };
            CHECKF(lb_pick(&f.pool, f.worker, &req) == 1, "%s", name);
        }
        /* The only primary left is excluded: the backup steps in. */
        set_state(&f, 1, LB_SERVER_DOWN);
        CHECKF(pick(&f, 0) == 2, "%s", name);
        /* The only server up is excluded: nothing. */
        set_state(&f, 2, LB_SERVER_DOWN);
        CHECKF(pick(&f, 0) == -1, "%s", name);
        CHECKF(pick(&f, -1) == 0, "%s", name);
        fixture_fini(&f);
    }
}

static void test_unusable_states(void)
{
    const enum lb_server_state states[] = {
        LB_SERVER_DOWN, LB_SERVER_DRAINING, LB_SERVER_DISABLED,
    };

    for (size_t b = 0; b < N_BALANCES; b++) {
        for (size_t st = 0; st < 3; st++) {
            struct fixture f;
            char key[32];

            CHECK(fixture_init(&f, all_balances[b], 3, NULL, NULL, NULL) == 0);
            set_state(&f, 1, states[st]);
            for (int i = 0; i < 3000; i++) {
                make_key(key, sizeof key, i);
                int s = pick_key(&f, key);
                CHECKF(s == 0 || s == 2, "%s picked %d",
                       f.pool.ops->name, s);
            }
            fixture_fini(&f);
        }
    }
}

static void test_server_usable(void)
{
    struct fixture f;
    struct lb_request none = { .exclude = -1 }, ex1 = { .exclude = 1 };

    CHECK(fixture_init(&f, CONF_BALANCE_ROUND_ROBIN, 2, NULL, NULL, NULL) == 0);
    CHECK(lb_server_usable(&f.pool, 0, &none));
    CHECK(lb_server_usable(&f.pool, 1, &none));
    CHECK(!lb_server_usable(&f.pool, 1, &ex1));
    CHECK(lb_server_usable(&f.pool, 0, &ex1));
    CHECK(!lb_server_usable(&f.pool, 2, &none));
    set_state(&f, 0, LB_SERVER_DRAINING);
    CHECK(!lb_server_usable(&f.pool, 0, &none));
    fixture_fini(&f);
}

int main(void)
{
    RUN(test_hash64_deterministic);
    RUN(test_hash64_spreads_similar_keys);
    RUN(test_ops_for);
    RUN(test_empty_pool);
    RUN(test_zero_weight_refused);
    RUN(test_server_usable);
    RUN(test_rr_smooth_sequence);
    RUN(test_rr_weights);
    RUN(test_rr_down_server_skipped);
    RUN(test_rr_workers_independent);
    RUN(test_lc_idle_equal_weights_even);
    RUN(test_lc_idle_prefers_heaviest);
    RUN(test_lc_lowest_load_per_weight);
    RUN(test_lc_weighted_under_load);
    RUN(test_lc_slow_server_gets_less);
    RUN(test_r2_equal_weights_even);
    RUN(test_r2_weights_idle);
    RUN(test_r2_weights_under_load);
    RUN(test_r2_lower_load_wins);
    RUN(test_r2_seeds_differ);
    RUN(test_hash_spread_by_weight);
    RUN(test_hash_same_key_same_server);
    RUN(test_hash_remove_add_server);
    RUN(test_hash_down_server_returns);
    RUN(test_hash_id_fallback);
    RUN(test_backups);
    RUN(test_exclude);
    RUN(test_unusable_states);
    return check_done();
}
