"""Numbers and pictures from predictions and run directories: metrics, plots, results tables.

Plain numpy/matplotlib over labels, probabilities and files; nothing here trains or restores.
"""
