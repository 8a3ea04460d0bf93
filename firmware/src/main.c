/*
 * main.c - the peripheral firmware: the serial protocol of firmware/protocol/messages.toml on
 * an ATmega328P (plain avr-libc; hardware in board.c).
 *
 * Session. A hello_request whose protocol_hash matches ours opens the session: we answer
 * hello and arm the fail-safe timer. A mismatching hash gets `error` code 1 (detail = our
 * hash), closes the session and drives the actuators safe. Without an open session
 * actuate and configure are refused with nack 4 (not ready).
 *
 * Fail-safe. Only host heartbeats (and the hello_request that opens a session) feed the
 * fail-safe timer; other traffic does not, so a host that still sends commands but has lost
 * its heartbeat loop is treated as gone. After failsafe_ms without one, every actuator goes
 * LOW, the trip is counted, and actuate is refused (nack 4) until the next heartbeat, which
 * alone ends the fail-safe state (a new hello_request does not). Heartbeat reply flags: bit0 = the device was in its fail-safe state
 * when this heartbeat arrived (this heartbeat ended it), bit1 = the fail-safe tripped since
 * the previous heartbeat reply. Every heartbeat reply is followed by `stats`.
 *
 * Robustness. The frame decoder drops and counts garbage, truncated frames and bad CRCs;
 * only whole, valid frames are acted on. Messages with a bad length get nack 2, unknown
 * types nack 1, bad values nack 3. The hardware watchdog (500 ms) resets the MCU if the main
 * loop stalls; hello.reset_cause reports MCUSR as it was at boot.
 */
#include <avr/wdt.h>
#include <stdint.h>
#include <string.h>

#include "board.h"
#include "framing.h"
#include "protocol_gen.h"

#define FIRMWARE_VERSION 0x0100 /* major.minor, one byte each */

#ifdef PROTOCOL_HASH_OVERRIDE
#define OWN_PROTOCOL_HASH ((uint32_t)(PROTOCOL_HASH_OVERRIDE))
#else
#define OWN_PROTOCOL_HASH ((uint32_t)(PROTOCOL_HASH))
#endif

#define DEFAULT_SENSOR_PERIOD_MS 100
#define DEFAULT_FAILSAFE_MS 1500
#define DEFAULT_SENSOR_MASK 0x01
#define MIN_SENSOR_PERIOD_MS 7 /* shorter periods are raised to this: six channels of sensor
                                  frames every 7 ms are 96 % of the 115200-baud line */
#define MIN_FAILSAFE_MS 100

#define NACK_UNKNOWN_TYPE 1
#define NACK_BAD_LENGTH 2
#define NACK_BAD_VALUE 3
#define NACK_NOT_READY 4

#define ERROR_HASH_MISMATCH 1
#define ERROR_RX_OVERFLOW 2

#define HB_FLAG_IN_FAILSAFE 0x01
#define HB_FLAG_TRIPPED 0x02

static frame_decoder_t decoder;
static frame_t rx_frame;
static uint8_t wire[FRAME_WIRE_MAX];
static uint8_t payload[MAX_PAYLOAD];
static uint8_t tx_seq;

static struct {
	uint16_t sensor_period_ms;
	uint16_t failsafe_ms;
	uint8_t sensor_mask;
} config = { DEFAULT_SENSOR_PERIOD_MS, DEFAULT_FAILSAFE_MS, DEFAULT_SENSOR_MASK };

static uint8_t session_open;     /* a hello_request with our hash arrived */
static uint8_t in_failsafe;      /* actuators held safe until the next heartbeat */
static uint8_t tripped;          /* fail-safe tripped since the last heartbeat reply */
static uint16_t failsafe_trips;
static uint32_t last_heartbeat;
static uint32_t last_sample;
static uint16_t overflows_reported;

static void send(uint8_t type, uint8_t len, uint8_t droppable)
{
	uint8_t n = frame_encode(tx_seq, type, payload, len, wire);
	if (!n || (droppable && board_uart_tx_free() < n))
		return; /* sensor data when the line is busy: drop it rather than stall */
	tx_seq++;
	board_uart_write(wire, n);
}

static void send_ack(uint8_t seq)
{
	msg_ack_t m = { .seq = seq };
	send(MSG_ACK, (uint8_t)msg_ack_pack(&m, payload), 0);
}

static void send_nack(uint8_t seq, uint8_t reason)
{
	msg_nack_t m = { .seq = seq, .reason = reason };
	send(MSG_NACK, (uint8_t)msg_nack_pack(&m, payload), 0);
}

static void send_error(uint8_t code, uint32_t detail)
{
	msg_error_t m = { .code = code, .detail = detail };
	send(MSG_ERROR, (uint8_t)msg_error_pack(&m, payload), 0);
}

static uint16_t rx_overflows(void)
{
	return (uint16_t)(board_uart_rx_overflows() + decoder.overflows);
}

static void send_stats(void)
{
	msg_stats_t m = {
		.rx_frames = (uint16_t)decoder.frames,
		.crc_errors = (uint16_t)decoder.crc_errors,
		.framing_errors = (uint16_t)(decoder.framing_errors + board_uart_line_errors()),
		.rx_overflows = rx_overflows(),
		.failsafe_trips = failsafe_trips,
	};
	send(MSG_STATS, (uint8_t)msg_stats_pack(&m, payload), 0);
}

