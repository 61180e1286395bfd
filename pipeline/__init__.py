"""actsearch: one-shot search for activation functions, and their evaluation by retraining."""
