/*
 * Baselines (c) and (d) of the fan-out benchmark: the machine's limits.
 *
 * One thread, one process (and, in batched mode, the producer's). Accepts on 127.0.0.1:PORT; a GET of
 * /api/v1/ws/jobs/<id>/logs?token=... with a WebSocket upgrade gets a minimal
 * RFC 6455 handshake and the logs dialect's `system` message, and joins
 * topic <id>. POST /publish?job=<id>&count=K&burst=B&rate=R answers 202 and
 * then publishes K events (bench/events.py's byte-identical text, ~150 bytes)
 * in bursts of B: each event's frame is built once, then one blocking send()
 * per event per subscriber. R is events/s on an absolute schedule (0 = flat
 * out). GET /stats answers {"subscribers": n, "publishing": 0}; GET /health 200.
 * While idle it polls subscribers and drops those that closed.
 *
 * `fanout PORT batched` (d) does what jobserver's data plane does instead: a
 * forked producer writes the events' lines ("SEQ T_NS\n") into a pipe on the
 * same schedule; the server reads the pipe (64 KiB at a time, non-blocking),
 * encodes each line read once, joins the frames of one read and gives them to
 * every subscriber in one non-blocking send(). What a socket does not take
 * goes to that subscriber's backlog (grown as needed up to MAX_BACKLOG, then
 * it is dropped), sent when poll() says it is writable, before anything newer.
 *
 * Build: cc -O2 -o fanout fanout.c      Run: fanout PORT [batched]
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define MAX_SUBS 30000
#define MAX_HEAD 8192
#define MAX_BURST 1024
#define EVENT_BYTES 150
#define FRAME_MAX (EVENT_BYTES + 64)

/* What a slow subscriber may have queued in batched mode. jobserver's outbox
   holds 2 MiB, then that subscriber catches up from the store; with no store
   here, the backlog grows (a ceiling should not lose the bench's batched
   readers), up to this, then the subscriber is dropped. */
#define MAX_BACKLOG (64 << 20)
/* Bytes per read of the producer's pipe (jobserver's pump reads as much). */
#define PIPE_READ 65536
/* The shortest line the producer writes ("S T\n", T 19 digits). */
#define MIN_LINE 22

struct sub { int fd; char job[64]; char *backlog; size_t blen, boff, bcap; };
static struct sub subs[MAX_SUBS];
static int nsubs;
static struct pollfd pfds[MAX_SUBS + 1];
static int batched;

/* ---- SHA-1 and base64, just enough for Sec-WebSocket-Accept ---------- */

#define ROL(v, n) (((v) << (n)) | ((v) >> (32 - (n))))

static void sha1_block(uint32_t h[5], const unsigned char *p) {
    uint32_t w[80], a = h[0], b = h[1], c = h[2], d = h[3], e = h[4];
    for (int i = 0; i < 16; i++)
        w[i] = (uint32_t)p[4 * i] << 24 | (uint32_t)p[4 * i + 1] << 16 |
               (uint32_t)p[4 * i + 2] << 8 | p[4 * i + 3];
    for (int i = 16; i < 80; i++) w[i] = ROL(w[i - 3] ^ w[i - 8] ^ w[i - 14] ^ w[i - 16], 1);
    for (int i = 0; i < 80; i++) {
        uint32_t f, k;
        if (i < 20) { f = (b & c) | (~b & d); k = 0x5A827999; }
        else if (i < 40) { f = b ^ c ^ d; k = 0x6ED9EBA1; }
        else if (i < 60) { f = (b & c) | (b & d) | (c & d); k = 0x8F1BBCDC; }
        else { f = b ^ c ^ d; k = 0xCA62C1D6; }
        uint32_t t = ROL(a, 5) + f + e + k + w[i];
        e = d; d = c; c = ROL(b, 30); b = a; a = t;
    }
    h[0] += a; h[1] += b; h[2] += c; h[3] += d; h[4] += e;
}

