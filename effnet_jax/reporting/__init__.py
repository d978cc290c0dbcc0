"""Pictures and prose from runs: plots, run summaries and results tables, model cards."""
