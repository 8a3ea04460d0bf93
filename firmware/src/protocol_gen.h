/* GENERATED from firmware/protocol/messages.toml by firmware/protocol/generate.py — do not edit */
/* Serial protocol ids, payload structs and explicit little-endian pack/unpack (no padding or
 * endianness assumptions). pack returns the payload length; unpack returns 0, or -1 when the
 * length or a str length is wrong. */
#ifndef PROTOCOL_GEN_H
#define PROTOCOL_GEN_H

#include <stdint.h>

#define PROTOCOL_VERSION 1
#define PROTOCOL_HASH 0xB053CBA3UL
#define MAX_PAYLOAD 48
#define PROTOCOL_ACTUATORS 6
#define PROTOCOL_SENSORS 6

static inline void proto_put_u16(uint8_t *p, uint16_t v)
{
    p[0] = (uint8_t)v;
    p[1] = (uint8_t)(v >> 8);
}

static inline void proto_put_u32(uint8_t *p, uint32_t v)
{
    proto_put_u16(p, (uint16_t)v);
    proto_put_u16(p + 2, (uint16_t)(v >> 16));
}

static inline uint16_t proto_get_u16(const uint8_t *p)
{
    return (uint16_t)(p[0] | ((uint16_t)p[1] << 8));
}

static inline uint32_t proto_get_u32(const uint8_t *p)
{
    return (uint32_t)proto_get_u16(p) | ((uint32_t)proto_get_u16(p + 2) << 16);
}

/* hello_request (0x01, host_to_device): Host opens the session; the device answers with hello. */
#define MSG_HELLO_REQUEST 0x01
#define MSG_HELLO_REQUEST_NEEDS_ACK 0
#define MSG_HELLO_REQUEST_MAX_LEN 6

typedef struct {
    uint16_t host_version;
    uint32_t protocol_hash;
} msg_hello_request_t;

static inline uint8_t msg_hello_request_pack(const msg_hello_request_t *m, uint8_t *buf)
{
    uint8_t n = 0;
    proto_put_u16(buf + n, m->host_version);
    n = (uint8_t)(n + 2);
    proto_put_u32(buf + n, m->protocol_hash);
    n = (uint8_t)(n + 4);
    return n;
}

static inline int8_t msg_hello_request_unpack(const uint8_t *buf, uint8_t len, msg_hello_request_t *m)
{
    uint8_t n = 0;
    if (len != 6) return -1;
    m->host_version = proto_get_u16(buf + n);
    n = (uint8_t)(n + 2);
    m->protocol_hash = proto_get_u32(buf + n);
    n = (uint8_t)(n + 4);
    return n == len ? 0 : -1;
}

/* hello (0x02, device_to_host): Device identity and capabilities. */
#define MSG_HELLO 0x02
#define MSG_HELLO_NEEDS_ACK 0
#define MSG_HELLO_MAX_LEN 13

typedef struct {
    uint16_t firmware_version;
    uint32_t protocol_hash;
    uint8_t sensor_mask; /* bit n set: ADC channel n is sampled */
    uint8_t actuator_mask; /* bit n set: PORTB pin n is an actuator */
    uint16_t failsafe_ms; /* heartbeat timeout before the safe state */
    uint16_t sensor_period_ms;
    uint8_t reset_cause; /* MCUSR at boot: 1 power-on, 2 external, 8 watchdog */
} msg_hello_t;

static inline uint8_t msg_hello_pack(const msg_hello_t *m, uint8_t *buf)
{
    uint8_t n = 0;
    proto_put_u16(buf + n, m->firmware_version);
    n = (uint8_t)(n + 2);
    proto_put_u32(buf + n, m->protocol_hash);
    n = (uint8_t)(n + 4);
    buf[n++] = m->sensor_mask;
    buf[n++] = m->actuator_mask;
    proto_put_u16(buf + n, m->failsafe_ms);
    n = (uint8_t)(n + 2);
    proto_put_u16(buf + n, m->sensor_period_ms);
    n = (uint8_t)(n + 2);
    buf[n++] = m->reset_cause;
    return n;
}

static inline int8_t msg_hello_unpack(const uint8_t *buf, uint8_t len, msg_hello_t *m)
{
    uint8_t n = 0;
    if (len != 13) return -1;
    m->firmware_version = proto_get_u16(buf + n);
    n = (uint8_t)(n + 2);
    m->protocol_hash = proto_get_u32(buf + n);
    n = (uint8_t)(n + 4);
    m->sensor_mask = buf[n++];
    m->actuator_mask = buf[n++];
    m->failsafe_ms = proto_get_u16(buf + n);
    n = (uint8_t)(n + 2);
    m->sensor_period_ms = proto_get_u16(buf + n);
    n = (uint8_t)(n + 2);
    m->reset_cause = buf[n++];
    return n == len ? 0 : -1;
}

/* heartbeat (0x03, both): Liveness; the host's heartbeats keep the device out of its fail-safe state. */
#define MSG_HEARTBEAT 0x03
#define MSG_HEARTBEAT_NEEDS_ACK 0
#define MSG_HEARTBEAT_MAX_LEN 5

