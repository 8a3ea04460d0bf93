/* Frames of the serial link: CRC-16/CCITT-FALSE, COBS, frame encoding and a byte-at-a-time
 * stream decoder. Plain C99 for avr-gcc and host gcc: no malloc, no stdio, fixed buffers.
 *
 * On the wire a frame is COBS(seq u8 | type u8 | payload | crc16 u16 LE) then 0x00; the CRC
 * covers seq, type and payload (firmware/protocol/messages.toml). agent/serial/framing.py is
 * the Python twin; firmware/tests/test_codec.c checks both against the golden vectors.
 */
#ifndef FRAMING_H
#define FRAMING_H

#include <stdint.h>

#include "protocol_gen.h"

#define CRC16_CCITT_INIT 0xFFFFu

#define FRAME_HEADER_LEN 2 /* seq, type */
#define FRAME_CRC_LEN 2
#define FRAME_RAW_MIN (FRAME_HEADER_LEN + FRAME_CRC_LEN)
#define FRAME_RAW_MAX (FRAME_RAW_MIN + MAX_PAYLOAD)
/* The longest COBS encoding of n bytes (no delimiter). */
#define COBS_ENCODED_MAX(n) ((n) + (n) / 254 + 1)
#define COBS_MAX_INPUT 254 /* so that an encoding's length fits a uint8_t */
#define FRAME_ENCODED_MIN COBS_ENCODED_MAX(FRAME_RAW_MIN)
#define FRAME_ENCODED_MAX COBS_ENCODED_MAX(FRAME_RAW_MAX)
#define FRAME_WIRE_MAX (FRAME_ENCODED_MAX + 1) /* with the 0x00 delimiter */

/* frame_decode results */
#define FRAME_OK 0
#define FRAME_ERR_EMPTY (-1)
#define FRAME_ERR_COBS (-2)
#define FRAME_ERR_SHORT (-3)
#define FRAME_ERR_LONG (-4)
#define FRAME_ERR_CRC (-5)

typedef struct {
    uint8_t seq;
    uint8_t type;
    uint8_t len; /* payload length */
    uint8_t payload[MAX_PAYLOAD];
} frame_t;

typedef struct {
    uint8_t buf[FRAME_ENCODED_MAX]; /* the bytes since the last delimiter (the last ones only,
                                       after an overflow) */
    uint8_t len;
    uint8_t overflowed; /* the current run is longer than any frame */
    uint16_t frames, crc_errors, framing_errors, overflows;
} frame_decoder_t;

/* CRC-16/CCITT-FALSE: poly 0x1021, init 0xFFFF; crc16_ccitt("123456789") == 0x29B1. */
uint16_t crc16_ccitt_update(uint16_t crc, uint8_t byte);
uint16_t crc16_ccitt(const uint8_t *data, uint8_t len);

/* COBS-encode len <= COBS_MAX_INPUT bytes into out (COBS_ENCODED_MAX(len) bytes); returns the
 * encoded length, 0 when len is too large. Writes no delimiter. */
uint8_t cobs_encode(const uint8_t *in, uint8_t len, uint8_t *out);

/* Decode len bytes (no delimiter) into out (len - 1 bytes suffice); returns the decoded
 * length, or -1 for input no encoder produces (empty, a 0x00, a code past the end). */
int16_t cobs_decode(const uint8_t *in, uint8_t len, uint8_t *out);

/* Write a whole frame, 0x00 delimiter included, into out (FRAME_WIRE_MAX bytes); returns its
 * length, or 0 when len > MAX_PAYLOAD. */
uint8_t frame_encode(uint8_t seq, uint8_t type, const uint8_t *payload, uint8_t len,
                     uint8_t *out);

/* Decode one frame's bytes between delimiters; FRAME_OK or a FRAME_ERR_* code. */
int8_t frame_decode(const uint8_t *encoded, uint8_t len, frame_t *out);

void frame_decoder_init(frame_decoder_t *d);

/* Feed one received byte; returns 1 when it completed a valid frame, now in *out, else 0.
 * Invalid frames are dropped and counted; garbage in front of a frame (even without a
 * delimiter of its own) costs at most itself, never the frame after it. An empty chunk
 * (0x00 0x00) is an idle delimiter and counts as nothing. */
int8_t frame_decoder_push(frame_decoder_t *d, uint8_t byte, frame_t *out);

#endif /* FRAMING_H */
