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
