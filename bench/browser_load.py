"""Feature browser under load: many concurrent clients on loopback, some of them steering (goal: zero 5xx).

    nice -n 5 python bench/browser_load.py --run runs/demo [--clients 32] [--steerers 8] [--seconds 30]
                                           [--max-queue 4] [--abandon-seconds 2] [--seed 0]

What is measured
  * ``difflens browse RUN`` is started as a separate process on 127.0.0.1 (a free port) with ``--max-queue`` and
    ``--abandon-seconds``; the browser only reads the run, so the run folder is used in place. A short crawl
    (index page, each dictionary's feature table, 12 feature pages each, 8 image pages) collects the URLs the load
    draws from: feature tables (sorted, filtered, paged), feature pages, overlays, image pages, stored images and
    reconstruction-error maps. The server is then restarted (unless ``--warm``), so the clients arrive together at
    a server with nothing loaded: indexes, tables, decoder directions and codes are made under concurrent requests.
  * ``--clients`` threads (std-lib http.client, one keep-alive connection each; bounded by ``--seconds``) browse
    those pages at random, seeded, without pauses. ``--steerers`` of them (at most 8) also steer, as the page's
    script does: POST /api/steer, poll /api/steer/<job> every 250 ms until the job ends, post the next one; a
    refusal (queue full) is timed and its reason kept, and the client retries after a second.
  * The queue is checked while the load runs: every done job's start order must follow its id (first come, first
    served); one deserter posts a job and never polls it again (a closed tab): it must be dropped unrun once it
    has gone ``--abandon-seconds`` unpolled; another posts and cancels (DELETE, what the page sends when it is
    closed): it must never run; a burst of ``max_queue + 2`` posts must see the excess refused at once, naming
    the reason.
  * Ten clients hang up mid-request (half a steering body sent; an overlay asked for and the socket closed): the
    server must log no error for them.
  * Reported: requests/s, p50/p95/p99 latency per page kind, status counts (5xx and connection errors are
    failures), errors the server logged, its peak RSS (VmHWM of /proc/PID/status) and the queue checks.

The last printed line is JSON with every figure.
"""

import os

for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse  # noqa: E402
import http.client  # noqa: E402
import json  # noqa: E402
import random  # noqa: E402
import re  # noqa: E402
import socket  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402
from collections import defaultdict  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

HOST = "127.0.0.1"
MAX_CLIENTS, MAX_SECONDS = 64, 120  # the bench stays bounded whatever it is asked
POLL_S = 0.25  # the page's script polls a steering job this often
PAGE_KINDS = ("table", "feature", "overlay", "image", "img", "errmap")
PAGE_WEIGHTS = (0.15, 0.3, 0.25, 0.1, 0.12, 0.08)


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def start_server(run: str, port: int, max_queue: int, abandon_s: float, log) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "difflens.cli", "browse", run, "--host", HOST, "--port", str(port),
           "--max-queue", str(max_queue), "--abandon-seconds", str(abandon_s)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=log)
    deadline = time.time() + 120
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the browser exited with {proc.returncode}; its log: {log.name}")
        try:
            with socket.create_connection((HOST, port), timeout=1):
                return proc
        except OSError:
            time.sleep(0.2)
    proc.kill()
    raise RuntimeError("the browser did not start within 120 s")


