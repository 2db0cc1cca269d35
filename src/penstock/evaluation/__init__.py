"""Offline evaluation: labeled datasets and the retrieval metrics computed over them."""
