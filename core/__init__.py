"""The kit's core: what the desktop and the device both need, in numpy and the standard library.

Features and their presets, the model-file format, the mini-batch builder (edge-train and edge-finetune
share it), clip metrics, machine-ID names, provenance digests, out-of-fold scores in the model file
(``oof``), atomic file writes, errors and what every command shares. The core imports nothing else of
edge_asd; every other package may import it (``tests/test_layers.py`` enforces the layering).
"""
