/* golden_types.h - the shapes of the golden vectors that golden_gen.h (generated from
 * firmware/protocol/messages.toml by firmware/protocol/generate.py) fills in, for test_codec.c. */
#ifndef GOLDEN_TYPES_H
#define GOLDEN_TYPES_H

#include <stdint.h>

typedef struct {
    const char *name;
    uint8_t seq, type;
    const uint8_t *payload;
    uint8_t payload_len;
    const uint8_t *wire; /* COBS-encoded frame and its 0x00 delimiter */
    uint16_t wire_len;
} golden_frame_t;

typedef struct {
    uint8_t frame; /* index into golden_frames */
    const void *expect;
    uint8_t (*pack)(const void *m, uint8_t *buf);
    int8_t (*unpack)(const uint8_t *buf, uint8_t len, void *m);
} golden_message_t;

typedef struct {
    const char *name;
    const uint8_t *decoded;
    uint16_t decoded_len;
    const uint8_t *encoded;
    uint16_t encoded_len;
} golden_cobs_t;

enum { GOLDEN_COUNTER_NONE, GOLDEN_COUNTER_CRC, GOLDEN_COUNTER_FRAMING, GOLDEN_COUNTER_OVERFLOW };

typedef struct {
    const char *name;
    const uint8_t *wire;
    uint16_t wire_len;
    const char *error; /* empty, cobs, short, long or crc */
    uint8_t counter;   /* the decoder counter it bumps */
} golden_invalid_t;

#endif /* GOLDEN_TYPES_H */
