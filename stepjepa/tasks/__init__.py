"""Generated tasks in GSM8K's format, selected by `data.source` (one module per task)."""
