/*
 * io.c - moving bytes between a socket and its evbuffers.
 *
 * Both sides of the proxy (client and backend connections) are a px_conn: a
 * non-blocking socket, one read and one write event, and an input and an
 * output evbuffer. The events are armed only while they are wanted, so a
 * connection that waits for nothing costs no epoll_ctl calls.
 *
 * Small reads (a request, a small answer) land on the stack and are copied
 * into the evbuffer, which then holds them in a chain of their size: a
 * 16 KiB chain reserved for a 100-byte request would cost a large malloc
 * and free per message, and leave the heap fragmented by the many
 * connections that each had one. Once reads fill PX_READ_MIN, they go
 * straight into space reserved in the evbuffer (no copy) and grow up to
 * PX_READ_MAX while the socket keeps filling them: evbuffer_read() stops at
 * 4 KiB a call, which costs too many syscalls for large bodies. Writes use
 * evbuffer_write(), a writev() over the chain.
 *
 * Large response bodies bypass the evbuffers: px_pipe moves them from the
 * backend socket into a pipe and from the pipe to the client socket with
 * splice(2), so the kernel hands pages along instead of copying every byte
 * into user memory and back (HAProxy's splicing does the same). A pipe holds
 * limits.pipe_size bytes (its default, and why, in switchboard.conf(5)).
 * Each worker keeps a few empty pipes for reuse and opens at most
 * PX_PIPES_MAX.
 *
 * Thread: the worker that owns the connection.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <unistd.h>

#include "proxy/proxy-internal.h"

/* Pipes per worker, open at once (two descriptors each), and kept empty. */
#define PX_PIPES_MAX        256
#define PX_PIPES_FREE_MAX   32

/* Worker threads are never cancelled, but read(), readv() and sendmsg() are
 * cancellation points: in a threaded process glibc wraps each call in two
 * atomic updates of the thread's cancellation state, a cost the two reads
 * and two writes of every proxied request would pay for nothing. */
static ssize_t sys_read(int fd, void *buf, size_t len)
{
    return syscall(SYS_read, fd, buf, len);
}

static ssize_t sys_readv(int fd, const struct iovec *iov, int iovcnt)
{
    return syscall(SYS_readv, fd, iov, iovcnt);
}

static ssize_t sys_sendmsg(int fd, const struct msghdr *msg, int flags)
{
    return syscall(SYS_sendmsg, fd, msg, flags);
}

/* A read of at most PX_READ_MIN bytes, through a buffer on the stack. */
static int read_small(struct px_conn *c)
{
    char buf[PX_READ_MIN];
    ssize_t n;
    do {
        n = sys_read(c->fd, buf, sizeof buf);
    } while (n < 0 && errno == EINTR);
    if (n < 0)
        return (errno == EAGAIN || errno == EWOULDBLOCK) ? -2 : -1;
    if (n == 0) {
        c->eof = true;
        return 0;
    }
    if (evbuffer_add(c->in, buf, (size_t)n) < 0) {
        errno = ENOMEM;
        return -1;
    }
    if ((size_t)n == sizeof buf)
        c->read_size = PX_READ_MIN * 2;
    return 1;
}

