/*
 * test_ring.c - telemetry/ring.c: the worker → aggregator SPSC ring and the
 * source over several rings.
 *
 * Single-thread semantics first (capacity rounding, full → false and one drop
 * counted, wrap-around, partial pops), then two-thread stress runs of
 * STRESS_N records carrying sequence numbers and a checksum of their other
 * fields, so a torn or stale slot would show: once with a producer that
 * retries when full (the consumer must see 0..N-1, each once, in order) and
 * once with a producer that drops (the consumer sees a strictly increasing
 * subsequence). In both, pushed + refused == attempted, received == pushed,
 * and the ring's drop counter equals the refused pushes. This file also builds alone under ThreadSanitizer:
 *
 *   cc -std=c11 -D_GNU_SOURCE -O1 -g -fsanitize=thread -I. -Itests/unit \
 *      tests/unit/telemetry/test_ring.c telemetry/ring.c -lpthread
 *
 * Figures (throughput) are printed on lines starting with '#'.
 */
#include "check.h"

#include <inttypes.h>
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "telemetry/telemetry.h"

#define STRESS_N    1000000
#define STRESS_CAP  1024

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* A record whose every checked field derives from `seq`. */
static void make_record(struct tm_record *r, uint64_t seq)
{
    memset(r, 0, sizeof *r);
    r->time_us = (int64_t)seq;
    r->duration_us = seq * 7 + 1;
    r->bytes_in = ~seq;
    r->bytes_out = seq ^ 0x5555555555555555u;
    r->status = (uint16_t)(seq % 600);
    snprintf(r->path, sizeof r->path, "/p/%" PRIu64, seq);
}

static bool record_ok(const struct tm_record *r)
{
    uint64_t seq = (uint64_t)r->time_us;
    char path[TM_PATH_MAX];
    snprintf(path, sizeof path, "/p/%" PRIu64, seq);
    return r->duration_us == seq * 7 + 1 && r->bytes_in == ~seq &&
           r->bytes_out == (seq ^ 0x5555555555555555u) && r->status == seq % 600 &&
           strcmp(r->path, path) == 0;
}

static void test_ring_capacity_and_full(void)
{
    struct tm_ring *ring = tm_ring_new(5);     /* rounds up to 8 */
    CHECK(ring != NULL);
    if (!ring)
        return;
    struct tm_record r, out[16];
    for (uint64_t i = 0; i < 8; i++) {
        make_record(&r, i);
        CHECKF(tm_ring_push(ring, &r), "push %" PRIu64, i);
    }
    make_record(&r, 8);
    CHECK(!tm_ring_push(ring, &r));
    CHECK(!tm_ring_push(ring, &r));
    CHECK(tm_ring_dropped(ring) == 2);
    CHECK(tm_ring_pending(ring) == 8);
    CHECK(tm_ring_pop(ring, out, 3) == 3 && tm_ring_pending(ring) == 5);

    size_t n = 3 + tm_ring_pop(ring, out + 3, 13);
    CHECK(n == 8);
    CHECK(tm_ring_pending(ring) == 0);
    for (size_t i = 0; i < n; i++)
        CHECK(out[i].time_us == (int64_t)i && record_ok(&out[i]));
    CHECK(tm_ring_pop(ring, out, 16) == 0);
    /* Room again after the pop; the drop count stays. */
    CHECK(tm_ring_push(ring, &r));
    CHECK(tm_ring_dropped(ring) == 2);
    tm_ring_free(ring);

    ring = tm_ring_new(0);                      /* minimum capacity */
    CHECK(ring != NULL);
    if (ring) {
        CHECK(tm_ring_push(ring, &r) && tm_ring_push(ring, &r));
        CHECK(!tm_ring_push(ring, &r));
        tm_ring_free(ring);
    }
    tm_ring_free(NULL);
}

/* Pushes and pops of uneven sizes so that both indices cross the end of the
 * slot array many times, with pops split across the wrap. */
