"""`clipsearch serve` under measurement (targets, issue 10): warm /api/search over 100k images,
p50 <= 30 ms including text encoding; `clipsearch search` through the server as a new process,
<= 0.5 s wall; thumbnails per second; and a load run, 16 clients for 30 s mixing search, similar
and thumbnails over 10k images: no errors, p99 reported, memory flat.

    python -m benchmarks.serve                        # 100k vectors; 10k photos for the load run
    python -m benchmarks.serve --images 20000 --photos 2000 --seconds 10

The server is a real `clipsearch serve` process with ViT-B-32 (random weights from a file); the
clients are threads of this process, on the same cores.
"""

from __future__ import annotations

import http.client
import json
import os
import random
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from urllib.parse import urlencode, urlsplit

import numpy as np

from benchmarks.common import (
    ROOT,
    model_spec,
    percentile_ms,
    photos,
    prepare_fast,
    random_index,
    script,
    timed,
)
from benchmarks.query import QUERIES
from clipsearch.store.ann import current

CLIENTS = 16


class Served:
    """A `clipsearch serve` process, found through the discovery file it publishes."""

    def __init__(self, db: Path, env: dict, args: list[str] = ()) -> None:
        from clipsearch.server import client

        self.log = db.parent / f"{db.name}-serve.log"
        command = [str(Path(sys.executable).parent / "clipsearch"), "serve", "--db", str(db), "--port", "0",
                   *args]
        with open(self.log, "wb") as log:  # a file, not a pipe nobody reads while it runs
            self.proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env)
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and self.proc.poll() is None:
            found = client.read(db)
            if found is not None and found.pid == self.proc.pid:
                break
            time.sleep(0.2)
        else:
            self.proc.kill()
            raise RuntimeError(f"clipsearch serve did not start: {self.log.read_text()[-2000:]}")
        parts = urlsplit(found.url)
        self.host, self.port, self.secret = parts.hostname, parts.port, found.secret

    def connection(self) -> http.client.HTTPConnection:
        return http.client.HTTPConnection(self.host, self.port, timeout=120)

    def get(self, conn: http.client.HTTPConnection, path: str, params: dict | None = None,
            ) -> tuple[int, bytes]:
        conn.request("GET", path + (f"?{urlencode(params, doseq=True)}" if params else ""),
                     headers={"Authorization": f"Bearer {self.secret}"})
        r = conn.getresponse()
        return r.status, r.read()

    def rss_mb(self) -> float:
        with open(f"/proc/{self.proc.pid}/status") as f:
            kb = next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))
        return kb / 1024

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=60)


def _env(work: Path) -> dict:
    return {**os.environ, "HF_HUB_OFFLINE": "1"}  # the run's own cache (common.own_cache)


def _spec(work: Path) -> dict:
    return model_spec(work).to_dict()


def warm_search(work: Path, images: int, cli_runs: int) -> dict:
    """Latency of /api/search over `images` vectors, and of `clipsearch search` through the server."""
    db = work / "db-serve-search"
    store = random_index(db, images, model=_spec(work))
    current(store)  # the search structure, export and snapshot, as an index run leaves them
    prepare_fast(store, work)
    server = Served(db, _env(work))
    try:
        conn = server.connection()
        for q in QUERIES[:4]:  # first calls allocate
            server.get(conn, "/api/search", {"q": q, "k": 24})
        walls, stages = [], []
        for q in QUERIES * 3:
            seconds, (status, body) = timed(lambda q=q: server.get(conn, "/api/search", {"q": q, "k": 24}))
            if status != 200:
                raise RuntimeError(body[:300])
            walls.append(seconds)
            stages.append(json.loads(body)["timing_ms"])
        cli = [str(Path(sys.executable).parent / "clipsearch"), "search", "--db", str(db)]
        through = [timed(lambda i=i: _run([*cli, QUERIES[i % len(QUERIES)]], _env(work)))[0]
                   for i in range(cli_runs)]
        alone = timed(lambda: _run([*cli, QUERIES[0], "--no-server"], _env(work)))[0]
    finally:
        server.stop()
    return {"images": images, "p50_ms": percentile_ms(walls), "p99_ms": percentile_ms(walls, 99),
            **{f"{stage}_p50_ms": float(np.median([s[stage] for s in stages]))
               for stage in ("embed", "search", "tags")},
            "cli_through_server_s": statistics.median(through), "cli_in_process_s": alone}


