/*
 * sim.c - run the firmware ELF on an emulated ATmega328P (simavr) for tests and demos.
 *
 *   usage: sim [--mcu NAME] [--freq HZ] FIRMWARE.elf
 *
 * stdout, one line each, flushed:
 *   PTY <path>                    first line: the pty slave that is the board's UART0
 *   PIN B<n> <0|1> <ms>           a PORTB output pin changed; <ms> is AVR time (cycles / F_CPU)
 *   RESET <cause>                 the MCU reset: watchdog | external
 *   HALT <state>                  the firmware stopped (cli; sleep) or crashed; sim exits 1
 * stdin, one command a line:
 *   ADC <channel> <millivolts>    set an analog input (AVCC = AREF = 5000 mV)
 *   RESET                         pulse the external reset pin
 *   INJECT <hex>                  put raw bytes on the line towards the host (line noise)
 *   QUIT                          exit (so does end of input, SIGINT and SIGTERM)
 *
 * Everything runs on one thread: the run loop executes the AVR and, every 0.5 ms of AVR time,
 * services the pty and stdin without blocking and sleeps when the AVR is ahead of the wall
 * clock, so firmware timers (1 ms tick, heartbeat timeout) match real time. UART bytes from the
 * host enter the emulated UART only while it signals XON, and the emulated UART paces them at
 * the firmware's baud rate (115200), so the firmware sees real serial timing.
 *
 * simavr's own uart_pty part is not used: it raises AVR IRQs from its own thread (a race with
 * avr_run), prints to stdout and makes a /tmp/simavr-uart0 symlink shared by every instance.
 * Library chatter is sent to stderr so stdout carries only the lines above.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pty.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <termios.h>
#include <time.h>
#include <unistd.h>

#include "avr_adc.h"
#include "avr_ioport.h"
#include "avr_uart.h"
#include "sim_avr.h"
#include "sim_elf.h"
#include "sim_io.h"
#include "sim_irq.h"

#define MCUSR_ADDR 0x54 /* data-space address of MCUSR on the ATmega328P */
#define SERVICE_US 500  /* service the pty/stdin/clock every 0.5 ms of AVR time */
#define MAX_LAG_US 50000 /* behind the wall clock by more than this: slip, don't race */

static FILE *out;                         /* the real stdout; fd 1 is pointed at stderr */
static volatile sig_atomic_t stop_signal;
static avr_t *avr;

/* pty bridge */
static int pty_master = -1, pty_slave = -1;
static char pty_name[256];
static uint8_t host_rx[4096];             /* host -> AVR, not yet taken by the UART */
static size_t host_rx_len, host_rx_pos;
static uint8_t host_tx[8192];             /* AVR -> host, not yet written to the pty */
static size_t host_tx_len;
static int uart_xon;
static avr_irq_t *uart_in;

/* port B and resets */
static int portb_dirty;
static uint8_t portb_seen;                /* last reported driven-high state of PB0..PB7 */
static int reset_pending;
static avr_cycle_count_t cycle_base, cycle_before_reset;
static void (*core_reset)(struct avr_t *);
static avr_irq_t *adc_irq[8];

/* stdin */
static char line[256];
static size_t line_len;

static void quiet_logger(avr_t *a, const int level, const char *fmt, va_list ap)
{
	if (!a || a->log >= level)
		vfprintf(stderr, fmt, ap);
}

static void on_signal(int sig) { stop_signal = sig; }

static avr_cycle_count_t total_cycles(void) { return cycle_base + avr->cycle; }

static double avr_ms(void) { return (double)total_cycles() * 1000.0 / (double)avr->frequency; }

static uint64_t wall_us(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000u + (uint64_t)ts.tv_nsec / 1000u;
}

/* ---- UART <-> pty ---- */

static void feed_uart(void)
{
	/* raising UART_IRQ_INPUT may call the XOFF hook synchronously, which stops the loop */
	while (uart_xon && host_rx_pos < host_rx_len)
		avr_raise_irq(uart_in, host_rx[host_rx_pos++]);
}

static void uart_out_hook(struct avr_irq_t *irq, uint32_t value, void *param)
{
	(void)irq; (void)param;
	if (host_tx_len < sizeof(host_tx))
		host_tx[host_tx_len++] = (uint8_t)value; /* else dropped, like a UART nobody reads */
}

