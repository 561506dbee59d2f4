/* cli_pull.c -- `qkvd pull URL [-o FILE] [--sha256 HEX]`: download a model.
 *
 * The bytes go to FILE.part; only a complete (and, with --sha256, verified)
 * download is renamed to FILE, so FILE is never half-written. A FILE.part left
 * by an interrupted run is resumed with an HTTP Range request; a server that
 * ignores Range (200 instead of 206) makes us start over, and a 416 tells us
 * whether the part is already complete or is stale. Transient failures
 * (dropped connection, timeouts, 408/429/5xx) are retried, resuming each time.
 * On a terminal a progress bar is drawn on stderr. */
#include "cli.h"
#include "sha256.h"

#include <curl/curl.h>
#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <libgen.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

typedef struct pull_state {
    const char *url;
    int fd;                 /* FILE.part, opened for append */
    int64_t have;           /* bytes in FILE.part (all hashed into sha) */
    sha256_ctx sha;
    int check_sha;
    /* The current response, reset at every status line (redirects included). */
    long status;
    int64_t content_length; /* -1: unknown */
    int64_t cr_start;       /* Content-Range first byte, -1: none */
    int64_t cr_total;       /* Content-Range total, -1: unknown or '*' */
    int body_started;       /* first body byte of this response seen */
    int64_t expect_total;   /* total size of the file once known, else -1 */
    char errbody[200];      /* start of an error response body, for the message */
    size_t errlen;
    char err[512];          /* our own reason to abort the transfer */
    /* progress */
    int tty;
    double t_start, t_drawn;
    int line_open;           /* a progress line is on screen without its newline */
    int64_t run_start_bytes; /* have when this run started (for the rate) */
} pull_state;

static double pull_now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

static void pull_usage(FILE *to) {
    fprintf(to,
            "usage: qkvd pull URL [-o FILE] [--sha256 HEX] [--retries N] [--force] [-q]\n"
            "  -o, --output FILE  where to save (default: the last path segment of URL)\n"
            "  --sha256 HEX       expected SHA-256 of the file; a mismatch deletes the download\n"
            "  --retries N        attempts after a transient failure, resuming each time (default 5)\n"
            "  --force            download again even if FILE exists\n"
            "  -q, --quiet        no progress bar\n"
            "A partial download is kept as FILE.part and resumed by the next run (HTTP Range).\n");
}

static void pull_human(double b, char *buf, size_t n) {
    const char *u[] = {"B", "KiB", "MiB", "GiB", "TiB"};
    int i = 0;
    while (b >= 1024 && i < 4) { b /= 1024; i++; }
    snprintf(buf, n, i ? "%.1f %s" : "%.0f %s", b, u[i]);
}

/* Draw "[#####.....]  45%  12.0 MiB / 27.0 MiB  3.1 MiB/s  ETA 0:05" on stderr. */
static void pull_draw(pull_state *s, int final) {
    double now = pull_now();
    if (!final && now - s->t_drawn < 0.1) return;
    s->t_drawn = now;
    double el = now - s->t_start;
    double rate = el > 0 ? (double)(s->have - s->run_start_bytes) / el : 0;
    char have[32], total[32], rs[32], eta[32] = "";
    pull_human((double)s->have, have, sizeof have);
    pull_human(rate, rs, sizeof rs);
    const int width = 30;
    char bar[width + 1];
    if (s->expect_total > 0) {
        double f = (double)s->have / (double)s->expect_total;
        if (f > 1) f = 1;
        int fill = (int)(f * width);
        for (int i = 0; i < width; i++) bar[i] = i < fill ? '#' : '.';
        bar[width] = 0;
        pull_human((double)s->expect_total, total, sizeof total);
        if (rate > 0 && !final) {
            long left = (long)((double)(s->expect_total - s->have) / rate);
            snprintf(eta, sizeof eta, "  ETA %ld:%02ld", left / 60, left % 60);
        }
        fprintf(stderr, "\r[%s] %3d%%  %s / %s  %s/s%s\033[K", bar, (int)(f * 100), have, total, rs, eta);
    } else {
        fprintf(stderr, "\r%s  %s/s\033[K", have, rs);
    }
    s->line_open = !final;
    if (final) fputc('\n', stderr);
    fflush(stderr);
}

static int64_t pull_parse_i64(const char *p, const char **end) {
    int64_t v = 0;
    const char *q = p;
    while (isdigit((unsigned char)*q)) {
        if (v > (INT64_MAX - 9) / 10) break;
        v = v * 10 + (*q++ - '0');
    }
    *end = q;
    return q == p ? -1 : v;
}

