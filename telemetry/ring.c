/*
 * ring.c - the bounded single-producer/single-consumer ring that carries
 * tm_records from one proxy worker to the aggregator, and the tm_source that
 * reads a set of such rings.
 *
 * Threads: exactly one producer thread (the worker that owns the ring) calls
 * tm_ring_push(); exactly one consumer at a time (the aggregator; its drains
 * are serialised by its own mutex) calls tm_ring_pop(). tm_ring_dropped() and
 * tm_ring_pending() may be read from any thread. tm_ring_new()/tm_ring_free()
 * happen while neither side runs.
 *
 * Ownership: the ring owns its slot array. `head` is written only by the
 * producer and `tail` only by the consumer; each sits on its own cache line
 * with that side's private cached copy of the other index, so in the common
 * case a push or a pop touches no line the other side writes. The release
 * store of an index publishes the slot contents written before it; the
 * acquire load on the other side makes them visible. The drop counter
 * belongs to the producer (a relaxed load + store: one writer).
 *
 * The source over N rings (tm_source_rings) borrows the rings and owns only
 * its array of pointers.
 */
#include <stdalign.h>
#include <stdlib.h>
#include <string.h>

#include "telemetry/telemetry.h"

#define TM_CACHE_LINE 64

struct tm_ring {
    /* Read-only after creation: both sides read these. */
    alignas(TM_CACHE_LINE) struct tm_record *slots;
    size_t mask;

    /* Producer's line. */
    alignas(TM_CACHE_LINE) atomic_size_t head;     /* next slot to write */
    size_t tail_cache;                              /* producer's view of tail */
    atomic_uint_fast64_t dropped;

    /* Consumer's line. */
    alignas(TM_CACHE_LINE) atomic_size_t tail;     /* next slot to read */
    size_t head_cache;                              /* consumer's view of head */
};

struct tm_ring *tm_ring_new(size_t capacity)
{
    if (capacity < 2)
        capacity = 2;
    if (capacity > ((size_t)1 << (sizeof(size_t) * 8 - 2)))
        return NULL;
    size_t cap = 1;
    while (cap < capacity)
        cap <<= 1;

    struct tm_ring *ring = NULL;
    /* aligned_alloc wants a size that is a multiple of the alignment. */
    size_t size = (sizeof *ring + TM_CACHE_LINE - 1) / TM_CACHE_LINE * TM_CACHE_LINE;
    ring = aligned_alloc(TM_CACHE_LINE, size);
    if (!ring)
        goto fail;
    memset(ring, 0, size);
    ring->slots = calloc(cap, sizeof *ring->slots);
    if (!ring->slots)
        goto fail;
    ring->mask = cap - 1;
    atomic_init(&ring->head, 0);
    atomic_init(&ring->tail, 0);
    atomic_init(&ring->dropped, 0);
    ring->tail_cache = 0;
    ring->head_cache = 0;
    return ring;
fail:
    free(ring);
    return NULL;
}

void tm_ring_free(struct tm_ring *ring)
{
    if (!ring)
        return;
    free(ring->slots);
    free(ring);
}

bool tm_ring_push(struct tm_ring *ring, const struct tm_record *rec)
{
    size_t head = atomic_load_explicit(&ring->head, memory_order_relaxed);
    if (head - ring->tail_cache > ring->mask) {
        /* Looks full from what we last saw: look at the real tail. Acquire,
         * so that the consumer's reads of that slot happen before we
         * overwrite it. */
        ring->tail_cache = atomic_load_explicit(&ring->tail, memory_order_acquire);
        if (head - ring->tail_cache > ring->mask) {
            uint_fast64_t d = atomic_load_explicit(&ring->dropped, memory_order_relaxed);
            atomic_store_explicit(&ring->dropped, d + 1, memory_order_relaxed);
            return false;
        }
    }
    ring->slots[head & ring->mask] = *rec;
    atomic_store_explicit(&ring->head, head + 1, memory_order_release);
    return true;
}

