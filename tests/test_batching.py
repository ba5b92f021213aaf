"""The micro-batching rule: size and wait bounds, order, and the poll timeout it implies."""
import pytest

from consumer.batching import MicroBatcher


def test_batch_closes_when_full_and_never_exceeds_max_size():
    b = MicroBatcher(max_size=3, max_wait_s=10.0)
    b.add(range(7), now=0.0)
    assert b.ready(now=0.0)
    assert b.wait_s(now=0.0, cap=1.0) == 0.0
    assert [b.take(), b.take()] == [[0, 1, 2], [3, 4, 5]]
    assert not b.ready(now=0.0)  # one left, young: wait for more
    assert b.take_all() == [[6]]
    assert len(b) == 0


def test_partial_batch_closes_after_max_wait_of_its_oldest_item():
    b = MicroBatcher(max_size=10, max_wait_s=0.2)
    b.add(["a"], now=1.0)
    b.add(["b"], now=1.15)
    assert not b.ready(now=1.19)
    assert b.wait_s(now=1.1, cap=5.0) == pytest.approx(0.1)
    assert b.ready(now=1.25)
    assert b.take() == ["a", "b"]


def test_leftovers_keep_their_arrival_time():
    b = MicroBatcher(max_size=2, max_wait_s=0.5)
    b.add([1, 2], now=0.0)
    b.add([3], now=0.4)
    assert b.take() == [1, 2]
    assert not b.ready(now=0.8)
    assert b.ready(now=0.9)  # 0.5 after item 3 arrived, not after the take


def test_empty_batcher_waits_the_cap_and_room_is_at_least_one():
    b = MicroBatcher(max_size=2, max_wait_s=0.0)
    assert b.wait_s(now=0.0, cap=0.5) == 0.5 and not b.ready(now=99.0)
    b.add([1, 2, 3], now=0.0)
    assert b.room() == 1


def test_drop_forgets_matching_items_only():
    b = MicroBatcher(max_size=5, max_wait_s=1.0)
    b.add([("t", 0), ("t", 1), ("t", 0)], now=0.0)
    assert b.drop(lambda it: it[1] == 0) == 2
    assert b.take() == [("t", 1)]


@pytest.mark.parametrize("size,wait", [(0, 1.0), (1, -0.1)])
def test_rejects_nonsense_bounds(size, wait):
    with pytest.raises(ValueError):
        MicroBatcher(size, wait)
