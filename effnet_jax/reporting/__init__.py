"""Numbers and pictures from predictions and run directories: metrics, bootstrap intervals,
temperature scaling, plots, results tables, model cards.

Plain numpy/matplotlib over labels, probabilities and files; nothing here trains or restores.
"""
