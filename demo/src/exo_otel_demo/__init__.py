"""exo-otel-demo: the embedded state manager (`exo_otel_demo.embedded`), the demo, the ``exo-otel`` command.

A distribution of its own beside the instrumentation (``exo-otel``): runtimes and state managers install
the instrumentation only. It may import every part of exo_otel; exo_otel never imports it.
"""
