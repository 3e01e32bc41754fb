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
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "proxy/proxy-internal.h"

void px_head_init(struct px_head *h, uint32_t limit)
{
    memset(h, 0, offsetof(struct px_head, hdr));
    h->limit = limit;
    h->hdr = h->hdr_inline;
    h->hdr_cap = PX_INLINE_HEADERS;
}

void px_head_free(struct px_head *h)
{
    free(h->buf);
    h->buf = NULL;
    h->cap = h->len = 0;
    if (h->hdr != h->hdr_inline)
        free(h->hdr);
    h->hdr = h->hdr_inline;
    h->hdr_cap = PX_INLINE_HEADERS;
}

void px_head_reset(struct px_head *h)
{
    uint32_t limit = h->limit;
    char *buf = h->buf;
    uint32_t cap = h->cap;
    memset(h, 0, offsetof(struct px_head, hdr));
    h->limit = limit;
    h->buf = buf;
    h->cap = cap;
}

/* Room for one more header in the index, or -1. */
static int grow_index(struct px_head *h)
{
    if (h->n_hdr < h->hdr_cap)
        return 0;
    struct px_header *hdr = malloc(PX_MAX_HEADERS * sizeof *hdr);
    if (!hdr)
        return -1;
    memcpy(hdr, h->hdr, h->n_hdr * sizeof *hdr);
    if (h->hdr != h->hdr_inline)
        free(h->hdr);
    h->hdr = hdr;
    h->hdr_cap = PX_MAX_HEADERS;
    return 0;
}

