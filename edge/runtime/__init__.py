"""The device runtime: model file -> scores (``scorer``), the alert policy's k-of-n votes and alarm (``alert``),
operation windows (``windows``), the running-max decision of eq. (11) (``decision``), the JSON event lines it
leads to (``events``), one input's streaming loop (``stream_loop``), several inputs in one process (``service``),
their configuration (``config``), evidence clips (``evidence``) and the phi store (``phi_store``) the monitor
reads and edge-calibrate writes."""
