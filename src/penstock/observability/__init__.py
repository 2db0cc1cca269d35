"""Cross-cutting: stage timing, logs, and (later) metrics, traces and the usage ledger."""