static int head_append(struct px_head *h, const char *at, size_t len)
{
    if (len == 0)       /* e.g. an empty reason phrase, before any buf */
        return 0;
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

static bool name_is(const struct px_head *h, const struct px_header *hd,
                    const char *name, size_t name_len)
{
    return hd->name_len == name_len &&
           strncasecmp(h->buf + hd->name_off, name, name_len) == 0;
}

#define NAME_IS(h, hd, lit) name_is(h, hd, lit, sizeof lit - 1)

static enum px_hdr_id classify(const struct px_head *h,
                               const struct px_header *hd)
{
    switch (hd->name_len) {
    case 2:
        return NAME_IS(h, hd, "te") ? PX_HDR_TE : PX_HDR_OTHER;
    case 4:
        return NAME_IS(h, hd, "host") ? PX_HDR_HOST : PX_HDR_OTHER;
    case 6:
        return NAME_IS(h, hd, "cookie") ? PX_HDR_COOKIE : PX_HDR_OTHER;
    case 7:
        return NAME_IS(h, hd, "upgrade") ? PX_HDR_UPGRADE
             : NAME_IS(h, hd, "trailer") ? PX_HDR_TRAILER : PX_HDR_OTHER;
    case 9:
        return NAME_IS(h, hd, "x-real-ip") ? PX_HDR_X_REAL_IP : PX_HDR_OTHER;
    case 10:
        return NAME_IS(h, hd, "connection") ? PX_HDR_CONNECTION
             : NAME_IS(h, hd, "keep-alive") ? PX_HDR_KEEP_ALIVE : PX_HDR_OTHER;
    case 14:
        return NAME_IS(h, hd, "content-length") ? PX_HDR_CONTENT_LENGTH
                                                : PX_HDR_OTHER;
    case 15:
        return NAME_IS(h, hd, "x-forwarded-for") ? PX_HDR_X_FORWARDED_FOR
                                                 : PX_HDR_OTHER;
    case 16:
        return NAME_IS(h, hd, "x-forwarded-host") ? PX_HDR_X_FORWARDED_HOST
             : NAME_IS(h, hd, "proxy-connection") ? PX_HDR_PROXY_CONNECTION
             : PX_HDR_OTHER;
    case 17:
        return NAME_IS(h, hd, "transfer-encoding") ? PX_HDR_TRANSFER_ENCODING
             : NAME_IS(h, hd, "x-forwarded-proto") ? PX_HDR_X_FORWARDED_PROTO
             : PX_HDR_OTHER;
    default:
        return PX_HDR_OTHER;
    }
}

void px_head_classify(struct px_head *h)
{
    for (unsigned i = 0; i < h->n_hdr; i++)
        if (h->hdr[i].id == PX_HDR_UNKNOWN)
            h->hdr[i].id = (uint8_t)classify(h, &h->hdr[i]);
}

int px_head_add_field(struct px_head *h, const char *at, size_t len)
{
    if (h->in_value || h->n_hdr == 0) {
        if (h->n_hdr == PX_MAX_HEADERS) {
            h->too_big = true;
            return -1;
        }
        if (grow_index(h) < 0)
            return -1;
        struct px_header *hd = &h->hdr[h->n_hdr++];
        hd->name_off = h->len;
        hd->name_len = 0;
        hd->value_off = 0;
        hd->value_len = 0;
        hd->id = PX_HDR_UNKNOWN;
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
        hd->id = (uint8_t)classify(h, hd);     /* the name is complete */
    }
    if (head_append(h, at, len) < 0)
        return -1;
    hd->value_len += (uint32_t)len;
    return 0;
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

const char *px_head_find(const struct px_head *h, enum px_hdr_id id,
                         uint32_t *len)
{
    for (unsigned i = 0; i < h->n_hdr; i++) {
        const struct px_header *hd = &h->hdr[i];
        if (hd->id == id) {
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

/* RFC 9110 tchar: ALPHA, DIGIT and !#$%&'*+-.^_`|~, one bit per byte. */
static const uint32_t tchar_map[8] = {
    0x00000000, 0x03ff6cfa, 0xc7fffffe, 0x57ffffff, 0, 0, 0, 0,
};

static bool is_tchar(unsigned char c)
{
    return (tchar_map[c >> 5] >> (c & 31)) & 1;
}

/* What a header name may be made of. */
bool px_is_token(const char *s, size_t len)
{
    unsigned ok = len > 0;
    for (size_t i = 0; i < len; i++)
        ok &= is_tchar((unsigned char)s[i]);
    return ok;
}

/* field-vchar / SP / HTAB: visible ASCII, obs-text, space, tab. */
static bool is_value_char(unsigned char c)
{
    return c == '\t' || (c >= 0x20 && c != 0x7f);
}

#define BYTES_OF(b)     (0x0101010101010101ull * (b))

/* How many of the `len` bytes at `p` may stand in a field value, up to the
 * first that may not. Header values are most of a head's bytes, and the
 * check runs on every one of them twice (px_wire_scan, check_framing):
 * eight bytes at a time while none is below 0x20 nor DEL. */
static size_t value_run(const unsigned char *p, size_t len)
{
    size_t i = 0;
    for (; i + 8 <= len; i += 8) {
        uint64_t x, del;
        memcpy(&x, p + i, 8);
        del = x ^ BYTES_OF(0x7f);
        /* A byte below 0x20 or a zero byte of `del` leaves its top bit set
         * (the subtraction borrows from it); none does otherwise. */
        if (((x - BYTES_OF(0x20)) & ~x & BYTES_OF(0x80)) |
            ((del - BYTES_OF(0x01)) & ~del & BYTES_OF(0x80)))
            break;      /* a tab maybe: byte by byte from here */
    }
    while (i < len && is_value_char(p[i]))
        i++;
    return i;
}

/* A field value may hold visible characters, spaces, tabs and obs-text, but
 * no other control character (CR, LF and NUL above all). */
bool px_is_field_value(const char *s, size_t len)
{
    return value_run((const unsigned char *)s, len) == len;
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

/* ---- strict wire check ---------------------------------------------------
 *
 * http-parser 2.9.4 as Debian builds it (HTTP_PARSER_STRICT=0) accepts more
 * than a proxy may: bare LF line ends, obs-fold continuation lines, extra
 * spaces in the request line, a request line without a version (HTTP/0.9),
 * tabs in the target, any byte where the CRLF after chunk data belongs, and
 * anything at all as a chunk extension. Two parsers that disagree on where a
 * message ends are how requests get smuggled, so every byte the parser is
 * given has passed px_wire_scan() first, which holds the raw bytes to the
 * RFC 9112 grammar:
 *
 *   request-line = method SP request-target SP HTTP-version CRLF
 *                  (method a token, target visible ASCII, version HTTP/D.D;
 *                  empty lines before it are skipped, as RFC 9112 2.2 allows)
 *   status-line  = HTTP-version SP 3DIGIT [ SP reason-phrase ] CRLF
 *   field-line   = token ":" value CRLF, value without CTL but HTAB
 *                  (no obs-fold, no space before the colon)
 *   chunk        = 1*HEXDIG *( BWS ";" BWS token [ BWS "=" BWS
 *                  ( token / quoted-string ) ] ) CRLF data CRLF
 *   last-chunk   = "0" [ chunk-ext ] CRLF *( field-line ) CRLF
 *
 * Lines end with CRLF only: a bare LF is refused (HAProxy does the same; RFC
 * 9112 2.2 lets a recipient accept it, a proxy is safer without).
 *
 * The scanner stops right after the LF that ends the head (http-parser
 * pauses on that LF and leaves it unconsumed) or, for a chunked body, right
 * after the last CRLF of the message (which http-parser consumes), so the
 * caller can check that both agree where the head and the message end.
 */

enum {
    W_START,            /* 0: what a zeroed px_head starts with */
    W_LEADING_LF,       /* CR of an empty line before the request line */
    W_METHOD,
    W_TARGET_START,
    W_TARGET,
    W_VERSION,          /* "HTTP/D.D", count = characters matched */
    W_VERSION_END,
    W_STATUS,           /* count = digits */
    W_STATUS_END,
    W_REASON,
    W_LINE_LF,          /* CR of the start line seen */
    W_FIELD_START,
    W_NAME,
    W_VALUE,
    W_VALUE_LF,
    W_END_LF,           /* CR of the empty line that ends the head/trailers */
    W_HEAD_END,         /* head complete (the final LF included) */
    W_CH_HEAD_LF,       /* chunked body: the head's LF, read again */
    W_CH_SIZE_START,
    W_CH_SIZE,
    W_CH_BWS_SEMI,      /* BWS that must be followed by ";" */
    W_CH_EXT_NAME_START,
    W_CH_EXT_NAME,
    W_CH_EXT_AFTER_NAME,
    W_CH_EXT_VAL_START,
    W_CH_EXT_VAL,
    W_CH_EXT_QS,
    W_CH_EXT_QS_ESC,
    W_CH_EXT_QS_END,
    W_CH_SIZE_LF,
    W_CH_DATA,
    W_CH_DATA_CR,
    W_CH_DATA_LF,
    W_MSG_END,          /* chunked message complete (trailers included) */
};

/* A chunk-size line (size and extensions) longer than this is refused:
 * http-parser would skip extensions of any length. */
#define PX_CHUNK_LINE_MAX 4096

static int hex_val(unsigned char c)
{
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
}

static bool is_vchar(unsigned char c) { return c > 0x20 && c < 0x7f; }
static size_t wire_fail(struct px_wire *w, const char *why, size_t at)
{
    w->error = why;
    return at;
}

size_t px_wire_scan(struct px_wire *w, const char *data, size_t len,
                    bool response)
{
    static const char version[] = "HTTP/D.D";
    const unsigned char *p = (const unsigned char *)data;
    if (w->error)
        return 0;
    for (size_t i = 0; i < len; i++) {
        unsigned char c = p[i];
        if (w->state >= W_CH_SIZE_START && w->state <= W_CH_SIZE_LF &&
            ++w->line > PX_CHUNK_LINE_MAX)
            return wire_fail(w, "chunk size line too long", i);
        switch (w->state) {
        case W_START:
            if (response) {
                if (c != 'H')
                    return wire_fail(w, "invalid status line", i);
                w->state = W_VERSION;
                w->count = 1;                   /* "H" of "HTTP/D.D" */
            } else if (c == '\r') {
                w->state = W_LEADING_LF;
            } else if (is_tchar(c)) {
                w->state = W_METHOD;
            } else {
                return wire_fail(w, c == '\n' ? "bare LF" : "invalid request line", i);
            }
            break;
        case W_LEADING_LF:
            if (c != '\n')
                return wire_fail(w, "bare CR", i);
            w->state = W_START;
            break;
        case W_METHOD:
            if (c == ' ')
                w->state = W_TARGET_START;
            else if (!is_tchar(c))
                return wire_fail(w, "invalid method", i);
            break;
        case W_TARGET_START:
            if (!is_vchar(c))
                return wire_fail(w, c == ' ' ? "invalid request line"
                                             : "invalid request target", i);
            w->state = W_TARGET;
            break;
        case W_TARGET:
            while (i + 1 < len && is_vchar(c))     /* the run at once */
                c = p[++i];
            if (c == ' ') {
                w->state = W_VERSION;
                w->count = 0;
            } else if (c == '\r' || c == '\n') {
                return wire_fail(w, "HTTP/0.9 request (no version)", i);
            } else if (!is_vchar(c)) {
                return wire_fail(w, "invalid request target", i);
            }
            break;
        case W_VERSION: {
            char want = version[w->count];
            bool ok = want == 'D' ? (c >= '0' && c <= '9') : c == (unsigned char)want;
            if (!ok)
                return wire_fail(w, response ? "invalid status line"
                                             : "invalid HTTP version", i);
            if (++w->count == sizeof version - 1)
                w->state = W_VERSION_END;
            break;
        }
        case W_VERSION_END:
            if (!response && c == '\r')
                w->state = W_LINE_LF;
            else if (response && c == ' ') {
                w->state = W_STATUS;
                w->count = 0;
            } else
                return wire_fail(w, response ? "invalid status line"
                                             : "invalid HTTP version", i);
            break;
        case W_STATUS:
            if (c < '0' || c > '9')
                return wire_fail(w, "invalid status line", i);
            if (++w->count == 3)
                w->state = W_STATUS_END;
            break;
        case W_STATUS_END:
            if (c == ' ')
                w->state = W_REASON;
            else if (c == '\r')
                w->state = W_LINE_LF;
            else
                return wire_fail(w, "invalid status line", i);
            break;
        case W_REASON:
            if (c == '\r')
                w->state = W_LINE_LF;
            else if (!is_value_char(c))
                return wire_fail(w, c == '\n' ? "bare LF" : "invalid status line", i);
            break;
        case W_LINE_LF:
        case W_VALUE_LF:
            if (c != '\n')
                return wire_fail(w, "bare CR", i);
            w->state = W_FIELD_START;
            break;
        case W_FIELD_START:
            if (c == '\r')
                w->state = W_END_LF;
            else if (c == ' ' || c == '\t')
                return wire_fail(w, "obs-fold (header line starting with white space)", i);
            else if (is_tchar(c))
                w->state = W_NAME;
            else
                return wire_fail(w, c == '\n' ? "bare LF" : "invalid header name", i);
            break;
        case W_NAME:
            while (i + 1 < len && is_tchar(c))
                c = p[++i];
            if (c == ':')
                w->state = W_VALUE;
            else if (c == ' ' || c == '\t')
                return wire_fail(w, "white space before the colon", i);
            else if (!is_tchar(c))
                return wire_fail(w, c == '\n' ? "bare LF" : "invalid header name", i);
            break;
        case W_VALUE:
            i += value_run(p + i, len - i);
            if (i == len)
                break;          /* the value goes on in the next bytes */
            c = p[i];
            if (c == '\r')
                w->state = W_VALUE_LF;
            else if (!is_value_char(c))
                return wire_fail(w, c == '\n' ? "bare LF" : "invalid header value", i);
            break;
        case W_END_LF:
            if (c != '\n')
                return wire_fail(w, "bare CR", i);
            w->state = w->trailers ? W_MSG_END : W_HEAD_END;
            return i + 1;
        case W_HEAD_END:
        case W_MSG_END:
            return i;                   /* the caller decides what follows */
        case W_CH_HEAD_LF:
            if (c != '\n')
                return wire_fail(w, "bare CR", i);
            w->state = W_CH_SIZE_START;
            w->line = 0;
            break;
        case W_CH_SIZE_START: {
            int v = hex_val(c);
            if (v < 0)
                return wire_fail(w, "invalid chunk size", i);
            w->chunk_left = (uint64_t)v;
            w->count = v ? 1 : 0;       /* significant digits */
            w->state = W_CH_SIZE;
            break;
        }
        case W_CH_SIZE: {
            int v = hex_val(c);
            if (v >= 0) {
                if (w->count || v)
                    w->count++;
                if (w->count > 15)      /* http-parser's limit is 2^64-2 */
                    return wire_fail(w, "chunk size too large", i);
                w->chunk_left = w->chunk_left * 16 + (uint64_t)v;
            } else if (c == ';') {
                w->state = W_CH_EXT_NAME_START;
            } else if (c == ' ' || c == '\t') {
                w->state = W_CH_BWS_SEMI;
            } else if (c == '\r') {
                w->state = W_CH_SIZE_LF;
            } else {
                return wire_fail(w, "invalid chunk size", i);
            }
            break;
        }
        case W_CH_BWS_SEMI:
            if (c == ';')
                w->state = W_CH_EXT_NAME_START;
            else if (c != ' ' && c != '\t')
                return wire_fail(w, "invalid chunk extension", i);
            break;
        case W_CH_EXT_NAME_START:
            if (is_tchar(c))
                w->state = W_CH_EXT_NAME;
            else if (c != ' ' && c != '\t')
                return wire_fail(w, "invalid chunk extension", i);
            break;
        case W_CH_EXT_NAME:
            if (c == '=')
                w->state = W_CH_EXT_VAL_START;
            else if (c == ';')
                w->state = W_CH_EXT_NAME_START;
            else if (c == ' ' || c == '\t')
                w->state = W_CH_EXT_AFTER_NAME;
            else if (c == '\r')
                w->state = W_CH_SIZE_LF;
            else if (!is_tchar(c))
                return wire_fail(w, "invalid chunk extension", i);
            break;
        case W_CH_EXT_AFTER_NAME:
            if (c == '=')
                w->state = W_CH_EXT_VAL_START;
            else if (c == ';')
                w->state = W_CH_EXT_NAME_START;
            else if (c != ' ' && c != '\t')
                return wire_fail(w, "invalid chunk extension", i);
            break;
        case W_CH_EXT_VAL_START:
            if (c == '"')
                w->state = W_CH_EXT_QS;
            else if (is_tchar(c))
                w->state = W_CH_EXT_VAL;
            else if (c != ' ' && c != '\t')
                return wire_fail(w, "invalid chunk extension", i);
            break;
        case W_CH_EXT_VAL:
        case W_CH_EXT_QS_END:
            if (c == ';')
                w->state = W_CH_EXT_NAME_START;
            else if (c == ' ' || c == '\t')
                w->state = W_CH_BWS_SEMI;
            else if (c == '\r')
                w->state = W_CH_SIZE_LF;
            else if (w->state == W_CH_EXT_QS_END || !is_tchar(c))
                return wire_fail(w, "invalid chunk extension", i);
            break;
        case W_CH_EXT_QS:
            /* qdtext = HTAB / SP / %x21 / %x23-5B / %x5D-7E / obs-text */
            if (c == '"')
                w->state = W_CH_EXT_QS_END;
            else if (c == '\\')
                w->state = W_CH_EXT_QS_ESC;
            else if (!is_value_char(c))
                return wire_fail(w, "invalid chunk extension", i);
            break;
        case W_CH_EXT_QS_ESC:
            if (!is_value_char(c))
                return wire_fail(w, "invalid chunk extension", i);
            w->state = W_CH_EXT_QS;
            break;
        case W_CH_SIZE_LF:
            if (c != '\n')
                return wire_fail(w, "bare CR", i);
            if (w->chunk_left == 0) {
                w->trailers = true;     /* last chunk: trailer section */
                w->state = W_FIELD_START;
            } else {
                w->state = W_CH_DATA;
            }
            break;
        case W_CH_DATA: {
            size_t take = len - i;
            if (take > w->chunk_left)
                take = (size_t)w->chunk_left;
            w->chunk_left -= take;
            i += take - 1;              /* take >= 1: chunk_left > 0 here */
            if (w->chunk_left == 0)
                w->state = W_CH_DATA_CR;
            break;
        }
        case W_CH_DATA_CR:
            if (c != '\r')
                return wire_fail(w, "chunk data not followed by CRLF", i);
            w->state = W_CH_DATA_LF;
            break;
        case W_CH_DATA_LF:
            if (c != '\n')
                return wire_fail(w, "chunk data not followed by CRLF", i);
            w->state = W_CH_SIZE_START;
            w->line = 0;
            break;
        default:
            return wire_fail(w, "internal: bad wire state", i);
        }
    }
    return len;
}

int px_wire_end(const struct px_wire *w)
{
    return w->state == W_HEAD_END ? 1 : w->state == W_MSG_END ? 2 : 0;
}

/* The request line got past a well-formed method (a token, then SP). */
bool px_wire_past_method(const struct px_wire *w)
{
    return w->state > W_METHOD && w->state <= W_MSG_END;
}

void px_wire_chunked(struct px_wire *w)
{
    if (w->state == W_HEAD_END)
        w->state = W_CH_HEAD_LF;
}

/* A framing header value: Content-Length is 1*DIGIT (OWS around it). */
bool px_is_decimal(const char *s, size_t len)
{
    while (len && (s[0] == ' ' || s[0] == '\t')) { s++; len--; }
    while (len && (s[len - 1] == ' ' || s[len - 1] == '\t')) len--;
    if (len == 0)
        return false;
    for (size_t i = 0; i < len; i++)
        if (s[i] < '0' || s[i] > '9')
            return false;
    return true;
}
