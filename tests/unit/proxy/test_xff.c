/*
 * test_xff.c - the client address: the peer, or the rightmost untrusted
 * X-Forwarded-For entry when the peer is a trusted proxy.
 */
#include <arpa/inet.h>
#include <stdlib.h>

#include "check.h"
#include "conf/conf.h"
#include "proxy/proxy-internal.h"

static struct px_runtime *runtime(const char *trusted)
{
    char yaml[512], err[CONF_ERROR_MAX];
    snprintf(yaml, sizeof yaml,
             "listen: [127.0.0.1:1]\npools: {p: {servers: [127.0.0.1:2]}}\n"
             "trusted_proxies: [%s]\n", trusted);
    struct conf *c = conf_load_string("t.yaml", yaml, err, sizeof err);
    CHECKF(c != NULL, "%.200s", err);
    if (!c)
        return NULL;
    struct px_runtime *rt = px_runtime_new(c, 1, NULL, err, sizeof err);
    conf_free(c);
    return rt;
}

/* Client of a request from `peer` carrying the given X-Forwarded-For
 * headers (NULL-terminated), as text. */
static const char *client(struct px_runtime *rt, const char *peer,
                          const char *const *xff)
{
    static char out[INET6_ADDRSTRLEN];
    if (!rt)
        return "(no runtime)";
    struct px_head h;
    px_head_init(&h, 4096);
    px_head_add_field(&h, "Host", 4);
    px_head_add_value(&h, "x", 1);
    for (size_t i = 0; xff && xff[i]; i++) {
        px_head_add_field(&h, "X-Forwarded-For", 15);
        px_head_add_value(&h, xff[i], strlen(xff[i]));
    }
    struct sockaddr_storage p, ss;
    CHECK(px_parse_ip(peer, strlen(peer), &p));
    px_client_address(rt, (struct sockaddr *)&p, &h, &ss);
    px_sockaddr_text((struct sockaddr *)&ss, out, sizeof out);
    px_head_free(&h);
    return out;
}

#define XFF(...) ((const char *const[]){ __VA_ARGS__, NULL })

static void xff_untrusted_peer_is_the_client(void)
{
    struct px_runtime *rt = runtime("10.0.0.0/8");
    CHECK(strcmp(client(rt, "192.0.2.7", XFF("1.1.1.1")), "192.0.2.7") == 0);
    CHECK(strcmp(client(rt, "192.0.2.7", NULL), "192.0.2.7") == 0);
    px_runtime_unref(rt);
}

static void xff_no_trusted_proxies(void)
{
    struct px_runtime *rt = runtime("");
    CHECK(strcmp(client(rt, "10.0.0.1", XFF("1.1.1.1")), "10.0.0.1") == 0);
    px_runtime_unref(rt);
}

static void xff_rightmost_untrusted_wins(void)
{
    struct px_runtime *rt = runtime("10.0.0.0/8, 127.0.0.0/8");
    CHECK(strcmp(client(rt, "127.0.0.1", XFF("1.1.1.1")), "1.1.1.1") == 0);
    /* A client-written entry left of the real one is ignored. */
    CHECK(strcmp(client(rt, "127.0.0.1", XFF("6.6.6.6, 1.1.1.1")), "1.1.1.1") == 0);
    /* Trusted hops on the right are skipped. */
    CHECK(strcmp(client(rt, "127.0.0.1", XFF("6.6.6.6, 1.1.1.1, 10.0.0.2")),
                 "1.1.1.1") == 0);
    /* Several headers form one chain, in order. */
    CHECK(strcmp(client(rt, "127.0.0.1", XFF("6.6.6.6", "1.1.1.1, 10.9.9.9")),
                 "1.1.1.1") == 0);
    CHECK(strcmp(client(rt, "127.0.0.1", XFF("2.2.2.2", "10.1.1.1")), "2.2.2.2") == 0);
    px_runtime_unref(rt);
}

static void xff_all_trusted_gives_leftmost(void)
{
    struct px_runtime *rt = runtime("10.0.0.0/8, 127.0.0.0/8");
    CHECK(strcmp(client(rt, "127.0.0.1", XFF("10.0.0.5, 10.0.0.6")), "10.0.0.5") == 0);
    px_runtime_unref(rt);
}

static void xff_garbage_stops_the_walk(void)
{
    struct px_runtime *rt = runtime("10.0.0.0/8, 127.0.0.0/8");
    CHECK(strcmp(client(rt, "127.0.0.1", XFF("1.1.1.1, not-an-ip")), "127.0.0.1") == 0);
    CHECK(strcmp(client(rt, "127.0.0.1", XFF("junk, 10.0.0.3")), "10.0.0.3") == 0);
    CHECK(strcmp(client(rt, "127.0.0.1", XFF("")), "127.0.0.1") == 0);
    CHECK(strcmp(client(rt, "127.0.0.1", XFF(" 1.1.1.1 ,\t2.2.2.2 ")), "2.2.2.2") == 0);
    px_runtime_unref(rt);
}

static void xff_ipv6_and_mapped(void)
{
    struct px_runtime *rt = runtime("\"::1/128\", 127.0.0.0/8");
    CHECK(strcmp(client(rt, "::1", XFF("2001:db8::7")), "2001:db8::7") == 0);
    /* A v4 peer on a dual-stack socket is trusted as v4 and shown as v4. */
    CHECK(strcmp(client(rt, "::ffff:127.0.0.1", XFF("1.1.1.1")), "1.1.1.1") == 0);
    CHECK(strcmp(client(rt, "::ffff:192.0.2.1", XFF("1.1.1.1")), "192.0.2.1") == 0);
    px_runtime_unref(rt);
}

int main(void)
{
    RUN(xff_untrusted_peer_is_the_client);
    RUN(xff_no_trusted_proxies);
    RUN(xff_rightmost_untrusted_wins);
    RUN(xff_all_trusted_gives_leftmost);
    RUN(xff_garbage_stops_the_walk);
    RUN(xff_ipv6_and_mapped);
    return check_done();
}
