/*
 * histogram.c - the log-linear latency histogram (struct tm_hist, declared in
 * telemetry.h).
 *
 * Layout: values below 2^(SUB_BITS+1) = 256 µs have one bucket each. Above,
 * the power of two [2^e, 2^(e+1)) is cut into 2^SUB_BITS = 128 buckets of
 * width 2^(e-7): bucket index = (e-7)*128 + (v >> (e-7)), where v >> (e-7)
 * lies in [128, 255]. So a bucket is never wider than 1/128 of its lower
 * bound, and its midpoint is within 1/256 of any value in it. The top index
 * is reached at 2^32 - 1 µs; larger values are counted there.
 *
 * Threads: none of its own; a histogram belongs to whoever embeds it (the
 * aggregator), which serialises access. No allocation here: callers allocate
 * (it is large, about 27 KB) and call tm_hist_init() once.
 */
#include <math.h>
#include <string.h>

#include "telemetry/telemetry.h"

#define SUB_COUNT (1u << TM_HIST_SUB_BITS)      /* 128 */
#define LINEAR_MAX (2u * SUB_COUNT)             /* values below have width 1 */

static inline uint32_t hist_index(uint64_t v)
{
    if (v > TM_HIST_MAX_US)
        v = TM_HIST_MAX_US;
    if (v < LINEAR_MAX)
        return (uint32_t)v;
    unsigned e = 63u - (unsigned)__builtin_clzll(v);
    unsigned shift = e - TM_HIST_SUB_BITS;
    return (uint32_t)((shift << TM_HIST_SUB_BITS) + (v >> shift));
}

static inline uint64_t bucket_low(uint32_t i)
{
    if (i < LINEAR_MAX)
        return i;
    unsigned shift = (i >> TM_HIST_SUB_BITS) - 1u;
    uint64_t sub = i - ((uint64_t)shift << TM_HIST_SUB_BITS);
    return sub << shift;
}

static inline uint64_t bucket_width(uint32_t i)
{
    if (i < LINEAR_MAX)
        return 1;
    return (uint64_t)1 << ((i >> TM_HIST_SUB_BITS) - 1u);
}

static void set_empty(struct tm_hist *h)
{
    h->count = 0;
    h->sum_us = 0;
    h->min_us = UINT64_MAX;
    h->max_us = 0;
    h->lo = TM_HIST_BUCKETS;
    h->hi = 0;
}

void tm_hist_init(struct tm_hist *h)
{
    memset(h->counts, 0, sizeof h->counts);
    set_empty(h);
}

void tm_hist_reset(struct tm_hist *h)
{
    if (h->lo <= h->hi)
        memset(&h->counts[h->lo], 0, (size_t)(h->hi - h->lo + 1) * sizeof h->counts[0]);
    set_empty(h);
}

void tm_hist_record(struct tm_hist *h, uint64_t v)
{
    uint32_t i = hist_index(v);
    h->counts[i]++;
    h->count++;
    h->sum_us += v;
    if (v < h->min_us)
        h->min_us = v;
    if (v > h->max_us)
        h->max_us = v;
    if (i < h->lo)
        h->lo = i;
    if (i > h->hi)
        h->hi = i;
}

void tm_hist_add(struct tm_hist *dst, const struct tm_hist *src)
{
    if (src->count == 0 || src->lo > src->hi)
        return;
    for (uint32_t i = src->lo; i <= src->hi; i++)
        dst->counts[i] += src->counts[i];
    dst->count += src->count;
    dst->sum_us += src->sum_us;
    if (src->min_us < dst->min_us)
        dst->min_us = src->min_us;
    if (src->max_us > dst->max_us)
        dst->max_us = src->max_us;
    if (src->lo < dst->lo)
        dst->lo = src->lo;
    if (src->hi > dst->hi)
        dst->hi = src->hi;
}

void tm_hist_sub(struct tm_hist *dst, const struct tm_hist *src)
{
    if (src->count == 0 || src->lo > src->hi)
        return;
    for (uint32_t i = src->lo; i <= src->hi; i++)
        dst->counts[i] -= src->counts[i];
    dst->count -= src->count;
    dst->sum_us -= src->sum_us;
    if (dst->count == 0) {
        /* Everything left is zero, but lo..hi must still cover the range
         * the memset in reset would clear: all of it is zero already. */
        set_empty(dst);
        return;
    }
    while (dst->lo <= dst->hi && dst->counts[dst->lo] == 0)
        dst->lo++;
    while (dst->hi > dst->lo && dst->counts[dst->hi] == 0)
        dst->hi--;
    /* The exact extremes may have left with `src`; what is known for sure is
     * the bucket they now fall in, which keeps quantiles within bounds. */
    uint64_t low = bucket_low(dst->lo);
    uint64_t high = bucket_low(dst->hi) + bucket_width(dst->hi) - 1;
    if (dst->min_us < low)
        dst->min_us = low;
    /* The top bucket also holds everything above TM_HIST_MAX_US. */
    if (dst->max_us > high && dst->hi != TM_HIST_BUCKETS - 1)
        dst->max_us = high;
}

void tm_hist_quantiles(const struct tm_hist *h, const double *qs, uint64_t *out,
                       size_t n)
{
    if (h->count == 0 || h->lo > h->hi) {
        for (size_t k = 0; k < n; k++)
            out[k] = 0;
        return;
    }
    uint64_t cum = 0;
    uint32_t i = h->lo;
    for (size_t k = 0; k < n; k++) {
        double q = qs[k] < 0 ? 0 : qs[k] > 1 ? 1 : qs[k];
        /* Nearest rank; the epsilon keeps 0.999 * 1000 from rounding up. */
        uint64_t rank = (uint64_t)ceil(q * (double)h->count - 1e-9);
        if (rank < 1)
            rank = 1;
        if (rank > h->count)
            rank = h->count;
        while (i <= h->hi && cum + h->counts[i] < rank) {
            cum += h->counts[i];
            i++;
        }
        if (i > h->hi)
            i = h->hi;
        uint64_t v = bucket_low(i) + (bucket_width(i) - 1) / 2;
        if (v < h->min_us)
            v = h->min_us;
        if (v > h->max_us)
            v = h->max_us;
        out[k] = v;
    }
}

uint64_t tm_hist_quantile(const struct tm_hist *h, double q)
{
    uint64_t v;
    tm_hist_quantiles(h, &q, &v, 1);
    return v;
}
