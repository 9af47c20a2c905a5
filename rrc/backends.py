"""Which queue a node's tasks wait in: the one small interface submission,
the runner, pipelines, moves and recovery ask (``check``, ``enqueue``,
``take``, ``place``, ``wait_on``, ``dispatch``), with two implementations: ``backend = local`` (this node's
slots, ``queue.LocalQueue``, the default) and ``backend = rq`` (a farm's
Redis, ``farmqueue.FarmQueue``)."""


def task_queue(store, config):
    """The queue of ``config``'s backend."""
    if config.backend == 'rq':
        from .farmqueue import FarmQueue
        return FarmQueue(store, config)
    from .queue import LocalQueue
    return LocalQueue(store, config)


def move_waiting_task(store, config, task_id, to, by):
    """``move``: a queued task to the front or back of its queue, in the
    store's order and, on a farm, in Redis; a farm's Redis down is refused
    (503) before the store's order changes.  The record as moved."""
    from .order import move_in_queue
    queue = task_queue(store, config)
    queue.check()
    record = move_in_queue(store, task_id, to, by=by)
    queue.place(record)  # a farm's Redis holds its queue: reordered there
    return record
