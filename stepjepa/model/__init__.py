"""Models: the embedded tiny model, loading a base model and adding the predictor tokens, loading one to evaluate."""
