/*
 * test_topk.c - telemetry/topk.c: Space-Saving heavy hitters.
 *
 * Checks the guarantees the top tables rely on: exact counts while the keys
 * fit; with more keys than slots, every key above total/slots is present,
 * count - error <= true <= count, and the clear leaders come out in order;
 * the table never holds a key twice (the hash index survives evictions);
 * payloads are zeroed when a key enters. Streams use fixed seeds.
 */
#include "check.h"

#include <inttypes.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "telemetry/telemetry.h"

static uint64_t rng_state = 42;

static uint64_t rng(void)
{
    uint64_t z = (rng_state += 0x9e3779b97f4a7c15u);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9u;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebu;
    return z ^ (z >> 31);
}

static size_t key_of(char *buf, size_t cap, uint64_t k)
{
    int n = snprintf(buf, cap, "/key/%" PRIu64, k);
    return (size_t)n;
}

static void test_exact_when_keys_fit(void)
{
    struct tm_topk *t = tm_topk_new(16, 32, 0);
    CHECK(t != NULL);
    if (!t)
        return;
    char key[32];
    for (uint64_t k = 0; k < 10; k++)
        for (uint64_t i = 0; i <= k; i++)
            tm_topk_add(t, key, key_of(key, sizeof key, k), 1, NULL);
    CHECK(tm_topk_size(t) == 10);
    CHECK(tm_topk_total(t) == 55);
    struct tm_topk_item items[16];
    size_t n = tm_topk_top(t, items, 16);
    CHECK(n == 10);
    for (size_t i = 0; i < n; i++) {
        key_of(key, sizeof key, 9 - i);
        CHECK(items[i].count == 10 - i && items[i].error == 0);
        CHECK(items[i].key_len == strlen(key) && memcmp(items[i].key, key, strlen(key)) == 0);
    }
    CHECK(tm_topk_top(t, items, 3) == 3 && items[0].count == 10);
    tm_topk_free(t);
}

/* Zipf-like stream (weights 1/rank over 100,000 keys) plus a tail of keys
 * seen once, through 64 slots. */
static void test_heavy_hitters(void)
{
    enum { KEYS = 100000, SLOTS = 64, STREAM = 400000 };
    /* Cumulative weights for sampling by binary search. */
    double *cum = malloc(KEYS * sizeof *cum);
    uint64_t *truth = calloc(KEYS + STREAM, sizeof *truth);
    struct tm_topk *t = tm_topk_new(SLOTS, 32, 0);
    CHECK(cum && truth && t);
    if (!cum || !truth || !t)
        goto out;
    double acc = 0;
    for (size_t k = 0; k < KEYS; k++)
        cum[k] = (acc += 1.0 / (double)(k + 1));
    char key[32];
    uint64_t total = 0;
    for (size_t i = 0; i < STREAM; i++) {
        uint64_t k;
        if (i % 4 == 3) {
            k = KEYS + i;                  /* a key never seen again */
        } else {
            double u = (double)(rng() >> 11) / 9007199254740992.0 * acc;
            size_t lo = 0, hi = KEYS - 1;
            while (lo < hi) {
                size_t mid = (lo + hi) / 2;
                if (cum[mid] < u)
                    lo = mid + 1;
                else
                    hi = mid;
            }
            k = lo;
        }
        truth[k]++;
        total++;
        tm_topk_add(t, key, key_of(key, sizeof key, k), 1, NULL);
    }
    CHECK(tm_topk_total(t) == total);
    CHECK(tm_topk_size(t) == SLOTS);

    struct tm_topk_item items[SLOTS];
    size_t n = tm_topk_top(t, items, SLOTS);
    CHECK(n == SLOTS);
    bool bounds_ok = true, no_dup = true;
    for (size_t i = 0; i < n; i++) {
        char buf[40];
        memcpy(buf, items[i].key, items[i].key_len);
        buf[items[i].key_len] = '\0';
        uint64_t k = strtoull(buf + 5, NULL, 10);
        bounds_ok &= items[i].count - items[i].error <= truth[k] && truth[k] <= items[i].count;
        for (size_t j = 0; j < i; j++)
            no_dup &= !(items[j].key_len == items[i].key_len &&
                        memcmp(items[j].key, items[i].key, items[i].key_len) == 0);
        if (i > 0)
            CHECK(items[i - 1].count >= items[i].count);
    }
    CHECK(bounds_ok);
    CHECK(no_dup);

    /* Every key above total/slots is present. */
    size_t must = 0, found = 0;
    for (size_t k = 0; k < KEYS; k++) {
        if (truth[k] * SLOTS <= total)
            continue;
        must++;
        key_of(key, sizeof key, k);
        for (size_t i = 0; i < n; i++)
            if (items[i].key_len == strlen(key) && memcmp(items[i].key, key, strlen(key)) == 0) {
                found++;
                break;
            }
    }
    CHECK(must >= 3);
    CHECKF(found == must, "%zu of %zu heavy keys present", found, must);
    /* The first three keys have the clearest leads: they come out in order. */
    for (uint64_t k = 0; k < 3; k++) {
        key_of(key, sizeof key, k);
        CHECKF(items[k].key_len == strlen(key) &&
               memcmp(items[k].key, key, strlen(key)) == 0, "rank %" PRIu64, k);
    }
    printf("# topk: %d slots, %d events, %zu keys above total/slots all present; "
           "top count %" PRIu64 " (true %" PRIu64 ", error bound %" PRIu64 ")\n",
           SLOTS, STREAM, must, items[0].count, truth[0], items[0].error);
out:
    free(cum);
    free(truth);
    tm_topk_free(t);
}

