/*
 * io.c - moving bytes between a socket and its evbuffers.
 *
 * Both sides of the proxy (client and backend connections) are a px_conn: a
 * non-blocking socket, one read and one write event, and an input and an
 * output evbuffer. The events are armed only while they are wanted, so a
 * connection that waits for nothing costs no epoll_ctl calls.
 *
 * Reads go straight into space reserved in the evbuffer (no copy) and grow
 * from PX_READ_MIN to PX_READ_MAX while the socket keeps filling them:
 * evbuffer_read() stops at 4 KiB a call, which costs too many syscalls for
 * large bodies. Writes use evbuffer_write(), a writev() over the chain.
 *
 * Thread: the worker that owns the connection.
 */
#include <errno.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <unistd.h>

#include "proxy/proxy-internal.h"

int px_conn_read(struct px_conn *c)
{
    struct evbuffer_iovec vec[2];
    uint32_t want = c->read_size ? c->read_size : PX_READ_MIN;
    int nvec = evbuffer_reserve_space(c->in, want, vec, 2);
    if (nvec < 0) {
        errno = ENOMEM;
        return -1;
    }
    struct iovec iov[2];
    for (int i = 0; i < nvec; i++) {
        iov[i].iov_base = vec[i].iov_base;
        iov[i].iov_len = vec[i].iov_len;
    }
    ssize_t n;
    do {
        n = readv(c->fd, iov, nvec);
    } while (n < 0 && errno == EINTR);
    if (n < 0) {
        evbuffer_commit_space(c->in, vec, 0);
        return (errno == EAGAIN || errno == EWOULDBLOCK) ? -2 : -1;
    }
    if (n == 0) {
        evbuffer_commit_space(c->in, vec, 0);
        c->eof = true;
        return 0;
    }
    size_t left = (size_t)n;
    for (int i = 0; i < nvec; i++) {
        size_t take = left < vec[i].iov_len ? left : vec[i].iov_len;
        vec[i].iov_len = take;
        left -= take;
    }
    evbuffer_commit_space(c->in, vec, nvec);
    if ((size_t)n >= want && want < PX_READ_MAX)
        c->read_size = want * 2;
    else if ((size_t)n < want / 4 && want > PX_READ_MIN)
        c->read_size = want / 2;
    return 1;
}

int px_conn_write(struct px_conn *c)
{
    while (evbuffer_get_length(c->out) > 0) {
        int n = evbuffer_write(c->out, c->fd);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            if (errno == EAGAIN || errno == EWOULDBLOCK)
                return 0;
            return -1;
        }
        if (n == 0)
            return 0;
    }
    return 0;
}

static void set_tv(struct timeval *tv, uint32_t ms)
{
    tv->tv_sec = ms / 1000;
    tv->tv_usec = (ms % 1000) * 1000;
}

void px_conn_want_read(struct px_conn *c, bool on, uint32_t timeout_ms, bool rearm)
{
    if (!on) {
        if (c->reading) {
            event_del(&c->rev);
            c->reading = false;
        }
        return;
    }
    if (c->reading && !rearm && c->read_timeout == timeout_ms)
        return;
    struct timeval tv;
    set_tv(&tv, timeout_ms);
    event_add(&c->rev, timeout_ms ? &tv : NULL);
    c->reading = true;
    c->read_timeout = timeout_ms;
}

void px_conn_want_write(struct px_conn *c, bool on, uint32_t timeout_ms)
{
    if (!on) {
        if (c->writing) {
            event_del(&c->wev);
            c->writing = false;
        }
        return;
    }
    if (c->writing && c->write_timeout == timeout_ms)
        return;
    struct timeval tv;
    set_tv(&tv, timeout_ms);
    event_add(&c->wev, timeout_ms ? &tv : NULL);
    c->writing = true;
    c->write_timeout = timeout_ms;
}

/* Release the socket, both events and both buffers. The px_conn itself
 * belongs to its container. */
void px_conn_close(struct px_conn *c)
{
    if (c->fd < 0)
        return;
    event_del(&c->rev);
    event_del(&c->wev);
    c->reading = c->writing = false;
    close(c->fd);
    c->fd = -1;
    if (c->in) {
        evbuffer_free(c->in);
        c->in = NULL;
    }
    if (c->out) {
        evbuffer_free(c->out);
        c->out = NULL;
    }
}
