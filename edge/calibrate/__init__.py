"""Setting the threshold phi: the rules (``rules``), the extreme-value tail for a false-alarm budget
(``tail``); records go to the per-machine store, :mod:`edge_asd.edge.runtime.phi_store`."""
