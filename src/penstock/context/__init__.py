"""Context builder: messages (and, later, retrieved passages) → the final prompt within a token budget."""
