"""Evaluating a model on recordings (``score_folder``: edge-score's clip scores, AUC / pAUC and the loudness
reference); numpy and the inference backend only, as on the device."""
