"""AU relations (co-occurrence, pair probabilities) and the figures drawn from them."""
