"""Pick an audio source from the ``--input`` value: ``mic``, ``mic:INDEX``, ``-`` (stdin), or a file."""

from __future__ import annotations

import sys

from edge_asd.edge.errors import EdgeAsdError


def open_source(spec: str, sample_rate: int, block_samples: int, pcm_rate: int | None = None):
    """A source yielding mono float32 blocks at ``sample_rate`` Hz; raises EdgeAsdError on bad input."""
    if spec == "-":
        from .pcm import PcmSource

        return PcmSource(sys.stdin.buffer, sample_rate, block_samples, "stdin", declared_rate=pcm_rate)
    if spec == "mic" or spec.startswith("mic:"):
        from .mic import MicSource

        device = spec.partition(":")[2]
        if device and not device.isdigit():
            raise EdgeAsdError(f"--input {spec}: the device after 'mic:' must be an index number (see arecord -l)")
        return MicSource(sample_rate, block_samples, int(device) if device else None)
    from .audio_file import FileSource

    return FileSource(spec, sample_rate, block_samples)
