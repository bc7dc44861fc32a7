"""Words beside pixels (clipsearch.media.words, clipsearch.search.wordsearch): how well each ranking finds
what a query means, what reading the metadata costs an index run, and what words cost a query.

- quality: the hybrid shapes set. The trained shapes CLIP (benchmarks.trained) indexes pictures
  of the held-out compositions; some of them carry planted words: a camera file name, a place
  (real EXIF GPS of a city), a trip folder, a keyword in an XMP sidecar. Queries are words only
  (a file name, a city, a keyword: truth is the photos that carry it), pixels only (a scene's
  caption: truth is that picture) and both (a city and an object: the photos of that city that
  show it). R@k: the share of queries with a true photo among the first k, for pixels only
  (--words off), words only (BM25, ties in id order) and the fusions (reciprocal rank fusion,
  the one clipsearch uses, and a calibrated blend for comparison).
- read cost: reading EXIF, XMP and sidecars of 0.3-MP JPEGs against indexing them (ViT-B-32),
  target <= 5 %.
- latency: a warm text query over a random index whose rows carry words, pixels only and with
  words (target p50 <= 30 ms at 100k).

    python -m benchmarks.words               # latency at 100k (and 1M with --sizes 100000,1000000)
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from benchmarks import shapes
from benchmarks.common import percentile_ms, script, timed

TARGET_READ_SHARE = 0.05
TARGET_HYBRID_P50_MS = 30.0
CITIES = {"Lisbon": (38.7139, -9.1394), "Paris": (48.8566, 2.3522), "Tokyo": (35.6895, 139.6917),
          "Berlin": (52.5200, 13.4050), "Sydney": (-33.8688, 151.2093), "Chicago": (41.8781, -87.6298)}
KEYWORDS = ("wedding", "hiking", "graduation", "picnic", "concert", "harbour")
TRIPS = ("Summer holiday", "Grandma's 80th", "Office party", "Road trip")


def exif(camera: tuple[str, str] | None = None, gps: tuple[float, float] | None = None,
         taken: str | None = None, lens: str | None = None):
    """A Pillow Exif block with a camera, a GPS position and a capture time, as a phone writes."""
    from PIL import ExifTags, Image

    block = Image.Exif()
    if camera:
        block[ExifTags.Base.Make], block[ExifTags.Base.Model] = camera
    detail = block.get_ifd(ExifTags.IFD.Exif)
    if taken:
        detail[ExifTags.Base.DateTimeOriginal] = taken
    if lens:
        detail[ExifTags.Base.LensModel] = lens
    if gps:
        lat, lon = gps
        where = block.get_ifd(ExifTags.IFD.GPSInfo)
        where[1], where[2] = ("N" if lat >= 0 else "S"), _dms(lat)
        where[3], where[4] = ("E" if lon >= 0 else "W"), _dms(lon)
    return block


def _dms(value: float) -> tuple[float, float, float]:
    value = abs(value)
    degrees, minutes = int(value), int(value % 1 * 60)
    return float(degrees), float(minutes), round((value - degrees - minutes / 60) * 3600, 4)


def sidecar(keywords: list[str] = (), people: list[str] = (), hierarchy: list[str] = (),
            ours: list[str] = ()) -> str:
    """An XMP sidecar as Lightroom and digiKam write one: dc:subject keywords, hierarchical
    keywords, face regions named by person (MWG), and `ours` recorded as clipsearch's own."""
    def bag(items):
        return "<rdf:Bag>" + "".join(f"<rdf:li>{i}</rdf:li>" for i in items) + "</rdf:Bag>"

    faces = "".join(f'<rdf:li><rdf:Description mwg-rs:Name="{p}" mwg-rs:Type="Face"/></rdf:li>'
                    for p in people)
    regions = f"<rdf:Bag>{faces}</rdf:Bag>"
    return (
        '<?xpacket begin="\ufeff" id="W5M0MpCehiHzreSzNTczkc9d"?>\n'
        '<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">'
        '<rdf:Description rdf:about="" xmlns:dc="http://purl.org/dc/elements/1.1/" '
        'xmlns:lr="http://ns.adobe.com/lightroom/1.0/" '
        'xmlns:mwg-rs="http://www.metadataworkinggroup.com/schemas/regions/" '
        'xmlns:clipsearch="https://clipsearch.dev/ns/xmp/1.0/">'
        f"<dc:subject>{bag([*keywords, *ours])}</dc:subject>"
        + (f"<lr:hierarchicalSubject>{bag(hierarchy)}</lr:hierarchicalSubject>" if hierarchy else "")
        + (f'<mwg-rs:Regions rdf:parseType="Resource"><mwg-rs:RegionList>{regions}</mwg-rs:RegionList>'
           "</mwg-rs:Regions>" if people else "")
        + (f"<clipsearch:tags>{bag(ours)}</clipsearch:tags>" if ours else "")
        + '</rdf:Description></rdf:RDF></x:xmpmeta>\n<?xpacket end="w"?>')