/* Header callback: the status line starts a new response (a redirect is
 * followed by another one); Content-Length and Content-Range are noted. */
static size_t pull_on_header(char *buf, size_t size, size_t n, void *user) {
    pull_state *s = user;
    size_t len = size * n;
    char line[256];
    size_t k = len < sizeof line - 1 ? len : sizeof line - 1;
    memcpy(line, buf, k);
    line[k] = 0;
    if (!strncmp(line, "HTTP/", 5)) {
        const char *p = strchr(line, ' ');
        s->status = p ? strtol(p + 1, NULL, 10) : 0;
        s->content_length = -1;
        s->cr_start = s->cr_total = -1;
        s->body_started = 0;
        s->errlen = 0;
    } else if (!strncasecmp(line, "content-length:", 15)) {
        const char *p = line + 15, *e;
        while (*p == ' ' || *p == '\t') p++;
        s->content_length = pull_parse_i64(p, &e);
    } else if (!strncasecmp(line, "content-range:", 14)) {
        /* "bytes START-END/TOTAL", or "bytes *\/TOTAL" on a 416 */
        const char *p = line + 14, *e;
        while (*p == ' ' || *p == '\t') p++;
        if (!strncasecmp(p, "bytes", 5)) p += 5;
        while (*p == ' ') p++;
        if (*p == '*') p++;
        else {
            s->cr_start = pull_parse_i64(p, &e);
            p = e;
            if (*p == '-') pull_parse_i64(p + 1, &p);
        }
        if (*p == '/') s->cr_total = pull_parse_i64(p + 1, &e);
    }
    return len;
}

static int pull_truncate(pull_state *s) {
    if (ftruncate(s->fd, 0) || lseek(s->fd, 0, SEEK_SET) < 0) return -1;
    s->have = 0;
    sha256_init(&s->sha);
    return 0;
}

/* Body callback. The first bytes of a response decide what they are: 206 at
 * our offset is appended, 200 replaces the part (the server ignored Range),
 * anything else is an error whose body start we keep for the message. */
static size_t pull_on_body(char *buf, size_t size, size_t n, void *user) {
    pull_state *s = user;
    size_t len = size * n;
    if (s->status >= 300 && s->status < 400) return len; /* redirect body */
    if (s->status != 200 && s->status != 206) {
        size_t k = sizeof s->errbody - 1 - s->errlen;
        if (k > len) k = len;
        memcpy(s->errbody + s->errlen, buf, k);
        s->errlen += k;
        s->errbody[s->errlen] = 0;
        return len;
    }
    if (!s->body_started) {
        s->body_started = 1;
        if (s->status == 206) {
            if (s->cr_start != s->have) {
                snprintf(s->err, sizeof s->err, "server resumed at byte %lld, but %lld bytes are on disk",
                         (long long)s->cr_start, (long long)s->have);
                return 0;
            }
            if (s->cr_total >= 0) s->expect_total = s->cr_total;
        } else {
            if (s->have > 0) {
                fprintf(stderr, "qkvd pull: the server does not resume (no Range support); starting over\n");
                if (pull_truncate(s)) {
                    snprintf(s->err, sizeof s->err, "cannot truncate the partial file: %s", strerror(errno));
                    return 0;
                }
            }
            s->expect_total = s->content_length;
        }
    }
    for (size_t off = 0; off < len;) {
        ssize_t w = write(s->fd, buf + off, len - off);
        if (w < 0) {
            if (errno == EINTR) continue;
            snprintf(s->err, sizeof s->err, "write failed: %s", strerror(errno));
            return 0;
        }
        off += (size_t)w;
    }
    if (s->check_sha) sha256_update(&s->sha, buf, len);
    s->have += (int64_t)len;
    if (s->tty) pull_draw(s, 0);
    return len;
}

/* Hash what is already in the part file, so a resumed download is checked
 * end to end. */
static int pull_hash_existing(pull_state *s) {
    static uint8_t buf[1 << 16];
    if (lseek(s->fd, 0, SEEK_SET) < 0) return -1;
    int64_t left = s->have;
    while (left > 0) {
        ssize_t r = read(s->fd, buf, left < (int64_t)sizeof buf ? (size_t)left : sizeof buf);
        if (r < 0 && errno == EINTR) continue;
        if (r <= 0) return -1;
        sha256_update(&s->sha, buf, (size_t)r);
        left -= r;
    }
    return lseek(s->fd, 0, SEEK_END) < 0 ? -1 : 0;
}