static void uart_xon_hook(struct avr_irq_t *irq, uint32_t value, void *param)
{
	(void)irq; (void)value; (void)param;
	uart_xon = 1;
	feed_uart();
}

static void uart_xoff_hook(struct avr_irq_t *irq, uint32_t value, void *param)
{
	(void)irq; (void)value; (void)param;
	uart_xon = 0;
}

static int open_pty(void)
{
	struct termios tio;
	if (openpty(&pty_master, &pty_slave, pty_name, NULL, NULL) < 0) {
		perror("sim: openpty");
		return -1;
	}
	/* raw on both ends: no echo, no CR/LF mangling, no signals; the host re-applies raw mode
	 * when it opens the slave. We keep the slave open so the master never sees EIO/hangup
	 * while no host has it open. */
	tcgetattr(pty_slave, &tio);
	cfmakeraw(&tio);
	cfsetispeed(&tio, B115200);
	cfsetospeed(&tio, B115200);
	tcsetattr(pty_slave, TCSANOW, &tio);
	fcntl(pty_master, F_SETFL, fcntl(pty_master, F_GETFL) | O_NONBLOCK);
	fcntl(pty_master, F_SETFD, FD_CLOEXEC);
	fcntl(pty_slave, F_SETFD, FD_CLOEXEC);
	return 0;
}

static void service_pty(void)
{
	if (host_tx_len) {
		ssize_t n = write(pty_master, host_tx, host_tx_len);
		if (n > 0) {
			memmove(host_tx, host_tx + n, host_tx_len - (size_t)n);
			host_tx_len -= (size_t)n;
		}
	}
	if (host_rx_pos == host_rx_len) {
		ssize_t n = read(pty_master, host_rx, sizeof(host_rx));
		host_rx_pos = 0;
		host_rx_len = n > 0 ? (size_t)n : 0;
	}
	feed_uart();
}

/* ---- port B ---- */

static void portb_hook(struct avr_irq_t *irq, uint32_t value, void *param)
{
	(void)irq; (void)value; (void)param;
	portb_dirty = 1; /* scanned from the registers once the write has completed */
}

static void report_portb(uint8_t now)
{
	for (int n = 0; n < 8; n++) {
		uint8_t bit = (uint8_t)(1u << n);
		if ((now ^ portb_seen) & bit)
			fprintf(out, "PIN B%d %d %.3f\n", n, (now & bit) ? 1 : 0, avr_ms());
	}
	portb_seen = now;
	fflush(out);
}

static void scan_portb(void)
{
	avr_ioport_state_t st;
	portb_dirty = 0;
	if (avr_ioctl(avr, AVR_IOCTL_IOPORT_GETSTATE('B'), &st) == 0)
		report_portb((uint8_t)(st.port & st.ddr));
}

/* ---- resets ---- */

static void reset_hook(struct avr_t *a)
{
	if (core_reset)
		core_reset(a);
	cycle_before_reset = a->cycle;
	reset_pending = 1;
}

static void handle_reset(const char *forced_cause)
{
	uint8_t mcusr = avr->data[MCUSR_ADDR];
	const char *cause = forced_cause;
	reset_pending = 0;
	if (avr->cycle < cycle_before_reset)
		cycle_base += cycle_before_reset; /* the core restarts its cycle counter at reset */
	if (!cause)
		cause = (mcusr & 0x08) ? "watchdog" : (mcusr & 0x04) ? "brown-out"
		      : (mcusr & 0x02) ? "external" : (mcusr & 0x01) ? "power-on" : "unknown";
	fprintf(out, "RESET %s\n", cause);
	report_portb(0); /* every pin is an input (undriven) after reset */
}

/* ---- stdin commands ---- */

