"""Setting the threshold phi: normal recordings scored into window maxima (``recordings``), the rules
(``rules``), the extreme-value tail for a false-alarm budget (``tail``), the choice of the alert policy
(``votes``: ``--votes auto``), and edge-calibrate's workflow
(``fit``: fit phi, check it on held-out recordings, build the record); records go to the per-machine
store, :mod:`edge_asd.edge.runtime.phi_store`."""
