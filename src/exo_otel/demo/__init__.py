"""The demo and the ``exo-otel`` command line.

It may import every other part of exo_otel; nothing imports it.
"""
