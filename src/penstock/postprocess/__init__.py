"""Post-processing: the generated events → the choices a client receives (schema checks, citations, guardrails)."""
