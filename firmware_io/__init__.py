"""The device boundary: audio sources (files, raw PCM on stdin or serial, microphone) and event sinks.

Every source yields mono float32 blocks in [-1, 1] at the model's sample rate. ``blocks``: the block and
Gap types and the source interface the readers share; ``sources`` opens a source from its ``--input``
spelling (``audio_file``, ``pcm`` with ``pcm_framing``, ``mic`` with ``ring``); ``sinks`` write the JSON
lines.
"""
