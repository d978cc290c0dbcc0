"""The metric math over labels and probabilities: classification metrics, bootstrap intervals, temperature scaling.

Plain numpy/scipy/scikit-learn; nothing here reads a file or knows a run directory.
"""