static void sha1(const unsigned char *msg, size_t len, unsigned char out[20]) {
    uint32_t h[5] = {0x67452301, 0xEFCDAB89, 0x98BADCFE, 0x10325476, 0xC3D2E1F0};
    unsigned char block[64];
    size_t i = 0;
    for (; i + 64 <= len; i += 64) sha1_block(h, msg + i);
    size_t rest = len - i;
    memset(block, 0, 64);
    memcpy(block, msg + i, rest);
    block[rest] = 0x80;
    if (rest >= 56) { sha1_block(h, block); memset(block, 0, 64); }
    uint64_t bits = (uint64_t)len * 8;
    for (int j = 0; j < 8; j++) block[63 - j] = (unsigned char)(bits >> (8 * j));
    sha1_block(h, block);
    for (int j = 0; j < 20; j++) out[j] = (unsigned char)(h[j / 4] >> (24 - 8 * (j % 4)));
}

static void base64(const unsigned char *in, int len, char *out) {
    static const char t[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    int o = 0;
    for (int i = 0; i < len; i += 3) {
        uint32_t v = (uint32_t)in[i] << 16 | (i + 1 < len ? in[i + 1] << 8 : 0) |
                     (i + 2 < len ? in[i + 2] : 0);
        out[o++] = t[v >> 18 & 63];
        out[o++] = t[v >> 12 & 63];
        out[o++] = i + 1 < len ? t[v >> 6 & 63] : '=';
        out[o++] = i + 2 < len ? t[v & 63] : '=';
    }
    out[o] = 0;
}

/* ---- events: the same bytes as bench/events.py ------------------------- */

static int64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

static void iso_ms(int64_t t_ns, char out[32]) {
    time_t secs = (time_t)(t_ns / 1000000000);
    struct tm tm;
    gmtime_r(&secs, &tm);
    size_t n = strftime(out, 32, "%Y-%m-%dT%H:%M:%S", &tm);
    snprintf(out + n, 32 - n, ".%03dZ", (int)(t_ns / 1000000 % 1000));
}

/* A text frame (server frames are unmasked) holding `text`; returns its size. */
static int frame(unsigned char *out, const char *text, int len) {
    int h = 0;
    out[h++] = 0x81;
    if (len < 126) out[h++] = (unsigned char)len;
    else { out[h++] = 126; out[h++] = (unsigned char)(len >> 8); out[h++] = (unsigned char)len; }
    memcpy(out + h, text, len);
    return h + len;
}

static int event_frame(unsigned char *out, long seq, int64_t t_ns) {
    char ts[32], text[EVENT_BYTES + 64];
    iso_ms(t_ns, ts);
    int n = snprintf(text, sizeof text,
                     "{\"type\":\"log\",\"payload\":{\"ts\":\"%s\",\"stream\":\"stdout\","
                     "\"message\":\"BENCH %ld %lld ", ts, seq, (long long)t_ns);
    while (n < EVENT_BYTES - 3) text[n++] = '.';
    memcpy(text + n, "\"}}", 3);
    return frame(out, text, n + 3);
}

/* ---- connections ------------------------------------------------------- */

static void send_all(int fd, const void *buf, size_t len) {
    const char *p = buf;
    while (len > 0) {
        ssize_t n = send(fd, p, len, MSG_NOSIGNAL);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) return;
        p += n; len -= (size_t)n;
    }
}

static void respond(int fd, const char *status, const char *body) {
    char out[512];
    int n = snprintf(out, sizeof out, "HTTP/1.1 %s\r\nContent-Type: application/json\r\n"
                     "Content-Length: %zu\r\nConnection: close\r\n\r\n%s",
                     status, strlen(body), body);
    send_all(fd, out, (size_t)n);
}

static long query_long(const char *query, const char *key, long fallback) {
    char pat[32];
    snprintf(pat, sizeof pat, "%s=", key);
    for (const char *p = query; p && *p; p = strchr(p, '&') ? strchr(p, '&') + 1 : NULL)
        if (strncmp(p, pat, strlen(pat)) == 0) return strtol(p + strlen(pat), NULL, 10);
    return fallback;
}

static double query_double(const char *query, const char *key) {
    char pat[32];
    snprintf(pat, sizeof pat, "%s=", key);
    for (const char *p = query; p && *p; p = strchr(p, '&') ? strchr(p, '&') + 1 : NULL)
        if (strncmp(p, pat, strlen(pat)) == 0) return strtod(p + strlen(pat), NULL);
    return 0.0;
}

