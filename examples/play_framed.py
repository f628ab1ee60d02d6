"""Play an audio file as framed raw PCM on stdout, the way a microcontroller would send it.

    python examples/play_framed.py clip.wav | edge-monitor --model fan.tflite --input - --pcm-framing framed
    python examples/play_framed.py clip.wav --realtime --damage 3 | edge-monitor ... --pcm-framing framed

The file is decoded, mixed down and resampled to ``--rate`` (the model's, 16 kHz for both presets),
rounded to int16 and cut into frames of ``--frame-samples`` samples (the format: README, "Raw PCM
framing", and ``edge_asd.firmware_io.pcm_framing``). ``--damage N`` flips one bit in N random frames
(seeded), so the monitor's summary shows the corrupt and lost frames it skipped; ``--realtime`` paces
the frames at the sample rate like a live sender. examples/firmware/easd_framing.c is the C sender.
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np

from edge_asd.core.errors import EdgeAsdError
from edge_asd.firmware_io.audio_file import read_audio
from edge_asd.firmware_io.pcm_framing import FLAG_START, MAX_VALUES, encode_frame


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("audio", help="WAV/FLAC file")
    ap.add_argument("--rate", type=int, default=16000, help="sample rate sent, Hz (the model's)")
    ap.add_argument("--frame-samples", type=int, default=256, help=f"samples per frame (1..{MAX_VALUES})")
    ap.add_argument("--realtime", action="store_true", help="pace the frames at the sample rate")
    ap.add_argument("--damage", type=int, default=0, help="flip one bit in this many random frames")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    if not 1 <= args.frame_samples <= MAX_VALUES:
        ap.error(f"--frame-samples must be 1..{MAX_VALUES}")

    try:
        audio = read_audio(args.audio, args.rate)  # float32 in [-1, 1], mono
    except EdgeAsdError as e:
        sys.exit(f"Error: {e}")
    samples = np.clip(np.round(audio * 32768.0), -32768, 32767).astype(np.int16)
    starts = range(0, len(samples), args.frame_samples)
    rng = np.random.default_rng(args.seed)
    damaged = set(rng.choice(len(starts), size=min(args.damage, len(starts)), replace=False).tolist())
    out, t0 = sys.stdout.buffer, time.monotonic()
    for k, lo in enumerate(starts):
        frame = bytearray(encode_frame(samples[lo:lo + args.frame_samples], k, FLAG_START if k == 0 else 0))
        if k in damaged:
            bit = int(rng.integers(8 * len(frame)))
            frame[bit // 8] ^= 1 << (bit % 8)
        if args.realtime:
            time.sleep(max(0.0, t0 + lo / args.rate - time.monotonic()))
        try:
            out.write(frame)
            out.flush()
        except BrokenPipeError:  # the reader stopped
            break
    if damaged:
        print(f"play_framed: flipped one bit in frames {sorted(damaged)}", file=sys.stderr)


if __name__ == "__main__":
    main()
