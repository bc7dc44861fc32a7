"""The torch-free query path: CLIP's tokenizer reproduced without open_clip, the text tower
exported to ONNX, the row snapshot, and `clipsearch search` as a new process that imports neither
torch, open_clip, torchvision, transformers nor LanceDB, yet prints what the full path prints."""

from __future__ import annotations

import json
import os
import random
import shutil
from pathlib import Path

import numpy as np
import pytest
import serving
from typer.testing import CliRunner

from clipsearch import index_folders, open_index
from clipsearch.build.fastprep import prepare_searches
from clipsearch.cli.commands import app
from clipsearch.models import onnxtext
from clipsearch.store.table import Manifest

FAST = {"CLIPSEARCH_FAST_QUERY": "1"}


def run_cli(*args) -> tuple[int, str, str, list[str]]:
    return serving.run_cli(*args, env=serving.environment(**FAST))


def _texts(n: int, seed: int = 0) -> list[str]:
    """Plain, odd and hostile texts: accents, scripts, emoji, entities, mojibake, control and
    zero-width characters, special-token lookalikes, and texts past the context length."""
    fixed = [
        "a red car", "", " ", "\t\n", "A Photo Of A DOG!!", "naïve café résumé", "日本語のテキスト", "한국어",
        "العربية نص", "emoji 🐶🚗✨👨‍👩‍👧", "it's we're they've I'm you'll he'd", "l'été à Paris",
        "&amp; &lt;tag&gt; &amp;amp; &#x27;", "Ã©tÃ© mojibake", "<start_of_text> <end_of_text>",
        "3.14159 and 1,000,000", "snake_case kebab-case CamelCase", "ß straße ﬁ ligature",
        "\u200bzero\u200bwidth\u00a0nbsp", "‘quotes’ “double” «guillemets»", "x" * 600, "word " * 120,
        "e\u0301 combining", "\x00\x07 control", "🏳️‍🌈 flag", "Ω≈ç√∫˜µ≤≥÷", "  leading and trailing  ",
    ]
    rng = random.Random(seed)
    alphabet = ("abcdefghijklmnopqrstuvwxyz ABCDEFGHIJKLMNOPQRSTUVWXYZ 0123456789 .,;:!?'\"-_()[]{}<>/\\@#&%"
                "éèêëüößçñåøæ ÀÉÎÕÜ 日本語中文한국 αβγδ абвгд 🐶🚗✨🎉 \u200b\u00a0\t\n&amp;&lt;")
    return fixed + ["".join(rng.choice(alphabet) for _ in range(rng.randint(0, 120))) for _ in range(n)]


# -- the tokenizer ---------------------------------------------------------------------------------
@pytest.mark.parametrize("clean", ["lower", "whitespace", "canonicalize"])
def test_the_tokenizer_gives_open_clips_token_ids(clean):
    from open_clip.tokenizer import SimpleTokenizer

    from clipsearch.models.bpe import Tokenizer

    reference = SimpleTokenizer(clean=clean)
    merges = sorted(reference.bpe_ranks, key=reference.bpe_ranks.__getitem__)
    specials = [reference.decoder[i] for i in reference.all_special_ids]
    ours = Tokenizer(merges, specials, reference.context_length, clean)
    texts = _texts(3000, seed=len(clean))
    expected = reference(texts).numpy()
    got = ours(texts)
    assert got.dtype == np.int64 and got.shape == expected.shape == (len(texts), 77)
    wrong = [t for t, a, b in zip(texts, got, expected, strict=True) if not np.array_equal(a, b)]
    assert wrong == []


# -- an index on the fast path --------------------------------------------------------------------
@pytest.fixture(scope="module")
def made_library(tmp_path_factory, tiny_local_dir):
    """sample_images/ indexed and tagged with the fast path on: export and snapshots made; the
    export in a cache folder of its own (the user's, whose indexes of one model share one)."""
    root = tmp_path_factory.mktemp("fast")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("CLIPSEARCH_FAST_QUERY", "1")
        mp.setenv("CLIPSEARCH_CACHE", str(root / "cache"))
        return (*serving.index_samples(root, tiny_local_dir, "sky,flower,stone"), root / "cache")


