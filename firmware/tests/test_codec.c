/* Host test of the C codec against the golden vectors made by the Python codec.
 *
 * gcc -std=c99 -Wall -Wextra -Werror -Ifirmware/src -Ifirmware/tests \
 *     firmware/src/framing.c firmware/tests/test_codec.c -o test_codec && ./test_codec
 *
 * Exits 1 and names every failed check; tests/unit/test_serial_codec.py runs it.
 */
#include <stdio.h>
#include <string.h>

#include "framing.h"
#include "golden_gen.h"
#include "protocol_gen.h"

static unsigned checks, failures;

#define CHECK(cond, name, what)                                                       \
    do {                                                                              \
        checks++;                                                                     \
        if (!(cond)) {                                                                \
            failures++;                                                               \
            printf("FAIL %s: %s (%s:%d)\n", (name), (what), __FILE__, __LINE__);      \
        }                                                                             \
    } while (0)

static int same_frame(const frame_t *f, const golden_frame_t *g)
{
    return f->seq == g->seq && f->type == g->type && f->len == g->payload_len &&
           memcmp(f->payload, g->payload, g->payload_len) == 0;
}

/* Push bytes; returns how many frames came out, the last one in *out. */
static int push_all(frame_decoder_t *d, const uint8_t *data, uint16_t len, frame_t *out)
{
    frame_t frame;
    uint16_t i;
    int found = 0;

    for (i = 0; i < len; i++) {
        if (frame_decoder_push(d, data[i], &frame)) {
            *out = frame;
            found++;
        }
    }
    return found;
}

static void test_crc(void)
{
    static const uint8_t check[] = "123456789";
    uint16_t crc = CRC16_CCITT_INIT;
    uint8_t i;

    CHECK(crc16_ccitt(check, 9) == 0x29B1, "crc", "check value of \"123456789\"");
    for (i = 0; i < 9; i++) {
        crc = crc16_ccitt_update(crc, check[i]);
    }
    CHECK(crc == 0x29B1, "crc", "incremental update");
    CHECK(PROTOCOL_HASH == GOLDEN_PROTOCOL_HASH, "protocol_hash", "golden vs protocol_gen.h");
}

static void test_cobs(void)
{
    uint8_t out[COBS_ENCODED_MAX(COBS_MAX_INPUT) + 1], in[COBS_MAX_INPUT + 1];
    unsigned i;

    for (i = 0; i < GOLDEN_COBS_COUNT; i++) {
        const golden_cobs_t *g = &golden_cobs[i];
        uint8_t n = cobs_encode(g->decoded, (uint8_t)g->decoded_len, out);
        CHECK(n == g->encoded_len && memcmp(out, g->encoded, n) == 0, g->name, "cobs_encode");
        CHECK(cobs_decode(g->encoded, (uint8_t)g->encoded_len, out) == (int16_t)g->decoded_len &&
                  memcmp(out, g->decoded, g->decoded_len) == 0,
              g->name, "cobs_decode");
    }
    memset(in, 1, sizeof in);
    CHECK(cobs_encode(in, COBS_MAX_INPUT + 1, out) == 0, "cobs", "refuses 255 input bytes");
    CHECK(cobs_decode(in, 0, out) == -1, "cobs", "empty input is not an encoding");
}

