/*
 * board.c - ATmega328P drivers: UART rings, 1 ms tick, ADC, actuator pins, watchdog-safe boot.
 */
#include "board.h"

#include <avr/interrupt.h>
#include <avr/io.h>
#include <avr/sleep.h>
#include <avr/wdt.h>
#include <util/atomic.h>

uint8_t board_reset_cause __attribute__((section(".noinit")));

/*
 * After a watchdog reset the watchdog stays enabled (WDRF forces WDE) with its shortest
 * timeout, so it must be turned off before the C runtime's init code runs (avr-libc
 * <avr/wdt.h> documentation). MCUSR is saved first: it says why we reset. The Arduino
 * bootloader (optiboot) clears MCUSR before starting us but hands its value over in r2,
 * which the C runtime has not touched yet in .init3.
 */
void board_early_init(void) __attribute__((naked, used, section(".init3")));
void board_early_init(void)
{
	uint8_t cause = MCUSR;
	if (!cause)
		__asm__ volatile("mov %0, r2" : "=r"(cause));
	board_reset_cause = cause;
	MCUSR = 0;
	wdt_disable();
}

static volatile uint32_t millis;

static uint8_t rx_ring[BOARD_RX_RING];
static volatile uint8_t rx_head, rx_tail; /* ISR writes head, main reads tail */
static volatile uint16_t rx_overflows, line_errors;

static uint8_t tx_ring[BOARD_TX_RING];
static volatile uint8_t tx_head, tx_tail; /* main writes head, ISR reads tail */

ISR(TIMER0_COMPA_vect)
{
	millis++;
}

ISR(USART_RX_vect)
{
	uint8_t status = UCSR0A;
	uint8_t byte = UDR0;
	if (status & (_BV(FE0) | _BV(DOR0)))
		line_errors++;
	uint8_t next = (uint8_t)((rx_head + 1) & (BOARD_RX_RING - 1));
	if (next == rx_tail) {
		rx_overflows++;
		return;
	}
	rx_ring[rx_head] = byte;
	rx_head = next;
}

ISR(USART_UDRE_vect)
{
	if (tx_head == tx_tail) {
		UCSR0B &= (uint8_t)~_BV(UDRIE0);
		return;
	}
	UDR0 = tx_ring[tx_tail];
	tx_tail = (uint8_t)((tx_tail + 1) & (BOARD_TX_RING - 1));
}

void board_init(void)
{
	/* actuators: outputs, LOW (safe) */
	PORTB &= (uint8_t)~BOARD_ACTUATOR_MASK;
	DDRB |= BOARD_ACTUATOR_MASK;

	/* UART0: 115200 8N1; 16 MHz / (8 * (16 + 1)) = 117647 baud, +2.1 % */
	/* U2X0 first: simavr derives the byte time when UBRR0 is written, so writing the divisor
	 * before the double-speed bit makes the emulated line run at half speed. Real hardware
	 * does not care about the order. */
	UCSR0A = _BV(U2X0);
	UBRR0 = 16;
	UCSR0C = _BV(UCSZ01) | _BV(UCSZ00);
	UCSR0B = _BV(RXEN0) | _BV(TXEN0) | _BV(RXCIE0);

	/* Timer0: CTC, 16 MHz / 64 / 250 = 1 kHz */
	TCCR0A = _BV(WGM01);
	TCCR0B = _BV(CS01) | _BV(CS00);
	OCR0A = 249;
	TIMSK0 = _BV(OCIE0A);

	/* ADC: AVCC reference, 16 MHz / 128 = 125 kHz ADC clock; digital inputs off on A0..A5 */
	ADMUX = _BV(REFS0);
	ADCSRA = _BV(ADEN) | _BV(ADPS2) | _BV(ADPS1) | _BV(ADPS0);
	DIDR0 = 0x3F;

	set_sleep_mode(SLEEP_MODE_IDLE);
	sei();
}

uint32_t board_millis(void)
{
	uint32_t now;
	ATOMIC_BLOCK(ATOMIC_RESTORESTATE) { now = millis; }
	return now;
}

uint8_t board_uart_getc(uint8_t *byte)
{
	uint8_t tail = rx_tail;
	if (tail == rx_head)
		return 0;
	*byte = rx_ring[tail];
	rx_tail = (uint8_t)((tail + 1) & (BOARD_RX_RING - 1));
	return 1;
}

uint8_t board_uart_tx_free(void)
{
	return (uint8_t)((tx_tail - tx_head - 1) & (BOARD_TX_RING - 1));
}

void board_uart_write(const uint8_t *data, uint8_t len)
{
	while (len--) {
		uint8_t next = (uint8_t)((tx_head + 1) & (BOARD_TX_RING - 1));
		while (next == tx_tail)
			; /* the UDRE interrupt drains the ring; at most ~11 ms for a full ring */
		tx_ring[tx_head] = *data++;
		tx_head = next;
		UCSR0B |= _BV(UDRIE0);
	}
}

uint16_t board_uart_rx_overflows(void)
{
	uint16_t n;
	ATOMIC_BLOCK(ATOMIC_RESTORESTATE) { n = rx_overflows; }
	return n;
}

uint16_t board_uart_line_errors(void)
{
	uint16_t n;
	ATOMIC_BLOCK(ATOMIC_RESTORESTATE) { n = line_errors; }
	return n;
}

uint16_t board_adc_read(uint8_t channel)
{
	ADMUX = (uint8_t)(_BV(REFS0) | (channel & 0x07));
	ADCSRA |= _BV(ADSC);
	while (ADCSRA & _BV(ADSC))
		;
	return ADC;
}

void board_actuator_set(uint8_t pin, uint8_t on)
{
	uint8_t bit = (uint8_t)(_BV(pin) & BOARD_ACTUATOR_MASK);
	ATOMIC_BLOCK(ATOMIC_RESTORESTATE) {
		if (on)
			PORTB |= bit;
		else
			PORTB &= (uint8_t)~bit;
	}
}

void board_actuators_safe(void)
{
	ATOMIC_BLOCK(ATOMIC_RESTORESTATE) { PORTB &= (uint8_t)~BOARD_ACTUATOR_MASK; }
}

void board_idle(void)
{
	cli();
	if (rx_head == rx_tail) {
		sleep_enable();
		sei(); /* the instruction after sei runs before any interrupt: no lost wake-up */
		sleep_cpu();
		sleep_disable();
	}
	sei();
}
