/* Frames of the serial link; see framing.h. */
#include "framing.h"

/* Byte-wise form of the bit-by-bit shift through poly 0x1021 (checked equal for all 2^24
 * inputs): crc = (crc << 8) ^ (x << 12) ^ (x << 5) ^ x, x = (crc >> 8) ^ byte, x ^= x >> 4,
 * written byte by byte because AVR has no barrel shifter. No table, ~20 cycles a byte, so the
 * stream decoder's suffix search stays cheap. */
static inline uint16_t crc_step(uint16_t crc, uint8_t byte)
{
    uint8_t x = (uint8_t)((uint8_t)(crc >> 8) ^ byte);
    uint8_t hi, lo;

    x ^= (uint8_t)(x >> 4);
    hi = (uint8_t)((uint8_t)crc ^ (uint8_t)(x << 4) ^ (uint8_t)(x >> 3));
    lo = (uint8_t)((uint8_t)(x << 5) ^ x);
    return (uint16_t)(((uint16_t)hi << 8) | lo);
}

uint16_t crc16_ccitt_update(uint16_t crc, uint8_t byte)
{
    return crc_step(crc, byte);
}

uint16_t crc16_ccitt(const uint8_t *data, uint8_t len)
{
    uint16_t crc = CRC16_CCITT_INIT;
    uint8_t i;

    for (i = 0; i < len; i++) {
        crc = crc_step(crc, data[i]);
    }
    return crc;
}

/* A COBS encoder fed one byte at a time, so frame_encode needs no scratch buffer. A block of
 * 254 non-zero bytes is closed lazily: no code byte follows it unless more data does. */
typedef struct {
    uint8_t *out;
    uint8_t code_at; /* where the current block's code byte goes */
    uint8_t next;    /* where the next data byte goes */
    uint8_t code;    /* 1 + data bytes in the current block */
} cobs_writer_t;

static void cobs_start(cobs_writer_t *w, uint8_t *out)
{
    w->out = out;
    w->code_at = 0;
    w->next = 1;
    w->code = 1;
}

static void cobs_put(cobs_writer_t *w, uint8_t byte)
{
    if (w->code == 0xFF) {
        w->out[w->code_at] = 0xFF;
        w->code_at = w->next++;
        w->code = 1;
    }
    if (byte == 0) {
        w->out[w->code_at] = w->code;
        w->code_at = w->next++;
        w->code = 1;
    } else {
        w->out[w->next++] = byte;
        w->code++;
    }
}

static uint8_t cobs_finish(cobs_writer_t *w)
{
    w->out[w->code_at] = w->code;
    return w->next;
}

uint8_t cobs_encode(const uint8_t *in, uint8_t len, uint8_t *out)
{
    cobs_writer_t w;
    uint8_t i;

    if (len > COBS_MAX_INPUT) {
        return 0;
    }
    cobs_start(&w, out);
    for (i = 0; i < len; i++) {
        cobs_put(&w, in[i]);
    }
    return cobs_finish(&w);
}

int16_t cobs_decode(const uint8_t *in, uint8_t len, uint8_t *out)
{
    uint8_t at = 0, i, code;
    int16_t n = 0;

    if (len == 0) {
        return -1;
    }
    while (at < len) {
        code = in[at];
        if (code == 0 || code > len - at) {
            return -1;
        }
        for (i = 1; i < code; i++) {
            if (in[at + i] == 0) {
                return -1;
            }
            out[n++] = in[at + i];
        }
        at = (uint8_t)(at + code);
        if (code != 0xFF && at < len) {
            out[n++] = 0;
        }
    }
    return n;
}

uint8_t frame_encode(uint8_t seq, uint8_t type, const uint8_t *payload, uint8_t len,
                     uint8_t *out)
{
    cobs_writer_t w;
    uint16_t crc;
    uint8_t i, n;

    if (len > MAX_PAYLOAD) {
        return 0;
    }
    cobs_start(&w, out);
    cobs_put(&w, seq);
    cobs_put(&w, type);
    crc = crc16_ccitt_update(crc16_ccitt_update(CRC16_CCITT_INIT, seq), type);
    for (i = 0; i < len; i++) {
        cobs_put(&w, payload[i]);
        crc = crc16_ccitt_update(crc, payload[i]);
    }
    cobs_put(&w, (uint8_t)crc);
    cobs_put(&w, (uint8_t)(crc >> 8));
    n = cobs_finish(&w);
    out[n] = 0;
    return (uint8_t)(n + 1);
}

/* Walk a COBS encoding without writing it out: the decoded length (or -1 for bad COBS), and in
 * *crc_ok whether its last two bytes are the little-endian CRC of the ones before. The stream
 * decoder tries many suffixes of a damaged chunk, so a failed try must cost no copying. */
