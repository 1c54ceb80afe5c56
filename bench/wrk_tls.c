/* LD_PRELOAD shim for wrk's TLS runs in bench/compare.sh (see bench/README.md, "TLS").
 *
 * wrk keeps one SSL object per connection and calls SSL_clear + SSL_connect on it to
 * reconnect, so with `Connection: close` every new connection offers the previous
 * session and is RESUMED (abbreviated handshake, no certificate signature). This shim
 * wraps SSL_connect to:
 *
 *   WRK_TLS_NO_RESUME=1  drop the session before each new handshake (SSL_set_session
 *                        NULL), so every connection makes a FULL handshake;
 *   WRK_TLS_STATS=FILE   count the handshakes (full / resumed) and write them, with the
 *                        protocol, cipher and key-exchange group of the last one, to
 *                        FILE when wrk exits: what was really negotiated, per run.
 *
 * Build: cc -O2 -shared -fPIC -o wrk_tls.so bench/wrk_tls.c -ldl -lssl
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <openssl/ssl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static unsigned long full, resumed;
static char proto[32], cipher[64], group[32];

int SSL_connect(SSL *s) {
    static int (*real)(SSL *);
    if (!real) real = (int (*)(SSL *))dlsym(RTLD_NEXT, "SSL_connect");
    /* wrk calls SSL_connect again while a non-blocking handshake is in progress: only
     * touch the object before the handshake starts. */
    if (SSL_in_before(s)) {
        const char *nr = getenv("WRK_TLS_NO_RESUME");
        if (nr && strcmp(nr, "1") == 0) SSL_set_session(s, NULL);
    }
    int r = real(s);
    if (r == 1) {
        if (SSL_session_reused(s)) resumed++; else full++;
        snprintf(proto, sizeof proto, "%s", SSL_get_version(s));
        snprintf(cipher, sizeof cipher, "%s", SSL_get_cipher_name(s));
        const char *g = SSL_group_to_name(s, SSL_get_negotiated_group(s));
        snprintf(group, sizeof group, "%s", g ? g : "?");
    }
    return r;
}

__attribute__((destructor)) static void report(void) {
    const char *path = getenv("WRK_TLS_STATS");
    if (!path) return;
    FILE *f = fopen(path, "w");
    if (!f) return;
    fprintf(f, "%lu\t%lu\t%s\t%s\t%s\n", full, resumed, proto, cipher, group);
    fclose(f);
}
