"""Benchmarks behind `penstock bench`: seeded workloads, Penstock's side, and the peer it is measured against."""