def stop_server(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(10)


def rss_mb(pid: int, field: str = "VmHWM") -> float | None:
    """The server's peak (VmHWM) or current (VmRSS) resident memory, MB; None where /proc has no such file."""
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    m = re.search(rf"{field}:\s+(\d+) kB", text)
    return round(int(m.group(1)) / 1024, 1) if m else None


def sample_rss(pid: int, until: float, out: dict) -> None:
    """Resident memory every half second until ``until`` (perf_counter), all of it (VmRSS) and the anonymous part
    (RssAnon: the heap; the rest is mapped files, e.g. the store's shards as pages are read): a heap that keeps
    growing under a steady load leaks."""
    while time.perf_counter() < until:
        for field in ("VmRSS", "RssAnon"):
            out.setdefault(field, []).append(rss_mb(pid, field))
        time.sleep(0.5)


class Connection:
    """One client's keep-alive connection (one thread's); every request is timed and recorded under its page kind,
    and its time kept as ``last_ms``."""

    def __init__(self, port: int, record):
        self.port, self.record, self.conn, self.last_ms = port, record, None, 0.0

    def request(self, kind: str, method: str, path: str, body: dict | None = None) -> tuple[int, bytes]:
        headers = {"Content-Type": "application/json"} if body is not None else {}
        data = json.dumps(body).encode() if body is not None else None
        t0 = time.perf_counter()
        try:
            if self.conn is None:
                self.conn = http.client.HTTPConnection(HOST, self.port, timeout=120)
            self.conn.request(method, path, body=data, headers=headers)
            r = self.conn.getresponse()
            payload, status = r.read(), r.status
            if r.getheader("connection", "").lower() == "close":
                self.close()
        except (OSError, http.client.HTTPException):
            self.close()
            status, payload = 0, b""  # a connection error counts as a failure
        self.last_ms = (time.perf_counter() - t0) * 1000
        self.record(kind, status, self.last_ms, path)
        return status, payload

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()
            self.conn = None


class Recorder:
    def __init__(self):
        self.lock = threading.Lock()
        self.ms = defaultdict(list)
        self.status = defaultdict(lambda: defaultdict(int))
        self.failures: list[str] = []

    def __call__(self, kind: str, status: int, ms: float, path: str) -> None:
        with self.lock:
            self.ms[kind].append(ms)
            self.status[kind][status] += 1
            if status == 0 or status >= 500:
                self.failures.append(f"{status} {path}")


def crawl(port: int, rng: random.Random) -> dict:
    """The URLs the load draws from, found by following the pages' own links."""
    rec = Recorder()
    c = Connection(port, rec)
    _, home = c.request("crawl", "GET", "/")
    names = sorted(set(re.findall(r'href="/d/([\w.-]+)"', home.decode())))
    urls = {k: [] for k in PAGE_KINDS}
    steer = []
    for name in names:
        status, page = c.request("crawl", "GET", f"/d/{name}?per_page=500")
        latents = sorted({int(x) for x in re.findall(rf'href="/d/{re.escape(name)}/f/(\d+)"', page.decode())})
        if status != 200 or not latents:
            continue
        urls["table"] += [f"/d/{name}", f"/d/{name}?sort=max", f"/d/{name}?sort=score&order=asc",
                          f"/d/{name}?q=red", f"/d/{name}?page=2&per_page=20", f"/d/{name}?min_freq=0.01"]
        for latent in rng.sample(latents, min(12, len(latents))):
            path = f"/d/{name}/f/{latent}"
            status, page = c.request("crawl", "GET", path)
            if status != 200:
                continue
            text = page.decode()
            urls["feature"].append(path)
            urls["overlay"] += sorted(set(re.findall(r'/overlay/[\w.-]+/\d+/\d+/\d+\.png', text)))
            urls["image"] += sorted(set(re.findall(r'/image/\d+\?step=\d+', text)))
            urls["img"] += sorted(set(re.findall(r'/img/\d+\.png', text)))
            if 'id="steer-form"' in text:
                steer.append((name, latent))
    for path in sorted(set(urls["image"]))[:8]:  # image pages load error maps
        status, page = c.request("crawl", "GET", path)
        urls["errmap"] += sorted(set(re.findall(r'/errmap/[\w.-]+/\d+/\d+\.png', page.decode()))) if status == 200 else []
    c.close()
    missing = [k for k, v in urls.items() if not v]
    if missing:
        raise RuntimeError(f"the crawl found no {', '.join(missing)} URLs in this run")
    return {"urls": urls, "steer": steer}


def steer_body(target, seed: int) -> dict:
    name, latent = target
    return {"dictionary": name, "latent": latent, "prompt": "a red circle in the center on a white background",
            "seed": seed, "strength": 4, "mode": "add", "box": [0.25, 0.25, 0.75, 0.75]}


class Load:
    """The shared state of one load run: URLs, deadline, results, and the steering jobs seen."""

    def __init__(self, port: int, found: dict, seconds: float, seed: int):
        self.port, self.urls, self.steer_targets = port, found["urls"], found["steer"]
        self.deadline = time.perf_counter() + seconds
        self.rec = Recorder()
        self.seed = seed
        self.jobs: dict[int, dict] = {}  # job id -> last status seen (done jobs carry their start order)
        self.refusals: list[tuple[float, str]] = []  # (ms, reason) of posts refused for a full queue
        self.other_refusals: list[str] = []
        self.lock = threading.Lock()

    def browse(self, c: Connection, rng: random.Random) -> None:
        kind = rng.choices(PAGE_KINDS, PAGE_WEIGHTS)[0]
        c.request(kind, "GET", rng.choice(self.urls[kind]))

    def post(self, c: Connection, body: dict) -> dict | None:
        status, payload = c.request("steer_post", "POST", "/api/steer", body)
        try:
            reply = json.loads(payload)
        except ValueError:
            reply = {}
        if status == 202:
            return reply
        with self.lock:
            if status == 429:
                self.refusals.append((c.last_ms, str(reply.get("error"))))
            else:
                self.other_refusals.append(f"{status}: {reply.get('error')}")
        return None

    def poll(self, c: Connection, job_id) -> dict:
        status, payload = c.request("steer_poll", "GET", f"/api/steer/{job_id}")
        job = json.loads(payload) if status == 200 else {"status": f"http {status}"}
        with self.lock:
            self.jobs[int(job_id)] = job
        return job

    def browser(self, i: int) -> None:
        rng, c = random.Random(self.seed * 1000 + i), Connection(self.port, self.rec)
        while time.perf_counter() < self.deadline:
            self.browse(c, rng)
        c.close()

    def steerer(self, i: int) -> None:
        """Steers as the feature page's script does, browsing one page between jobs."""
        rng, c = random.Random(self.seed * 1000 + i), Connection(self.port, self.rec)
        while time.perf_counter() < self.deadline:
            job = self.post(c, steer_body(rng.choice(self.steer_targets), rng.randrange(1000)))
            if job is None:
                time.sleep(1.0)
                continue
            while job.get("status") in ("queued", "running") and time.perf_counter() < self.deadline + 120:
                time.sleep(POLL_S)
                job = self.poll(c, job["id"])
            self.browse(c, rng)
        c.close()


def percentiles(ms: list[float]) -> dict:
    a = np.asarray(ms)
    return {"n": len(ms), **{f"p{q}_ms": round(float(np.percentile(a, q)), 1) for q in (50, 95, 99)}}


def post_behind(c: Connection, body: dict, until: float) -> dict | None:
    """Post (every 0.25 s, until ``until``) until the queue takes it behind a running job: the job, or None."""
    while time.perf_counter() < until:
        status, payload = c.request("steer_post", "POST", "/api/steer", body)
        if status == 202:
            job = json.loads(payload)
            if job.get("running"):
                return job
            c.request("steer_cancel", "DELETE", f"/api/steer/{job['id']}")  # it would start at once: no test
        time.sleep(0.25)
    return None


def leave_early(port: int, load: Load, n: int = 10) -> int:
    """Clients that hang up: half-sent steering requests and page requests closed before the answer. The server
    must log no error for them (checked with the rest of its log)."""
    body = json.dumps(steer_body(load.steer_targets[0], 3000)).encode()
    for i in range(n):
        with socket.create_connection((HOST, port), timeout=10) as s:
            if i % 2:
                s.sendall(b"POST /api/steer HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                          b"Content-Length: %d\r\n\r\n" % len(body) + body[: len(body) // 2])
            else:
                s.sendall(f"GET {load.urls['overlay'][i % len(load.urls['overlay'])]} HTTP/1.1\r\n"
                          f"Host: 127.0.0.1\r\n\r\n".encode())
            time.sleep(0.05)
    return n


def check_queue(port: int, load: Load, max_queue: int, abandon_s: float) -> dict:
    """While the steerers keep the queue busy: a deserter, a cancelled job, and a burst beyond max_queue."""
    rec = Recorder()
    c = Connection(port, rec)
    target = load.steer_targets[0]
    out = {}
    time.sleep(min(3.0, max(0.0, load.deadline - time.perf_counter()) / 4))
    # a client that posts and cancels (the page sends DELETE when it is closed): its job must never run
    until = load.deadline + 30  # the steerers stop posting at the deadline: there is room then
    job = post_behind(c, steer_body(target, 1001), until)
    cancelled = job["id"] if job else None
    if cancelled:
        _, payload = c.request("steer_cancel", "DELETE", f"/api/steer/{cancelled}")
        out["cancel_reply"] = json.loads(payload).get("status")  # "running": the DELETE came too late to count
    # a client that posts and vanishes: dropped unrun once unpolled for abandon_s (unless it ran before that)
    job = post_behind(c, steer_body(target, 1002), until)
    deserted, deserted_position = (job["id"], job.get("position")) if job else (None, None)
    # a burst beyond max_queue: the excess is refused at once, with the reason
    t0 = time.perf_counter()
    burst = [(*c.request("steer_burst", "POST", "/api/steer", steer_body(target, 2000 + j)), c.last_ms)
             for j in range(max_queue + 2)]
    burst_ids = [json.loads(p)["id"] for s, p, _ in burst if s == 202]
    refused = [(s, json.loads(p).get("error", ""), ms) for s, p, ms in burst if s != 202]
    out["burst"] = {"posted": len(burst), "accepted": len(burst_ids), "refused": len(refused),
                    "refused_status": sorted({s for s, _, _ in refused}), "reason": refused[0][1] if refused else None,
                    "slowest_refusal_ms": round(max((ms for _, _, ms in refused), default=0.0), 1),
                    "burst_s": round(time.perf_counter() - t0, 3)}
    for job_id in burst_ids:  # leave no work behind
        c.request("steer_cancel", "DELETE", f"/api/steer/{job_id}")
    out["hung_up"] = leave_early(port, load)
    time.sleep(abandon_s + 0.5)  # look again only once the deserter is past its time, then ask about both jobs
    for key, job_id, position in (("cancelled", cancelled, None), ("deserted", deserted, deserted_position)):
        if job_id is None:
            out[key] = {"posted": False}
            continue
        _, payload = c.request("steer_poll", "GET", f"/api/steer/{job_id}")
        job = json.loads(payload)
        out[key] = {"posted": True, "status": job.get("status"), "ran": job.get("started") is not None,
                    "waited_s": job.get("waited_s"), "message": job.get("message"),
                    **({"position": position} if position else {})}
    c.close()
    return out


def run_load(args) -> dict:
    log = tempfile.NamedTemporaryFile("w+", prefix="difflens_browser_load_", suffix=".log", delete=False)
    port = free_port()
    t0 = time.perf_counter()
    proc = start_server(args.run, port, args.max_queue, args.abandon_seconds, log)
    try:
        found = crawl(port, random.Random(args.seed))
        if not args.warm:  # every client arrives at once at a fresh server: nothing loaded, nothing cached
            stop_server(proc)
            proc = start_server(args.run, port, args.max_queue, args.abandon_seconds, log)
        startup_s = time.perf_counter() - t0
        rss_before = rss_mb(proc.pid)
        load = Load(port, found, args.seconds, args.seed)
        threads = [threading.Thread(target=load.steerer if i < args.steerers else load.browser, args=(i,), daemon=True)
                   for i in range(args.clients)]
        queue_result = {}
        checker = threading.Thread(target=lambda: queue_result.update(check_queue(port, load, args.max_queue,
                                                                                  args.abandon_seconds)), daemon=True)
        rss_samples: dict = {}
        sampler = threading.Thread(target=sample_rss, args=(proc.pid, load.deadline, rss_samples), daemon=True)
        started = time.perf_counter()
        for t in threads + [checker, sampler]:
            t.start()
        for t in threads + [checker]:
            t.join(args.seconds + 300)
        elapsed = time.perf_counter() - started
        rss = rss_mb(proc.pid)
        alive = proc.poll() is None
    finally:
        stop_server(proc)
    log.seek(0)
    server_errors = log.read().count("difflens browse: error on")
    rec = load.rec
    pages = {k: percentiles(rec.ms[k]) for k in (*PAGE_KINDS, "steer_post", "steer_poll") if rec.ms[k]}
    total = sum(len(v) for v in rec.ms.values())
    status = {str(s): sum(rec.status[k][s] for k in rec.status) for s in sorted({s for k in rec.status
                                                                                for s in rec.status[k]})}
    done = {i: j for i, j in load.jobs.items() if j.get("status") == "done"}
    order = [done[i].get("started") for i in sorted(done)]
    return {
        "run": str(args.run), "clients": args.clients, "steerers": args.steerers, "seconds": args.seconds,
        "max_queue": args.max_queue, "abandon_seconds": args.abandon_seconds, "startup_s": round(startup_s, 1),
        "requests": total, "requests_per_s": round(total / elapsed, 1), "pages": pages, "status": status,
        "errors_5xx": sum(v for s, v in status.items() if s.startswith("5")), "connection_errors": status.get("0", 0),
        "failures": rec.failures[:10], "server_logged_errors": server_errors, "server_alive": alive,
        "warm": args.warm, "peak_rss_mb": rss, "rss_at_start_mb": rss_before, "rss_by_third_mb": thirds(rss_samples.get("VmRSS", [])),
        "heap_by_third_mb": thirds(rss_samples.get("RssAnon", [])),
        "steering": {"jobs_done": len(done), "jobs_failed": sum(j.get("status") == "error" for j in load.jobs.values()),
                     "polled_jobs_dropped": sum(j.get("status") == "cancelled" for j in load.jobs.values()),
                     "fifo": order == sorted(order) and None not in order,
                     "refused_full": len(load.refusals),
                     "refusal_p95_ms": round(float(np.percentile([m for m, _ in load.refusals], 95)), 1)
                     if load.refusals else None,
                     "refusal_reason": load.refusals[0][1] if load.refusals else None,
                     "other_refusals": load.other_refusals[:5],
                     "generation_s_median": round(float(np.median([j["seconds"] for j in done.values()])), 3)
                     if done else None, **queue_result},
        "server_log": log.name,
    }


def problems(r: dict) -> list[str]:
    """What broke the browser's promises under this load (empty: none)."""
    s, out = r["steering"], []
    for key, what in (("errors_5xx", "5xx answers"), ("connection_errors", "connection errors"),
                      ("server_logged_errors", "errors in the server's log")):
        if r[key]:
            out.append(f"{r[key]} {what}")
    if not r["server_alive"]:
        out.append("the server died")
    if s["fifo"] is False:
        out.append("steering jobs ran out of order")
    if s["jobs_failed"]:
        out.append(f"{s['jobs_failed']} steering jobs failed")
    if s["polled_jobs_dropped"]:
        out.append(f"{s['polled_jobs_dropped']} steering jobs were dropped although their clients kept polling")
    cancelled, deserted = s.get("cancelled", {}), s.get("deserted", {})
    if not (cancelled.get("posted") and deserted.get("posted")):
        out.append("the cancelled or the deserted job could not be posted: not checked")
    if cancelled.get("ran") and s.get("cancel_reply") == "cancelled":
        out.append("a steering job cancelled while queued was generated")
    if deserted.get("ran") and deserted.get("waited_s", 0) > r["abandon_seconds"] + 1:
        out.append(f"a steering job unpolled for {deserted['waited_s']} s was generated")
    burst = s.get("burst", {})
    if burst.get("refused", 0) < 2 or burst.get("refused_status") != [429]:
        out.append(f"a burst beyond the queue was not refused with 429: {burst}")
    return out


def thirds(samples: list) -> list:
    """The largest sample in each third of the load (steady under a steady load; rising: a leak)."""
    samples = [x for x in samples if x is not None]
    n = len(samples)
    return [max(samples[i * n // 3:(i + 1) * n // 3], default=None) for i in range(3)] if n >= 3 else samples


def print_table(r: dict) -> None:
    print(f"browser under load: {r['run']}, {r['clients']} clients ({r['steerers']} steering) for {r['seconds']} s, "
          f"max queue {r['max_queue']}")
    print(f"{'page kind':<12}{'requests':>9}{'p50 ms':>10}{'p95 ms':>10}{'p99 ms':>10}")
    for kind, p in r["pages"].items():
        print(f"{kind:<12}{p['n']:>9}{p['p50_ms']:>10.1f}{p['p95_ms']:>10.1f}{p['p99_ms']:>10.1f}")
    print(f"{r['requests']} requests, {r['requests_per_s']} requests/s; status {r['status']}; 5xx {r['errors_5xx']}, "
          f"connection errors {r['connection_errors']}, errors in the server's log {r['server_logged_errors']}")
    print(f"server peak RSS {r['peak_rss_mb']} MB ({r['rss_at_start_mb']} MB as the load began); largest in each third "
          f"of the load: RSS {r['rss_by_third_mb']} MB, of which heap {r['heap_by_third_mb']} MB; alive at the end: "
          f"{r['server_alive']}")
    s = r["steering"]
    print(f"steering: {s['jobs_done']} jobs done (median {s['generation_s_median']} s), {s['jobs_failed']} failed, "
          f"first come first served: {s['fifo']}; {s['refused_full']} posts refused for a full queue "
          f"(p95 {s['refusal_p95_ms']} ms): {s['refusal_reason']!r}")
    b = s.get("burst", {})
    print(f"burst of {b.get('posted')} posts: {b.get('accepted')} accepted, {b.get('refused')} refused "
          f"(HTTP {b.get('refused_status')}, slowest {b.get('slowest_refusal_ms')} ms)")
    for key in ("cancelled", "deserted"):
        j = s.get(key, {})
        print(f"{key} job: {j.get('status')}, ran: {j.get('ran')} (waited {j.get('waited_s')} s)  "
              f"{j.get('message') or ''}")
    print(f"clients that hung up mid-request: {s.get('hung_up')} (errors in the server's log: "
          f"{r['server_logged_errors']})")
    for f in r["failures"]:
        print(f"failure: {f}")
    print("verdict: " + ("; ".join(r["problems"]) if r["problems"] else "ok (no 5xx, no logged errors, the queue "
                                                                            "bounded, in order, leaving no work behind)"))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--run", default="runs/demo", help="a finished run folder (what `difflens demo` writes)")
    p.add_argument("--clients", type=int, default=32)
    p.add_argument("--steerers", type=int, default=8, help="clients that also steer (at most 8)")
    p.add_argument("--seconds", type=float, default=30.0)
    p.add_argument("--max-queue", type=int, default=4, help="the server's --max-queue")
    p.add_argument("--abandon-seconds", type=float, default=2.0, help="the server's --abandon-seconds")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--warm", action="store_true", help="load the server the crawl warmed up (default: a fresh one, "
                                                         "so every client arrives at once at cold caches)")
    args = p.parse_args()
    if not 1 <= args.clients <= MAX_CLIENTS or not 0 < args.seconds <= MAX_SECONDS:
        p.error(f"--clients must be in 1..{MAX_CLIENTS} and --seconds in (0, {MAX_SECONDS}]")
    args.steerers = max(0, min(args.steerers, 8, args.clients))
    if not Path(args.run).is_dir():
        p.error(f"run folder {args.run} does not exist (make one with `difflens demo`)")
    result = run_load(args)
    result["problems"] = problems(result)
    print_table(result)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
