"""The personal recommender: a causal self-attention model over a shopper's event sequence."""