static void test_frame(const golden_frame_t *g)
{
    static const uint8_t garbage[] = {0x13, 0x37, 0xFF, 0x02};
    uint8_t wire[FRAME_WIRE_MAX], bad[FRAME_WIRE_MAX];
    frame_decoder_t d;
    frame_t f;
    uint8_t n = frame_encode(g->seq, g->type, g->payload, g->payload_len, wire);
    uint16_t i;

    CHECK(n == g->wire_len && memcmp(wire, g->wire, n) == 0, g->name, "frame_encode == wire");
    CHECK(frame_decode(g->wire, (uint8_t)(g->wire_len - 1), &f) == FRAME_OK && same_frame(&f, g),
          g->name, "frame_decode");

    frame_decoder_init(&d);
    CHECK(push_all(&d, g->wire, g->wire_len, &f) == 1 && same_frame(&f, g) && d.frames == 1,
          g->name, "stream decoder");

    /* A corrupted frame, then garbage without a delimiter, then the frame. */
    memcpy(bad, g->wire, g->wire_len);
    bad[2] = (uint8_t)(bad[2] ^ (bad[2] == 0x10 ? 0x20 : 0x10));
    frame_decoder_init(&d);
    CHECK(push_all(&d, bad, g->wire_len, &f) == 0, g->name, "corrupted frame is dropped");
    CHECK(push_all(&d, garbage, sizeof garbage, &f) == 0, g->name, "garbage alone");
    CHECK(push_all(&d, g->wire, g->wire_len, &f) == 1 && same_frame(&f, g), g->name,
          "frame after a corrupted frame and garbage");
    CHECK(d.crc_errors + d.framing_errors + d.overflows == 2 && d.frames == 1, g->name,
          "counters after garbage");

    /* A run longer than any frame, then the frame: one overflow, and the frame survives. */
    frame_decoder_init(&d);
    for (i = 0; i < 2 * FRAME_ENCODED_MAX; i++) {
        frame_decoder_push(&d, 0x41, &f);
    }
    CHECK(push_all(&d, g->wire, g->wire_len, &f) == 1 && same_frame(&f, g) && d.overflows == 1,
          g->name, "frame after an overflow");
}

static int8_t error_code(const char *name)
{
    static const char *const names[] = {"empty", "cobs", "short", "long", "crc"};
    static const int8_t codes[] = {FRAME_ERR_EMPTY, FRAME_ERR_COBS, FRAME_ERR_SHORT,
                                   FRAME_ERR_LONG, FRAME_ERR_CRC};
    unsigned i;

    for (i = 0; i < sizeof codes; i++) {
        if (strcmp(names[i], name) == 0) {
            return codes[i];
        }
    }
    return FRAME_OK;
}

static void test_invalid(const golden_invalid_t *g)
{
    frame_decoder_t d;
    frame_t f;
    uint16_t len = (uint16_t)(g->wire_len - 1);
    int8_t got = len > 255 ? FRAME_ERR_LONG : frame_decode(g->wire, (uint8_t)len, &f);

    CHECK(got == error_code(g->error), g->name, g->error);
    frame_decoder_init(&d);
    CHECK(push_all(&d, g->wire, g->wire_len, &f) == 0 && d.frames == 0, g->name, "no frame");
    CHECK(d.crc_errors == (g->counter == GOLDEN_COUNTER_CRC), g->name, "crc_errors");
    CHECK(d.framing_errors == (g->counter == GOLDEN_COUNTER_FRAMING), g->name, "framing_errors");
    CHECK(d.overflows == (g->counter == GOLDEN_COUNTER_OVERFLOW), g->name, "overflows");
}

static void test_message(const golden_message_t *g)
{
    const golden_frame_t *frame = &golden_frames[g->frame];
    uint8_t buf[MAX_PAYLOAD + 1], again[MAX_PAYLOAD + 1];
    golden_msg_t m;
    uint8_t n = g->pack(g->expect, buf);

    CHECK(n == frame->payload_len && memcmp(buf, frame->payload, n) == 0, frame->name,
          "pack == payload");
    CHECK(g->unpack(frame->payload, frame->payload_len, &m) == 0, frame->name, "unpack");
    n = g->pack(&m, again);
    CHECK(n == frame->payload_len && memcmp(again, frame->payload, n) == 0, frame->name,
          "pack(unpack(payload)) == payload");
    buf[frame->payload_len] = 0;
    CHECK(g->unpack(buf, (uint8_t)(frame->payload_len + 1), &m) == -1, frame->name,
          "unpack refuses an extra byte");
    if (frame->payload_len > 0) {
        CHECK(g->unpack(buf, (uint8_t)(frame->payload_len - 1), &m) == -1, frame->name,
              "unpack refuses a short payload");
    }
}

int main(void)
{
    unsigned i;

    test_crc();
    test_cobs();
    for (i = 0; i < GOLDEN_FRAME_COUNT; i++) {
        test_frame(&golden_frames[i]);
    }
    for (i = 0; i < GOLDEN_INVALID_COUNT; i++) {
        test_invalid(&golden_invalid[i]);
    }
    for (i = 0; i < GOLDEN_MESSAGE_COUNT; i++) {
        test_message(&golden_messages[i]);
    }
    printf("test_codec: %u checks, %u failed\n", checks, failures);
    return failures ? 1 : 0;
}
