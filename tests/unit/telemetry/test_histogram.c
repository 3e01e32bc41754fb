/*
 * test_histogram.c - telemetry/histogram.c: quantiles of the log-linear
 * histogram against exact order statistics, merging and subtracting, edges.
 *
 * Each distribution is drawn with a fixed seed; the exact quantile is the
 * nearest-rank order statistic of the sorted values (the definition the
 * histogram uses), and every reported quantile must be within 1% of it. The
 * largest relative error seen is printed on a line starting with '#'.
 */
#include "check.h"

#include <inttypes.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "telemetry/telemetry.h"

#define N_VALUES 200000

static const double qs[] = { 0.0001, 0.01, 0.1, 0.25, 0.5, 0.75, 0.9, 0.95, 0.99, 0.999,
                             0.9999, 1.0 };
#define N_Q (sizeof qs / sizeof qs[0])

static double worst_error;

static uint64_t rng_state = 0x9e3779b97f4a7c15u;

static uint64_t rng(void)
{
    uint64_t z = (rng_state += 0x9e3779b97f4a7c15u);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9u;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebu;
    return z ^ (z >> 31);
}

static double uniform01(void)
{
    return (double)(rng() >> 11) / 9007199254740992.0;
}

static int cmp_u64(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

static struct tm_hist *hist_new(void)
{
    struct tm_hist *h = malloc(sizeof *h);
    if (h)
        tm_hist_init(h);
    return h;
}

/* Record `v`, compare all quantiles with the exact ones. */
static void check_distribution(const char *name, uint64_t *v, size_t n)
{
    struct tm_hist *h = hist_new();
    CHECK(h != NULL);
    if (!h)
        return;
    uint64_t sum = 0;
    for (size_t i = 0; i < n; i++) {
        tm_hist_record(h, v[i]);
        sum += v[i];
    }
    qsort(v, n, sizeof *v, cmp_u64);
    CHECK(h->count == n);
    CHECK(h->sum_us == sum);
    CHECK(h->min_us == v[0] && h->max_us == v[n - 1]);

    uint64_t got[N_Q];
    tm_hist_quantiles(h, qs, got, N_Q);
    double worst = 0;
    for (size_t k = 0; k < N_Q; k++) {
        size_t rank = (size_t)ceil(qs[k] * (double)n - 1e-9);
        if (rank < 1)
            rank = 1;
        uint64_t exact = v[rank - 1];
        double err = exact ? fabs((double)got[k] - (double)exact) / (double)exact
                           : (double)got[k];
        if (err > worst)
            worst = err;
        CHECKF(err <= 0.01, "%s q=%g: got %" PRIu64 " exact %" PRIu64, name, qs[k],
               got[k], exact);
        /* The one-quantile call agrees with the batch one. */
        CHECK(tm_hist_quantile(h, qs[k]) == got[k]);
    }
    if (worst > worst_error)
        worst_error = worst;
    printf("# histogram %-12s n=%zu p50=%" PRIu64 " p99=%" PRIu64 " p99.9=%" PRIu64
           " us, max relative error %.4f%%\n", name, n, got[4], got[8], got[9], worst * 100);
    free(h);
}

static void test_uniform(void)
{
    uint64_t *v = malloc(N_VALUES * sizeof *v);
    CHECK(v != NULL);
    if (!v)
        return;
    for (size_t i = 0; i < N_VALUES; i++)
        v[i] = 1 + rng() % 1000000;
    check_distribution("uniform", v, N_VALUES);
    free(v);
}

static void test_exponential(void)
{
    uint64_t *v = malloc(N_VALUES * sizeof *v);
    CHECK(v != NULL);
    if (!v)
        return;
    for (size_t i = 0; i < N_VALUES; i++)
        v[i] = (uint64_t)(-log(1.0 - uniform01()) * 5000.0);  /* mean 5 ms */
    check_distribution("exponential", v, N_VALUES);
    free(v);
}

/* Two modes far apart (a cache hit at ~300 µs, a miss at ~80 ms): the
 * quantiles at the boundary jump between them. */
static void test_bimodal(void)
{
    uint64_t *v = malloc(N_VALUES * sizeof *v);
    CHECK(v != NULL);
    if (!v)
        return;
    for (size_t i = 0; i < N_VALUES; i++) {
        double u1 = uniform01(), u2 = uniform01();
        double z = sqrt(-2.0 * log(1.0 - u1)) * cos(2 * M_PI * u2);
        double x = (i % 10 < 9) ? 300 + 40 * z : 80000 + 8000 * z;
        v[i] = x < 1 ? 1 : (uint64_t)x;
    }
    check_distribution("bimodal", v, N_VALUES);
    free(v);
}

/* Log-uniform from 1 µs to one hour: every bucket size is exercised. */
static void test_one_us_to_one_hour(void)
{
    uint64_t *v = malloc(N_VALUES * sizeof *v);
    CHECK(v != NULL);
    if (!v)
        return;
    double span = log(3600e6);
    for (size_t i = 0; i < N_VALUES; i++)
        v[i] = (uint64_t)exp(uniform01() * span);
    v[0] = 1;
    v[1] = 3600000000u;
    check_distribution("1us..1h", v, N_VALUES);
    free(v);
}

/* Small values are exact: one bucket per microsecond below 256. */
static void test_small_values_exact(void)
{
    uint64_t v[255];
    for (size_t i = 0; i < 255; i++)
        v[i] = i + 1;
    struct tm_hist *h = hist_new();
    CHECK(h != NULL);
    if (!h)
        return;
    for (size_t i = 0; i < 255; i++)
        tm_hist_record(h, v[i]);
    for (size_t r = 1; r <= 255; r++)
        CHECK(tm_hist_quantile(h, (double)r / 255.0) == r);
    free(h);
}

static void test_edges(void)
{
    struct tm_hist *h = hist_new();
    CHECK(h != NULL);
    if (!h)
        return;
    CHECK(tm_hist_quantile(h, 0.5) == 0);           /* empty */
    tm_hist_record(h, 0);
    CHECK(tm_hist_quantile(h, 0.5) == 0 && h->count == 1);
    tm_hist_reset(h);
    CHECK(h->count == 0 && tm_hist_quantile(h, 0.99) == 0);

    /* Beyond the top bucket: counted there, the maximum stays exact. */
    uint64_t huge = (uint64_t)10 * 3600 * 1000000;  /* ten hours */
    tm_hist_record(h, 1000);
    tm_hist_record(h, huge);
    CHECK(h->max_us == huge);
    CHECK(tm_hist_quantile(h, 1.0) <= huge);
    CHECK(tm_hist_quantile(h, 1.0) >= TM_HIST_MAX_US / 2);
    /* 1000 µs lies in the 4 µs wide bucket [1000, 1003]: its midpoint. */
    CHECK(tm_hist_quantile(h, 0.5) == 1001);
    tm_hist_reset(h);

    /* A single value is reported exactly at every quantile (min/max clamp). */
    tm_hist_record(h, 123457);
    CHECK(tm_hist_quantile(h, 0.0) == 123457 && tm_hist_quantile(h, 1.0) == 123457);
    free(h);

    /* calloc'd memory readied by reset behaves as a fresh histogram. */
    struct tm_hist *z = calloc(1, sizeof *z);
    CHECK(z != NULL);
    if (z) {
        tm_hist_reset(z);
        CHECK(z->count == 0 && z->lo > z->hi);
        tm_hist_record(z, 42);
        CHECK(tm_hist_quantile(z, 0.5) == 42);
        free(z);
    }
}

/* Ten per-second histograms merged give the same answers as one histogram
 * of everything; taking the oldest out again gives those of the rest. */
static void test_merge_and_subtract(void)
{
    enum { PARTS = 10, PER = 5000 };
    struct tm_hist *part[PARTS], *all = hist_new(), *merged = hist_new(),
                   *rest = hist_new();
    CHECK(all && merged && rest);
    if (!all || !merged || !rest)
        return;
    for (int p = 0; p < PARTS; p++) {
        part[p] = hist_new();
        CHECK(part[p] != NULL);
        if (!part[p])
            return;
        for (int i = 0; i < PER; i++) {
            /* Each part has its own range, so the windows differ. */
            uint64_t v = (uint64_t)(p + 1) * 1000 + rng() % ((uint64_t)(p + 1) * 50000);
            tm_hist_record(part[p], v);
            tm_hist_record(all, v);
            if (p > 0)
                tm_hist_record(rest, v);
        }
        tm_hist_add(merged, part[p]);
    }
    CHECK(merged->count == all->count && merged->sum_us == all->sum_us);
    CHECK(merged->min_us == all->min_us && merged->max_us == all->max_us);
    CHECK(memcmp(merged->counts, all->counts, sizeof all->counts) == 0);
    for (size_t k = 0; k < N_Q; k++)
        CHECK(tm_hist_quantile(merged, qs[k]) == tm_hist_quantile(all, qs[k]));

    tm_hist_sub(merged, part[0]);
    CHECK(merged->count == rest->count && merged->sum_us == rest->sum_us);
    CHECK(memcmp(merged->counts, rest->counts, sizeof rest->counts) == 0);
    CHECK(merged->lo == rest->lo && merged->hi == rest->hi);
    for (size_t k = 0; k < N_Q; k++) {
        uint64_t a = tm_hist_quantile(merged, qs[k]), b = tm_hist_quantile(rest, qs[k]);
        /* min/max are bucket bounds after a subtraction: the same bucket. */
        CHECKF(fabs((double)a - (double)b) <= 0.01 * (double)b,
               "q=%g after sub %" PRIu64 " vs %" PRIu64, qs[k], a, b);
    }
    for (int p = 1; p < PARTS; p++)
        tm_hist_sub(merged, part[p]);
    CHECK(merged->count == 0 && merged->lo > merged->hi);
    CHECK(tm_hist_quantile(merged, 0.5) == 0);
    for (int p = 0; p < PARTS; p++)
        free(part[p]);
    free(all);
    free(merged);
    free(rest);
}

static void test_record_speed(void)
{
    struct tm_hist *h = hist_new();
    CHECK(h != NULL);
    if (!h)
        return;
    enum { N = 20000000 };
    struct timespec a, b;
    clock_gettime(CLOCK_MONOTONIC, &a);
    uint64_t x = 12345;
    for (int i = 0; i < N; i++) {
        x = x * 6364136223846793005u + 1442695040888963407u;
        tm_hist_record(h, (x >> 40) & 0xfffff);
    }
    clock_gettime(CLOCK_MONOTONIC, &b);
    double dt = (double)(b.tv_sec - a.tv_sec) + (double)(b.tv_nsec - a.tv_nsec) / 1e9;
    CHECK(h->count == N);
    uint64_t q[4];
    static const double q4[4] = { 0.5, 0.9, 0.99, 0.999 };
    clock_gettime(CLOCK_MONOTONIC, &a);
    for (int i = 0; i < 1000; i++)
        tm_hist_quantiles(h, q4, q, 4);
    clock_gettime(CLOCK_MONOTONIC, &b);
    double dq = (double)(b.tv_sec - a.tv_sec) + (double)(b.tv_nsec - a.tv_nsec) / 1e9;
    printf("# histogram record: %.0f M values/s; 4 quantiles over %u buckets: %.1f us\n",
           N / dt / 1e6, (unsigned)TM_HIST_BUCKETS, dq / 1000 * 1e6);
    free(h);
}

int main(void)
{
    RUN(test_uniform);
    RUN(test_exponential);
    RUN(test_bimodal);
    RUN(test_one_us_to_one_hour);
    RUN(test_small_values_exact);
    RUN(test_edges);
    RUN(test_merge_and_subtract);
    RUN(test_record_speed);
    printf("# histogram max relative error over all distributions: %.4f%% (bound 1%%)\n",
           worst_error * 100);
    return check_done();
}