def _run(cmd: list[str], env: dict) -> None:
    r = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if r.returncode:
        raise RuntimeError(r.stderr[-500:])


def _small_photos(folder: Path, n: int) -> list[str]:
    """`n` distinct 0.3 MP JPEGs: each a sample picture with its own mark, so every one has its own
    content hash (and thumbnail)."""
    from PIL import Image, ImageDraw

    folder.mkdir(parents=True, exist_ok=True)
    sources = [Image.open(p).convert("RGB").resize((640, 480))
               for p in sorted((ROOT / "sample_images").rglob("*"))
               if p.suffix.lower() in (".jpg", ".png", ".webp", ".bmp")]
    out = []
    for i in range(n):
        img = sources[i % len(sources)].copy()
        ImageDraw.Draw(img).rectangle((i % 600, (i // 600) % 440, i % 600 + 40, (i // 600) % 440 + 40),
                                      fill=(i * 37 % 256, i * 91 % 256, i * 13 % 256))
        path = folder / f"{i // 1000:03d}" / f"IMG_{i:06d}.jpg"
        path.parent.mkdir(exist_ok=True)
        img.save(path, quality=85)
        out.append(str(path))
    return out


def thumbnails_and_load(work: Path, n_photos: int, big_photos: int, seconds: float) -> dict:
    """Thumbnails per second (made from 12 MP JPEGs, then from the cache) and the load run."""
    small = _small_photos(work / "small", n_photos)
    big = photos(work / "big", big_photos)
    db = work / "db-serve-load"
    store = random_index(db, 0, model=_spec(work), files=small + big)
    current(store)
    prepare_fast(store, work)
    server = Served(db, _env(work))
    try:
        conn = server.connection()
        big_ids = list(range(n_photos, n_photos + big_photos))
        cold = timed(lambda: [server.get(conn, f"/api/images/{i}/thumbnail", {"size": 256})
                              for i in big_ids])[0]
        cached = timed(lambda: [server.get(conn, f"/api/images/{i}/thumbnail", {"size": 256})
                                for _ in range(5) for i in big_ids])[0]
        load = _load(server, n_photos, seconds)
    finally:
        server.stop()
    return {"thumbnails_12mp_per_s": big_photos / cold, "thumbnails_cached_per_s": 5 * big_photos / cached,
            "load": load}


def _load(server: Served, n_images: int, seconds: float) -> dict:
    """CLIENTS threads, each a browser-like loop: a search (or a similar) and the thumbnails of
    the hits it got, until `seconds` pass. The server's memory is sampled every second."""
    latencies: dict[str, list[float]] = {"search": [], "similar": [], "thumbnail": []}
    errors: list[str] = []
    lock = threading.Lock()
    deadline = time.monotonic() + seconds

    def client(seed: int) -> None:
        rng = random.Random(seed)
        conn = server.connection()
        while time.monotonic() < deadline:
            if rng.random() < 0.7:
                kind, path, params = "search", "/api/search", {"q": rng.choice(QUERIES), "k": 24,
                                                               "offset": rng.choice([0, 0, 24])}
            else:
                kind, path, params = "similar", f"/api/similar/{rng.randrange(n_images)}", {"k": 24}
            ids = _timed_get(server, conn, kind, path, params, latencies, errors, lock)
            for id_ in ids[:12]:
                if time.monotonic() >= deadline:
                    break
                _timed_get(server, conn, "thumbnail", f"/api/images/{id_}/thumbnail", {"size": 256},
                           latencies, errors, lock)

    rss = [server.rss_mb()]
    threads = [threading.Thread(target=client, args=(i,)) for i in range(CLIENTS)]
    for t in threads:
        t.start()
    while any(t.is_alive() for t in threads):
        time.sleep(1)
        rss.append(server.rss_mb())
    for t in threads:
        t.join()
    every = [x for v in latencies.values() for x in v]
    fifth = max(1, len(rss) // 5)
    return {"clients": CLIENTS, "seconds": seconds, "images": n_images, "requests": len(every),
            "errors": len(errors), "first_errors": errors[:5], "requests_per_s": len(every) / seconds,
            **{f"{k}_p50_ms": percentile_ms(v) for k, v in latencies.items() if v},
            **{f"{k}_p99_ms": percentile_ms(v, 99) for k, v in latencies.items() if v},
            "p99_ms": percentile_ms(every, 99), "rss_start_mb": rss[0],
            "rss_first_fifth_mb": statistics.mean(rss[1:fifth + 1] or rss), "rss_last_fifth_mb":
            statistics.mean(rss[-fifth:]), "rss_max_mb": max(rss)}


def _timed_get(server, conn, kind, path, params, latencies, errors, lock) -> list[int]:
    start = time.perf_counter()
    try:
        status, body = server.get(conn, path, params)
    except (OSError, http.client.HTTPException) as exc:
        with lock:
            errors.append(f"{kind}: {type(exc).__name__}: {exc}")
        return []
    elapsed = time.perf_counter() - start
    with lock:
        if status != 200:
            errors.append(f"{kind} {status}: {body[:200]!r}")
            return []
        latencies[kind].append(elapsed)
    return [h["id"] for h in json.loads(body)["hits"]] if kind != "thumbnail" else []


def measure(work: Path, images: int, n_photos: int, seconds: float, cli_runs: int = 5,
            big_photos: int = 16) -> dict:
    return {"search": warm_search(work, images, cli_runs),
            **thumbnails_and_load(work, n_photos, big_photos, seconds)}


def report(figures: dict) -> None:
    s, load = figures["search"], figures["load"]
    print(f"  warm /api/search over {s['images']:,} images: p50 {s['p50_ms']:.1f} ms, "
          f"p99 {s['p99_ms']:.1f} ms (target p50 <= 30 ms); server side: text {s['embed_p50_ms']:.1f} ms, "
          f"search and rows {s['search_p50_ms']:.1f} ms, tags {s['tags_p50_ms']:.1f} ms")
    print(f"  `clipsearch search` as a new process: {s['cli_through_server_s']:.2f} s through the server "
          f"(target 0.5 s), {s['cli_in_process_s']:.2f} s without it (the fast path)")
    print(f"  thumbnails: {figures['thumbnails_12mp_per_s']:.1f}/s made from 12 MP JPEGs, "
          f"{figures['thumbnails_cached_per_s']:.0f}/s from the cache")
    print(f"  load: {load['clients']} clients x {load['seconds']:.0f} s over {load['images']:,} images: "
          f"{load['requests']:,} requests ({load['requests_per_s']:.0f}/s), {load['errors']} errors "
          f"(target 0); p99 {load['p99_ms']:.0f} ms (search p50 {load.get('search_p50_ms', 0):.0f} / p99 "
          f"{load.get('search_p99_ms', 0):.0f} ms, thumbnail p50 {load.get('thumbnail_p50_ms', 0):.0f} ms)")
    print(f"  server memory: {load['rss_start_mb']:.0f} MB before, {load['rss_first_fifth_mb']:.0f} MB in "
          f"the first fifth, {load['rss_last_fifth_mb']:.0f} MB in the last (max {load['rss_max_mb']:.0f}; "
          "target: flat)")


def main() -> None:
    script(__doc__, "# clipsearch serve, ViT-B-32 (random weights)",
           {"--images": {"type": int, "default": 100_000}, "--photos": {"type": int, "default": 10_000},
            "--seconds": {"type": float, "default": 30.0}, "--cli-runs": {"type": int, "default": 5}},
           lambda work, a: measure(work, a.images, a.photos, a.seconds, a.cli_runs), report)


if __name__ == "__main__":
    main()
