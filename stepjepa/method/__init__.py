"""The method: Step-JEPA layouts, attention masks, batches, the forward pass and the JEPA losses."""