static void query_str(const char *query, const char *key, char *out, size_t size) {
    char pat[32];
    size_t len = 0;
    snprintf(pat, sizeof pat, "%s=", key);
    out[0] = 0;
    for (const char *p = query; p && *p; p = strchr(p, '&') ? strchr(p, '&') + 1 : NULL)
        if (strncmp(p, pat, strlen(pat)) == 0) {
            p += strlen(pat);
            while (p[len] && p[len] != '&' && p[len] != ' ' && len + 1 < size) len++;
            memcpy(out, p, len);
            out[len] = 0;
            return;
        }
}

static void drop_sub(int i) {
    close(subs[i].fd);
    free(subs[i].backlog);
    subs[i] = subs[--nsubs];
}

static void publish(const char *job, long count, long burst, double rate) {
    static unsigned char frames[MAX_BURST][FRAME_MAX];
    int sizes[MAX_BURST];
    struct timespec next;
    long interval_ns = rate > 0 ? (long)(burst * 1e9 / rate) : 0;
    clock_gettime(CLOCK_MONOTONIC, &next);
    for (long start = 0; start < count; start += burst) {
        if (interval_ns) {
            clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &next, NULL);
            next.tv_nsec += interval_ns;
            next.tv_sec += next.tv_nsec / 1000000000;
            next.tv_nsec %= 1000000000;
        }
        int k = (int)(count - start < burst ? count - start : burst);
        int64_t t = now_ns();
        for (int j = 0; j < k; j++) sizes[j] = event_frame(frames[j], start + j, t);
        for (int i = 0; i < nsubs; i++) {
            if (strcmp(subs[i].job, job) != 0) continue;
            for (int j = 0; j < k; j++) {
                if (send(subs[i].fd, frames[j], (size_t)sizes[j], MSG_NOSIGNAL) < 0) {
                    drop_sub(i--);
                    break;
                }
            }
        }
    }
}

/* ---- batched mode: one send per subscriber per read, backlogs ---------- */

/* Queue `len` bytes behind `s`'s backlog; 0 when that passes MAX_BACKLOG. */
static int queue(struct sub *s, const unsigned char *data, size_t len) {
    if (s->blen - s->boff + len > MAX_BACKLOG) return 0;
    if (s->boff && s->blen + len > s->bcap) {  /* compact before growing */
        memmove(s->backlog, s->backlog + s->boff, s->blen - s->boff);
        s->blen -= s->boff;
        s->boff = 0;
    }
    if (s->blen + len > s->bcap) {
        size_t cap = s->bcap ? s->bcap : 65536;
        while (cap < s->blen + len) cap *= 2;
        char *grown = realloc(s->backlog, cap);
        if (!grown) return 0;
        s->backlog = grown;
        s->bcap = cap;
    }
    memcpy(s->backlog + s->blen, data, len);
    s->blen += len;
    return 1;
}

/* Send what `s` has queued; 0 when its connection is gone. */
static int flush_backlog(struct sub *s) {
    while (s->boff < s->blen) {
        ssize_t n = send(s->fd, s->backlog + s->boff, s->blen - s->boff,
                         MSG_DONTWAIT | MSG_NOSIGNAL);
        if (n < 0) return errno == EAGAIN || errno == EINTR;
        s->boff += (size_t)n;
    }
    s->boff = s->blen = 0;
    return 1;
}

/* One read's frames to every subscriber of `job`: one send each, or queued. */
static void deliver(const char *job, const unsigned char *data, size_t len) {
    for (int i = 0; i < nsubs; i++) {
        struct sub *s = &subs[i];
        if (strcmp(s->job, job) != 0) continue;
        size_t sent = 0;
        if (s->blen == s->boff) {
            ssize_t n = send(s->fd, data, len, MSG_DONTWAIT | MSG_NOSIGNAL);
            if (n < 0 && errno != EAGAIN && errno != EINTR) { drop_sub(i--); continue; }
            sent = n < 0 ? 0 : (size_t)n;
        }
        if (sent < len && !queue(s, data + sent, len - sent)) drop_sub(i--);
    }
}

