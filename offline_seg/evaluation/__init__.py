"""Scoring runs: metrics against ground truth, oracle inputs from ground truth, the paper's ablation rows."""
