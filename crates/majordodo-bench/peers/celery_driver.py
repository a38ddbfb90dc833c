"""Celery driver of `majordodo-bench compare`: runs one workload against the Redis on
127.0.0.1:$REDIS_PORT and prints one JSON line with what it measured.

    python celery_driver.py burn-down N POOL CONC     submit N (apply_async, 4 threads) while the
                                                      worker listens on another queue, then make it
                                                      consume them; completion = result stored
    python celery_driver.py submit seq|c64 N          one apply_async at a time, or 64 threads
    python celery_driver.py latency RATE SECS POOL CONC  open loop: one apply_async every 1/RATE s
                                                      (from a pool of threads), submit -> start

Celery has no bulk publish API, so there is no batch mode. Every wait is bounded."""
import json
import math
import os
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone

import redis

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
PORT = int(os.environ["REDIS_PORT"])
LIMIT_S = float(os.environ.get("DRIVER_TIMEOUT_MS", "600000")) / 1000
DB0 = redis.Redis(host="127.0.0.1", port=PORT, db=0)
DB1 = redis.Redis(host="127.0.0.1", port=PORT, db=1)

from celery_app import app, noop, stamp  # noqa: E402


def fail(msg):
    print(f"celery driver: {msg}", file=sys.stderr)
    sys.exit(1)


def quantile(sorted_values, q):
    if not sorted_values:
        return None
    i = max(0, min(len(sorted_values) - 1, math.ceil(q * len(sorted_values)) - 1))
    return sorted_values[i]


def publish(task, args_of, indices):
    """Publishes task(*args_of(i)) for each i, on one pooled producer connection."""
    with app.producer_or_acquire() as producer:
        for i in indices:
            task.apply_async(args=args_of(i), producer=producer)


def publish_threads(task, args_of, n, threads):
    shares = [range(t, n, threads) for t in range(threads)]
    with ThreadPoolExecutor(threads) as pool:
        for f in [pool.submit(publish, task, args_of, s) for s in shares]:
            f.result()


class CeleryWorker:
    """A worker process of our own, consuming `queue`, stopped (and killed if it must be) on exit."""

    def __init__(self, queue, pool, concurrency):
        self.name = f"bench{os.getpid()}@{socket.gethostname()}"
        self.log = open(os.path.join(HERE, "celery-worker.log"), "w")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "celery_app", "worker", "-P", pool,
             "-c", str(concurrency), "-Q", queue, "-n", self.name, "-l", "WARNING",
             "--without-gossip", "--without-mingle", "--without-heartbeat"],
            cwd=HERE, stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.time() + 60
        while not app.control.ping(destination=[self.name], timeout=0.5):
            if self.proc.poll() is not None or time.time() > deadline:
                self.close()
                fail("the celery worker did not start; see celery-worker.log")

    def close(self):
        self.proc.terminate()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)
        self.log.close()


def wait_results(n, deadline):
    while DB1.dbsize() < n:
        if time.time() > deadline:
            fail(f"only {DB1.dbsize()} of {n} results stored")
        time.sleep(0.005)


def results():
    keys = list(DB1.scan_iter(match="celery-task-meta-*", count=1000))
    for i in range(0, len(keys), 1000):
        for raw in DB1.mget(keys[i:i + 1000]):
            yield json.loads(raw)


def burn_down(n, pool, concurrency):
    worker = CeleryWorker("hold", pool, concurrency)
    try:
        first_submit = time.time()
        publish_threads(noop, lambda i: (i,), n, 4)
        last_submit = time.time()
        waiting = DB0.llen("bench")
        release = time.time()
        app.control.add_consumer("bench", destination=[worker.name], reply=True, timeout=5)
        wait_results(n, time.time() + LIMIT_S)
        seen = time.time()
    finally:
        worker.close()
    last_finish = 0.0
    for r in results():
        done = datetime.fromisoformat(r["date_done"])
        if done.tzinfo is None:
            done = done.replace(tzinfo=timezone.utc)
        last_finish = max(last_finish, done.timestamp())
    last_finish = min(last_finish or seen, seen)
    return {
        "tasks": n, "waiting_before_release": waiting,
        "submit_per_s": n / (last_submit - first_submit),
        "drain_per_s": n / (last_finish - release),
        "total_per_s": n / (last_finish - first_submit),
    }


def submit(mode, n):
    started = time.perf_counter()
    if mode == "seq":
        publish(noop, lambda i: (i,), range(n))
    elif mode == "c64":
        publish_threads(noop, lambda i: (i,), n, 64)
    else:
        fail(f"unknown submit mode {mode} (Celery has no bulk publish API)")
    secs = time.perf_counter() - started
    waiting = DB0.llen("bench")
    if waiting != n:
        fail(f"{waiting} messages waiting after {n} publishes")
    return {"tasks": n, "per_s": n / secs}


def latency(rate, seconds, pool, concurrency):
    warm, total = int(rate), int(rate * (seconds + 1))
    worker = CeleryWorker("bench", pool, concurrency)
    try:
        time.sleep(0.3)
        errors = []
        sem = threading.BoundedSemaphore(64)

        def one(i):
            try:
                stamp.apply_async(args=(i, time.time()))
            except Exception as e:  # noqa: BLE001 - reported below
                errors.append(e)
            finally:
                sem.release()

        base = time.perf_counter()
        with ThreadPoolExecutor(64) as pool:
            for i in range(total):
                wait = base + i / rate - time.perf_counter()
                if wait > 0:
                    time.sleep(wait)
                sem.acquire()
                pool.submit(one, i)
            offered = time.perf_counter() - base
        if errors:
            fail(f"{len(errors)} publishes failed: {errors[0]}")
        wait_results(total, time.time() + 120)
    finally:
        worker.close()
    delays = sorted(r["result"][1] * 1000 for r in results() if r["result"][0] >= warm)
    return {
        "samples": len(delays), "achieved_per_s": total / offered,
        "p50_ms": quantile(delays, 0.5), "p99_ms": quantile(delays, 0.99),
        "p999_ms": quantile(delays, 0.999), "max_ms": quantile(delays, 1.0),
    }


def main():
    what, args = sys.argv[1], sys.argv[2:]
    DB0.flushall()
    fsync = DB0.config_get("appendfsync")["appendfsync"]
    if fsync != "always":
        fail(f"Redis appendfsync is {fsync}, not always")
    timer = threading.Timer(LIMIT_S, lambda: os._exit(3))
    timer.daemon = True
    timer.start()
    if what == "burn-down":
        result = burn_down(int(args[0]), args[1], int(args[2]))
    elif what == "submit":
        result = submit(args[0], int(args[1]))
    elif what == "latency":
        result = latency(float(args[0]), float(args[1]), args[2], int(args[3]))
    else:
        fail(f"unknown workload {what}")
    DB0.flushall()
    print(json.dumps(result))


if __name__ == "__main__":
    main()