static void on_hello_request(const frame_t *f)
{
	msg_hello_request_t req;
	if (msg_hello_request_unpack(f->payload, f->len, &req) != 0) {
		send_nack(f->seq, NACK_BAD_LENGTH);
		return;
	}
	if (req.protocol_hash != OWN_PROTOCOL_HASH) {
		session_open = 0;
		board_actuators_safe(); /* nobody we understand is in charge any more */
		send_error(ERROR_HASH_MISMATCH, OWN_PROTOCOL_HASH);
		return;
	}
	session_open = 1; /* a fail-safe state stays until a heartbeat: hello is no heartbeat */
	last_heartbeat = board_millis();
	msg_hello_t m = {
		.firmware_version = FIRMWARE_VERSION,
		.protocol_hash = OWN_PROTOCOL_HASH,
		.sensor_mask = config.sensor_mask,
		.actuator_mask = BOARD_ACTUATOR_MASK,
		.failsafe_ms = config.failsafe_ms,
		.sensor_period_ms = config.sensor_period_ms,
		.reset_cause = board_reset_cause,
	};
	send(MSG_HELLO, (uint8_t)msg_hello_pack(&m, payload), 0);
}

static void on_heartbeat(const frame_t *f)
{
	msg_heartbeat_t hb;
	if (msg_heartbeat_unpack(f->payload, f->len, &hb) != 0) {
		send_nack(f->seq, NACK_BAD_LENGTH);
		return;
	}
	last_heartbeat = board_millis();
	uint8_t flags = (uint8_t)((in_failsafe ? HB_FLAG_IN_FAILSAFE : 0) |
	                          (tripped ? HB_FLAG_TRIPPED : 0));
	in_failsafe = 0;
	tripped = 0;
	msg_heartbeat_t reply = { .uptime_ms = last_heartbeat, .flags = flags };
	send(MSG_HEARTBEAT, (uint8_t)msg_heartbeat_pack(&reply, payload), 0);
	send_stats();
}

static void on_actuate(const frame_t *f)
{
	msg_actuate_t m;
	if (msg_actuate_unpack(f->payload, f->len, &m) != 0) {
		send_nack(f->seq, NACK_BAD_LENGTH);
		return;
	}
	if (!session_open || in_failsafe) {
		send_nack(f->seq, NACK_NOT_READY);
		return;
	}
	if (m.actuator > 7 || !(BOARD_ACTUATOR_MASK & (1u << m.actuator)) || m.value > 1) {
		send_nack(f->seq, NACK_BAD_VALUE);
		return;
	}
	board_actuator_set(m.actuator, m.value);
	send_ack(f->seq);
}

static void on_configure(const frame_t *f)
{
	msg_configure_t m;
	if (msg_configure_unpack(f->payload, f->len, &m) != 0) {
		send_nack(f->seq, NACK_BAD_LENGTH);
		return;
	}
	if (!session_open) {
		send_nack(f->seq, NACK_NOT_READY);
		return;
	}
	if (m.failsafe_ms < MIN_FAILSAFE_MS || (m.sensor_mask & (uint8_t)~0x3F)) {
		send_nack(f->seq, NACK_BAD_VALUE);
		return;
	}
	if (m.sensor_period_ms && m.sensor_period_ms < MIN_SENSOR_PERIOD_MS)
		m.sensor_period_ms = MIN_SENSOR_PERIOD_MS;
	config.sensor_period_ms = m.sensor_period_ms;
	config.failsafe_ms = m.failsafe_ms;
	config.sensor_mask = m.sensor_mask;
	send_ack(f->seq);
}

static void dispatch(const frame_t *f)
{
	switch (f->type) {
	case MSG_HELLO_REQUEST:
		on_hello_request(f);
		break;
	case MSG_HEARTBEAT:
		on_heartbeat(f);
		break;
	case MSG_ACTUATE:
		on_actuate(f);
		break;
	case MSG_CONFIGURE:
		on_configure(f);
		break;
	case MSG_ACK:
	case MSG_NACK:
		break; /* we send nothing that needs an ack */
	default:
		send_nack(f->seq, NACK_UNKNOWN_TYPE);
		break;
	}
}

static void check_failsafe(uint32_t now)
{
	if (!session_open || in_failsafe)
		return;
	if ((uint32_t)(now - last_heartbeat) < config.failsafe_ms)
		return;
	board_actuators_safe();
	in_failsafe = 1;
	tripped = 1;
	failsafe_trips++;
}

static void sample_sensors(uint32_t now)
{
	if (!config.sensor_period_ms || (uint32_t)(now - last_sample) < config.sensor_period_ms)
		return;
	last_sample = now;
	for (uint8_t ch = 0; ch < BOARD_SENSOR_COUNT; ch++) {
		if (!(config.sensor_mask & (1u << ch)))
			continue;
		msg_sensor_t m = { .channel = ch, .value = board_adc_read(ch), .uptime_ms = now };
		send(MSG_SENSOR, (uint8_t)msg_sensor_pack(&m, payload), 1);
	}
}

static void report_overflows(void)
{
	uint16_t n = rx_overflows();
	if (n != overflows_reported) {
		overflows_reported = n;
		send_error(ERROR_RX_OVERFLOW, n);
	}
}

int main(void)
{
	board_init();
	frame_decoder_init(&decoder);
	wdt_enable(WDTO_500MS);
	last_sample = board_millis();

	for (;;) {
		wdt_reset();
		uint8_t byte;
		/* a bounded batch, so sampling and the fail-safe check run even under a flood */
		for (uint8_t i = 0; i < 32 && board_uart_getc(&byte); i++) {
			if (frame_decoder_push(&decoder, byte, &rx_frame))
				dispatch(&rx_frame);
		}
		uint32_t now = board_millis();
		check_failsafe(now);
		sample_sensors(now);
		report_overflows();
		board_idle();
	}
}
