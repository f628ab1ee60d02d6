"""On-device fine-tuning without torch: edge-finetune's workflow (``workflow``), its steps with the guard
rail and rollback (``adapt``), the numpy BU trainer (``autoencoder``) and the weights read from and
written into the .tflite file (``tflite_weights``)."""
