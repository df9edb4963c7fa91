"""xdist's ``loadgroup`` scheduler with its per-test bookkeeping made O(1) (imported only by xdist).

xdist 3.x (``LoadScopeScheduling``) answers "how many tests are pending on this worker?" by
walking every test ever assigned to it, after every test report, and finds each assigned test's
position with ``list.index`` over the whole collection: both quadratic in the number of tests.
With ~19,000 items (every case x backend cell) that was ~5-10 s of the controller's CPU on a
2-core machine, taken from the workers. This subclass keeps a running count of each workload's
pending tests and a node-id -> position map per worker; scheduling decisions are unchanged.
"""

from __future__ import annotations

from xdist.scheduler import LoadGroupScheduling


class CountingLoadGroupScheduling(LoadGroupScheduling):
    """``--dist loadgroup`` with pending counts kept up to date instead of recounted."""

    def __init__(self, config, log=None):
        super().__init__(config, log)
        self._pending: dict[int, int] = {}  # id(workload) -> its tests not yet completed
        self._positions: dict = {}  # node -> {node id: index in that node's collection}

    def add_node(self, node) -> None:
        super().add_node(node)
        self._pending[id(self.assigned_work[node])] = 0  # a new dict may reuse a dropped one's id

    def _pending_of(self, workload) -> int:
        return self._pending.get(id(workload), 0)

    def _assign_work_unit(self, node) -> None:
        scope, work_unit = self.workqueue.popitem(last=False)
        workload = self.assigned_work.setdefault(node, {})
        workload[scope] = work_unit
        if node not in self._positions:
            self._positions[node] = {nodeid: i for i, nodeid in enumerate(self.registered_collections[node])}
        positions = self._positions[node]
        indexes = [positions[nodeid] for nodeid, completed in work_unit.items() if not completed]
        self._pending[id(workload)] = self._pending.get(id(workload), 0) + len(indexes)
        node.send_runtest_some(indexes)

    def mark_test_complete(self, node, item_index: int, duration: float = 0) -> None:
        nodeid = self.registered_collections[node][item_index]
        workload = self.assigned_work[node]
        unit = workload[self._split_scope(nodeid)]
        if not unit[nodeid]:
            unit[nodeid] = True
            self._pending[id(workload)] -= 1
        self._reschedule(node)
