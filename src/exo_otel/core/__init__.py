"""The tracing core both sides share: run-derived ids, span building, attribute keys, metrics.

It imports nothing else of exo_otel.
"""
