"""Converter: a trained checkpoint -> self-describing TFLite (float32 or full-integer int8) and ONNX files.

Modules, from the command down:

- ``cli``: ``edge-convert``; parses options into ``run.ConvertOptions`` and calls ``run.write_model_files``.
- ``run``: the whole job as a Python function (plan the files, convert, measure, write the report).
- ``pipeline``: one checkpoint -> one sealed model file, loaded back the way the device loads it.
- ``tflite_export``, ``onnx_export``, ``representative``: the exporters and the int8 calibration frames;
  ``metadata``: the metadata a model file carries.
- ``parity``, ``report``: parity against the float model and the Markdown report.
- ``c_array``, ``micro``: tflite-micro C sources and the microcontroller measurements.
"""
