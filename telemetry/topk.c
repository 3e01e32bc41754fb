/*
 * topk.c - heavy hitters with Space-Saving (Metwally, Agrawal, El Abbadi,
 * 2005) over a fixed number of slots: struct tm_topk, declared in
 * telemetry.h.
 *
 * A key already in the table gets its count raised. A new key takes a free
 * slot, or else replaces the key with the smallest count m: it inherits
 * count m + weight and error m, since it may have been one of the keys
 * counted in m. So count - error <= true count <= count, and any key seen
 * more than total/slots times is in the table.
 *
 * Structure: slots in one array; a binary min-heap of slot numbers by count
 * finds the smallest in O(1) and re-orders in O(log n) (counts only grow, so
 * only sift-down after an increment); an open-addressing hash table with
 * linear probing (twice the slots, backward-shift deletion, no tombstones)
 * finds a key's slot. The hash is seeded per table so that crafted keys
 * (paths, addresses) cannot be chosen in advance to collide.
 *
 * Threads: none; the owner (the aggregator) serialises access. All memory is
 * allocated in tm_topk_new().
 */
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "telemetry/telemetry.h"

struct tk_slot {
    uint64_t count, error;
    uint64_t hash;
    uint32_t heap_pos;
    uint32_t key_len;
};

struct tm_topk {
    size_t n_slots, used;
    size_t key_max, payload_size;
    uint64_t total, seed;
    struct tk_slot *slots;
    uint32_t *heap;             /* slot numbers, min-heap by count */
    uint32_t *table;            /* slot number + 1; 0 = empty */
    size_t table_mask;
    unsigned char *keys;        /* n_slots * key_max */
    unsigned char *payloads;    /* n_slots * payload_size */
};

static uint64_t tk_hash(uint64_t seed, const unsigned char *p, size_t n)
{
    uint64_t h = 0xcbf29ce484222325u ^ seed;
    for (size_t i = 0; i < n; i++) {
        h ^= p[i];
        h *= 0x100000001b3u;
    }
    /* FNV alone mixes the last bytes poorly into the low bits we index by. */
    h ^= h >> 33;
    h *= 0xff51afd7ed558ccdu;
    h ^= h >> 33;
    h *= 0xc4ceb9fe1a85ec53u;
    h ^= h >> 33;
    return h;
}

struct tm_topk *tm_topk_new(size_t slots, size_t key_max, size_t payload_size)
{
    if (slots < 1 || key_max < 1 || slots > UINT32_MAX / 4 || key_max > UINT32_MAX)
        return NULL;
    struct tm_topk *t = calloc(1, sizeof *t);
    if (!t)
        goto fail;
    size_t table_size = 4;
    while (table_size < 2 * slots)
        table_size <<= 1;
    t->n_slots = slots;
    t->key_max = key_max;
    t->payload_size = payload_size;
    t->table_mask = table_size - 1;
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    t->seed = ((uint64_t)(uintptr_t)t * 0x9e3779b97f4a7c15u) ^ (uint64_t)ts.tv_nsec
              ^ ((uint64_t)ts.tv_sec << 32);
    t->slots = calloc(slots, sizeof *t->slots);
    t->heap = calloc(slots, sizeof *t->heap);
    t->table = calloc(table_size, sizeof *t->table);
    t->keys = calloc(slots, key_max);
    t->payloads = calloc(slots, payload_size ? payload_size : 1);
    if (!t->slots || !t->heap || !t->table || !t->keys || !t->payloads)
        goto fail;
    return t;
fail:
    tm_topk_free(t);
    return NULL;
}

void tm_topk_free(struct tm_topk *t)
{
    if (!t)
        return;
    free(t->slots);
    free(t->heap);
    free(t->table);
    free(t->keys);
    free(t->payloads);
    free(t);
}

static inline bool heap_less(const struct tm_topk *t, uint32_t a, uint32_t b)
{
    return t->slots[a].count < t->slots[b].count;
}

static void heap_set(struct tm_topk *t, size_t pos, uint32_t s)
{
    t->heap[pos] = s;
    t->slots[s].heap_pos = (uint32_t)pos;
}

static void sift_down(struct tm_topk *t, size_t pos)
{
    uint32_t s = t->heap[pos];
    for (;;) {
        size_t c = 2 * pos + 1;
        if (c >= t->used)
            break;
        if (c + 1 < t->used && heap_less(t, t->heap[c + 1], t->heap[c]))
            c++;
        if (!heap_less(t, t->heap[c], s))
            break;
        heap_set(t, pos, t->heap[c]);
        pos = c;
    }
    heap_set(t, pos, s);
}

static void sift_up(struct tm_topk *t, size_t pos)
{
    uint32_t s = t->heap[pos];
    while (pos > 0) {
        size_t p = (pos - 1) / 2;
        if (!heap_less(t, s, t->heap[p]))
            break;
        heap_set(t, pos, t->heap[p]);
        pos = p;
    }
    heap_set(t, pos, s);
}

