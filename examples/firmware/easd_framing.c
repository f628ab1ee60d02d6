/* easd_framing.c: send int16 PCM from a microcontroller as edge-asd framed PCM.
 *
 *   edge-monitor --model fan.tflite --input serial:/dev/ttyACM0 --pcm-framing framed
 *
 * One frame, every integer little-endian (README "Raw PCM framing", edge_asd.firmware_io.pcm_framing):
 *   "EASD" | version<<4 | flags (0x11 first frame after boot, else 0x10) | uint16 sequence (+1, wraps)
 *   | uint16 N (1..4096 int16 values, channels interleaved) | N int16 samples
 *   | uint32 CRC-32 of everything before it (zlib.crc32: reflected 0xEDB88320, init/xorout 0xFFFFFFFF)
 *
 * Call easd_send_frame() with each DMA half-buffer of ADC samples (keep N fixed: the reader counts the
 * samples of lost frames as lost frames x N). The bitwise CRC costs 8 shift/xor steps per byte, about
 * 260 000 a second for one 16-kHz channel: a few percent of a small Cortex-M0, no 1-KiB table.
 *
 * Host test (what tests/test_pcm_framing.py does): cc -DEASD_DEMO easd_framing.c -o easd_demo
 *   ./easd_demo < samples.s16le > samples.easd      (frames of 256 samples from stdin's s16le)
 */
#include <stddef.h>
#include <stdint.h>

#define EASD_MAX_VALUES 4096u
#define EASD_VERSION 1u
#define EASD_FLAG_START 0x01u

typedef void (*easd_write_fn)(const uint8_t *bytes, size_t n); /* e.g. a UART or USB CDC transmit */

static uint32_t easd_crc32(uint32_t crc, const uint8_t *p, size_t n)
{
    while (n--) {
        crc ^= *p++;
        for (int k = 0; k < 8; k++)
            crc = (crc >> 1) ^ (0xEDB88320u & (0u - (crc & 1u)));
    }
    return crc;
}

/* Send n int16 values (1..4096). Returns 0, or -1 (nothing sent) when n is out of range. */
int easd_send_frame(easd_write_fn write, const int16_t *samples, uint16_t n)
{
    static uint16_t seq = 0;
    static uint8_t flags = EASD_FLAG_START;
    uint8_t head[9] = {'E', 'A', 'S', 'D', (uint8_t)(EASD_VERSION << 4 | flags),
                       (uint8_t)seq, (uint8_t)(seq >> 8), (uint8_t)n, (uint8_t)(n >> 8)};
    if (n == 0 || n > EASD_MAX_VALUES)
        return -1;
    uint32_t crc = easd_crc32(0xFFFFFFFFu, head, sizeof head);
    write(head, sizeof head);
    for (uint16_t i = 0; i < n; i++) { /* little-endian on any CPU; on a little-endian MCU this loop
                                          equals write((const uint8_t *)samples, 2u * n) */
        uint8_t le[2] = {(uint8_t)((uint16_t)samples[i]), (uint8_t)((uint16_t)samples[i] >> 8)};
        crc = easd_crc32(crc, le, 2);
        write(le, 2);
    }
    crc ^= 0xFFFFFFFFu;
    uint8_t tail[4] = {(uint8_t)crc, (uint8_t)(crc >> 8), (uint8_t)(crc >> 16), (uint8_t)(crc >> 24)};
    write(tail, sizeof tail);
    seq++;
    flags = 0;
    return 0;
}

#ifdef EASD_DEMO
#include <stdio.h>

static void write_stdout(const uint8_t *bytes, size_t n) { fwrite(bytes, 1, n, stdout); }

int main(void)
{
    uint8_t raw[2 * 256];
    int16_t samples[256];
    size_t got;
    while ((got = fread(raw, 1, sizeof raw, stdin)) >= 2) {
        for (size_t i = 0; i < got / 2; i++)
            samples[i] = (int16_t)(uint16_t)(raw[2 * i] | raw[2 * i + 1] << 8);
        easd_send_frame(write_stdout, samples, (uint16_t)(got / 2));
    }
    return 0;
}
#endif
