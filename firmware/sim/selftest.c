/*
 * selftest.c - a tiny firmware that exercises the simulator itself (not the product firmware).
 *
 * UART0 115200 8N1, polled. Each received byte is answered:
 *   'P'  -> toggle PB5, answer 'p'
 *   'A'  -> read ADC0 (AVCC reference), answer "A<value>\n"
 *   'W'  -> enable the watchdog (15 ms) and hang: the MCU must reset
 *   'M'  -> answer "M<MCUSR at boot>\n"
 *   other bytes are echoed.
 * At boot it prints "BOOT\n".
 */
#include <avr/io.h>
#include <avr/wdt.h>
#include <stdint.h>

static uint8_t boot_mcusr __attribute__((section(".noinit")));

void early_wdt_off(void) __attribute__((naked, used, section(".init3")));
void early_wdt_off(void)
{
	boot_mcusr = MCUSR;
	MCUSR = 0;
	wdt_disable();
}

static void put(uint8_t c)
{
	while (!(UCSR0A & _BV(UDRE0)))
		;
	UDR0 = c;
}

static void put_u16(uint16_t v)
{
	char d[6];
	uint8_t n = 0;
	do {
		d[n++] = (char)('0' + v % 10);
		v /= 10;
	} while (v);
	while (n)
		put((uint8_t)d[--n]);
}

int main(void)
{
	UCSR0A = _BV(U2X0);
	UBRR0 = 16;
	UCSR0B = _BV(RXEN0) | _BV(TXEN0);
	UCSR0C = _BV(UCSZ01) | _BV(UCSZ00);
	DDRB = _BV(PB5);
	ADMUX = _BV(REFS0);
	ADCSRA = _BV(ADEN) | _BV(ADPS2) | _BV(ADPS1) | _BV(ADPS0);
	put('B'); put('O'); put('O'); put('T'); put('\n');
	for (;;) {
		if (!(UCSR0A & _BV(RXC0)))
			continue;
		uint8_t c = UDR0;
		if (c == 'P') {
			PORTB ^= _BV(PB5);
			put('p');
		} else if (c == 'A') {
			ADCSRA |= _BV(ADSC);
			while (ADCSRA & _BV(ADSC))
				;
			put('A');
			put_u16(ADC);
			put('\n');
		} else if (c == 'M') {
			put('M');
			put_u16(boot_mcusr);
			put('\n');
		} else if (c == 'W') {
			wdt_enable(WDTO_15MS);
			for (;;)
				;
		} else {
			put(c);
		}
	}
}
