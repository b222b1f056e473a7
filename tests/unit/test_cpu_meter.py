"""`exo_otel.sdk.cpu_time` on its own: a metered coroutine returns, raises and is cancelled exactly as
the bare one, counts only its own steps, and executor calls made from its steps are added."""

from __future__ import annotations

import asyncio
import time

import pytest

from exo_otel.core.cpu_report import cpu_time_header, read_cpu_time_header
from exo_otel.sdk.cpu_time import CpuMeter, Metered, make_executor_wrapper, stepping_meter


def burn(ns: int) -> int:
    started = time.thread_time_ns()
    while time.thread_time_ns() - started < ns:
        pass
    return time.thread_time_ns() - started


async def test_the_value_and_the_exception_come_out_unchanged() -> None:
    async def answer() -> list[int]:
        await asyncio.sleep(0)
        return [1, 2]

    returned = [1, 2]

    async def fail() -> None:
        await asyncio.sleep(0)
        raise KeyError("k")

    assert await Metered(answer(), CpuMeter()) == returned
    with pytest.raises(KeyError) as raised:
        await Metered(fail(), CpuMeter())
    assert raised.value.args == ("k",)


async def test_a_cancellation_goes_in_and_a_caught_one_lets_the_node_go_on() -> None:
    seen = []

    async def stubborn() -> str:
        try:
            await asyncio.sleep(10)
        except asyncio.CancelledError:
            seen.append("cancelled")
        return "went on"

    async def plain() -> None:
        await asyncio.sleep(10)

    task = asyncio.ensure_future(Metered(stubborn(), CpuMeter()))
    await asyncio.sleep(0.01)
    task.cancel()
    assert await task == "went on" and seen == ["cancelled"]
    other = asyncio.ensure_future(Metered(plain(), CpuMeter()))
    await asyncio.sleep(0.01)
    other.cancel()
    with pytest.raises(asyncio.CancelledError):
        await other


async def test_only_its_own_steps_are_counted_while_another_coroutine_burns_between_them() -> None:
    async def node(ns: int) -> int:
        burned = 0
        for _ in range(3):
            burned += burn(ns)
            await asyncio.sleep(0.001)
        return burned

    mine, theirs = CpuMeter(), CpuMeter()
    # The other one burns 5x more in the same slices of the loop: none of it is ours.
    burned, _ = await asyncio.gather(Metered(node(5_000_000), mine), Metered(node(25_000_000), theirs))
    assert abs(mine.seconds - burned / 1e9) < 0.001
    assert theirs.seconds > 4 * mine.seconds


async def test_executor_calls_from_a_step_are_added_and_outside_a_step_are_not() -> None:
    wrapper = make_executor_wrapper(None)  # type: ignore[arg-type]
    loop = asyncio.get_running_loop()
    meter = CpuMeter()

    def run_in_executor(function: object, *args: object) -> asyncio.Future[int]:
        # The wrapper, as the instrumentor installs it on BaseEventLoop.run_in_executor.
        return wrapper(loop.run_in_executor, loop, (None, function, *args), {})  # type: ignore[no-any-return]

    async def node() -> int:
        assert stepping_meter() is meter
        return await run_in_executor(burn, 20_000_000)

    in_thread = await Metered(node(), meter)
    assert 0 <= meter.thread_ns - in_thread < 1_000_000  # the burn, and the call around it
    counted = meter.thread_ns
    await run_in_executor(burn, 1_000_000)  # no step is running: nobody's
    assert meter.thread_ns == counted
    assert stepping_meter() is None


def test_the_figure_is_fixed_when_first_read() -> None:
    meter = CpuMeter()
    meter.loop_ns = 1_500_000
    assert meter.seconds == 0.0015
    meter.add_thread(1_000_000)  # a thread still running at the report: not in the figure
    assert meter.seconds == 0.0015


@pytest.mark.parametrize("value", ["", "-1", "nan", "inf", "1e30", "0x10", "1" * 40, None, 3])
def test_a_header_that_is_no_measurement_is_ignored(value: object) -> None:
    assert read_cpu_time_header(value) is None


def test_the_header_reads_back_the_same_float() -> None:
    for seconds in (0.0, 1.6074e-05, 0.123456789012345, 12.5):
        assert read_cpu_time_header(cpu_time_header(seconds)) == seconds
