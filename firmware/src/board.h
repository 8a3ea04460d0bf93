/*
 * board.h - the ATmega328P hardware the firmware uses (Arduino Uno / Nano pinout).
 *
 * UART0   115200 8N1 (U2X, UBRR0 = 16), interrupt-driven RX and TX ring buffers
 * Timer0  CTC, 1 ms tick: board_millis()
 * ADC     AVCC reference, channels 0..5 (A0..A5), blocking single conversions
 * PORTB   PB0..PB5 (Arduino pins 8..13) are the actuators; LOW is the safe state
 */
#ifndef BOARD_H
#define BOARD_H

#include <stdint.h>

#define BOARD_RX_RING 128 /* power of two */
#define BOARD_TX_RING 128 /* power of two */
#define BOARD_ACTUATOR_MASK 0x3F
#define BOARD_SENSOR_COUNT 6

/* MCUSR as it was at reset (saved and cleared in .init3, before main) */
extern uint8_t board_reset_cause;

void board_init(void);

/* milliseconds since boot, wraps after ~49 days */
uint32_t board_millis(void);

/* UART: returns 1 and stores a byte when one is waiting */
uint8_t board_uart_getc(uint8_t *byte);
/* free space in the TX ring */
uint8_t board_uart_tx_free(void);
/* queue bytes for sending; waits (interrupts on) while the ring is full */
void board_uart_write(const uint8_t *data, uint8_t len);
/* bytes lost because the RX ring was full, and UART data-overrun/frame errors seen */
uint16_t board_uart_rx_overflows(void);
uint16_t board_uart_line_errors(void);

/* one 10-bit conversion of channel 0..7 against AVCC */
uint16_t board_adc_read(uint8_t channel);

/* drive PORTB pin `pin` (0..5) */
void board_actuator_set(uint8_t pin, uint8_t on);
/* every actuator to its safe state (LOW) */
void board_actuators_safe(void);

/* sleep (idle mode) until an interrupt, unless the RX ring has data */
void board_idle(void);

#endif