static void test_ring_wraparound(void)
{
    struct tm_ring *ring = tm_ring_new(16);
    CHECK(ring != NULL);
    if (!ring)
        return;
    struct tm_record r, out[16];
    uint64_t next_push = 0, next_pop = 0;
    bool ok = true;
    for (int round = 0; round < 1000; round++) {
        size_t want_push = (size_t)(round * 7 % 13) + 1;
        for (size_t k = 0; k < want_push; k++) {
            make_record(&r, next_push);
            if (tm_ring_push(ring, &r))
                next_push++;
        }
        size_t want_pop = (size_t)(round * 5 % 11) + 1;
        size_t n = tm_ring_pop(ring, out, want_pop);
        ok &= n <= want_pop;
        for (size_t i = 0; i < n; i++) {
            ok &= out[i].time_us == (int64_t)next_pop && record_ok(&out[i]);
            next_pop++;
        }
    }
    size_t n;
    while ((n = tm_ring_pop(ring, out, 16)) > 0)
        for (size_t i = 0; i < n; i++) {
            ok &= out[i].time_us == (int64_t)next_pop && record_ok(&out[i]);
            next_pop++;
        }
    CHECK(ok);
    CHECKF(next_pop == next_push, "popped %" PRIu64 " pushed %" PRIu64, next_pop, next_push);
    CHECK(next_push > 16 * 100);
    tm_ring_free(ring);
}

static void test_source_rings(void)
{
    struct tm_ring *rings[3];
    for (int i = 0; i < 3; i++)
        rings[i] = tm_ring_new(4);
    CHECK(rings[0] && rings[1] && rings[2]);
    if (!rings[0] || !rings[1] || !rings[2])
        return;
    struct tm_source *src = tm_source_rings(rings, 3);
    CHECK(src != NULL);
    if (!src)
        return;
    struct tm_record r, out[32];
    /* Ring i holds records i*100 .. i*100+3; ring 2 also drops 3. */
    for (uint64_t i = 0; i < 3; i++)
        for (uint64_t k = 0; k < 4 + (i == 2 ? 3 : 0); k++) {
            make_record(&r, i * 100 + k);
            tm_ring_push(rings[i], &r);
        }
    CHECK(src->dropped(src) == 3);
    /* Rings of 4: each is full, and that is the most any holds. */
    CHECK(src->capacity == 4 && src->backlog(src) == 4);

    /* A small max takes from the first ring it starts at; the next poll
     * starts one ring further, so no ring waits behind a busy one. */
    size_t n = src->poll(src, out, 2);
    CHECK(n == 2 && out[0].time_us == 0 && out[1].time_us == 1);
    n = src->poll(src, out, 2);
    CHECK(n == 2 && out[0].time_us == 100 && out[1].time_us == 101);

    n = src->poll(src, out, 32);
    CHECK(n == 8);
    bool seen[3][4] = { { false } };
    for (size_t i = 0; i < n; i++) {
        uint64_t s = (uint64_t)out[i].time_us;
        if (s / 100 < 3 && s % 100 < 4)
            seen[s / 100][s % 100] = true;
        CHECK(record_ok(&out[i]));
    }
    CHECK(seen[0][2] && seen[0][3] && seen[1][2] && seen[1][3]);
    CHECK(seen[2][0] && seen[2][1] && seen[2][2] && seen[2][3]);
    CHECK(src->poll(src, out, 32) == 0);
    src->destroy(src);

    /* No rings at all is a valid, empty source. */
    src = tm_source_rings(NULL, 0);
    CHECK(src != NULL);
    if (src) {
        CHECK(src->poll(src, out, 32) == 0 && src->dropped(src) == 0);
        CHECK(src->backlog(src) == 0 && src->capacity == 0);
        src->destroy(src);
    }
    for (int i = 0; i < 3; i++)
        tm_ring_free(rings[i]);
}

/* Single thread: push a block, pop it, repeat. Measures the cost of the ring
 * itself (copies included), without contention. */
static void test_ring_single_thread_throughput(void)
{
    struct tm_ring *ring = tm_ring_new(4096);
    CHECK(ring != NULL);
    if (!ring)
        return;
    enum { BLOCK = 256, TOTAL = 4000000 };
    static struct tm_record out[BLOCK];
    struct tm_record r;
    make_record(&r, 1);
    uint64_t got = 0;
    double t0 = now_s();
    for (uint64_t i = 0; i < TOTAL; i += BLOCK) {
        for (int k = 0; k < BLOCK; k++) {
            r.time_us = (int64_t)(i + (uint64_t)k);
            tm_ring_push(ring, &r);
        }
        got += tm_ring_pop(ring, out, BLOCK);
    }
    double dt = now_s() - t0;
    CHECK(got == TOTAL);
    CHECK(tm_ring_dropped(ring) == 0);
    printf("# ring single-thread push+pop: %.1f M records/s (%zu-byte records)\n",
           TOTAL / dt / 1e6, sizeof(struct tm_record));
    tm_ring_free(ring);
}

