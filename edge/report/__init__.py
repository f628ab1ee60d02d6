"""edge-report's pictures (``plots``, matplotlib; never imported by edge-monitor)."""
