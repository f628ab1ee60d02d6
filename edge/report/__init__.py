"""edge-report's pictures: what to draw and the HTML page (``build``), drawn by ``plots`` (matplotlib;
never imported by edge-monitor)."""