typedef struct {
    uint32_t uptime_ms;
    uint8_t flags; /* bit0: device in fail-safe; bit1: fail-safe tripped since the last heartbeat */
} msg_heartbeat_t;

static inline uint8_t msg_heartbeat_pack(const msg_heartbeat_t *m, uint8_t *buf)
{
    uint8_t n = 0;
    proto_put_u32(buf + n, m->uptime_ms);
    n = (uint8_t)(n + 4);
    buf[n++] = m->flags;
    return n;
}

static inline int8_t msg_heartbeat_unpack(const uint8_t *buf, uint8_t len, msg_heartbeat_t *m)
{
    uint8_t n = 0;
    if (len != 5) return -1;
    m->uptime_ms = proto_get_u32(buf + n);
    n = (uint8_t)(n + 4);
    m->flags = buf[n++];
    return n == len ? 0 : -1;
}

/* sensor (0x04, device_to_host): One ADC reading. */
#define MSG_SENSOR 0x04
#define MSG_SENSOR_NEEDS_ACK 0
#define MSG_SENSOR_MAX_LEN 7

typedef struct {
    uint8_t channel;
    uint16_t value; /* raw 10-bit ADC value, 0..1023 */
    uint32_t uptime_ms;
} msg_sensor_t;

static inline uint8_t msg_sensor_pack(const msg_sensor_t *m, uint8_t *buf)
{
    uint8_t n = 0;
    buf[n++] = m->channel;
    proto_put_u16(buf + n, m->value);
    n = (uint8_t)(n + 2);
    proto_put_u32(buf + n, m->uptime_ms);
    n = (uint8_t)(n + 4);
    return n;
}

static inline int8_t msg_sensor_unpack(const uint8_t *buf, uint8_t len, msg_sensor_t *m)
{
    uint8_t n = 0;
    if (len != 7) return -1;
    m->channel = buf[n++];
    m->value = proto_get_u16(buf + n);
    n = (uint8_t)(n + 2);
    m->uptime_ms = proto_get_u32(buf + n);
    n = (uint8_t)(n + 4);
    return n == len ? 0 : -1;
}

/* actuate (0x05, host_to_device): Set an actuator (an inference result turned into a command). */
#define MSG_ACTUATE 0x05
#define MSG_ACTUATE_NEEDS_ACK 1
#define MSG_ACTUATE_MAX_LEN 2

typedef struct {
    uint8_t actuator; /* PORTB pin number */
    uint8_t value; /* 0 off, 1 on */
} msg_actuate_t;

static inline uint8_t msg_actuate_pack(const msg_actuate_t *m, uint8_t *buf)
{
    uint8_t n = 0;
    buf[n++] = m->actuator;
    buf[n++] = m->value;
    return n;
}

static inline int8_t msg_actuate_unpack(const uint8_t *buf, uint8_t len, msg_actuate_t *m)
{
    uint8_t n = 0;
    if (len != 2) return -1;
    m->actuator = buf[n++];
    m->value = buf[n++];
    return n == len ? 0 : -1;
}

/* ack (0x06, both): ack */
#define MSG_ACK 0x06
#define MSG_ACK_NEEDS_ACK 0
#define MSG_ACK_MAX_LEN 1

typedef struct {
    uint8_t seq;
} msg_ack_t;

static inline uint8_t msg_ack_pack(const msg_ack_t *m, uint8_t *buf)
{
    uint8_t n = 0;
    buf[n++] = m->seq;
    return n;
}

static inline int8_t msg_ack_unpack(const uint8_t *buf, uint8_t len, msg_ack_t *m)
{
    uint8_t n = 0;
    if (len != 1) return -1;
    m->seq = buf[n++];
    return n == len ? 0 : -1;
}

/* nack (0x07, both): nack */
#define MSG_NACK 0x07
#define MSG_NACK_NEEDS_ACK 0
#define MSG_NACK_MAX_LEN 2

typedef struct {
    uint8_t seq;
    uint8_t reason; /* 1 unknown type, 2 bad length, 3 bad value, 4 not ready */
} msg_nack_t;

static inline uint8_t msg_nack_pack(const msg_nack_t *m, uint8_t *buf)
{
    uint8_t n = 0;
    buf[n++] = m->seq;
    buf[n++] = m->reason;
    return n;
}

static inline int8_t msg_nack_unpack(const uint8_t *buf, uint8_t len, msg_nack_t *m)
{
    uint8_t n = 0;
    if (len != 2) return -1;
    m->seq = buf[n++];
    m->reason = buf[n++];
    return n == len ? 0 : -1;
}

/* log (0x08, device_to_host): log */
#define MSG_LOG 0x08
#define MSG_LOG_NEEDS_ACK 0
#define MSG_LOG_MAX_LEN 42

typedef struct {
    uint8_t level; /* 0 debug, 1 info, 2 warning, 3 error */
    uint8_t text_len;
    char text[40];
} msg_log_t;

