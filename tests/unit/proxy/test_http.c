/*
 * test_http.c - the field-value check and the strict wire scanner, which
 * look at header values eight bytes at a time: every byte value at every
 * position of a word, and heads cut into pieces at every offset.
 */
#include "check.h"
#include "proxy/proxy-internal.h"

/* The definition the fast path must agree with (RFC 9110 field-value,
 * obs-text allowed): HTAB, SP, visible ASCII, 0x80-0xff. */
static bool value_byte_ok(unsigned char c)
{
    return c == '\t' || (c >= 0x20 && c != 0x7f);
}

static void field_value_every_byte_at_every_position(void)
{
    unsigned char buf[40];
    for (size_t len = 1; len <= sizeof buf; len++) {
        for (size_t at = 0; at < len; at++) {
            for (unsigned b = 0; b < 256; b++) {
                memset(buf, 'a', len);
                buf[at] = (unsigned char)b;
                bool want = value_byte_ok((unsigned char)b);
                bool got = px_is_field_value((const char *)buf, len);
                CHECKF(got == want, "byte 0x%02x at %zu of %zu: %d", b, at, len, got);
            }
        }
    }
    CHECK(px_is_field_value("", 0));
    /* Two odd bytes in one word: the first decides. */
    CHECK(!px_is_field_value("abc\x7f\tdefgh", 10));
    CHECK(px_is_field_value("abc\xff\tdefgh", 10));
    CHECK(!px_is_field_value("\x80\x80\x80\x80\x80\x80\x80\x1f", 8));
}

/* Scan `head` in pieces of `piece` bytes; the error text, or NULL when the
 * head was accepted up to its end. */
static const char *scan_in_pieces(const char *head, size_t piece, bool response)
{
    struct px_wire w;
    memset(&w, 0, sizeof w);
    size_t len = strlen(head), off = 0;
    while (off < len) {
        size_t n = len - off < piece ? len - off : piece;
        size_t ok = px_wire_scan(&w, head + off, n, response);
        if (w.error)
            return w.error;
        if (ok != n)
            return "stopped early";
        off += n;
    }
    return NULL;
}

static void scan_values_split_anywhere(void)
{
    static const char good[] =
        "GET /a HTTP/1.1\r\nHost: example.test\r\n"
        "X-Long: abcdefghijklmnopqrstuvwxyz \t0123456789\x80\xfe~!\r\n"
        "User-Agent: curl/7.88.1 (x86_64-pc-linux-gnu)\r\n\r\n";
    for (size_t piece = 1; piece <= sizeof good; piece++) {
        const char *err = scan_in_pieces(good, piece, false);
        CHECKF(err == NULL, "pieces of %zu: %s", piece, err);
    }
    static const char *const bad[] = {
        "GET / HTTP/1.1\r\nX-A: abcdefghij\x7fklmnop\r\n\r\n",
        "GET / HTTP/1.1\r\nX-A: abcdefghijklmno\x01p\r\n\r\n",
        "GET / HTTP/1.1\r\nX-A: abcdefgh\nX-B: y\r\n\r\n",
        "GET / HTTP/1.1\r\nX-A: abcdefghijklmnop\rX-B: y\r\n\r\n",
    };
    static const char *const why[] = {
        "invalid header value", "invalid header value", "bare LF", "bare CR",
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        for (size_t piece = 1; piece <= strlen(bad[i]); piece++) {
            const char *err = scan_in_pieces(bad[i], piece, false);
            CHECKF(err && strcmp(err, why[i]) == 0, "case %zu, pieces of %zu: %s",
                   i, piece, err ? err : "accepted");
        }
    }
    const char *err = scan_in_pieces("HTTP/1.1 200 OK\r\nServer: x\ty z\r\n\r\n", 5, true);
    CHECKF(err == NULL, "%s", err);
}

int main(void)
{
    RUN(field_value_every_byte_at_every_position);
    RUN(scan_values_split_anywhere);
    return check_done();
}
