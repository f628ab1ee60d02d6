"""The device side: everything that runs next to the machine, on numpy and one inference backend.

- ``runtime``: model file -> anomaly scores -> windows -> events, for one input or several;
- ``calibrate``: the threshold phi per machine ID;
- ``finetune``: adapting the shipped model to its own machine, with rollback;
- ``report``: pictures of what the detector saw;
- ``cli``: the commands that parse options, call the above and print.

It imports :mod:`edge_asd.core`, :mod:`edge_asd.firmware_io` and :mod:`edge_asd.datasets`, never
``edge_asd.train`` or ``edge_asd.convert``, nor torch, onnx or librosa.
"""
