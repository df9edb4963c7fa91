"""The execution layer: planning cells (plan), host processes that run adapters (host), their
controller-side handles (controller), the scheduler behind ``bnconform run`` (scheduler), and
the single-process developer loop (inprocess)."""
