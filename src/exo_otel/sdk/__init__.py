"""The SDK side: the trigger and the runtime of the exospherehost SDK, patched.

It may import `exo_otel.core`, never the state manager side, the embedded server or the demo.
"""
