"""The device boundary: audio sources (files, raw PCM on stdin or serial, microphone) and event sinks.

Every source yields mono float32 blocks in [-1, 1] at the model's sample rate.
"""
