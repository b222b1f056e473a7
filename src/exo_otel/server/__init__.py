"""The state manager side: exo_otel inside the state manager, where the node queues live.

It gives every run its context at trigger time (the sampling decision, made once, and the caller's
baggage), carries that context to every state in the enqueue answer, and emits the run root
``run {graph_name}`` and every state's ``node {identifier}`` span, each exactly once across state
manager processes. One core (``context``, ``records``, ``spans``, ``sweeper``, ``side``) behind a
storage protocol (``store``), and two adapters: the upstream state manager's patches
(``upstream``, ``mongo_store``, ``instrumentor``) and the embedded state manager
(``exo_otel_demo.embedded.server_side``).

It may import `exo_otel.core`, never the SDK side, the embedded server or the demo.
"""