static void run_command(char *cmd)
{
	int ch, mv;
	if (sscanf(cmd, "ADC %d %d", &ch, &mv) == 2) {
		if (ch >= 0 && ch < 8 && mv >= 0)
			avr_raise_irq(adc_irq[ch], (uint32_t)mv);
		else
			fprintf(stderr, "sim: bad ADC command: %s\n", cmd);
	} else if (strcmp(cmd, "RESET") == 0) {
		avr_reset(avr);
		handle_reset("external");
		avr->data[MCUSR_ADDR] |= 0x02; /* EXTRF */
		fflush(out);
	} else if (strncmp(cmd, "INJECT ", 7) == 0) {
		const char *hex = cmd + 7;
		unsigned byte;
		while (hex[0] && hex[1] && host_tx_len < sizeof(host_tx) && sscanf(hex, "%2x", &byte) == 1) {
			host_tx[host_tx_len++] = (uint8_t)byte;
			hex += 2;
		}
	} else if (strcmp(cmd, "QUIT") == 0) {
		stop_signal = -1;
	} else if (cmd[0]) {
		fprintf(stderr, "sim: unknown command: %s\n", cmd);
	}
}

static void service_stdin(void)
{
	struct pollfd pfd = { .fd = 0, .events = POLLIN };
	while (poll(&pfd, 1, 0) > 0 && (pfd.revents & (POLLIN | POLLHUP))) {
		char buf[256];
		ssize_t n = read(0, buf, sizeof(buf));
		if (n <= 0) {
			if (n < 0 && (errno == EAGAIN || errno == EINTR))
				return;
			stop_signal = -2; /* end of input: the parent is gone */
			return;
		}
		for (ssize_t i = 0; i < n; i++) {
			char c = buf[i];
			if (c == '\n' || c == '\r') {
				line[line_len] = 0;
				run_command(line);
				line_len = 0;
			} else if (line_len < sizeof(line) - 1) {
				line[line_len++] = c;
			}
		}
	}
}

/* ---- main ---- */

static void no_sleep(avr_t *a, avr_cycle_count_t how_long)
{
	(void)a; (void)how_long; /* the run loop keeps AVR time in step with the wall clock */
}