static inline uint8_t msg_log_pack(const msg_log_t *m, uint8_t *buf)
{
    uint8_t n = 0;
    uint8_t i;
    buf[n++] = m->level;
    buf[n] = (uint8_t)(m->text_len > 40 ? 40 : m->text_len);
    for (i = 0; i < buf[n]; i++) buf[n + 1 + i] = (uint8_t)m->text[i];
    n = (uint8_t)(n + 1 + buf[n]);
    return n;
}

static inline int8_t msg_log_unpack(const uint8_t *buf, uint8_t len, msg_log_t *m)
{
    uint8_t n = 0;
    uint8_t i;
    if (len - n < 1) return -1;
    m->level = buf[n++];
    if (len - n < 1) return -1;
    m->text_len = buf[n++];
    if (m->text_len > 40 || len - n < m->text_len) return -1;
    for (i = 0; i < m->text_len; i++) m->text[i] = (char)buf[n + i];
    n = (uint8_t)(n + m->text_len);
    return n == len ? 0 : -1;
}

/* error (0x09, device_to_host): error */
#define MSG_ERROR 0x09
#define MSG_ERROR_NEEDS_ACK 0
#define MSG_ERROR_MAX_LEN 5

typedef struct {
    uint8_t code; /* 1 protocol hash mismatch, 2 rx overflow */
    uint32_t detail;
} msg_error_t;

static inline uint8_t msg_error_pack(const msg_error_t *m, uint8_t *buf)
{
    uint8_t n = 0;
    buf[n++] = m->code;
    proto_put_u32(buf + n, m->detail);
    n = (uint8_t)(n + 4);
    return n;
}

static inline int8_t msg_error_unpack(const uint8_t *buf, uint8_t len, msg_error_t *m)
{
    uint8_t n = 0;
    if (len != 5) return -1;
    m->code = buf[n++];
    m->detail = proto_get_u32(buf + n);
    n = (uint8_t)(n + 4);
    return n == len ? 0 : -1;
}

/* stats (0x0A, device_to_host): Link counters, sent with every heartbeat reply. */
#define MSG_STATS 0x0A
#define MSG_STATS_NEEDS_ACK 0
#define MSG_STATS_MAX_LEN 10

typedef struct {
    uint16_t rx_frames;
    uint16_t crc_errors;
    uint16_t framing_errors;
    uint16_t rx_overflows;
    uint16_t failsafe_trips;
} msg_stats_t;

static inline uint8_t msg_stats_pack(const msg_stats_t *m, uint8_t *buf)
{
    uint8_t n = 0;
    proto_put_u16(buf + n, m->rx_frames);
    n = (uint8_t)(n + 2);
    proto_put_u16(buf + n, m->crc_errors);
    n = (uint8_t)(n + 2);
    proto_put_u16(buf + n, m->framing_errors);
    n = (uint8_t)(n + 2);
    proto_put_u16(buf + n, m->rx_overflows);
    n = (uint8_t)(n + 2);
    proto_put_u16(buf + n, m->failsafe_trips);
    n = (uint8_t)(n + 2);
    return n;
}

static inline int8_t msg_stats_unpack(const uint8_t *buf, uint8_t len, msg_stats_t *m)
{
    uint8_t n = 0;
    if (len != 10) return -1;
    m->rx_frames = proto_get_u16(buf + n);
    n = (uint8_t)(n + 2);
    m->crc_errors = proto_get_u16(buf + n);
    n = (uint8_t)(n + 2);
    m->framing_errors = proto_get_u16(buf + n);
    n = (uint8_t)(n + 2);
    m->rx_overflows = proto_get_u16(buf + n);
    n = (uint8_t)(n + 2);
    m->failsafe_trips = proto_get_u16(buf + n);
    n = (uint8_t)(n + 2);
    return n == len ? 0 : -1;
}

/* configure (0x0B, host_to_device): configure */
#define MSG_CONFIGURE 0x0B
#define MSG_CONFIGURE_NEEDS_ACK 1
#define MSG_CONFIGURE_MAX_LEN 5

typedef struct {
    uint16_t sensor_period_ms; /* 0 stops sampling */
    uint16_t failsafe_ms;
    uint8_t sensor_mask;
} msg_configure_t;

static inline uint8_t msg_configure_pack(const msg_configure_t *m, uint8_t *buf)
{
    uint8_t n = 0;
    proto_put_u16(buf + n, m->sensor_period_ms);
    n = (uint8_t)(n + 2);
    proto_put_u16(buf + n, m->failsafe_ms);
    n = (uint8_t)(n + 2);
    buf[n++] = m->sensor_mask;
    return n;
}

static inline int8_t msg_configure_unpack(const uint8_t *buf, uint8_t len, msg_configure_t *m)
{
    uint8_t n = 0;
    if (len != 5) return -1;
    m->sensor_period_ms = proto_get_u16(buf + n);
    n = (uint8_t)(n + 2);
    m->failsafe_ms = proto_get_u16(buf + n);
    n = (uint8_t)(n + 2);
    m->sensor_mask = buf[n++];
    return n == len ? 0 : -1;
}

#endif /* PROTOCOL_GEN_H */
