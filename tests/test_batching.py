"""The micro-batching rule: size and wait bounds, order, and the poll timeout it implies."""
import pytest

from consumer.batching import MicroBatcher, flow_control


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


def test_an_idle_model_takes_whatever_is_waiting_without_the_batch_window():
    b = MicroBatcher(max_size=32, max_wait_s=10.0)
    b.add(["a"], now=0.0)
    assert not b.ready(now=0.001)  # model busy: keep filling the batch
    assert b.ready(now=0.001, idle=True)
    assert b.take() == ["a"]
    assert not b.ready(now=0.002, idle=True)  # nothing waiting: nothing to form


def test_take_serves_the_oldest_records_first_across_partitions():
    """A partition whose messages arrived in one big later chunk is not served after the earlier chunk."""
    b = MicroBatcher(max_size=4, max_wait_s=1.0, key=lambda it: it[0])
    b.add([("p0", 0, 10.0), ("p0", 1, 11.0), ("p0", 2, 12.0), ("p0", 3, 13.0)], now=0.0, stamps=[10, 11, 12, 13])
    b.add([("p5", 0, 1.0), ("p5", 1, 2.0)], now=0.1, stamps=[1, 2])
    assert b.take() == [("p5", 0, 1.0), ("p5", 1, 2.0), ("p0", 0, 10.0), ("p0", 1, 11.0)]
    assert b.take() == [("p0", 2, 12.0), ("p0", 3, 13.0)]


def test_take_keeps_each_partitions_own_order_even_if_its_timestamps_go_back():
    b = MicroBatcher(max_size=10, max_wait_s=1.0, key=lambda it: it[0])
    b.add([("a", 0), ("a", 1)], now=0.0, stamps=[5, 1])  # producer-set timestamps out of order
    b.add([("b", 0)], now=0.0, stamps=[3])
    assert b.take() == [("b", 0), ("a", 0), ("a", 1)]


def test_counts_and_drop_are_per_key():
    b = MicroBatcher(max_size=5, max_wait_s=1.0, key=lambda it: it[0])
    b.add([("x", 1), ("y", 1), ("x", 2)], now=0.0)
    assert b.counts() == {"x": 2, "y": 1}
    assert b.drop(lambda it: it[0] == "x") == 2
    assert b.counts() == {"y": 1} and len(b) == 1


def test_flow_control_pauses_only_the_partitions_holding_a_batch_and_resumes_at_low_water():
    held = {"p0": 40, "p1": 3, "p2": 32}
    pause, resume = flow_control(held, set(), ["p0", "p1", "p2", "p3"], high=32, low=16)
    assert pause == {"p0", "p2"} and resume == set()
    pause, resume = flow_control({"p0": 20, "p2": 16}, {"p0", "p2"}, ["p0", "p1", "p2", "p3"], high=32, low=16)
    assert pause == set() and resume == {"p2"}  # p0 above low water: stays paused, no flapping


def test_flow_control_ignores_partitions_no_longer_assigned():
    pause, resume = flow_control({"gone": 99}, {"old"}, ["p0"], high=4, low=2)
    assert pause == set() and resume == set()


def test_flow_control_rejects_inverted_water_marks():
    with pytest.raises(ValueError):
        flow_control({}, set(), [], high=2, low=2)