size_t tm_ring_pending(const struct tm_ring *ring)
{
    /* tail first: head can only have moved further since. */
    size_t tail = atomic_load_explicit(&ring->tail, memory_order_acquire);
    size_t head = atomic_load_explicit(&ring->head, memory_order_acquire);
    return head - tail;
}

size_t tm_ring_pop(struct tm_ring *ring, struct tm_record *out, size_t max)
{
    size_t tail = atomic_load_explicit(&ring->tail, memory_order_relaxed);
    size_t avail = ring->head_cache - tail;
    if (avail < max) {
        ring->head_cache = atomic_load_explicit(&ring->head, memory_order_acquire);
        avail = ring->head_cache - tail;
    }
    size_t n = avail < max ? avail : max;
    if (n == 0)
        return 0;
    size_t cap = ring->mask + 1;
    size_t first = tail & ring->mask;
    size_t chunk = cap - first < n ? cap - first : n;
    memcpy(out, &ring->slots[first], chunk * sizeof *out);
    if (chunk < n)
        memcpy(out + chunk, &ring->slots[0], (n - chunk) * sizeof *out);
    /* Release: our copies are done before the producer may reuse the slots. */
    atomic_store_explicit(&ring->tail, tail + n, memory_order_release);
    return n;
}

uint64_t tm_ring_dropped(const struct tm_ring *ring)
{
    return atomic_load_explicit(&ring->dropped, memory_order_relaxed);
}

/* ---- the in-process source ----------------------------------------------- */

struct ring_source {
    struct tm_source base;      /* first: the interface pointer is the object */
    struct tm_ring **rings;
    size_t n;
    size_t next;                /* ring to start the next poll at */
};

/* Takes from each ring in turn, starting one further each call, so a busy
 * worker cannot starve the others when `max` is smaller than the backlog. */
static size_t ring_source_poll(struct tm_source *src, struct tm_record *out, size_t max)
{
    struct ring_source *rs = (struct ring_source *)src;
    size_t got = 0;
    for (size_t k = 0; k < rs->n && got < max; k++) {
        size_t i = (rs->next + k) % rs->n;
        got += tm_ring_pop(rs->rings[i], out + got, max - got);
    }
    if (rs->n)
        rs->next = (rs->next + 1) % rs->n;
    return got;
}

static uint64_t ring_source_dropped(struct tm_source *src)
{
    struct ring_source *rs = (struct ring_source *)src;
    uint64_t sum = 0;
    for (size_t i = 0; i < rs->n; i++)
        sum += tm_ring_dropped(rs->rings[i]);
    return sum;
}

static size_t ring_source_backlog(struct tm_source *src)
{
    struct ring_source *rs = (struct ring_source *)src;
    size_t most = 0;
    for (size_t i = 0; i < rs->n; i++) {
        size_t n = tm_ring_pending(rs->rings[i]);
        if (n > most)
            most = n;
    }
    return most;
}

static void ring_source_destroy(struct tm_source *src)
{
    struct ring_source *rs = (struct ring_source *)src;
    if (!rs)
        return;
    free(rs->rings);
    free(rs);
}

struct tm_source *tm_source_rings(struct tm_ring **rings, size_t n)
{
    struct ring_source *rs = calloc(1, sizeof *rs);
    if (!rs)
        goto fail;
    rs->rings = calloc(n ? n : 1, sizeof *rs->rings);
    if (!rs->rings)
        goto fail;
    if (n)
        memcpy(rs->rings, rings, n * sizeof *rings);
    rs->n = n;
    for (size_t i = 0; i < n; i++) {
        size_t cap = rings[i]->mask + 1;
        if (i == 0 || cap < rs->base.capacity)
            rs->base.capacity = cap;
    }
    rs->base.poll = ring_source_poll;
    rs->base.dropped = ring_source_dropped;
    rs->base.backlog = ring_source_backlog;
    rs->base.destroy = ring_source_destroy;
    return &rs->base;
fail:
    free(rs);
    return NULL;
}
