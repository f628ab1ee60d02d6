"""Desktop trainer (PyTorch): the paper's autoencoders and the RE, SNP and BU losses.

Koizumi et al. 2019, "Batch Uniformization for Minimizing Maximum Anomaly Score of DNN-based Anomaly
Detection in Sounds", arXiv 1907.08338. Features come from ``edge_asd.core.features``, the same code
the device runs.
"""