static int pull_hash_file(const char *path, char hex[65]) {
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return -1;
    static uint8_t buf[1 << 16];
    sha256_ctx c;
    sha256_init(&c);
    ssize_t r;
    while ((r = read(fd, buf, sizeof buf)) != 0) {
        if (r < 0) {
            if (errno == EINTR) continue;
            close(fd);
            return -1;
        }
        sha256_update(&c, buf, (size_t)r);
    }
    close(fd);
    uint8_t d[32];
    sha256_final(&c, d);
    sha256_hex(d, hex);
    return 0;
}

/* Default output name: the URL's last path segment without query/fragment. */
static int pull_default_name(const char *url, char *out, size_t cap) {
    const char *p = strstr(url, "://");
    p = p ? p + 3 : url;
    const char *path = strchr(p, '/');
    if (!path) return -1;
    size_t end = strcspn(path, "?#");
    const char *seg = path;
    for (size_t i = 0; i < end; i++)
        if (path[i] == '/') seg = path + i + 1;
    size_t n = (size_t)(path + end - seg);
    if (n == 0 || n >= cap || (n <= 2 && seg[0] == '.')) return -1;
    memcpy(out, seg, n);
    out[n] = 0;
    return 0;
}

static int pull_transient_status(long st) {
    return st == 408 || st == 429 || st >= 500;
}

/* fsync the directory holding path so the rename survives a crash. */
static void pull_sync_dir(const char *path) {
    char tmp[4096];
    snprintf(tmp, sizeof tmp, "%s", path);
    int fd = open(dirname(tmp), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd >= 0) {
        fsync(fd);
        close(fd);
    }
}

