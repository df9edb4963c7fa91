"""The loadgroup scheduler with kept pending counts schedules exactly as xdist's own: a simulated
two-worker run compares every decision (what each worker is sent, when the run is finished) and
every pending count with xdist's recount after each test report."""

from __future__ import annotations

import random
from types import SimpleNamespace

import pytest

xdist_scheduler = pytest.importorskip("xdist.scheduler")

from bnconform.interfaces.xdist_scheduling import CountingLoadGroupScheduling  # noqa: E402


class FakeNode:
    """A worker as the scheduler sees it: records the batches of indexes it is sent."""

    def __init__(self, name):
        self.name, self.sent, self.shutting_down = name, [], False
        self.gateway = SimpleNamespace(id=name)

    def send_runtest_some(self, indexes):
        self.sent.append(list(indexes))

    def shutdown(self):
        self.shutting_down = True


def _collection():
    """Unit tests grouped by module, two host groups of cells and a few ungrouped tests."""
    ids = [f"tests/test_a.py::t{i}@test_a" for i in range(7)] + [f"tests/test_b.py::t{i}" for i in range(3)]
    ids += [f"cases/f/c{i}.json::jax-cpu@jaxhost" for i in range(40)]
    ids += [f"cases/f/c{i}.json::tf-cpu@tfhost" for i in range(25)]
    return ids


def _simulate(cls, seed):
    config = SimpleNamespace(getvalue=lambda name: ["2*popen"], option=SimpleNamespace(loadscopereorder=False))
    sched, nodes, rng = cls(config), [FakeNode("gw0"), FakeNode("gw1")], random.Random(seed)
    collection, trace = _collection(), []
    for node in nodes:
        sched.add_node(node)
        sched.add_node_collection(node, collection)
    sched.schedule()
    while sched.has_pending:
        node = rng.choice([n for n in nodes if any(not done for unit in sched.assigned_work[n].values()
                                                   for done in unit.values())])
        index = next(i for batch in node.sent for i in batch if not _completed(sched, node, collection[i]))
        sched.mark_test_complete(node, index)
        recount = [xdist_scheduler.LoadGroupScheduling._pending_of(sched, sched.assigned_work[n]) for n in nodes]
        trace.append((node.name, index, [sched._pending_of(sched.assigned_work[n]) for n in nodes], recount,
                      [list(map(list, n.sent)) for n in nodes], sched.tests_finished))
    return trace


def _completed(sched, node, nodeid):
    return sched.assigned_work[node][sched._split_scope(nodeid)][nodeid]


@pytest.mark.parametrize("seed", range(5))
def test_counts_and_decisions_match_xdist_for_a_random_completion_order(seed):
    ours, theirs = _simulate(CountingLoadGroupScheduling, seed), _simulate(xdist_scheduler.LoadGroupScheduling, seed)
    assert len(ours) == len(_collection())  # every test reported exactly once
    for step, (mine, upstream) in enumerate(zip(ours, theirs)):
        assert mine[2] == mine[3], f"step {step}: kept counts {mine[2]}, but xdist recounts {mine[3]}"
        assert mine[:2] + mine[3:] == upstream[:2] + upstream[3:], f"step {step}: a scheduling decision differs"