@pytest.fixture
def fast_library(made_library, monkeypatch):
    """(photos, db) of the library, with its user's cache (and so its export) in effect."""
    photos, db, cache = made_library
    monkeypatch.setenv("CLIPSEARCH_CACHE", str(cache))
    return photos, db


@pytest.fixture
def fast(monkeypatch):
    monkeypatch.setenv("CLIPSEARCH_FAST_QUERY", "1")


def _export_dir(db: Path) -> Path:
    return onnxtext.folder(Manifest.load(db).model)


def test_an_index_run_leaves_an_export_and_a_snapshot(fast_library):
    _, db = fast_library
    files = sorted(p.name for p in (db / "fast").iterdir())
    version = open_index(db).store.version
    assert f"rows-v{version}.arrow" in files
    assert any(name.startswith("tags-v") for name in files)
    report = json.loads((_export_dir(db) / "export.json").read_text())
    assert report["max_abs_difference"] <= 1e-5 and report["texts"] >= 15


def test_the_indexes_of_one_model_share_one_export(photos, tmp_path, tiny_local_dir, monkeypatch, fast):
    """The second index of a model, and the first search after it, need no export: the first
    index's is the user's, kept once in the cache folder and never inside an index."""
    from clipsearch.models import export

    model = f"local-dir:{tiny_local_dir}"
    index_folders([photos / "animals"], tmp_path / "one", model=model, device="cpu")
    monkeypatch.setattr(export, "export", lambda *_a: pytest.fail("exported a second time"))
    index_folders([photos / "space"], tmp_path / "two", model=model, device="cpu")
    shared = _export_dir(tmp_path / "two")
    assert shared == _export_dir(tmp_path / "one")
    assert shared.parent == Path(os.environ["CLIPSEARCH_CACHE"]) / "exports"
    assert onnxtext.exported(Manifest.load(tmp_path / "two").model)
    assert not [p for db in ("one", "two") for p in (tmp_path / db / "fast").iterdir() if "text-" in p.name]
    code, out, err, heavy = run_cli("search", "a rocket", "--paths", "-k", 1, "--db", tmp_path / "two")
    assert code == 0 and heavy == [] and err == "", err  # the fast path at once: no note, no torch
    assert out == f"{photos / 'space' / 'rocket.jpg'}\n"


def test_an_export_an_older_release_kept_in_the_index_moves_to_the_users(photos, tmp_path, tiny_local_dir,
                                                                         monkeypatch, fast):
    from clipsearch.models import export

    db = tmp_path / "db"
    index_folders([photos], db, model=f"local-dir:{tiny_local_dir}", device="cpu")
    shared = _export_dir(db)
    before = open_index(db).search("a rocket", k=3)
    (db / "fast" / "export.lock").write_text("")  # the older release's lock and log went with it
    shutil.move(shared, db / "fast" / shared.name)
    monkeypatch.setattr(export, "export", lambda *_a: pytest.fail("exported again"))
    index = open_index(db)
    # what an index run, a search on the full path or `check` does first
    index.adopt_export(prepare_searches(index.store, lambda: index.embedder)[0])
    assert onnxtext.exported(Manifest.load(db).model) and (shared / "text.onnx").is_file()
    assert sorted(p.name for p in (db / "fast").iterdir() if not p.name.startswith(("rows-", "tags-"))) == []
    assert index.search("a rocket", k=3) == before


def test_an_index_no_new_process_will_search_is_made_without_it(photos, tmp_path, embedder, fast):
    """eval's throw-away galleries: no export, no snapshot, and searched all the same."""
    db = tmp_path / "db"
    summary = index_folders([photos], db, embedder=embedder, fast_path=False)
    assert summary.added == 13 and not (db / "fast").exists()
    assert len(open_index(db, embedder=embedder).search("a horse", k=3)) == 3