/* The producer: the events' lines on the publish schedule, then exit. */
static void produce(int wfd, long count, long burst, double rate) {
    static char lines[MAX_BURST * 48];
    struct timespec next;
    long interval_ns = rate > 0 ? (long)(burst * 1e9 / rate) : 0;
    clock_gettime(CLOCK_MONOTONIC, &next);
    for (long start = 0; start < count; start += burst) {
        if (interval_ns) {
            clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &next, NULL);
            next.tv_nsec += interval_ns;
            next.tv_sec += next.tv_nsec / 1000000000;
            next.tv_nsec %= 1000000000;
        }
        int k = (int)(count - start < burst ? count - start : burst), n = 0;
        int64_t t = now_ns();
        for (int j = 0; j < k; j++)
            n += snprintf(lines + n, sizeof lines - (size_t)n, "%ld %lld\n", start + j,
                          (long long)t);
        for (char *p = lines; n > 0;) {
            ssize_t w = write(wfd, p, (size_t)n);
            if (w < 0 && errno == EINTR) continue;
            if (w <= 0) _exit(1);
            p += w; n -= (int)w;
        }
    }
    _exit(0);
}

static void publish_batched(const char *job, long count, long burst, double rate) {
    static char in[PIPE_READ + 64];
    static unsigned char out[(PIPE_READ / MIN_LINE + 2) * FRAME_MAX];
    static int index_of[MAX_SUBS + 1];
    int p[2];
    if (pipe2(p, O_CLOEXEC) < 0) return;
    pid_t pid = fork();
    if (pid < 0) { close(p[0]); close(p[1]); return; }
    if (pid == 0) { close(p[0]); produce(p[1], count, burst, rate); }
    close(p[1]);
    fcntl(p[0], F_SETFL, O_NONBLOCK);
    size_t have = 0;
    int open_pipe = 1;
    for (;;) {
        int n = 0;
        if (open_pipe) pfds[n++] = (struct pollfd){.fd = p[0], .events = POLLIN};
        for (int i = 0; i < nsubs; i++)
            if (subs[i].blen > subs[i].boff) {
                index_of[n] = i;
                pfds[n++] = (struct pollfd){.fd = subs[i].fd, .events = POLLOUT};
            }
        if (n == 0) break;  /* the producer is done and every backlog sent */
        int ready = poll(pfds, (nfds_t)n, 5000);
        if (ready < 0 && errno == EINTR) continue;
        if (ready <= 0) break;  /* a stalled subscriber: its backlog stays */
        /* Backlogs first (walking down: drop_sub moves the last into the hole). */
        for (int k = n - 1; k >= open_pipe; k--)
            if (pfds[k].revents && !flush_backlog(&subs[index_of[k]])) drop_sub(index_of[k]);
        if (!open_pipe || !pfds[0].revents) continue;
        ssize_t got = read(p[0], in + have, PIPE_READ - have);
        if (got < 0 && (errno == EAGAIN || errno == EINTR)) continue;
        if (got <= 0) { open_pipe = 0; continue; }
        have += (size_t)got;
        size_t olen = 0, used = 0;
        for (;;) {  /* each whole line read, encoded once */
            char *nl = memchr(in + used, '\n', have - used);
            if (!nl) break;
            *nl = 0;
            long seq;
            long long t;
            if (sscanf(in + used, "%ld %lld", &seq, &t) == 2)
                olen += (size_t)event_frame(out + olen, seq, (int64_t)t);
            used = (size_t)(nl - in) + 1;
        }
        memmove(in, in + used, have - used);
        have -= used;
        if (olen) deliver(job, out, olen);
    }
    close(p[0]);
    waitpid(pid, NULL, 0);
}

static void upgrade(int fd, const char *head, const char *path) {
    const char *key = strcasestr(head, "\r\nSec-WebSocket-Key:");
    if (!key || nsubs >= MAX_SUBS) { respond(fd, "400 Bad Request", "{}"); close(fd); return; }
    key += strlen("\r\nSec-WebSocket-Key:");
    while (*key == ' ') key++;
    char material[128];
    int klen = (int)strcspn(key, "\r\n ");
    if (klen > 60) klen = 60;
    snprintf(material, sizeof material, "%.*s258EAFA5-E914-47DA-95CA-C5AB0DC85B11", klen, key);
    unsigned char digest[20];
    char accept[32], out[256], text[256];
    sha1((unsigned char *)material, strlen(material), digest);
    base64(digest, 20, accept);
    int n = snprintf(out, sizeof out, "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                     "Connection: Upgrade\r\nSec-WebSocket-Accept: %s\r\n\r\n", accept);
    send_all(fd, out, (size_t)n);
    struct sub *s = &subs[nsubs++];
    *s = (struct sub){.fd = fd};
    const char *id = path + strlen("/api/v1/ws/jobs/");
    size_t idlen = strcspn(id, "/? ");
    if (idlen >= sizeof s->job) idlen = sizeof s->job - 1;
    memcpy(s->job, id, idlen);
    s->job[idlen] = 0;
    char ts[32];
    iso_ms(now_ns(), ts);
    int tlen = snprintf(text, sizeof text, "{\"type\":\"system\",\"payload\":{\"message\":\"Log "
                        "streaming started.\",\"job_id\":\"%s\",\"ts\":\"%s\"}}", s->job, ts);
    unsigned char buf[300];
    send_all(fd, buf, (size_t)frame(buf, text, tlen));
    if (batched) fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK);
}

