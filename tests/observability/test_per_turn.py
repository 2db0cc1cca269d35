import asyncio

from penstock.observability.per_turn import PerTurn


def test_without_a_running_loop_an_item_is_handled_at_once_as_a_batch_of_one() -> None:
    handled: list[list[str]] = []
    PerTurn(handled.append).put("a")
    assert handled == [["a"]]


async def test_items_queued_in_one_loop_turn_are_handled_as_one_batch_in_order_at_the_next() -> None:
    handled: list[list[int]] = []
    batch = PerTurn(handled.append)
    for n in range(5):
        batch.put(n)
    assert handled == []  # still this turn
    await asyncio.sleep(0)
    assert handled == [[0, 1, 2, 3, 4]]
    batch.put(5)  # a new turn, a new batch
    await asyncio.sleep(0)
    assert handled == [[0, 1, 2, 3, 4], [5]]
    batch.flush()  # nothing queued: no empty batch
    assert handled == [[0, 1, 2, 3, 4], [5]]