struct stress {
    struct tm_ring *ring;
    bool retry;                 /* producer spins when full instead of dropping */
    atomic_bool done;
    uint64_t attempts, pushed, refused;     /* producer's own counts */
};

static void *producer(void *arg)
{
    struct stress *s = arg;
    struct tm_record r;
    for (uint64_t i = 0; i < STRESS_N; i++) {
        make_record(&r, i);
        for (;;) {
            s->attempts++;
            if (tm_ring_push(s->ring, &r)) {
                s->pushed++;
                break;
            }
            s->refused++;
            if (!s->retry)
                break;
            sched_yield();      /* two cores: let the consumer run */
        }
    }
    atomic_store_explicit(&s->done, true, memory_order_release);
    return NULL;
}

/* Consumer on this thread. Returns records received; checks order and
 * content as it goes. */
static uint64_t consume(struct stress *s, bool *in_order, bool *contiguous, bool *intact)
{
    static struct tm_record out[128];
    uint64_t received = 0;
    int64_t last = -1;
    *in_order = *contiguous = *intact = true;
    for (;;) {
        bool done = atomic_load_explicit(&s->done, memory_order_acquire);
        size_t n = tm_ring_pop(s->ring, out, 128);
        for (size_t i = 0; i < n; i++) {
            if (out[i].time_us <= last)
                *in_order = false;
            if (out[i].time_us != last + 1)
                *contiguous = false;
            if (!record_ok(&out[i]))
                *intact = false;
            last = out[i].time_us;
        }
        received += n;
        /* `done` was read before this pop: everything pushed is now in. */
        if (done && n == 0)
            break;
    }
    return received;
}

static void run_stress(bool retry)
{
    struct stress s = { .ring = tm_ring_new(STRESS_CAP), .retry = retry };
    atomic_init(&s.done, false);
    CHECK(s.ring != NULL);
    if (!s.ring)
        return;
    pthread_t t;
    double t0 = now_s();
    CHECK(pthread_create(&t, NULL, producer, &s) == 0);
    bool in_order, contiguous, intact;
    uint64_t received = consume(&s, &in_order, &contiguous, &intact);
    pthread_join(t, NULL);
    double dt = now_s() - t0;

    CHECK(in_order);
    CHECK(intact);
    CHECKF(received == s.pushed, "received %" PRIu64 " pushed %" PRIu64, received, s.pushed);
    CHECK(s.pushed + s.refused == s.attempts);
    CHECK(retry || s.attempts == STRESS_N);
    /* Every refused push is one drop, also when the producer then retries. */
    CHECKF(tm_ring_dropped(s.ring) == s.refused, "ring says %" PRIu64 " dropped, producer %"
           PRIu64, tm_ring_dropped(s.ring), s.refused);
    if (retry) {
        CHECK(contiguous);
        CHECK(received == STRESS_N);
    }
    printf("# ring two threads, %s: %d records in %.3f s (%.1f M records/s), "
           "pushed %" PRIu64 ", refused %" PRIu64 "\n",
           retry ? "producer retries when full" : "producer drops when full",
           STRESS_N, dt, STRESS_N / dt / 1e6, s.pushed, s.refused);
    tm_ring_free(s.ring);
}

static void test_ring_stress_every_record_once_in_order(void)
{
    run_stress(true);
}

static void test_ring_stress_drops_add_up(void)
{
    run_stress(false);
}

int main(void)
{
    RUN(test_ring_capacity_and_full);
    RUN(test_ring_wraparound);
    RUN(test_source_rings);
    RUN(test_ring_single_thread_throughput);
    RUN(test_ring_stress_every_record_once_in_order);
    RUN(test_ring_stress_drops_add_up);
    return check_done();
}
