"""Scoring runs: metrics against ground truth, the HTML report of a run, the paper's ablation rows."""
