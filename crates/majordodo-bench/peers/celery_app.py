"""The Celery application of `majordodo-bench compare`: Redis on 127.0.0.1:$REDIS_PORT as broker
(db 0) and result backend (db 1), acknowledgement after the task ran (acks_late), two no-op
tasks. The driver and the worker it starts both import it."""
import os
import time

from celery import Celery

PORT = int(os.environ["REDIS_PORT"])
app = Celery("bench", broker=f"redis://127.0.0.1:{PORT}/0", backend=f"redis://127.0.0.1:{PORT}/1")
app.conf.update(
    task_acks_late=True,
    task_default_queue="bench",
    broker_connection_retry_on_startup=True,
    worker_hijack_root_logger=False,
    result_expires=None,
)


@app.task(name="noop")
def noop(i):
    return i


@app.task(name="stamp")
def stamp(i, sent):
    """Returns how long after `sent` (wall clock, seconds) this task started."""
    return [i, time.time() - sent]