typedef struct {
    uint16_t crc;
    uint8_t n;       /* decoded bytes so far */
    uint8_t tail[2]; /* the last two, not yet in crc */
} frame_scan_t;

static void scan_byte(frame_scan_t *s, uint8_t byte)
{
    if (s->n >= 2) {
        s->crc = crc_step(s->crc, s->tail[0]);
    }
    s->tail[0] = s->tail[1];
    s->tail[1] = byte;
    s->n++;
}

static int16_t frame_scan(const uint8_t *in, uint8_t len, uint8_t *crc_ok)
{
    frame_scan_t s = {CRC16_CCITT_INIT, 0, {0, 0}};
    uint8_t at = 0, i, code;

    while (at < len) {
        code = in[at];
        if (code == 0 || code > len - at) {
            return -1;
        }
        for (i = 1; i < code; i++) {
            if (in[at + i] == 0) {
                return -1;
            }
            scan_byte(&s, in[at + i]);
        }
        at = (uint8_t)(at + code);
        if (code != 0xFF && at < len) {
            scan_byte(&s, 0);
        }
    }
    *crc_ok = (uint8_t)(s.crc == (uint16_t)(s.tail[0] | ((uint16_t)s.tail[1] << 8)));
    return s.n;
}

int8_t frame_decode(const uint8_t *encoded, uint8_t len, frame_t *out)
{
    uint8_t raw[FRAME_RAW_MAX];
    uint8_t i, crc_ok = 0;
    int16_t n;

    if (len == 0) {
        return FRAME_ERR_EMPTY;
    }
    if (len > FRAME_ENCODED_MAX) {
        return FRAME_ERR_LONG;
    }
    n = frame_scan(encoded, len, &crc_ok);
    if (n < 0) {
        return FRAME_ERR_COBS;
    }
    if (n < FRAME_RAW_MIN) {
        return FRAME_ERR_SHORT;
    }
    if (!crc_ok) {
        return FRAME_ERR_CRC;
    }
    cobs_decode(encoded, len, raw); /* n <= len - 1 <= FRAME_RAW_MAX bytes */
    out->seq = raw[0];
    out->type = raw[1];
    out->len = (uint8_t)(n - FRAME_RAW_MIN);
    for (i = 0; i < out->len; i++) {
        out->payload[i] = raw[FRAME_HEADER_LEN + i];
    }
    return FRAME_OK;
}

void frame_decoder_init(frame_decoder_t *d)
{
    d->len = 0;
    d->overflowed = 0;
    d->frames = 0;
    d->crc_errors = 0;
    d->framing_errors = 0;
    d->overflows = 0;
}

static void decoder_append(frame_decoder_t *d, uint8_t byte)
{
    uint8_t i;

    if (d->len == FRAME_ENCODED_MAX) {
        /* Keep the last bytes only: the end of a frame may still come with the next 0x00. */
        for (i = 1; i < FRAME_ENCODED_MAX; i++) {
            d->buf[i - 1] = d->buf[i];
        }
        d->len--;
        if (!d->overflowed) {
            d->overflowed = 1;
            d->overflows++;
        }
    }
    d->buf[d->len++] = byte;
}

/* The frame that ends the buffer after some garbage, trying the longest suffix first. */
static int8_t decoder_suffix(const frame_decoder_t *d, uint8_t start, frame_t *out)
{
    for (; start + FRAME_ENCODED_MIN <= d->len; start++) {
        if (frame_decode(d->buf + start, (uint8_t)(d->len - start), out) == FRAME_OK) {
            return 1;
        }
    }
    return 0;
}

static int8_t decoder_finish(frame_decoder_t *d, frame_t *out)
{
    int8_t whole = FRAME_ERR_LONG, found;

    if (!d->overflowed) {
        whole = frame_decode(d->buf, d->len, out);
        if (whole == FRAME_OK) {
            d->frames++;
            return 1;
        }
        if (whole == FRAME_ERR_EMPTY) {
            return 0;
        }
    }
    found = decoder_suffix(d, d->overflowed ? 0 : 1, out);
    if (!d->overflowed) {
        if (whole == FRAME_ERR_CRC && !found) {
            d->crc_errors++;
        } else {
            d->framing_errors++;
        }
    }
    if (found) {
        d->frames++;
    }
    return found;
}

int8_t frame_decoder_push(frame_decoder_t *d, uint8_t byte, frame_t *out)
{
    int8_t found;

    if (byte != 0) {
        decoder_append(d, byte);
        return 0;
    }
    found = decoder_finish(d, out);
    d->len = 0;
    d->overflowed = 0;
    return found;
}
