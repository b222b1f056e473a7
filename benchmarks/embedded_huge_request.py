"""How responsive the embedded state manager stays while it handles one huge request.

A server (``exo-otel state-manager``, its own process) gets one ``executed`` call with OUTPUTS outputs
(a fan-out of that many copies, then as many next states in the background). Meanwhile a second client
sends a small request every 10 ms. Printed: the huge call's duration, and the small requests' latency
(median and worst) before, during the huge call, and while its next states are made, as a ratio of
the baseline measured in the same run.

    .venv/bin/python benchmarks/embedded_huge_request.py [OUTPUTS] [--empty]

``--empty`` sends empty outputs (``{}``, under 1 MB in all, as in the report that found the stall;
their next states then fail for want of the field, which is work too).
"""

from __future__ import annotations

import asyncio
import json
import statistics
import subprocess
import sys
import time

import aiohttp

TEXT = {"type": "object", "properties": {"text": {"type": "string"}}, "required": ["text"]}
NS = "huge"


async def _pinger(session: aiohttp.ClientSession, uri: str, key: str, samples: list[tuple[float, float]],
                  stop: asyncio.Event) -> None:
    while not stop.is_set():
        started = time.perf_counter()
        async with session.get(f"{uri}/v0/namespaces", headers={"x-api-key": key}) as response:
            await response.read()
        samples.append((started, time.perf_counter() - started))
        await asyncio.sleep(0.01)


def _summary(samples: list[tuple[float, float]], start: float, end: float) -> tuple[float, float, int]:
    window = [latency for at, latency in samples if start <= at < end] or [0.0]
    return statistics.median(window) * 1000, max(window) * 1000, len(window)


async def main(outputs: int, empty: bool) -> None:
    proc = subprocess.Popen([sys.executable, "-m", "exo_otel_demo.cli", "state-manager", "--port", "0"],
                            stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        settings = dict(proc.stdout.readline().strip().split("=", 1) for _ in range(2))
        uri, key = settings["EXOSPHERE_STATE_MANAGER_URI"], settings["EXOSPHERE_API_KEY"]
        headers = {"x-api-key": key}
        async with aiohttp.ClientSession() as session, aiohttp.ClientSession() as pings:
            base = f"{uri}/v0/namespace/{NS}"
            nodes = [{"name": "Step", "inputs_schema": TEXT, "outputs_schema": TEXT, "secrets": []}]
            await session.put(f"{base}/nodes/", json={"runtime_name": "r", "nodes": nodes}, headers=headers)
            graph = [{"node_name": "Step", "namespace": NS, "identifier": "a", "inputs": {"text": "x"},
                      "next_nodes": ["b"]},
                     {"node_name": "Step", "namespace": NS, "identifier": "b",
                      "inputs": {"text": "${{ a.outputs.text }}"}}]
            await session.put(f"{base}/graph/g", json={"secrets": {}, "nodes": graph}, headers=headers)
            await asyncio.sleep(0.2)
            await session.post(f"{base}/graph/g/trigger", json={}, headers=headers)
            async with session.post(f"{base}/states/enqueue", json={"nodes": ["Step"], "batch_size": 1},
                                    headers=headers) as response:
                state_id = (await response.json())["states"][0]["state_id"]
            items = [{} if empty else {"text": str(i)} for i in range(outputs)]
            body = json.dumps({"outputs": items}).encode()

            samples: list[tuple[float, float]] = []
            stop = asyncio.Event()
            pinger = asyncio.create_task(_pinger(pings, uri, key, samples, stop))
            await asyncio.sleep(1.0)
            started = time.perf_counter()
            async with session.post(f"{base}/state/{state_id}/executed", data=body,
                                    headers={**headers, "content-type": "application/json"}) as response:
                answer = (response.status, await response.json())
            answered = time.perf_counter()
            await asyncio.sleep(8.0)  # the next states are made in the background meanwhile
            stop.set()
            await pinger
        print(f"executed with {outputs:,} outputs ({len(body) / 1e6:.1f} MB): {answer} "
              f"in {answered - started:.2f} s")
        base_median, base_max, _ = _summary(samples, 0, started)
        for name, (start, end) in {"before": (0.0, started), "during the call": (started, answered),
                                   "8 s after": (answered, answered + 8)}.items():
            median, worst, count = _summary(samples, start, end)
            print(f"  small requests {name:>15}: n={count:4d}  median {median:7.1f} ms "
                  f"({median / base_median:5.1f}x)  worst {worst:7.1f} ms ({worst / base_max:5.1f}x)")
    finally:
        proc.terminate()
        proc.wait(60)


if __name__ == "__main__":
    numbers = [arg for arg in sys.argv[1:] if arg.isdigit()]
    asyncio.run(main(int(numbers[0]) if numbers else 250_001, "--empty" in sys.argv))
