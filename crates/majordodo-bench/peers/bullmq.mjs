// BullMQ driver of `majordodo-bench compare`: runs one workload against the Redis on
// 127.0.0.1:$REDIS_PORT and prints one JSON line with what it measured (times in ms, rates
// per second). The bench copies it next to node_modules (installed from package-lock.json).
//
//   node bullmq.mjs burn-down N WORKER_PROCS CONCURRENCY   submit N in addBulk(1 000), 4 in flight,
//                                                          with the workers connected but paused;
//                                                          then release the workers
//   node bullmq.mjs submit seq|c64|batch N                 one add at a time, 64 adds in flight,
//                                                          or addBulk of 1 000 one at a time
//   node bullmq.mjs latency RATE SECONDS                   open loop: one add every 1/RATE s
//                                                          (not awaited), submit -> start
//
// Every job is removed on completion (nothing accumulates), and every wait is bounded.
import { Queue, Worker } from 'bullmq';
import IORedis from 'ioredis';
import { fork } from 'node:child_process';
import { fileURLToPath } from 'node:url';

const PORT = Number(process.env.REDIS_PORT);
const LIMIT_MS = Number(process.env.DRIVER_TIMEOUT_MS || 600000);
const QUEUE = 'bench';
const JOB = { removeOnComplete: true, removeOnFail: true };
const redis = () => new IORedis({ host: '127.0.0.1', port: PORT, maxRetriesPerRequest: null });
const wall = () => performance.timeOrigin + performance.now();
const fail = (msg) => { console.error(`bullmq driver: ${msg}`); process.exit(1); };
setTimeout(() => fail(`gave up after ${LIMIT_MS} ms`), LIMIT_MS).unref();

function quantile(sorted, q) {
  if (sorted.length === 0) return null;
  return sorted[Math.min(sorted.length - 1, Math.max(0, Math.ceil(q * sorted.length) - 1))];
}

// A worker process: connects paused, runs every job as a no-op once told to, and reports how
// many jobs completed and when the last one did.
async function workerProcess() {
  const w = new Worker(QUEUE, async () => {}, {
    connection: redis(), concurrency: Number(process.env.CONCURRENCY), autorun: false,
  });
  let done = 0, reported = 0, last = 0;
  const report = () => {
    if (done > reported) { process.send({ done: done - reported, last }); reported = done; }
  };
  w.on('completed', () => { done++; last = wall(); });
  w.on('failed', (_job, e) => process.send({ error: String(e) }));
  const tick = setInterval(report, 5);
  await w.waitUntilReady();
  process.on('message', async (m) => {
    if (m === 'run') w.run().catch((e) => process.send({ error: String(e) }));
    if (m === 'stop') { clearInterval(tick); report(); await w.close(); process.exit(0); }
  });
  process.send({ ready: true });
}

async function burnDown(n, procs, concurrency) {
  const q = new Queue(QUEUE, { connection: redis() });
  await q.waitUntilReady();
  const kids = [];
  let done = 0, lastFinish = 0, allDone;
  const finished = new Promise((r) => { allDone = r; });
  for (let i = 0; i < procs; i++) {
    const kid = fork(fileURLToPath(import.meta.url), [], {
      env: { ...process.env, BULLMQ_ROLE: 'worker', CONCURRENCY: String(concurrency) },
    });
    kids.push(kid);
  }
  await Promise.all(kids.map((k) => new Promise((r) => k.once('message', r))));
  for (const k of kids) {
    k.on('message', (m) => {
      if (m.error) fail(`worker: ${m.error}`);
      done += m.done; lastFinish = Math.max(lastFinish, m.last);
      if (done >= n) allDone();
    });
  }
  const firstSubmit = wall();
  let next = 0;
  const submitter = async () => {
    while (next < n) {
      const k = Math.min(1000, n - next);
      const from = next; next += k;
      const jobs = [];
      for (let j = 0; j < k; j++) jobs.push({ name: 'noop', data: { i: from + j }, opts: JOB });
      await q.addBulk(jobs);
    }
  };
  await Promise.all([submitter(), submitter(), submitter(), submitter()]);
  const lastSubmit = wall();
  const waiting = await q.getWaitingCount();
  const release = wall();
  kids.forEach((k) => k.send('run'));
  await finished;
  kids.forEach((k) => k.send('stop'));
  await Promise.all(kids.map((k) => (k.exitCode !== null ? null : new Promise((r) => k.once('exit', r)))));
  await q.close();
  return {
    tasks: n, waiting_before_release: waiting,
    submit_per_s: n / ((lastSubmit - firstSubmit) / 1000),
    drain_per_s: n / ((lastFinish - release) / 1000),
    total_per_s: n / ((lastFinish - firstSubmit) / 1000),
  };
}

