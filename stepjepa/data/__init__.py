"""Data: raw GSM8K (or the arith task) to step-split chat conversations to token ids and step spans."""