static void serve_one(int fd) {
    char head[MAX_HEAD + 1];
    size_t len = 0;
    struct timeval tv = {2, 0};
    int one = 1;
    fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) & ~O_NONBLOCK);
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    while (len < MAX_HEAD) {
        ssize_t n = recv(fd, head + len, MAX_HEAD - len, 0);
        if (n <= 0) { close(fd); return; }
        len += (size_t)n;
        head[len] = 0;
        if (strstr(head, "\r\n\r\n")) break;
    }
    char method[8] = "", path[2048] = "";
    sscanf(head, "%7s %2047s", method, path);
    char *query = strchr(path, '?');
    if (strncmp(path, "/api/v1/ws/jobs/", 16) == 0 && strcmp(method, "GET") == 0) {
        upgrade(fd, head, path);
        return;
    }
    if (strcmp(method, "POST") == 0 && strncmp(path, "/publish", 8) == 0 && query) {
        char job[64];
        query_str(query + 1, "job", job, sizeof job);
        long count = query_long(query + 1, "count", 0);
        long burst = query_long(query + 1, "burst", 1);
        double rate = query_double(query + 1, "rate");
        if (burst < 1) burst = 1;
        if (burst > MAX_BURST) burst = MAX_BURST;
        respond(fd, "202 Accepted", "{\"publishing\":1}");
        close(fd);
        if (batched) publish_batched(job, count, burst, rate);
        else publish(job, count, burst, rate);
        return;
    }
    if (strcmp(path, "/stats") == 0) {
        char body[96];
        snprintf(body, sizeof body, "{\"subscribers\":%d,\"publishing\":0}", nsubs);
        respond(fd, "200 OK", body);
    } else if (strcmp(path, "/health") == 0) {
        respond(fd, "200 OK", "{}");
    } else {
        respond(fd, "404 Not Found", "{}");
    }
    close(fd);
}

int main(int argc, char **argv) {
    if (argc < 2 || argc > 3 || (argc == 3 && strcmp(argv[2], "batched") != 0)) {
        fprintf(stderr, "usage: fanout PORT [batched]\n");
        return 2;
    }
    batched = argc == 3;
    signal(SIGPIPE, SIG_IGN);
    int lfd = socket(AF_INET, SOCK_STREAM, 0), one = 1;
    setsockopt(lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    struct sockaddr_in addr = {.sin_family = AF_INET, .sin_port = htons((uint16_t)atoi(argv[1]))};
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (bind(lfd, (struct sockaddr *)&addr, sizeof addr) < 0 || listen(lfd, 4096) < 0) {
        perror("fanout: listen");
        return 1;
    }
    fcntl(lfd, F_SETFL, O_NONBLOCK);
    for (;;) {
        pfds[0] = (struct pollfd){.fd = lfd, .events = POLLIN};
        for (int i = 0; i < nsubs; i++) pfds[i + 1] = (struct pollfd){.fd = subs[i].fd,
                                                                     .events = POLLIN};
        int watched = nsubs;
        if (poll(pfds, (nfds_t)watched + 1, 1000) < 0 && errno != EINTR) return 1;
        /* Walk backwards: drop_sub moves the last subscriber into the hole. */
        for (int i = watched - 1; i >= 0; i--) {
            if (!pfds[i + 1].revents) continue;
            char sink[4096];
            ssize_t n = recv(subs[i].fd, sink, sizeof sink, MSG_DONTWAIT);
            if (n == 0 || (n < 0 && errno != EAGAIN && errno != EINTR)) drop_sub(i);
        }
        if (pfds[0].revents & POLLIN) {
            int fd;
            while ((fd = accept(lfd, NULL, NULL)) >= 0) serve_one(fd);
        }
    }
}