static size_t table_find(const struct tm_topk *t, uint64_t h, const void *key, size_t len)
{
    for (size_t i = h & t->table_mask;; i = (i + 1) & t->table_mask) {
        uint32_t e = t->table[i];
        if (e == 0)
            return i;
        const struct tk_slot *s = &t->slots[e - 1];
        if (s->hash == h && s->key_len == len &&
            memcmp(t->keys + (size_t)(e - 1) * t->key_max, key, len) == 0)
            return i;
    }
}

/* Remove the entry at `pos`, moving later entries of the probe run back so
 * that every remaining key stays reachable from its home position. */
static void table_delete(struct tm_topk *t, size_t pos)
{
    size_t j = pos;
    for (;;) {
        j = (j + 1) & t->table_mask;
        uint32_t e = t->table[j];
        if (e == 0)
            break;
        size_t home = t->slots[e - 1].hash & t->table_mask;
        /* Move e to `pos` unless its home lies cyclically in (pos, j]. */
        bool stays = pos <= j ? (home > pos && home <= j) : (home > pos || home <= j);
        if (!stays) {
            t->table[pos] = e;
            pos = j;
        }
    }
    t->table[pos] = 0;
}

void *tm_topk_add(struct tm_topk *t, const void *key, size_t key_len,
                  uint64_t weight, bool *entered)
{
    if (key_len > t->key_max)
        key_len = t->key_max;
    uint64_t h = tk_hash(t->seed, key, key_len);
    size_t pos = table_find(t, h, key, key_len);
    t->total += weight;
    uint32_t s;
    if (t->table[pos] != 0) {
        s = t->table[pos] - 1;
        t->slots[s].count += weight;
        sift_down(t, t->slots[s].heap_pos);
        if (entered)
            *entered = false;
        return t->payloads + (size_t)s * t->payload_size;
    }

    uint64_t inherited = 0;
    if (t->used < t->n_slots) {
        s = (uint32_t)t->used++;
        t->heap[t->used - 1] = s;
        t->slots[s].heap_pos = (uint32_t)(t->used - 1);
    } else {
        s = t->heap[0];
        inherited = t->slots[s].count;
        size_t old = table_find(t, t->slots[s].hash, t->keys + (size_t)s * t->key_max,
                                t->slots[s].key_len);
        table_delete(t, old);
        /* The deletion may have moved entries, so look for our spot again. */
        pos = table_find(t, h, key, key_len);
    }
    struct tk_slot *sl = &t->slots[s];
    sl->count = inherited + weight;
    sl->error = inherited;
    sl->hash = h;
    sl->key_len = (uint32_t)key_len;
    memcpy(t->keys + (size_t)s * t->key_max, key, key_len);
    t->table[pos] = s + 1;
    /* A new slot may sit below a larger parent; a replaced minimum may now
     * exceed its children. One of the two moves nothing. */
    sift_up(t, sl->heap_pos);
    sift_down(t, sl->heap_pos);
    unsigned char *payload = t->payloads + (size_t)s * t->payload_size;
    if (t->payload_size)
        memset(payload, 0, t->payload_size);
    if (entered)
        *entered = true;
    return payload;
}

struct tk_order {
    uint64_t count, error;
    uint32_t slot;
};

static int tk_order_cmp(const void *a, const void *b)
{
    const struct tk_order *x = a, *y = b;
    if (x->count != y->count)
        return x->count > y->count ? -1 : 1;
    if (x->error != y->error)
        return x->error < y->error ? -1 : 1;
    return x->slot < y->slot ? -1 : x->slot > y->slot;
}

size_t tm_topk_top(const struct tm_topk *t, struct tm_topk_item *out, size_t max)
{
    if (t->used == 0 || max == 0)
        return 0;
    struct tk_order *order = malloc(t->used * sizeof *order);
    size_t n = 0;
    if (!order) {
        /* Out of memory: still answer, with the heap's order (unsorted). */
        for (size_t i = 0; i < t->used && n < max; i++, n++) {
            const struct tk_slot *s = &t->slots[i];
            out[n] = (struct tm_topk_item){ t->keys + i * t->key_max, s->key_len,
                                            s->count, s->error,
                                            t->payloads + i * t->payload_size };
        }
        return n;
    }
    for (size_t i = 0; i < t->used; i++)
        order[i] = (struct tk_order){ t->slots[i].count, t->slots[i].error, (uint32_t)i };
    qsort(order, t->used, sizeof *order, tk_order_cmp);
    for (; n < t->used && n < max; n++) {
        size_t i = order[n].slot;
        const struct tk_slot *s = &t->slots[i];
        out[n] = (struct tm_topk_item){ t->keys + i * t->key_max, s->key_len,
                                        s->count, s->error,
                                        t->payloads + i * t->payload_size };
    }
    free(order);
    return n;
}

uint64_t tm_topk_total(const struct tm_topk *t)
{
    return t->total;
}

size_t tm_topk_size(const struct tm_topk *t)
{
    return t->used;
}