# -- quality on the hybrid shapes set ---------------------------------------------------------------
@dataclass
class Query:
    text: str
    kind: str  # "words", "pixels", "both"
    truth: set[str]


def hybrid_set(root: Path, seed: int = 3) -> list[Query]:
    """Pictures of the held-out compositions under `root/library` (each drawn twice), about
    half with planted words; the queries of each kind with the photos that answer them."""
    rng = random.Random(seed)
    scenes = [s for s in shapes.split()[1] for _ in range(2)]
    library = root / "library"
    queries: list[Query] = []
    made: list[tuple[str, shapes.Scene, str | None]] = []
    for i, scene in enumerate(scenes):
        planted = i % 2 == 0 or i % 3 == 0
        city = list(CITIES)[i % len(CITIES)] if planted else None
        folder = library / (TRIPS[i % len(TRIPS)] if planted and i % 4 == 0 else "camera roll")
        folder.mkdir(parents=True, exist_ok=True)
        name = f"IMG_{2000 + i * 7}.png" if planted else f"frame{i:03d}.png"
        path = folder / name
        block = exif(("Google", "Pixel 7"), CITIES[city]) if city else exif()
        shapes.render(scene, rng).save(path, exif=block)
        made.append((str(path), scene, city))
        if planted and i % 5 == 0:
            (folder / (path.stem + ".xmp")).write_text(sidecar([KEYWORDS[i % len(KEYWORDS)]]))
        if planted and i % 3 == 0:  # a file name as people type it: IMG_2021, or just 2021
            queries.append(Query(path.stem if i % 2 else path.stem.split("_")[1], "words", {str(path)}))
    for keyword in KEYWORDS:
        truth = {str(p.with_suffix(".png")) for p in library.rglob("*.xmp") if keyword in p.read_text()}
        queries.append(Query(keyword, "words", truth))
    for scene in dict.fromkeys(s for _, s, _ in made):
        queries.append(Query(scene.caption(), "pixels", {p for p, s, _ in made if s == scene}))
    for city in CITIES:
        photos = [(p, s) for p, s, c in made if c == city]
        queries.append(Query(city, "words", {p for p, _ in photos}))
        objects = sorted({o for _, s in photos for o in s.objects}, key=lambda o: o.words())
        for obj in objects[:3]:
            queries.append(Query(f"{city} {obj.words()}", "both", {p for p, s in photos if obj in s.objects}))
    return [q for q in queries if q.truth]


def quality(work: Path, clip_dir: Path, methods: tuple[str, ...] = ("scaled", "rrf", "blend")) -> dict:
    """R@1 and R@5 of each query kind, pixels only, words only and each fusion."""
    from clipsearch import index_folders, open_index
    from clipsearch.search.query import parse
    from clipsearch.search.wordsearch import fuse, query_words

    root = work / "hybrid"
    queries = hybrid_set(root)
    db = root / "db"
    index_folders([root / "library"], db, model=f"local-dir:{clip_dir}", device="cpu", workers=2)
    index = open_index(db, device="cpu")
    words = index.word_index()
    rankings: dict[str, dict[str, list[list[str]]]] = {}
    for q in queries:
        terms = parse(q.text)
        vector, asked = index.query_vector(terms, q.text), query_words(terms)
        pixels = [h.path for h in index.search(q.text, k=5, words=False)]
        positions, scores = words.scores(asked)
        order = np.lexsort((words.ids[positions], -scores))[:5]
        by_words = [index.records([int(i)])[int(i)].path for i in words.ids[positions][order]]
        ranked = {"pixels": pixels, "words": by_words}
        for method in methods:
            fused = fuse(index.store, index.ann, vector, 5, None, words, asked, method=method)
            ranked[method] = [h.path for h in fused] if fused is not None else pixels
        for name, found in ranked.items():
            rankings.setdefault(q.kind, {}).setdefault(name, []).append(found)
    truths = {kind: [q.truth for q in queries if q.kind == kind] for kind in ("words", "pixels", "both")}
    out: dict = {"photos": sum(1 for _ in (root / "library").rglob("*.png")), "queries": {}}
    for kind, by_name in rankings.items():
        out["queries"][kind] = len(truths[kind])
        for name, found in by_name.items():
            out.setdefault(kind, {})[name] = {
                f"R@{k}": sum(bool(set(f[:k]) & t) for f, t in zip(found, truths[kind], strict=True))
                / len(truths[kind]) for k in (1, 5)}
    return out


