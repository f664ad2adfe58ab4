"""Raw logs -> training data: schema, sequences, Rerank-DPO pairs, features (no Ray here)."""