struct payload {
    double x;
    int tag;
};

static void test_payload_and_weights(void)
{
    struct tm_topk *t = tm_topk_new(2, 8, sizeof(struct payload));
    CHECK(t != NULL);
    if (!t)
        return;
    bool entered;
    struct payload *p = tm_topk_add(t, "a", 1, 5, &entered);
    CHECK(entered && p->tag == 0 && p->x == 0);
    p->tag = 1;
    p = tm_topk_add(t, "b", 1, 3, &entered);
    CHECK(entered);
    p->tag = 2;
    p = tm_topk_add(t, "a", 1, 1, &entered);
    CHECK(!entered && p->tag == 1);
    /* "c" evicts the smallest ("b", 3): it inherits 3 as its error. */
    p = tm_topk_add(t, "c", 1, 1, &entered);
    CHECK(entered && p->tag == 0);
    struct tm_topk_item items[2];
    CHECK(tm_topk_top(t, items, 2) == 2);
    CHECK(items[0].count == 6 && items[0].error == 0 && memcmp(items[0].key, "a", 1) == 0);
    CHECK(items[1].count == 4 && items[1].error == 3 && memcmp(items[1].key, "c", 1) == 0);
    /* Keys longer than key_max are cut. */
    tm_topk_add(t, "0123456789", 10, 100, NULL);
    CHECK(tm_topk_top(t, items, 1) == 1 && items[0].key_len == 8);
    tm_topk_free(t);
}

/* Heavy churn through a small table: the hash index must stay consistent
 * (no key twice, every present key found again rather than re-inserted). */
static void test_churn_consistency(void)
{
    enum { SLOTS = 37 };
    struct tm_topk *t = tm_topk_new(SLOTS, 16, 0);
    CHECK(t != NULL);
    if (!t)
        return;
    char key[16];
    for (int i = 0; i < 200000; i++) {
        uint64_t k = rng() % 500;
        tm_topk_add(t, key, key_of(key, sizeof key, k), 1 + rng() % 3, NULL);
    }
    struct tm_topk_item items[SLOTS];
    size_t n = tm_topk_top(t, items, SLOTS);
    bool no_dup = true;
    for (size_t i = 0; i < n; i++)
        for (size_t j = 0; j < i; j++)
            no_dup &= !(items[j].key_len == items[i].key_len &&
                        memcmp(items[j].key, items[i].key, items[i].key_len) == 0);
    CHECK(no_dup);
    /* Adding a present key does not grow or evict: find one and re-add. */
    uint64_t before = items[0].count;
    char k0[16];
    memcpy(k0, items[0].key, items[0].key_len);
    bool entered = true;
    tm_topk_add(t, k0, items[0].key_len, 1, &entered);
    CHECK(!entered);
    tm_topk_top(t, items, 1);
    CHECK(items[0].count == before + 1);
    tm_topk_free(t);
}

static void test_speed(void)
{
    struct tm_topk *t = tm_topk_new(320, 96, 0);
    CHECK(t != NULL);
    if (!t)
        return;
    enum { N = 2000000 };
    char key[96];
    struct timespec a, b;
    clock_gettime(CLOCK_MONOTONIC, &a);
    for (int i = 0; i < N; i++) {
        uint64_t r = rng();
        uint64_t k = (r & 1) ? r % 50 : r % 1000000;
        tm_topk_add(t, key, key_of(key, sizeof key, k), 1, NULL);
    }
    clock_gettime(CLOCK_MONOTONIC, &b);
    double dt = (double)(b.tv_sec - a.tv_sec) + (double)(b.tv_nsec - a.tv_nsec) / 1e9;
    printf("# topk add (320 slots, half the keys unique): %.1f M adds/s\n", N / dt / 1e6);
    tm_topk_free(t);
}

int main(void)
{
    RUN(test_exact_when_keys_fit);
    RUN(test_heavy_hitters);
    RUN(test_payload_and_weights);
    RUN(test_churn_consistency);
    RUN(test_speed);
    return check_done();
}