def test_the_export_matches_open_clips_encode_text(fast_library, embedder, fast):
    """Against open_clip's own encode_text on the full 77-token context, not our torch path."""
    import torch

    from clipsearch.models.onnxtext import OnnxTextEncoder

    texts = _texts(300, seed=7)
    with torch.inference_mode():
        reference = embedder.model.encode_text(embedder.tokenizer(texts))
        reference = (reference / reference.norm(dim=-1, keepdim=True)).numpy()
    exported = OnnxTextEncoder(_export_dir(fast_library[1])).embed_texts(texts)
    assert np.abs(exported - reference).max() <= 1e-5


def test_the_torch_path_ranks_the_same(fast_library, monkeypatch):
    """With the fast path turned off, queries go through torch again: the same photos in the
    same order, scores within 1e-5."""
    _, db = fast_library
    queries = ["a photo of a rocket", '"stone" + 2:"wall" - "sky"', "a cup of coffee", "grass"]
    onnx = [open_index(db, device="cpu").search(q, k=13) for q in queries]
    monkeypatch.setenv("CLIPSEARCH_FAST_QUERY", "0")
    torch_path = open_index(db, device="cpu")
    assert type(torch_path.text_encoder).__name__ == "OpenClipEmbedder"
    for query, expected in zip(queries, onnx, strict=True):
        hits = torch_path.search(query, k=13)
        assert [h.path for h in hits] == [h.path for h in expected], query
        assert max(abs(a.score - b.score) for a, b in zip(hits, expected, strict=True)) <= 1e-5


def test_a_new_process_searches_without_torch_and_prints_what_the_full_path_prints(fast_library, tmp_path,
                                                                                  fast, monkeypatch):
    from clipsearch.cli import present

    photos, db = fast_library
    monkeypatch.setattr(present.out, "width", 100)  # the tables of both sides laid out alike
    monkeypatch.setenv("COLUMNS", "100")
    queries = [
        ("search", "a photo of a rocket", "--json"),
        ("search", "a photo of a rocket"),
        ("search", "stone", "--paths", "-k", 13),
        ("search", "flower travel", "--json"),  # the words of a name and a folder
        ("search", '"stone" + 2:"wall" - "sky"', "--json"),
        ("search", "stone", "--in", photos / "textures", "--ext", "png", "--json"),
        ("search", "x", "--tag", "sky", "--after", "2000", "--json"),
        ("search", "x", "--after", "2015-02", "--before", "2015-03", "--paths"),
        ("similar", photos / "space" / "rocket.jpg", "--json", "-k", 4),
    ]
    for args in queries:
        stale = tmp_path / f"db{queries.index(args)}"
        shutil.copytree(db, stale, ignore=shutil.ignore_patterns("rows-v*.arrow"))
        # no snapshot yet: the full path (here, in this process: test_a_stale_snapshot_is_never_read
        # sees a new process take it), which writes one
        full = CliRunner().invoke(app, [*map(str, args), "--db", str(stale)], catch_exceptions=False)
        assert list((stale / "fast").glob("rows-v*.arrow")), args
        quick = run_cli(*args, "--db", stale)
        assert full.exit_code == quick[0] == 0, (args, full.output, quick)
        assert quick[1] == full.stdout and quick[2] == full.stderr == "", args  # byte for byte
        assert quick[3] == [], (args, quick[3])  # neither torch, open_clip, LanceDB nor pandas


def test_similar_of_an_outside_image_loads_the_model_and_agrees(fast_library, tmp_path):
    from PIL import Image

    photos, db = fast_library
    outside = tmp_path / "outside.png"
    Image.open(photos / "travel" / "flower.jpg").rotate(5).save(outside)
    quick = run_cli("similar", outside, "--json", "-k", 5, "--db", db)
    assert quick[0] == 0 and "torch" in quick[3] and "lancedb" not in quick[3]
    full = open_index(db, device="cpu").similar(outside, k=5)
    assert json.loads(quick[1]) == [h.to_dict() for h in full]


