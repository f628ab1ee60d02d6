"""Converter: a trained checkpoint -> self-describing TFLite (float32 or full-integer int8) and ONNX files."""
