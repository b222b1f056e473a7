"""The example graph: names and node wiring shared by the runtime and the trigger."""

from __future__ import annotations

import os

from exospherehost import GraphNodeModel, RetryPolicyModel, RetryStrategyEnum, UnitesModel, UnitesStrategyEnum

NAMESPACE = os.environ.get("EXOSPHERE_NAMESPACE", "exo-otel-demo")
GRAPH_NAME = "score-batch"
RUNTIME_NAME = "exo-otel-example"


def graph_nodes(namespace: str = NAMESPACE) -> list[GraphNodeModel]:
    """fetch names the batch; split fans out one state per item; score runs per item; merge waits for
    all of them.

    A fan-out copies the fanned-out state (one copy per extra output), so the items share no split
    state: merge unites `fetch`, the node above the fan-out, and runs once per run. Uniting `split`
    would run merge once per item.
    """
    return [
        GraphNodeModel(
            node_name="FetchBatch",
            namespace=namespace,
            identifier="fetch",
            # Defaults for the root node; a trigger's inputs override them key by key.
            inputs={"batch_id": "batch-0", "size": "4"},
            next_nodes=["split"],
        ),
        GraphNodeModel(
            node_name="SplitBatch",
            namespace=namespace,
            identifier="split",
            inputs={"batch_id": "${{ fetch.outputs.batch_id }}", "size": "${{ fetch.outputs.size }}"},
            next_nodes=["score"],
        ),
        GraphNodeModel(
            node_name="ScoreItem",
            namespace=namespace,
            identifier="score",
            inputs={"item": "${{ split.outputs.item }}"},
            next_nodes=["merge"],
        ),
        GraphNodeModel(
            node_name="MergeScores",
            namespace=namespace,
            identifier="merge",
            # A unites node reads outputs of the node it unites (or that node's ancestors), not of the
            # branches. ALL_DONE: merge also runs when some items ended errored or pruned (the join is
            # considered when an item executes, so not when every item errored).
            inputs={"batch_id": "${{ fetch.outputs.batch_id }}"},
            unites=UnitesModel(identifier="fetch", strategy=UnitesStrategyEnum.ALL_DONE),
            next_nodes=["publish"],
        ),
        GraphNodeModel(
            node_name="PublishReport",
            namespace=namespace,
            identifier="publish",
            # A child of a unites node may not read that node's outputs: upstream counts only the united
            # node (fetch) and its ancestors as publish's parents, and refuses the graph otherwise.
            inputs={"summary": "${{ fetch.outputs.batch_id }}: all items done"},
        ),
    ]


def retry_policy() -> RetryPolicyModel:
    """One quick retry, so a flaky ScoreItem shows both an errored and an executed attempt."""
    return RetryPolicyModel(max_retries=1, strategy=RetryStrategyEnum.FIXED, backoff_factor=500)