def test_the_fast_index_answers_as_the_full_one(fast_library, fast):
    from clipsearch.search.fastpath import open_fast

    photos, db = fast_library
    quick, full = open_fast(db), open_index(db, device="cpu")
    assert type(quick.store).__name__ == "Snapshot" and type(full.store).__name__ == "Store"
    for options in [{}, {"ext": "jpg"}, {"tags": ["sky"]}, {"within": str(photos / "space")},
                    {"after": "2000", "before": "2030"}]:
        assert quick.search("a rocket", k=13, **options) == full.search("a rocket", k=13, **options), options
    horse = photos / "animals" / "horse.png"
    assert quick.similar(horse, k=5) == full.similar(horse, k=5)
    assert quick.similar(3, k=5) == full.similar(3, k=5)
    assert quick.tags() == full.tags() and quick.folders() == full.folders()
    assert quick.records([0, 5, 12]) == full.records([0, 5, 12])


def test_a_stale_snapshot_is_never_read(fast_library, tmp_path, tiny_local_dir):
    photos, _ = fast_library
    own_photos, own_db = tmp_path / "photos", tmp_path / "db"
    shutil.copytree(photos, own_photos)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("CLIPSEARCH_FAST_QUERY", "1")
        index_folders([own_photos], own_db, model=f"local-dir:{tiny_local_dir}", device="cpu")
    first = run_cli("search", "x", "-k", 100, "--paths", "--db", own_db)
    assert first[3] == [] and len(first[1].splitlines()) == 13
    # an index run that leaves no snapshot behind (as one killed after its last commit would)
    from PIL import Image

    for i in range(3):
        Image.new("RGB", (64, 48), (i * 80, 10, 200)).save(own_photos / f"new{i}.png")
    (own_photos / "misc" / "camera.bmp").unlink()
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("CLIPSEARCH_FAST_QUERY", "0")
        index_folders([own_photos], own_db, model=f"local-dir:{tiny_local_dir}", device="cpu")
    again = run_cli("search", "x", "-k", 100, "--paths", "--db", own_db)
    paths = set(again[1].splitlines())
    assert {str(own_photos / f"new{i}.png") for i in range(3)} <= paths
    assert str(own_photos / "misc" / "camera.bmp") not in paths and len(paths) == 15
    assert "lancedb" in again[3]  # the old snapshot was not used
    third = run_cli("search", "x", "-k", 100, "--paths", "--db", own_db)
    assert third[1] == again[1] and third[3] == []  # and the full path left a current one


def test_a_damaged_export_is_made_again_with_a_note(fast_library, tmp_path, monkeypatch):
    _, db = fast_library
    own = tmp_path / "db"
    shutil.copytree(db, own)
    shutil.copytree(os.environ["CLIPSEARCH_CACHE"], tmp_path / "own-cache")  # the export is the user's
    monkeypatch.setenv("CLIPSEARCH_CACHE", str(tmp_path / "own-cache"))
    before = run_cli("search", "a rocket", "--json", "--db", own)
    data = next(_export_dir(own).glob("*.data"))
    data.write_bytes(data.read_bytes()[:1000])
    damaged = run_cli("search", "a rocket", "--json", "--db", own)
    assert damaged[0] == 0 and damaged[1] == before[1]
    assert "the exported text encoder in" in damaged[2] and "does not load; exporting it again" in damaged[2]
    assert "torch" in damaged[3]
    after = run_cli("search", "a rocket", "--json", "--db", own)
    assert after[1] == before[1] and after[2] == "" and after[3] == []