int px_conn_read(struct px_conn *c)
{
    struct evbuffer_iovec vec[2];
    uint32_t want = c->read_size ? c->read_size : PX_READ_MIN;
    if (want <= PX_READ_MIN)
        return read_small(c);
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
        n = sys_readv(c->fd, iov, nvec);
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

/* Chains one sendmsg() takes; an answer is a handful. */
#define PX_WRITE_IOV    64

int px_conn_write(struct px_conn *c)
{
    /* When the socket closes right after this, MSG_MORE holds the last
     * segment back so that the FIN leaves with it: one packet less for
     * both ends of every closing connection. close() sends it at once. */
    int flags = MSG_NOSIGNAL | (c->fin_follows ? MSG_MORE : 0);
    while (evbuffer_get_length(c->out) > 0) {
        struct evbuffer_iovec vec[PX_WRITE_IOV];
        struct iovec iov[PX_WRITE_IOV];
        int n = evbuffer_peek(c->out, -1, NULL, vec, PX_WRITE_IOV);
        if (n > PX_WRITE_IOV)
            n = PX_WRITE_IOV;
        for (int i = 0; i < n; i++) {
            iov[i].iov_base = vec[i].iov_base;
            iov[i].iov_len = vec[i].iov_len;
        }
        struct msghdr msg = { .msg_iov = iov, .msg_iovlen = (size_t)n };
        ssize_t sent = sys_sendmsg(c->fd, &msg, flags);
        if (sent < 0) {
            if (errno == EINTR)
                continue;
            if (errno == EAGAIN || errno == EWOULDBLOCK)
                return 0;
            return -1;
        }
        if (sent == 0)
            return 0;
        evbuffer_drain(c->out, (size_t)sent);
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

void px_conn_events(struct px_conn *c, struct event_base *base,
                    event_callback_fn on_readable, event_callback_fn on_writable,
                    void *arg)
{
    event_assign(&c->rev, base, c->fd, EV_READ | EV_PERSIST, on_readable, arg);
    c->on_writable = on_writable;
}

void px_conn_want_write(struct px_conn *c, bool on, uint32_t timeout_ms)
{
    if (on && c->flush_slot && !c->writing)
        return;         /* px_flushq_run arms it if the socket takes less */
    if (!on) {
        if (c->writing) {
            event_del(c->wev);
            c->writing = false;
        }
        return;
    }
    if (c->writing && c->write_timeout == timeout_ms)
        return;
    if (!c->wev) {
        c->wev = event_new(event_get_base(&c->rev), c->fd, EV_WRITE | EV_PERSIST,
                           c->on_writable, event_get_callback_arg(&c->rev));
        if (!c->wev)
            return;     /* out of memory: the read side's timeout ends it */
    }
    struct timeval tv;
    set_tv(&tv, timeout_ms);
    event_add(c->wev, timeout_ms ? &tv : NULL);
    c->writing = true;
    c->write_timeout = timeout_ms;
}

void px_conn_drop_wev(struct px_conn *c)
{
    if (c->wev && !c->writing) {
        event_free(c->wev);
        c->wev = NULL;
    }
}

/* Release the socket, both events and both buffers. The px_conn itself
 * belongs to its container. */
void px_conn_close(struct px_conn *c)
{
    if (c->fd < 0)
        return;
    /* Its owner took it off any px_flushq (px_flushq_remove). */
    event_del(&c->rev);
    if (c->wev) {
        event_free(c->wev);
        c->wev = NULL;
    }
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

/* ---- writing at the end of the turn ------------------------------------- */

bool px_flushq_add(struct px_flushq *q, struct px_conn *c, bool notify)
{
    if (q->flushing)
        return false;
    if (!c->flush_slot) {
        if (q->n == q->cap) {
            uint32_t cap = q->cap ? q->cap * 2 : 64;
            struct px_conn **items = realloc(q->items, cap * sizeof *items);
            if (!items)
                return false;
            q->items = items;
            q->cap = cap;
        }
        q->items[q->n++] = c;
        c->flush_slot = q->n;
    }
    c->flush_notify |= notify;
    return true;
}

void px_flushq_remove(struct px_flushq *q, struct px_conn *c)
{
    if (!c->flush_slot)
        return;
    q->items[c->flush_slot - 1] = NULL;
    c->flush_slot = 0;
    c->flush_notify = false;
}

void px_flushq_run(struct px_flushq *q)
{
    if (q->n == 0)
        return;
    q->flushing = true;
    /* Callbacks may close connections further on (their slots turn NULL),
     * but add none: while flushing, writes happen at once. */
    for (uint32_t i = 0; i < q->n; i++) {
        struct px_conn *c = q->items[i];
        if (!c)
            continue;
        q->items[i] = NULL;
        c->flush_slot = 0;
        bool notify = c->flush_notify;
        c->flush_notify = false;
        if (px_conn_write(c) < 0 || evbuffer_get_length(c->out) > 0 || notify)
            c->on_writable(c->fd, EV_WRITE, event_get_callback_arg(&c->rev));
    }
    q->n = 0;
    q->flushing = false;
}

void px_flushq_free(struct px_flushq *q)
{
    free(q->items);
    q->items = NULL;
    q->n = q->cap = 0;
}

/* ---- splicing ------------------------------------------------------------ */

static void pipe_close(struct px_worker *w, struct px_pipe *pp)
{
    close(pp->rd);
    close(pp->wr);
    free(pp);
    w->n_pipes--;
}

struct px_pipe *px_pipe_get(struct px_worker *w, uint32_t size)
{
    struct px_pipe *pp;
    while ((pp = w->pipes)) {
        w->pipes = pp->next;
        w->n_pipes_free--;
        if (pp->size == size)
            return pp;
        pipe_close(w, pp);      /* sized before a reload changed pipe_size */
    }
    if (w->n_pipes >= PX_PIPES_MAX || !(pp = calloc(1, sizeof *pp)))
        return NULL;
    int fds[2];
    if (pipe2(fds, O_NONBLOCK | O_CLOEXEC) < 0) {
        free(pp);
        return NULL;
    }
    pp->rd = fds[0];
    pp->wr = fds[1];
    pp->size = size;
    int cap = fcntl(pp->wr, F_SETPIPE_SZ, (int)size);
    if (cap < 0)
        cap = fcntl(pp->wr, F_GETPIPE_SZ);
    pp->cap = cap > 0 ? (size_t)cap : 65536;
    w->n_pipes++;
    return pp;
}

void px_pipe_put(struct px_worker *w, struct px_pipe *pp)
{
    if (pp->len > 0 || w->n_pipes_free >= PX_PIPES_FREE_MAX) {
        pipe_close(w, pp);
        return;
    }
    pp->full = false;
    pp->next = w->pipes;
    w->pipes = pp;
    w->n_pipes_free++;
}

void px_pipe_pool_free(struct px_worker *w)
{
    struct px_pipe *pp;
    while ((pp = w->pipes)) {
        w->pipes = pp->next;
        pipe_close(w, pp);
    }
    w->n_pipes_free = 0;
}

int px_pipe_fill(struct px_pipe *pp, int fd, size_t max)
{
    size_t room = pp->cap > pp->len ? pp->cap - pp->len : 0;
    size_t want = max < room ? max : room;
    if (want == 0) {
        pp->full = true;
        return 1;
    }
    ssize_t n;
    do {
        n = splice(fd, NULL, pp->wr, NULL, want, SPLICE_F_MOVE | SPLICE_F_NONBLOCK);
    } while (n < 0 && errno == EINTR);
    if (n > 0) {
        pp->len += (size_t)n;
        return 1;
    }
    if (n == 0)
        return 0;
    if (errno == EAGAIN || errno == EWOULDBLOCK) {
        /* Either the socket is empty or the pipe ran out of slots (socket
         * data fills pages partly): with bytes waiting, assume the latter,
         * or a level-triggered read event would spin. Draining clears it. */
        if (pp->len == 0)
            return -2;
        pp->full = true;
        return 1;
    }
    return -1;
}

int px_pipe_drain(struct px_pipe *pp, int fd)
{
    while (pp->len > 0) {
        ssize_t n = splice(pp->rd, NULL, fd, NULL, pp->len,
                           SPLICE_F_MOVE | SPLICE_F_NONBLOCK);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            if (errno == EAGAIN || errno == EWOULDBLOCK)
                return 0;
            return -1;
        }
        if (n == 0)
            return 0;
        pp->len -= (size_t)n;
        pp->full = false;
    }
    return 0;
}
