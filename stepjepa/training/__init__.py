"""Training: one run (`stepjepa train`), its optimizer-step loop, checkpoints and launcher."""
