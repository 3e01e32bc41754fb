/*
 * sha.h - the three digests sb-backend needs: SHA-256 for /sha256 (proof that
 * a body crossed the proxy intact), SHA-1 and base64 for the WebSocket
 * handshake (Sec-WebSocket-Accept). Small, portable, no dependencies; not for
 * anything secret. The caller owns every context; nothing is allocated.
 */
#ifndef SB_BACKEND_SHA_H
#define SB_BACKEND_SHA_H

#include <stddef.h>
#include <stdint.h>

#define SHA256_DIGEST_LEN 32
#define SHA1_DIGEST_LEN   20

struct sha256 {
    uint32_t state[8];
    uint64_t total;         /* bytes hashed so far */
    uint8_t  block[64];
    size_t   used;          /* bytes waiting in block */
};

struct sha1 {
    uint32_t state[5];
    uint64_t total;
    uint8_t  block[64];
    size_t   used;
};

void sha256_init(struct sha256 *ctx);
void sha256_update(struct sha256 *ctx, const void *data, size_t len);
void sha256_final(struct sha256 *ctx, uint8_t out[SHA256_DIGEST_LEN]);

void sha1_init(struct sha1 *ctx);
void sha1_update(struct sha1 *ctx, const void *data, size_t len);
void sha1_final(struct sha1 *ctx, uint8_t out[SHA1_DIGEST_LEN]);

/* Standard alphabet with padding. `out` needs 4 * ((len + 2) / 3) + 1 bytes;
 * it is NUL-terminated. Returns the length without the NUL. */
size_t base64_encode(const uint8_t *in, size_t len, char *out);

/* Lower-case hex; `out` needs 2 * len + 1 bytes. */
void hex_encode(const uint8_t *in, size_t len, char *out);

#endif
