/*
 * xff.c - who the client is.
 *
 * The client of a request is its peer, unless the peer is a trusted proxy
 * (trusted_proxies): then the X-Forwarded-For chain is walked from the right
 * (the hop closest to us) and the first address that is not itself trusted
 * is the client. Entries left of it could have been written by the client
 * and are ignored: believing the leftmost entry would let anyone claim any
 * address. When every entry is trusted, the leftmost one is the client; an
 * entry that is not an address ends the walk at the last good one.
 *
 * Pure functions of their arguments; any thread.
 */
#include <arpa/inet.h>
#include <stdio.h>
#include <string.h>

#include "proxy/proxy-internal.h"

/* Dotted quad into `out` (room for 16 bytes); inet_ntop() goes through
 * sprintf, which costs more than the rest of a request's bookkeeping. */
static void ipv4_text(const uint8_t a[4], char *out)
{
    char *o = out;
    for (int i = 0; i < 4; i++) {
        unsigned v = a[i];
        if (v >= 100)
            *o++ = (char)('0' + v / 100);
        if (v >= 10)
            *o++ = (char)('0' + v / 10 % 10);
        *o++ = (char)('0' + v % 10);
        *o++ = i < 3 ? '.' : '\0';
    }
}

void px_sockaddr_text(const struct sockaddr *sa, char *out, size_t len)
{
    static const uint8_t mapped[12] = { 0,0,0,0,0,0,0,0,0,0,0xff,0xff };
    const uint8_t *v4 = NULL;
    if (sa->sa_family == AF_INET)
        v4 = (const uint8_t *)&((const struct sockaddr_in *)sa)->sin_addr;
    else if (sa->sa_family == AF_INET6) {
        const uint8_t *a6 = ((const struct sockaddr_in6 *)sa)->sin6_addr.s6_addr;
        if (memcmp(a6, mapped, 12) == 0)
            v4 = a6 + 12;       /* v4 clients of a dual-stack socket as v4 */
    }
    if (v4 && len >= INET_ADDRSTRLEN) {
        ipv4_text(v4, out);
        return;
    }
    const void *a = sa->sa_family == AF_INET6
        ? (const void *)&((const struct sockaddr_in6 *)sa)->sin6_addr
        : (const void *)&((const struct sockaddr_in *)sa)->sin_addr;
    if (!inet_ntop(sa->sa_family, a, out, (socklen_t)len))
        snprintf(out, len, "-");
    /* Show v4 clients of a dual-stack socket as v4. */
    if (strncmp(out, "::ffff:", 7) == 0 && strchr(out + 7, '.'))
        memmove(out, out + 7, strlen(out + 7) + 1);
}

bool px_parse_ip(const char *s, size_t len, struct sockaddr_storage *ss)
{
    char buf[INET6_ADDRSTRLEN + 1];
    if (len == 0 || len >= sizeof buf)
        return false;
    memcpy(buf, s, len);
    buf[len] = '\0';
    memset(ss, 0, sizeof *ss);
    struct sockaddr_in *v4 = (struct sockaddr_in *)ss;
    struct sockaddr_in6 *v6 = (struct sockaddr_in6 *)ss;
    if (inet_pton(AF_INET, buf, &v4->sin_addr) == 1) {
        v4->sin_family = AF_INET;
        return true;
    }
    if (inet_pton(AF_INET6, buf, &v6->sin6_addr) == 1) {
        v6->sin6_family = AF_INET6;
        return true;
    }
    return false;
}

static void copy_addr(struct sockaddr_storage *out, const struct sockaddr *sa)
{
    memset(out, 0, sizeof *out);
    memcpy(out, sa, sa->sa_family == AF_INET6 ? sizeof(struct sockaddr_in6)
                                              : sizeof(struct sockaddr_in));
}

void px_client_address(const struct px_runtime *rt, const struct sockaddr *peer,
                       const struct px_head *req, struct sockaddr_storage *out)
{
    copy_addr(out, peer);
    if (rt->n_trusted == 0 || !px_trusted(rt, peer))
        return;
    /* Every X-Forwarded-For header, from the last one backwards. */
    for (int h = (int)req->n_hdr - 1; h >= 0; h--) {
        const struct px_header *hd = &req->hdr[h];
        if (hd->id != PX_HDR_X_FORWARDED_FOR)
            continue;
        const char *v = req->buf + hd->value_off;
        size_t end = hd->value_len;
        while (end > 0) {
            size_t start = end;
            while (start > 0 && v[start - 1] != ',')
                start--;
            size_t a = start, b = end;
            while (a < b && (v[a] == ' ' || v[a] == '\t'))
                a++;
            while (b > a && (v[b - 1] == ' ' || v[b - 1] == '\t'))
                b--;
            struct sockaddr_storage ss;
            if (!px_parse_ip(v + a, b - a, &ss))
                return;
            *out = ss;
            if (!px_trusted(rt, (const struct sockaddr *)&ss))
                return;
            end = start > 0 ? start - 1 : 0;
        }
    }
}