# -- what reading the metadata costs an index run ------------------------------------------------------
def read_cost(work: Path, n: int, embedder) -> dict:
    """Index `n` 0.3-MP JPEGs carrying EXIF (camera, GPS, time) and a sidecar each, then read
    their metadata alone, as the decode workers do (from the bytes, plus the sidecar)."""
    from PIL import Image

    from clipsearch import index_folders
    from clipsearch.media.words import read_meta

    folder = work / "words-read"
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(n):
        pixels = rng.integers(0, 255, (480, 640, 3), np.uint8)
        path = folder / f"IMG_{i:04d}.jpg"
        block = exif(("Apple", "iPhone 15"), (38.7 + i * 1e-4, -9.1), "2024:05:01 10:00:00", "iPhone 15 back")
        Image.fromarray(pixels).save(path, quality=90, exif=block)
        (folder / f"IMG_{i:04d}.jpg.xmp").write_text(sidecar(["family", "beach"], ["Ana"]))
    index_s, _ = timed(lambda: index_folders([folder], work / "words-read-db", embedder=embedder, workers=2))
    files = sorted(folder.glob("*.jpg"))
    datas = [f.read_bytes() for f in files]
    read_s, _ = timed(lambda: [read_meta(str(f), d) for f, d in zip(files, datas, strict=True)])
    from clipsearch.media import places

    places.names([(38.7, -9.1)])  # the place data loads once per process: counted apart
    return {"photos": n, "index_s": index_s, "read_s": read_s, "share": read_s / index_s}


# -- what words cost a query ---------------------------------------------------------------------------
def latency(work: Path, sizes: list[int], queries: int = 20) -> dict:
    from benchmarks.common import model_spec, prepare_fast, random_index
    from clipsearch.models import onnxtext
    from clipsearch.search.engine import Index
    from clipsearch.store.snapshot import Snapshot

    spec = model_spec(work)
    out = {}
    asked = [f"{city} sunset" for city in CITIES] + ["IMG_0004211", "a dog on a beach", "Pixel wedding"]
    for n in sizes:
        store = random_index(work / f"db-words-{n}", n, model=spec.to_dict(), words=True)
        prepare_fast(store, work)
        figures = {}
        encoder = onnxtext.open_for(store.manifest.model)
        for name, source in (("lancedb", store), ("snapshot", Snapshot.open(store.path))):
            figures[name] = _timings(Index(source, text_encoder=encoder), (asked * 3)[:queries])
        out[str(n)] = figures
    return out


def _timings(index, asked: list[str]) -> dict:
    for q in asked[:3]:  # warm-up: the first calls read the words and allocate
        index.search(q, k=10)
        index.search(q, k=10, words=False)
    index.word_index().settled()  # a server's steady state: its vocabulary built (in a thread)
    plain = [timed(lambda q=q: index.search(q, k=10, words=False))[0] for q in asked]
    hybrid = [timed(lambda q=q: index.search(q, k=10))[0] for q in asked]
    return {"pixels_p50_ms": percentile_ms(plain), "hybrid_p50_ms": percentile_ms(hybrid)}


def measure(work: Path, sizes: list[int], read_photos: int, embedder=None, clip_dir: Path | None = None,
            ) -> dict:
    from benchmarks import fixtures
    from benchmarks.common import bench_embedder

    if clip_dir is None:
        clip_dir = fixtures.models(work).clip_dir
    return {"quality": quality(work, clip_dir),
            "read": read_cost(work, read_photos, embedder or bench_embedder(work)),
            "latency": latency(work, sizes)}


def report(f: dict) -> None:
    q = f["quality"]
    print(f"  hybrid shapes set: {q['photos']} photos; R@1 / R@5 by query kind")
    names = ["pixels", "words", "scaled", "rrf", "blend"]
    print(f"  {'kind':<8}{'queries':>8}  " + "  ".join(f"{n:>13}" for n in names))
    for kind in ("words", "pixels", "both"):
        row = "  ".join(f"{q[kind][n]['R@1']:.2f} / {q[kind][n]['R@5']:.2f}".rjust(13) for n in names)
        print(f"  {kind:<8}{q['queries'][kind]:>8}  {row}")
    r = f["read"]
    print(f"  reading metadata of {r['photos']} 0.3-MP JPEGs: {r['read_s']:.2f} s against "
          f"{r['index_s']:.1f} s to index them: {100 * r['share']:.1f} % (target <= "
          f"{100 * TARGET_READ_SHARE:.0f} %)")
    for n, by_source in f["latency"].items():
        for source, t in by_source.items():
            print(f"  warm query over {int(n):,} rows ({source}): pixels only p50 {t['pixels_p50_ms']:.1f} "
                  f"ms, with words {t['hybrid_p50_ms']:.1f} ms (target <= {TARGET_HYBRID_P50_MS:g} ms "
                  "at 100k)")


def main() -> None:
    script(__doc__, "# words beside pixels",
           {"--sizes": {"default": "100000"}, "--read-photos": {"type": int, "default": 200}},
           lambda work, a: measure(work, [int(s) for s in a.sizes.split(",")], a.read_photos), report)


if __name__ == "__main__":
    main()