int cli_pull(int argc, char **argv) {
    const char *url = NULL, *out = NULL, *want_sha = NULL;
    int retries = 5, force = 0, quiet = 0;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "-h") || !strcmp(a, "--help")) { pull_usage(stdout); return 0; }
        if (!strcmp(a, "--force")) { force = 1; continue; }
        if (!strcmp(a, "-q") || !strcmp(a, "--quiet")) { quiet = 1; continue; }
        if (!strcmp(a, "-o") || !strcmp(a, "--output") || !strcmp(a, "--sha256") || !strcmp(a, "--retries")) {
            if (i + 1 >= argc) {
                fprintf(stderr, "qkvd pull: option '%s' needs a value\n", a);
                return 2;
            }
            const char *v = argv[++i];
            if (a[1] == 'o' || !strcmp(a, "--output")) out = v;
            else if (!strcmp(a, "--sha256")) want_sha = v;
            else {
                char *end;
                long r = strtol(v, &end, 10);
                if (*end || end == v || r < 0 || r > 1000) {
                    fprintf(stderr, "qkvd pull: --retries expects an integer in [0, 1000], got '%s'\n", v);
                    return 2;
                }
                retries = (int)r;
            }
            continue;
        }
        if (a[0] == '-' && a[1]) {
            fprintf(stderr, "qkvd pull: unknown option '%s'\n", a);
            pull_usage(stderr);
            return 2;
        }
        if (url) {
            fprintf(stderr, "qkvd pull: one URL at a time (got '%s' and '%s')\n", url, a);
            return 2;
        }
        url = a;
    }
    if (!url) {
        fprintf(stderr, "qkvd pull: missing URL\n");
        pull_usage(stderr);
        return 2;
    }
    if (strncasecmp(url, "http://", 7) && strncasecmp(url, "https://", 8)) {
        fprintf(stderr, "qkvd pull: URL must start with http:// or https://, got '%s'\n", url);
        return 2;
    }
    char want_hex[65] = "";
    if (want_sha) {
        size_t n = strlen(want_sha);
        int ok = n == 64;
        for (size_t i = 0; ok && i < n; i++) ok = isxdigit((unsigned char)want_sha[i]) != 0;
        if (!ok) {
            fprintf(stderr, "qkvd pull: --sha256 expects 64 hex digits, got '%s'\n", want_sha);
            return 2;
        }
        for (size_t i = 0; i < 64; i++) want_hex[i] = (char)tolower((unsigned char)want_sha[i]);
        want_hex[64] = 0;
    }
    char name[1024];
    if (!out) {
        if (pull_default_name(url, name, sizeof name)) {
            fprintf(stderr, "qkvd pull: cannot tell a file name from '%s'; give one with -o FILE\n", url);
            return 2;
        }
        out = name;
    }
    if (strlen(out) > 4000) {
        fprintf(stderr, "qkvd pull: output path too long\n");
        return 2;
    }

    struct stat st;
    if (!force && stat(out, &st) == 0) {
        if (!want_sha) {
            fprintf(stderr, "qkvd pull: %s already exists (--force downloads it again)\n", out);
            return 0;
        }
        char hex[65];
        if (pull_hash_file(out, hex) == 0 && !strcmp(hex, want_hex)) {
            fprintf(stderr, "qkvd pull: %s already present, sha256 matches\n", out);
            return 0;
        }
        fprintf(stderr, "qkvd pull: %s exists but its sha256 differs; downloading again\n", out);
    }

    char part[4200];
    snprintf(part, sizeof part, "%s.part", out);
    pull_state s;
    memset(&s, 0, sizeof s);
    s.url = url;
    s.check_sha = want_sha != NULL;
    s.expect_total = -1;
    s.tty = !quiet && isatty(STDERR_FILENO);
    sha256_init(&s.sha);
    s.fd = open(part, O_RDWR | O_CREAT | O_CLOEXEC, 0644);
    if (s.fd < 0) {
        fprintf(stderr, "qkvd pull: cannot open %s: %s\n", part, strerror(errno));
        return 1;
    }
    /* Two pulls appending to one part file would interleave garbage. */
    if (flock(s.fd, LOCK_EX | LOCK_NB)) {
        fprintf(stderr, "qkvd pull: %s is being written by another qkvd pull\n", part);
        close(s.fd);
        return 1;
    }
    if (fstat(s.fd, &st) || lseek(s.fd, 0, SEEK_END) < 0) {
        fprintf(stderr, "qkvd pull: cannot read %s: %s\n", part, strerror(errno));
        close(s.fd);
        return 1;
    }
    s.have = st.st_size;
    if (s.have > 0) {
        fprintf(stderr, "qkvd pull: resuming %s at byte %lld\n", part, (long long)s.have);
        if (s.check_sha && pull_hash_existing(&s)) {
            fprintf(stderr, "qkvd pull: cannot read %s: %s\n", part, strerror(errno));
            close(s.fd);
            return 1;
        }
    }

    if (curl_global_init(CURL_GLOBAL_DEFAULT)) {
        fprintf(stderr, "qkvd pull: libcurl failed to initialise\n");
        close(s.fd);
        return 1;
    }
    CURL *c = curl_easy_init();
    if (!c) {
        fprintf(stderr, "qkvd pull: libcurl failed to initialise\n");
        curl_global_cleanup();
        close(s.fd);
        return 1;
    }
    char curl_err[CURL_ERROR_SIZE];
    curl_easy_setopt(c, CURLOPT_URL, url);
    curl_easy_setopt(c, CURLOPT_FOLLOWLOCATION, 1L);
    curl_easy_setopt(c, CURLOPT_MAXREDIRS, 10L);
    curl_easy_setopt(c, CURLOPT_PROTOCOLS_STR, "http,https");
    curl_easy_setopt(c, CURLOPT_REDIR_PROTOCOLS_STR, "http,https");
    curl_easy_setopt(c, CURLOPT_USERAGENT, "qkvd-pull/1");
    curl_easy_setopt(c, CURLOPT_CONNECTTIMEOUT, 30L);
    /* A stalled transfer (under 1 byte/s for 60 s) is dropped and resumed. */
    curl_easy_setopt(c, CURLOPT_LOW_SPEED_LIMIT, 1L);
    curl_easy_setopt(c, CURLOPT_LOW_SPEED_TIME, 60L);
    curl_easy_setopt(c, CURLOPT_HEADERFUNCTION, pull_on_header);
    curl_easy_setopt(c, CURLOPT_HEADERDATA, &s);
    curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, pull_on_body);
    curl_easy_setopt(c, CURLOPT_WRITEDATA, &s);
    curl_easy_setopt(c, CURLOPT_ERRORBUFFER, curl_err);

    s.t_start = pull_now();
    s.run_start_bytes = s.have;
    int rc = 1, attempt = 0, restarted = 0;
    double backoff = 0.5;
    for (;;) {
        /* CURLOPT_RANGE rather than RESUME_FROM: we judge a 200 ourselves
         * (start over) instead of libcurl failing the transfer. */
        char range[48];
        snprintf(range, sizeof range, "%lld-", (long long)s.have);
        curl_easy_setopt(c, CURLOPT_RANGE, s.have > 0 ? range : NULL);
        s.err[0] = 0;
        s.status = 0;
        curl_err[0] = 0;
        CURLcode res = curl_easy_perform(c);
        int transient = 0;
        char why[700] = "";
        if (s.err[0]) {
            snprintf(why, sizeof why, "%s", s.err);
        } else if (res != CURLE_OK) {
            snprintf(why, sizeof why, "%s", curl_err[0] ? curl_err : curl_easy_strerror(res));
            transient = res != CURLE_UNSUPPORTED_PROTOCOL && res != CURLE_URL_MALFORMAT &&
                        res != CURLE_TOO_MANY_REDIRECTS && res != CURLE_WRITE_ERROR;
        } else if (s.status == 416 && s.have > 0) {
            if (s.cr_total == s.have) {
                s.expect_total = s.have;
                rc = 0;
                break; /* the part was already complete */
            }
            if (restarted) {
                snprintf(why, sizeof why, "HTTP 416 (range not satisfiable) even from byte 0");
            } else {
                fprintf(stderr, "qkvd pull: %s (%lld bytes) does not match the remote file (%lld bytes); starting over\n",
                        part, (long long)s.have, (long long)s.cr_total);
                if (pull_truncate(&s)) {
                    snprintf(why, sizeof why, "cannot truncate the partial file: %s", strerror(errno));
                } else {
                    restarted = 1;
                    continue;
                }
            }
        } else if (s.status != 200 && s.status != 206) {
            for (size_t i = 0; i < s.errlen; i++)
                if (s.errbody[i] == '\n' || s.errbody[i] == '\r') s.errbody[i] = ' ';
            snprintf(why, sizeof why, "HTTP %ld from %s%s%s", s.status, url, s.errlen ? ": " : "", s.errbody);
            transient = pull_transient_status(s.status);
        } else if (s.expect_total >= 0 && s.have != s.expect_total) {
            snprintf(why, sizeof why, "size mismatch: have %lld bytes, the server announced %lld",
                     (long long)s.have, (long long)s.expect_total);
            transient = s.have < s.expect_total;
        } else {
            if (!s.body_started && s.status == 200 && s.have > 0) {
                /* An empty 200 replaces a non-empty part: the remote file is empty. */
                if (pull_truncate(&s)) snprintf(why, sizeof why, "cannot truncate the partial file: %s", strerror(errno));
            }
            if (!why[0]) { rc = 0; break; }
        }
        if (s.line_open) {
            fputc('\n', stderr);
            s.line_open = 0;
        }
        if (!transient || attempt >= retries) {
            fprintf(stderr, "qkvd pull: %s\n", why);
            if (s.have > 0 && transient)
                fprintf(stderr, "qkvd pull: %lld bytes kept in %s; run the same command again to resume\n",
                        (long long)s.have, part);
            break;
        }
        attempt++;
        fprintf(stderr, "qkvd pull: %s; retrying from byte %lld (attempt %d of %d)\n", why, (long long)s.have,
                attempt, retries);
        struct timespec ts = {(time_t)backoff, (long)((backoff - (time_t)backoff) * 1e9)};
        nanosleep(&ts, NULL);
        if (backoff < 8) backoff *= 2;
    }
    curl_easy_cleanup(c);
    curl_global_cleanup();

    if (rc == 0 && s.tty) pull_draw(&s, 1);
    if (rc == 0 && fsync(s.fd)) {
        fprintf(stderr, "qkvd pull: cannot flush %s: %s\n", part, strerror(errno));
        rc = 1;
    }
    if (rc == 0 && s.check_sha) {
        uint8_t d[32];
        char hex[65];
        sha256_final(&s.sha, d);
        sha256_hex(d, hex);
        if (strcmp(hex, want_hex)) {
            fprintf(stderr, "qkvd pull: checksum mismatch: sha256 of the download is %s, expected %s; deleted %s\n",
                    hex, want_hex, part);
            unlink(part);
            rc = 1;
        }
    }
    if (rc == 0 && rename(part, out)) {
        fprintf(stderr, "qkvd pull: cannot rename %s to %s: %s\n", part, out, strerror(errno));
        rc = 1;
    }
    close(s.fd);
    if (rc != 0 && s.have == 0) unlink(part); /* nothing worth resuming */
    if (rc == 0) {
        pull_sync_dir(out);
        double el = pull_now() - s.t_start;
        char sz[32], rs[32];
        pull_human((double)s.have, sz, sizeof sz);
        pull_human(el > 0 ? (double)(s.have - s.run_start_bytes) / el : 0, rs, sizeof rs);
        fprintf(stderr, "qkvd pull: saved %s (%s, %lld bytes) in %.1f s, %s/s%s\n", out, sz, (long long)s.have, el, rs,
                s.check_sha ? ", sha256 ok" : "");
    }
    return rc;
}