// Redis's used_memory, in bytes.
async function usedMemory(conn) {
  const info = await conn.info('memory');
  return Number(/used_memory:(\d+)/.exec(info)[1]);
}

async function submit(mode, n) {
  const conn = redis();
  const q = new Queue(QUEUE, { connection: conn });
  await q.waitUntilReady();
  const memoryBefore = await usedMemory(conn);
  const started = performance.now();
  let next = 0;
  if (mode === 'seq') {
    for (let i = 0; i < n; i++) await q.add('noop', { i }, JOB);
  } else if (mode === 'c64') {
    const lane = async () => { while (next < n) { const i = next++; await q.add('noop', { i }, JOB); } };
    await Promise.all(Array.from({ length: 64 }, lane));
  } else if (mode === 'batch') {
    while (next < n) {
      const k = Math.min(1000, n - next), jobs = [];
      for (let j = 0; j < k; j++) jobs.push({ name: 'noop', data: { i: next + j }, opts: JOB });
      next += k;
      await q.addBulk(jobs);
    }
  } else fail(`unknown submit mode ${mode}`);
  const secs = (performance.now() - started) / 1000;
  const waiting = await q.getWaitingCount();
  const perJob = (await usedMemory(conn) - memoryBefore) / n;
  await q.obliterate({ force: true });
  await q.close();
  if (waiting !== n) fail(`${waiting} jobs waiting after ${n} adds`);
  // Redis's memory per waiting job, from the largest of the runs (the batch one).
  return mode === 'batch' ? { tasks: n, per_s: n / secs, used_memory_per_job: perJob } : { tasks: n, per_s: n / secs };
}

async function latency(rate, seconds) {
  const q = new Queue(QUEUE, { connection: redis() });
  await q.waitUntilReady();
  const warm = Math.round(rate), total = Math.round(rate * (seconds + 1));
  const delays = [];
  let started = 0, errors = 0, allStarted;
  const everything = new Promise((r) => { allStarted = r; });
  // Workers in this process, so submit and start are read on one clock.
  const workers = [0, 1].map(() => new Worker(QUEUE, async (job) => {
    const now = performance.now();
    if (job.data.i >= warm) delays.push(now - job.data.t);
    if (++started === total) allStarted();
  }, { connection: redis(), concurrency: 64 }));
  await Promise.all(workers.map((w) => w.waitUntilReady()));
  await new Promise((r) => setTimeout(r, 300));
  const base = performance.now();
  for (let i = 0; i < total; i++) {
    const wait = base + (i * 1000) / rate - performance.now();
    if (wait > 0) await new Promise((r) => setTimeout(r, wait));
    q.add('noop', { i, t: performance.now() }, JOB).catch(() => errors++);
  }
  const offeredSecs = (performance.now() - base) / 1000;
  const late = setTimeout(() => fail(`only ${started} of ${total} jobs started`), 60000);
  await everything;
  clearTimeout(late);
  await Promise.all(workers.map((w) => w.close()));
  await q.close();
  if (errors) fail(`${errors} adds failed`);
  delays.sort((a, b) => a - b);
  return {
    samples: delays.length, achieved_per_s: total / offeredSecs,
    p50_ms: quantile(delays, 0.5), p99_ms: quantile(delays, 0.99),
    p999_ms: quantile(delays, 0.999), max_ms: quantile(delays, 1),
  };
}

async function main() {
  const [what, ...args] = process.argv.slice(2);
  const admin = redis();
  await admin.flushall();
  const fsync = (await admin.config('GET', 'appendfsync'))[1];
  if (fsync !== 'always') fail(`Redis appendfsync is ${fsync}, not always`);
  let result;
  if (what === 'burn-down') result = await burnDown(Number(args[0]), Number(args[1]), Number(args[2]));
  else if (what === 'submit') result = await submit(args[0], Number(args[1]));
  else if (what === 'latency') result = await latency(Number(args[0]), Number(args[1]));
  else fail(`unknown workload ${what}`);
  await admin.flushall();
  await admin.quit();
  console.log(JSON.stringify(result));
  process.exit(0);
}

(process.env.BULLMQ_ROLE === 'worker' ? workerProcess() : main()).catch((e) => fail(e.stack || String(e)));
