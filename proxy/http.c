/*
 * http.c - message heads as http-parser hands them over, and the small HTTP
 * facts the data path needs (tokens, reason phrases).
 *
 * http-parser calls back with fragments of the target, header names and
 * values, split wherever a read ended. px_head copies them into one growing
 * buffer (bounded by max_header_bytes) and indexes them by offset, so a head
 * is one allocation that lives only while its message is being forwarded.
 *
 * Thread: the worker that owns the exchange.
 */
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "proxy/proxy-internal.h"

void px_head_init(struct px_head *h, uint32_t limit)
{
    memset(h, 0, sizeof *h);
    h->limit = limit;
}

void px_head_free(struct px_head *h)
{
    free(h->buf);
    h->buf = NULL;
    h->cap = h->len = 0;
}

/* Forget the content, keep the buffer (a 1xx answer before the final one). */
void px_head_reset(struct px_head *h)
{
    uint32_t limit = h->limit;
    char *buf = h->buf;
    uint32_t cap = h->cap;
    memset(h, 0, sizeof *h);
    h->limit = limit;
    h->buf = buf;
    h->cap = cap;
}

static int head_append(struct px_head *h, const char *at, size_t len)
{
    if ((size_t)h->len + len > h->limit) {
        h->too_big = true;
        return -1;
    }
    if (h->len + len > h->cap) {
        uint32_t cap = h->cap ? h->cap : 1024;
        while (cap < h->len + len)
            cap *= 2;
        if (cap > h->limit)
            cap = h->limit;
        char *buf = realloc(h->buf, cap);
        if (!buf)
            return -1;
        h->buf = buf;
        h->cap = cap;
    }
    memcpy(h->buf + h->len, at, len);
    h->len += (uint32_t)len;
    return 0;
}

int px_head_add_url(struct px_head *h, const char *at, size_t len)
{
    if (h->url_len == 0)
        h->url_off = h->len;
    if (head_append(h, at, len) < 0)
        return -1;
    h->url_len += (uint32_t)len;
    return 0;
}

int px_head_add_reason(struct px_head *h, const char *at, size_t len)
{
    if (h->reason_len == 0)
        h->reason_off = h->len;
    if (head_append(h, at, len) < 0)
        return -1;
    h->reason_len += (uint32_t)len;
    return 0;
}

int px_head_add_field(struct px_head *h, const char *at, size_t len)
{
    if (h->in_value || h->n_hdr == 0) {
        if (h->n_hdr == PX_MAX_HEADERS) {
            h->too_big = true;
            return -1;
        }
        struct px_header *hd = &h->hdr[h->n_hdr++];
        hd->name_off = h->len;
        hd->name_len = 0;
        hd->value_off = 0;
        hd->value_len = 0;
        h->in_value = false;
    }
    if (head_append(h, at, len) < 0)
        return -1;
    h->hdr[h->n_hdr - 1].name_len += (uint32_t)len;
    return 0;
}

int px_head_add_value(struct px_head *h, const char *at, size_t len)
{
    if (h->n_hdr == 0)
        return -1;
    struct px_header *hd = &h->hdr[h->n_hdr - 1];
    if (!h->in_value) {
        hd->value_off = h->len;
        h->in_value = true;
    }
    if (head_append(h, at, len) < 0)
        return -1;
    hd->value_len += (uint32_t)len;
    return 0;
}

static bool name_is(const struct px_head *h, const struct px_header *hd,
                    const char *name, size_t name_len)
{
    return hd->name_len == name_len &&
           strncasecmp(h->buf + hd->name_off, name, name_len) == 0;
}

const char *px_head_get(const struct px_head *h, const char *name,
                        uint32_t *len)
{
    size_t name_len = strlen(name);
    for (unsigned i = 0; i < h->n_hdr; i++) {
        const struct px_header *hd = &h->hdr[i];
        if (name_is(h, hd, name, name_len)) {
            *len = hd->value_len;
            return h->buf + hd->value_off;
        }
    }
    *len = 0;
    return NULL;
}

bool px_header_is(const struct px_head *h, const struct px_header *hd,
                  const char *name)
{
    return name_is(h, hd, name, strlen(name));
}

static bool is_ows(char c) { return c == ' ' || c == '\t'; }

/* Does the comma-separated list contain `token` (case-insensitive)? */
bool px_token_list_has(const char *list, size_t len, const char *token)
{
    return px_token_list_has_n(list, len, token, strlen(token));
}

/* The same for a token that is not NUL-terminated (a header name in a
 * head's buffer), of any length. */
bool px_token_list_has_n(const char *list, size_t len, const char *token,
                         size_t tlen)
{
    size_t i = 0;
    while (i < len) {
        while (i < len && (is_ows(list[i]) || list[i] == ','))
            i++;
        size_t start = i;
        while (i < len && list[i] != ',')
            i++;
        size_t end = i;
        while (end > start && is_ows(list[end - 1]))
            end--;
        if (end - start == tlen && strncasecmp(list + start, token, tlen) == 0)
            return true;
    }
    return false;
}

/* RFC 9110 tchar: what a header name may be made of. */
bool px_is_token(const char *s, size_t len)
{
    static const char extra[] = "!#$%&'*+-.^_`|~";
    if (len == 0)
        return false;
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)s[i];
        if ((c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') ||
            (c >= 'A' && c <= 'Z'))
            continue;
        if (c != 0 && strchr(extra, c))
            continue;
        return false;
    }
    return true;
}

/* A field value may hold visible characters, spaces, tabs and obs-text, but
 * no other control character (CR, LF and NUL above all). */
bool px_is_field_value(const char *s, size_t len)
{
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c < 0x20 && c != '\t')
            return false;
        if (c == 0x7f)
            return false;
    }
    return true;
}

const char *px_status_reason(int status)
{
    switch (status) {
    case 100: return "Continue";
    case 101: return "Switching Protocols";
    case 103: return "Early Hints";
    case 200: return "OK";
    case 201: return "Created";
    case 202: return "Accepted";
    case 204: return "No Content";
    case 206: return "Partial Content";
    case 301: return "Moved Permanently";
    case 302: return "Found";
    case 303: return "See Other";
    case 304: return "Not Modified";
    case 307: return "Temporary Redirect";
    case 308: return "Permanent Redirect";
    case 400: return "Bad Request";
    case 401: return "Unauthorized";
    case 403: return "Forbidden";
    case 404: return "Not Found";
    case 405: return "Method Not Allowed";
    case 408: return "Request Timeout";
    case 411: return "Length Required";
    case 413: return "Content Too Large";
    case 414: return "URI Too Long";
    case 417: return "Expectation Failed";
    case 429: return "Too Many Requests";
    case 431: return "Request Header Fields Too Large";
    case 500: return "Internal Server Error";
    case 501: return "Not Implemented";
    case 502: return "Bad Gateway";
    case 503: return "Service Unavailable";
    case 504: return "Gateway Timeout";
    case 505: return "HTTP Version Not Supported";
    default:  return "Unknown";
    }
}