int main(int argc, char **argv)
{
	const char *mcu = "atmega328p", *path = NULL;
	uint32_t freq = 16000000;
	for (int i = 1; i < argc; i++) {
		if (!strcmp(argv[i], "--mcu") && i + 1 < argc)
			mcu = argv[++i];
		else if (!strcmp(argv[i], "--freq") && i + 1 < argc)
			freq = (uint32_t)strtoul(argv[++i], NULL, 0);
		else
			path = argv[i];
	}
	if (!path) {
		fprintf(stderr, "usage: %s [--mcu NAME] [--freq HZ] FIRMWARE.elf\n", argv[0]);
		return 2;
	}

	/* our lines go to the real stdout; anything the library prints goes to stderr */
	fflush(stdout);
	int stdout_fd = dup(1);
	dup2(2, 1);
	out = fdopen(stdout_fd, "w");
	if (!out)
		return 2;
	avr_global_logger_set(quiet_logger);

	static union { elf_firmware_t f; char pad[sizeof(elf_firmware_t) + 4096]; } fw;
	if (elf_read_firmware(path, &fw.f) != 0) {
		fprintf(stderr, "sim: cannot read %s\n", path);
		return 2;
	}
	snprintf(fw.f.mmcu, sizeof(fw.f.mmcu), "%s", mcu);
	fw.f.frequency = freq;
	fw.f.vcc = fw.f.avcc = fw.f.aref = 5000;

	avr = avr_make_mcu_by_name(fw.f.mmcu);
	if (!avr) {
		fprintf(stderr, "sim: unknown MCU %s\n", fw.f.mmcu);
		return 2;
	}
	avr_init(avr);
	avr->log = LOG_ERROR;
	avr_load_firmware(avr, &fw.f);
	avr->frequency = freq;
	avr->vcc = avr->avcc = avr->aref = 5000;
	avr->sleep = no_sleep;
	core_reset = avr->reset;
	avr->reset = reset_hook;
	avr->data[MCUSR_ADDR] |= 0x01; /* PORF: this is a power-on */

	if (open_pty() < 0)
		return 2;

	/* UART0: no console echo, no poll-sleep (the run loop paces time) */
	uint32_t flags = 0;
	avr_ioctl(avr, AVR_IOCTL_UART_GET_FLAGS('0'), &flags);
	flags &= ~(uint32_t)(AVR_UART_FLAG_STDIO | AVR_UART_FLAG_POLL_SLEEP);
	avr_ioctl(avr, AVR_IOCTL_UART_SET_FLAGS('0'), &flags);
	uart_in = avr_io_getirq(avr, AVR_IOCTL_UART_GETIRQ('0'), UART_IRQ_INPUT);
	avr_irq_register_notify(avr_io_getirq(avr, AVR_IOCTL_UART_GETIRQ('0'), UART_IRQ_OUTPUT),
	                        uart_out_hook, NULL);
	avr_irq_register_notify(avr_io_getirq(avr, AVR_IOCTL_UART_GETIRQ('0'), UART_IRQ_OUT_XON),
	                        uart_xon_hook, NULL);
	avr_irq_register_notify(avr_io_getirq(avr, AVR_IOCTL_UART_GETIRQ('0'), UART_IRQ_OUT_XOFF),
	                        uart_xoff_hook, NULL);

	avr_irq_register_notify(avr_io_getirq(avr, AVR_IOCTL_IOPORT_GETIRQ('B'), IOPORT_IRQ_PIN_ALL),
	                        portb_hook, NULL);
	avr_irq_register_notify(avr_io_getirq(avr, AVR_IOCTL_IOPORT_GETIRQ('B'), IOPORT_IRQ_REG_PORT),
	                        portb_hook, NULL);
	avr_irq_register_notify(
		avr_io_getirq(avr, AVR_IOCTL_IOPORT_GETIRQ('B'), IOPORT_IRQ_DIRECTION_ALL),
		portb_hook, NULL);
	for (int ch = 0; ch < 8; ch++) {
		adc_irq[ch] = avr_io_getirq(avr, AVR_IOCTL_ADC_GETIRQ, ADC_IRQ_ADC0 + ch);
		avr_raise_irq(adc_irq[ch], 0);
	}

	struct sigaction sa;
	memset(&sa, 0, sizeof(sa));
	sa.sa_handler = on_signal;
	sigaction(SIGINT, &sa, NULL);
	sigaction(SIGTERM, &sa, NULL);
	signal(SIGPIPE, SIG_IGN);
	fcntl(0, F_SETFL, fcntl(0, F_GETFL) | O_NONBLOCK);

	fprintf(out, "PTY %s\n", pty_name);
	fflush(out);

	const avr_cycle_count_t service_cycles = (avr_cycle_count_t)freq / 1000000u * SERVICE_US;
	avr_cycle_count_t next_service = 0;
	uint64_t wall_start = wall_us();
	avr_cycle_count_t sync_cycles = 0; /* AVR cycles at wall_start */
	int rc = 0;

	while (!stop_signal) {
		int state = avr_run(avr);
		if (reset_pending) {
			handle_reset(NULL);
			next_service = 0;
		}
		if (portb_dirty)
			scan_portb();
		if (state == cpu_Done || state == cpu_Crashed) {
			fprintf(out, "HALT %s\n", state == cpu_Done ? "done" : "crashed");
			fflush(out);
			rc = 1;
			break;
		}
		if (avr->cycle < next_service && next_service - avr->cycle <= service_cycles)
			continue;
		next_service = avr->cycle + service_cycles;

		service_pty();
		service_stdin();

		/* keep AVR time in step with the wall clock */
		uint64_t sim_us = (total_cycles() - sync_cycles) * 1000000u / freq;
		uint64_t now_us = wall_us() - wall_start;
		if (sim_us > now_us + 200) {
			struct timespec ts = { 0, (long)(sim_us - now_us) * 1000L };
			struct pollfd pfd[2] = { { .fd = pty_master, .events = POLLIN },
			                         { .fd = 0, .events = POLLIN } };
			/* sleep until AVR time catches up, but wake early for host bytes or commands */
			ppoll(pfd, host_rx_pos == host_rx_len ? 2 : 1, &ts, NULL);
		} else if (now_us > sim_us + MAX_LAG_US) {
			wall_start = wall_us(); /* we were stopped or starved: slip instead of racing */
			sync_cycles = total_cycles();
		}
	}

	if (stop_signal > 0)
		fprintf(stderr, "sim: signal %d, exiting\n", (int)stop_signal);
	fflush(out);
	close(pty_master);
	close(pty_slave);
	avr_terminate(avr);
	return rc;
}
