"""Evaluation: batched greedy generation, answer scoring, held-out Step-2 NLL."""
