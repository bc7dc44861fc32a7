"""Loading weights: offline failures are fast and say what to do; checkpoints load safely."""

from __future__ import annotations

import json
import os
import pickle
import socket
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import TINY

from clipsearch import index_folders, open_index
from clipsearch.errors import ModelLoadError, ModelMismatchError, OfflineError
from clipsearch.models import load_embedder, parse_model_spec
from clipsearch.models.hub import HUB_PROBE_SECONDS


def _expect_offline_error(spec, seconds):
    started = time.monotonic()
    with pytest.raises(OfflineError) as err:
        load_embedder(spec, "cpu")
    assert time.monotonic() - started < seconds
    message = str(err.value)
    assert spec.describe() in message
    assert "--pretrained /path/to/file" in message
    return message


def test_offline_mode_fails_at_once(empty_hub_cache, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    spec = parse_model_spec("ViT-B-32", "laion2b_s34b_b79k")
    assert "HF_HUB_OFFLINE is set" in _expect_offline_error(spec, 1.0)


def test_unreachable_hub_fails_fast(empty_hub_cache, monkeypatch):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again: connections are refused
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{port}")
    spec = parse_model_spec("ViT-B-32", "laion2b_s34b_b79k")
    assert f"http://127.0.0.1:{port} is unreachable" in _expect_offline_error(spec, 5.0)


def test_hub_that_never_answers_is_given_up_within_the_probe_time(empty_hub_cache, monkeypatch):
    with socket.socket() as silent:  # accepts connections (kernel backlog) but never replies
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{silent.getsockname()[1]}")
        spec = parse_model_spec("hf-hub:laion/CLIP-ViT-B-32-laion2B-s34B-b79K")
        _expect_offline_error(spec, HUB_PROBE_SECONDS + 2.0)


def test_cached_hub_weights_load_with_no_network(tiny_model, tiny_checkpoint, tmp_path, monkeypatch):
    """A model in the hub cache loads offline: files found there go to open_clip as local files."""
    import huggingface_hub.constants as hf

    cache = tmp_path / "hub"
    snapshot = cache / "models--someone--tiny-clip" / "snapshots" / "abc123"
    snapshot.mkdir(parents=True)
    (cache / "models--someone--tiny-clip" / "refs").mkdir()
    (cache / "models--someone--tiny-clip" / "refs" / "main").write_text("abc123")
    from conftest import TINY_CFG

    (snapshot / "open_clip_config.json").write_text(json.dumps({"model_cfg": TINY_CFG}))
    (snapshot / "open_clip_model.safetensors").write_bytes(tiny_checkpoint.read_bytes())
    monkeypatch.setattr(hf, "HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    hub = load_embedder(parse_model_spec("hf-hub:someone/tiny-clip"), "cpu")
    local = load_embedder(parse_model_spec(TINY, str(tiny_checkpoint)), "cpu")
    assert torch.allclose(torch.from_numpy(hub.embed_texts(["a dog"])),
                          torch.from_numpy(local.embed_texts(["a dog"])), atol=1e-6)


class _Exploit:
    def __reduce__(self):
        return (os.system, ("touch /tmp/clipsearch-pwned",))


def test_pickled_code_in_a_checkpoint_is_never_executed(tiny_model, tmp_path):
    marker = "/tmp/clipsearch-pwned"
    if os.path.exists(marker):
        os.unlink(marker)
    evil = tmp_path / "evil.pt"
    with open(evil, "wb") as f:
        pickle.dump({"state_dict": _Exploit()}, f)
    with pytest.raises(ModelLoadError, match="refused for safety; convert it to .safetensors"):
        load_embedder(parse_model_spec(TINY, str(evil)), "cpu")
    assert not os.path.exists(marker)


def test_a_torch_saved_state_dict_loads(tiny_model, tiny_checkpoint, tmp_path, embedder):
    from safetensors.torch import load_file

    pt = tmp_path / "tiny.pt"
    torch.save({"state_dict": load_file(str(tiny_checkpoint))}, pt)
    other = load_embedder(parse_model_spec(TINY, str(pt)), "cpu")
    assert torch.allclose(torch.from_numpy(other.embed_texts(["x"])),
                          torch.from_numpy(embedder.embed_texts(["x"])), atol=1e-6)


@pytest.mark.parametrize("suffix", [".safetensors", ".pt"])
def test_an_fp16_checkpoint_runs_at_the_precision_asked(tiny_model, tiny_checkpoint, tmp_path, embedder,
                                                       suffix):
    """Weights are often published in fp16: they load, and run in fp32, giving the fp32 weights'
    vectors within fp16's rounding (they failed with a dtype mismatch before)."""
    from safetensors.torch import load_file, save_file

    half = {k: v.half() if v.is_floating_point() else v for k, v in load_file(str(tiny_checkpoint)).items()}
    path = tmp_path / f"half{suffix}"
    if suffix == ".pt":
        torch.save({"state_dict": half}, path)
    else:
        save_file(half, str(path))
    for precision in ("fp32", "bf16"):
        other = load_embedder(parse_model_spec(TINY, str(path)), "cpu", precision)
        wanted = torch.float32 if precision == "fp32" else torch.bfloat16
        assert {p.dtype for p in other.model.parameters()} == {wanted}
        got, exact = other.embed_texts(["a dog on a beach"])[0], embedder.embed_texts(["a dog on a beach"])[0]
        assert float(got @ exact) > 0.99


def test_a_blip_saved_in_fp16_runs_in_fp32(tiny_blip_dir, tmp_path):
    """transformers 5 loads weights in the type they were saved in unless told otherwise."""
    from transformers import BlipForImageTextRetrieval, BlipProcessor

    from clipsearch.models.blip import load_scorer

    folder = tmp_path / "half"
    BlipForImageTextRetrieval.from_pretrained(tiny_blip_dir).half().save_pretrained(folder)
    BlipProcessor.from_pretrained(tiny_blip_dir).save_pretrained(folder)
    scorer = load_scorer(str(folder), "cpu", "fp32")
    assert {p.dtype for p in scorer.model.parameters()} == {torch.float32}


def test_search_refuses_a_checkpoint_changed_since_indexing(tiny_model, tiny_checkpoint, photos, tmp_path):
    weights = tmp_path / "w.safetensors"
    weights.write_bytes(tiny_checkpoint.read_bytes())
    db = tmp_path / "db"
    index_folders([photos / "space"], db, model=TINY, pretrained=str(weights), device="cpu")
    assert open_index(db, device="cpu").search("a rocket", k=1)  # loads from the manifest alone

    from safetensors.torch import load_file, save_file

    state = load_file(str(weights))
    state["logit_scale"] = state["logit_scale"] + 1
    save_file(state, str(weights))
    with pytest.raises(ModelMismatchError, match="changed since this index was built"):
        open_index(db, device="cpu").search("a rocket")
    weights.unlink()
    with pytest.raises(ModelLoadError, match="model weights are missing"):
        open_index(db, device="cpu").search("a rocket")


def test_model_without_pretrained_weights_is_refused(tiny_model):
    from clipsearch.errors import UnknownModelError

    with pytest.raises(UnknownModelError, match="needs --pretrained"):
        parse_model_spec("ViT-B-16")


def test_loaded_weights_are_exactly_the_checkpoints(embedder, tiny_checkpoint):
    """The model is built without random init (it is overwritten anyway); every weight must then
    come from the file, and the derived buffers must still be right."""
    import torch
    from safetensors.torch import load_file

    saved = load_file(str(tiny_checkpoint))
    state = embedder.model.state_dict()
    assert set(state) == set(saved)
    for name, tensor in saved.items():
        assert torch.equal(state[name], tensor), name
    mask = embedder.model.attn_mask
    assert torch.equal(mask, torch.full_like(mask, float("-inf")).triu_(1))
    assert torch.nn.init.kaiming_uniform_.__module__ == "torch.nn.init"  # init restored afterwards
    assert torch.nn.Module.load_state_dict.__qualname__ == "Module.load_state_dict"


def test_bf16_weights_are_read_converted_and_equal_the_checkpoints_converted(tiny_model, tiny_checkpoint,
                                                                             tmp_path):
    """In bf16 a .safetensors file is read a tensor at a time, each converted as it is read (a
    lower peak than mapping it whole): every weight must be the file's, converted, whatever the
    stored types; a file cut short is refused, naming it."""
    import torch
    from safetensors.torch import load_file, save_file

    saved = load_file(str(tiny_checkpoint))
    mixed = {k: v.to(torch.float16) if i % 3 == 1 else v.to(torch.bfloat16) if i % 3 == 2 else v
             for i, (k, v) in enumerate(saved.items())}
    path = tmp_path / "mixed.safetensors"
    save_file(mixed, str(path))
    model = load_embedder(parse_model_spec(TINY, str(path)), "cpu", "bf16").model
    state = model.state_dict()
    assert set(state) == set(saved)
    for name, tensor in mixed.items():
        assert state[name].dtype == (torch.bfloat16 if tensor.is_floating_point() else tensor.dtype), name
        assert torch.equal(state[name], tensor.to(state[name].dtype)), name
    import safetensors.torch

    assert safetensors.torch.load_file is load_file  # restored afterwards
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(ModelLoadError, match="cut short"):
        load_embedder(parse_model_spec(TINY, str(cut)), "cpu", "bf16")


@pytest.mark.parametrize("precision, closeness", [("bf16", 0.99), ("int8", 0.99)])
def test_faster_precisions_give_nearly_the_fp32_vectors(tiny_model, tiny_checkpoint, embedder,
                                                        precision, closeness):
    import numpy as np
    from conftest import SAMPLES, sample_files
    from helpers import reference_image

    fast = load_embedder(parse_model_spec(TINY, str(tiny_checkpoint)), "cpu", precision)
    images = [reference_image(p) for p in sample_files(SAMPLES)]
    texts = ["a dog on a beach", "a cup of coffee", "a rocket launch"]
    for exact, approx in ((embedder.embed_pil(images), fast.embed_pil(images)),
                          (embedder.embed_texts(texts), fast.embed_texts(texts))):
        cosines = (exact * approx).sum(axis=1)
        assert cosines.min() > closeness and not np.array_equal(exact, approx)


@pytest.mark.parametrize("precision, device, message", [
    ("fp16", "cpu", "--precision fp16 is for GPUs; on a CPU use bf16"),
    ("fp64", "cpu", "--precision 'fp64' is not one of: fp32, bf16, fp16, int8"),
])
def test_precisions_a_device_cannot_run_are_refused(precision, device, message):
    from clipsearch.errors import BadInputError
    from clipsearch.models import resolve_precision

    with pytest.raises(BadInputError) as err:
        resolve_precision(precision, device)
    assert message in str(err.value)


@pytest.mark.parametrize("native, expected", [(True, "bf16"), (False, "fp32")])
def test_indexing_defaults_to_auto_precision(native, expected, tiny_model, tiny_checkpoint, embedder, photos,
                                             tmp_path, monkeypatch):
    """Without --precision or CLIPSEARCH_PRECISION photos are embedded in bf16 where the CPU has
    it natively (eval found no recall lost), else in fp32."""
    from helpers import reference_image_vectors, stored_vectors

    import clipsearch.models as models
    from clipsearch import index_folders

    monkeypatch.delenv("CLIPSEARCH_PRECISION")
    monkeypatch.setattr(models, "native_bf16", lambda: native)
    assert models.auto_precision("cpu") == expected and models.auto_precision("cuda:1") == "fp16"
    db = tmp_path / "db"
    index_folders([photos / "space"], db, model=tiny_model, pretrained=str(tiny_checkpoint), device="cpu")
    vectors = stored_vectors(db)
    paths = sorted(vectors)
    exact = reference_image_vectors(embedder, [Path(p) for p in paths])
    got = np.stack([vectors[p] for p in paths])
    cosine = (got * exact).sum(axis=1)
    assert cosine.min() > 0.99
    assert (np.abs(got - exact).max() > 1e-5) == (expected == "bf16")


TIMM_CFG = {  # a tiny CLIP whose image tower timm builds (as SigLIP's and ConvNeXt's do)
    "embed_dim": 32,
    "vision_cfg": {"timm_model_name": "vit_tiny_patch16_224", "timm_model_pretrained": False,
                   "timm_pool": "token", "timm_proj": "linear", "image_size": 224},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2},
}
REFERENCE = """
import json, sys
import open_clip, torch  # open_clip as it imports by itself: timm with it
from PIL import Image
from safetensors.torch import save_file
configs, folder = sys.argv[1], sys.argv[2]
open_clip.add_model_config(configs)
torch.manual_seed(0)
model, _, preprocess = open_clip.create_model_and_transforms("clipsearch-tiny-timm")
model.eval()
save_file({k: v.contiguous() for k, v in model.state_dict().items()}, folder + "/open_clip_model.safetensors")
with torch.no_grad():
    image = preprocess(Image.new("RGB", (80, 60), (200, 30, 30))).unsqueeze(0)
    tokens = open_clip.get_tokenizer("clipsearch-tiny-timm")(["a red square"])
    vectors = [torch.nn.functional.normalize(v, dim=-1)[0].tolist()
               for v in (model.encode_image(image), model.encode_text(tokens))]
print(json.dumps({"image": vectors[0], "text": vectors[1]}))
"""
LOAD_AND_EMBED = """
import json, sys
from PIL import Image
from clipsearch.models import load_embedder, parse_model_spec
plain = load_embedder(parse_model_spec("local-dir:" + sys.argv[1], None), "cpu")
before = sorted({"timm", "transformers"} & set(sys.modules))
timm_tower = load_embedder(parse_model_spec("local-dir:" + sys.argv[2], None), "cpu")
image = Image.new("RGB", (80, 60), (200, 30, 30))
print(json.dumps({"before": before, "after": sorted({"timm", "transformers"} & set(sys.modules)),
                  "image": timm_tower.embed_pil([image])[0].tolist(),
                  "text": timm_tower.embed_texts(["a red square"])[0].tolist()}))
"""


def test_timm_and_transformers_load_only_for_the_models_that_need_them(tiny_local_dir, tmp_path):
    """open_clip is imported without timm and transformers (0.8 s, 55 MB); a model whose tower
    timm builds brings timm in, and gives the vectors open_clip gives with timm imported as usual."""
    import subprocess
    import sys

    configs, folder = tmp_path / "configs", tmp_path / "timm-model"
    configs.mkdir()
    folder.mkdir()
    (configs / "clipsearch-tiny-timm.json").write_text(json.dumps(TIMM_CFG))
    (folder / "open_clip_config.json").write_text(json.dumps({"model_cfg": TIMM_CFG}))
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    outputs = []
    for script, args in ((REFERENCE, (configs, folder)), (LOAD_AND_EMBED, (tiny_local_dir, folder))):
        r = subprocess.run([sys.executable, "-c", script, *map(str, args)], capture_output=True, text=True,
                           timeout=300, env=env)
        assert r.returncode == 0, r.stderr[-2000:]
        outputs.append(json.loads(r.stdout.strip().splitlines()[-1]))
    expected, got = outputs
    assert got["before"] == [] and got["after"] == ["timm"]
    for kind in ("image", "text"):
        assert np.abs(np.array(got[kind]) - np.array(expected[kind])).max() < 1e-5, kind


def test_an_index_run_lets_the_text_tower_go_and_embeds_images_as_before(tiny_model, tiny_checkpoint,
                                                                         embedder):
    """An index run embeds only images: the model it loads drops its text weights, gives the
    same image vectors, and refuses text rather than answer without its tower."""
    from conftest import SAMPLES, sample_files
    from helpers import reference_image

    own = load_embedder(parse_model_spec(TINY, str(tiny_checkpoint)), "cpu", "fp32")
    images = [reference_image(p) for p in sample_files(SAMPLES)[:4]]
    own.drop_text_tower()
    assert not own.has_text
    assert {n.split(".")[0] for n, _ in own.model.named_parameters()} == {"visual", "logit_scale"}
    assert np.array_equal(own.embed_pil(images), embedder.embed_pil(images))
    with pytest.raises(RuntimeError, match="text tower"):
        own.embed_texts(["a dog"])