def test_a_model_the_export_cannot_reproduce_stays_on_the_torch_path(photos, tmp_path, tiny_local_dir,
                                                                      monkeypatch, fast):
    from clipsearch.models import export
    from clipsearch.search.fastpath import open_fast

    def refuse(_embedder):
        raise export.NotExportable("its tokenizer is not CLIP's plain BPE tokenizer")

    monkeypatch.setattr(export, "_tokenizer_of", refuse)
    db = tmp_path / "db"
    index_folders([photos], db, model=f"local-dir:{tiny_local_dir}", device="cpu")
    marker = _export_dir(db).with_suffix(".unsupported")
    assert "not CLIP's plain BPE tokenizer" in marker.read_text()
    assert open_fast(db) is None
    assert type(open_index(db, device="cpu").text_encoder).__name__ == "OpenClipEmbedder"
    monkeypatch.setattr(export, "_tokenizer_of", lambda _e: pytest.fail("tried again"))
    index = open_index(db, device="cpu")
    prepare_searches(index.store, lambda: index.embedder)
    r = CliRunner().invoke(app, ["search", "a cat", "--db", str(db), "--json"], catch_exceptions=False)
    assert r.exit_code == 0 and len(json.loads(r.stdout)) == 10


def test_an_ivf_index_on_the_fast_path(many_photos, tmp_path, tiny_local_dir, monkeypatch, fast):
    """Above FLAT_MAX candidates are re-scored with vectors from the snapshot."""
    from clipsearch.search.fastpath import open_fast
    from clipsearch.store import ann

    monkeypatch.setattr(ann, "FLAT_MAX", 100)
    db = tmp_path / "db"
    index_folders([many_photos], db, model=f"local-dir:{tiny_local_dir}", device="cpu")
    quick, full = open_fast(db), open_index(db, device="cpu")
    assert quick.ann.kind == "ivf"
    for query in ["a red square", "blue", "a dark photo"]:
        assert quick.search(query, k=20) == full.search(query, k=20)
        assert quick.search(query, k=5, within=str(many_photos / "roll2")) == full.search(
            query, k=5, within=str(many_photos / "roll2"))


def test_turned_off_nothing_is_written(photos, tmp_path, tiny_local_dir):
    assert os.environ["CLIPSEARCH_FAST_QUERY"] == "0"
    db = tmp_path / "db"
    index_folders([photos], db, model=f"local-dir:{tiny_local_dir}", device="cpu")
    assert not (db / "fast").exists()


def test_a_server_on_the_same_index_answers_the_same(fast_library):
    """Three ways in, one answer: the fast path, a running server, and the server's API."""
    _, db = fast_library
    args = ("search", '"stone" + 2:"wall" - "sky"', "--json", "-k", 8, "--db", db)
    quick = run_cli(*args)
    running = serving.start(db, env=serving.environment(**FAST))
    try:
        through = run_cli(*args)
        api = running.get("/api/search", {"q": '"stone" + 2:"wall" - "sky"', "k": 8}).json()["hits"]
    finally:
        code, output = running.stop()
    assert code == 0, output
    assert quick[3] == through[3] == [] and quick[1] == through[1]
    assert [{k: h[k] for k in ("path", "score", "rank", "kind")} for h in api] == json.loads(quick[1])


def test_a_damaged_snapshot_is_a_detour_not_an_error(fast_library, tmp_path):
    import pyarrow as pa

    _, db = fast_library
    own = tmp_path / "db"
    shutil.copytree(db, own)
    before = run_cli("search", "a rocket", "--json", "--db", own)
    rows = next((own / "fast").glob("rows-v*.arrow"))
    whole = pa.ipc.open_file(pa.OSFile(str(rows))).read_all()  # a copy: the file is rewritten below
    for damaged in (whole.slice(0, 3), whole.drop_columns(["taken"])):  # cut short; a column lost
        with pa.OSFile(str(rows), "wb") as sink, pa.ipc.new_file(sink, damaged.schema) as writer:
            writer.write_table(damaged)
        detour = run_cli("search", "a rocket", "--json", "--db", own)
        assert detour[0] == 0 and detour[1] == before[1] and "lancedb" in detour[3]
        if damaged.num_rows == whole.num_rows:  # it opened, then failed: said so
            assert detour[2].startswith("note: the fast search path failed")
        again = run_cli("search", "a rocket", "--json", "--db", own)
        assert again[1] == before[1] and again[3] == []  # the detour rewrote it
