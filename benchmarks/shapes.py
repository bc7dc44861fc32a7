"""A small compositional picture task that tiny models can learn in minutes on a CPU, made at
run time (nothing committed, nothing downloaded): coloured shapes on textured backgrounds, with
captions, a held-out split, and the truth of any caption about any picture.

Two objects per picture, "a red circle left of a blue square" or "... above ...". Every
composition has three twins made of the same words: colours swapped, objects swapped, shapes
swapped. A bag-of-words embedding cannot tell the four apart; telling them apart is binding
colours to shapes and shapes to places, which is what CLIP alone is known to get wrong and what
BLIP's image-text matching reads for. Held-out compositions are whole groups of four twins, so
every held-out query has its three confusable twins beside it in the gallery, and none of them was
seen in training.

Also single-object pictures ("a green triangle"), for zero-shot classification, and blank ones
(texture only), which no shape caption describes.
"""

from __future__ import annotations

import itertools
import random
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

SIZE = 64
COLOURS = {"red": (215, 40, 40), "green": (40, 160, 60), "blue": (45, 75, 215), "yellow": (235, 200, 35)}
SHAPES = ("circle", "square", "triangle")
RELATIONS = ("left of", "above")
ABSENT_SHAPES = ("star", "heart", "cross")  # named in negative captions only: never drawn
GENERIC = ("a photo.", "a picture.", "an image.", "a photo of something.", "a snapshot.",
           "an empty picture.", "a plain background.")
PREFIXES = ("", "a photo of ", "a picture of ", "an image of ")


@dataclass(frozen=True)
class Obj:
    colour: str
    shape: str

    def words(self) -> str:
        return f"{self.colour} {self.shape}"


@dataclass(frozen=True)
class Scene:
    """What a picture shows: no object, one, or two in `relation` (the first left of / above
    the second)."""

    objects: tuple[Obj, ...] = ()
    relation: str | None = None

    def caption(self) -> str:
        if not self.objects:
            return "a photo."
        if len(self.objects) == 1:
            return f"a {self.objects[0].words()}"
        a, b = self.objects
        return f"a {a.words()} {self.relation} a {b.words()}"

    def twins(self) -> list[Scene]:
        """The other compositions made of the same words: colours, objects, shapes swapped."""
        a, b = self.objects
        return [Scene((Obj(b.colour, a.shape), Obj(a.colour, b.shape)), self.relation),
                Scene((b, a), self.relation),
                Scene((Obj(a.colour, b.shape), Obj(b.colour, a.shape)), self.relation)]

    def group(self) -> tuple:
        a, b = self.objects
        return (frozenset((a.colour, b.colour)), frozenset((a.shape, b.shape)), self.relation)


@dataclass(frozen=True)
class Caption:
    """A caption and what it claims: a whole scene, one object, a shape, or nothing specific."""

    text: str
    kind: str  # "scene", "object", "shape", "generic"
    scene: Scene | None = None
    obj: Obj | None = None
    shape: str | None = None

    def true_of(self, scene: Scene) -> bool:
        if self.kind == "scene":
            return self.scene == scene
        if self.kind == "object":
            return self.obj in scene.objects
        if self.kind == "shape":
            return any(o.shape == self.shape for o in scene.objects)
        return not scene.objects


def compositions() -> list[Scene]:
    """Every two-object scene with two colours and two shapes: 4*3*3*2*2 = 144."""
    objs = [Obj(c, s) for c in COLOURS for s in SHAPES]
    return [Scene((a, b), rel) for rel in RELATIONS for a, b in itertools.permutations(objs, 2)
            if a.colour != b.colour and a.shape != b.shape]


def split(held_out_groups: int = 8, seed: int = 0) -> tuple[list[Scene], list[Scene]]:
    """(train, held-out) compositions; held-out ones are whole groups of four twins."""
    scenes = compositions()
    groups = sorted({s.group() for s in scenes}, key=lambda g: (sorted(g[0]), sorted(g[1]), g[2]))
    held = set(random.Random(seed).sample(groups, held_out_groups))
    return [s for s in scenes if s.group() not in held], [s for s in scenes if s.group() in held]


def singles() -> list[Scene]:
    return [Scene((Obj(c, s),)) for c in COLOURS for s in SHAPES]


def render(scene: Scene, rng: random.Random) -> Image.Image:
    """One picture of `scene`: a random texture, the objects at jittered places and sizes."""
    image = _background(rng)
    draw = ImageDraw.Draw(image)
    n = len(scene.objects)
    if n == 1:
        centres = [(rng.uniform(22, 42), rng.uniform(22, 42))]
    elif n == 2:
        near, far = rng.uniform(13, 19), rng.uniform(45, 51)
        side = rng.uniform(20, 44)
        drift = rng.uniform(-4, 4)
        centres = [(near, side), (far, side + drift)]
        if scene.relation == "above":
            centres = [(y, x) for x, y in centres]
    else:
        centres = []
    for obj, (x, y) in zip(scene.objects, centres, strict=True):
        _shape(draw, obj, x, y, rng.uniform(9, 12), rng)
    return image


def _background(rng: random.Random) -> Image.Image:
    base = np.array([rng.uniform(150, 235)] * 3) + np.array([rng.uniform(-12, 12) for _ in range(3)])
    noise = np.random.default_rng(rng.getrandbits(32)).normal(0, rng.uniform(4, 16), (SIZE, SIZE, 1))
    if rng.random() < 0.5:  # stripes, at a random angle and period
        yy, xx = np.mgrid[0:SIZE, 0:SIZE]
        angle, period = rng.uniform(0, np.pi), rng.uniform(5, 14)
        noise = noise + 10 * np.sin((xx * np.cos(angle) + yy * np.sin(angle)) / period * 2 * np.pi)[..., None]
    pixels = np.clip(base + noise, 0, 255).astype(np.uint8)
    return Image.fromarray(pixels, "RGB").filter(ImageFilter.GaussianBlur(rng.uniform(0.3, 1.0)))


def _shape(draw: ImageDraw.ImageDraw, obj: Obj, x: float, y: float, r: float, rng: random.Random) -> None:
    fill = tuple(int(np.clip(v + rng.uniform(-20, 20), 0, 255)) for v in COLOURS[obj.colour])
    if obj.shape == "circle":
        draw.ellipse((x - r, y - r, x + r, y + r), fill=fill)
    elif obj.shape == "square":
        r *= 0.9
        draw.rectangle((x - r, y - r, x + r, y + r), fill=fill)
    else:
        r *= 1.15
        draw.polygon([(x, y - r), (x - r, y + 0.8 * r), (x + r, y + 0.8 * r)], fill=fill)


def captions_of(scene: Scene) -> list[Caption]:
    """Every caption the task writes for `scene`: the whole scene, each object, each shape."""
    if not scene.objects:
        return [Caption(g, "generic") for g in GENERIC]
    out = [Caption(scene.caption(), "scene", scene=scene)]
    for obj in scene.objects:
        out.append(Caption(f"a {obj.words()}", "object", obj=obj))
        out.append(Caption(f"a {obj.shape}", "shape", shape=obj.shape))
    return out


def hard_negatives(scene: Scene) -> list[Caption]:
    """Captions made of nearly the scene's own words that are false of it: its three twins, each
    object given the shape the scene lacks, and a shape no picture shows."""
    if not scene.objects:
        return []
    out = []
    if len(scene.objects) == 2:
        out += [Caption(t.caption(), "scene", scene=t) for t in scene.twins()]
    for i, obj in enumerate(scene.objects):
        for shape in SHAPES:
            if all(o.shape != shape for o in scene.objects):
                objects = list(scene.objects)
                objects[i] = Obj(obj.colour, shape)
                other = Scene(tuple(objects), scene.relation)
                out.append(Caption(other.caption(), "scene", scene=other))
    first = scene.objects[0]
    pick = list(COLOURS).index(first.colour) + SHAPES.index(first.shape)
    absent = ABSENT_SHAPES[pick % len(ABSENT_SHAPES)]
    other = Scene((Obj(first.colour, absent), *scene.objects[1:]), scene.relation)
    out.append(Caption(other.caption(), "scene", scene=other))
    return out


def vocabulary() -> list[str]:
    """Every word the task's captions and prompts use (for a tiny BLIP tokenizer)."""
    words = {"a", "an", "of", "left", "above", "photo", "picture", "image", "something", "snapshot",
             "empty", "plain", "background", "good", "close", "up", "blurry", "bright", "dark", "cropped",
             "-", ".", *COLOURS, *SHAPES, *ABSENT_SHAPES, "purple", "orange", "dog", "car"}
    return sorted(words)


@dataclass
class Split:
    """A folder of pictures and their captions: a retrieval set (captions.jsonl), a zero-shot set
    (one folder per class), a blank picture."""

    root: Path
    retrieval: Path  # captions.jsonl
    zeroshot: Path  # ImageFolder layout
    blank: Path
    scenes: dict[str, Scene]  # file path -> scene


def write_eval_split(root: Path, seed: int = 1, seen: bool = False) -> Split:
    """The held-out compositions (the training ones with `seen`), one picture each, with
    captions.jsonl; single-object pictures in class folders; one blank picture. PNG, so pixels are
    exactly as rendered; `seed` draws new pictures."""
    import json

    rng = random.Random(seed)
    root.mkdir(parents=True, exist_ok=True)
    scenes: dict[str, Scene] = {}
    lines = []
    for i, scene in enumerate(split()[0 if seen else 1]):
        path = root / "pairs" / f"{i:03d}.png"
        path.parent.mkdir(exist_ok=True)
        render(scene, rng).save(path)
        scenes[str(path)] = scene
        lines.append(json.dumps({"image": f"pairs/{path.name}", "captions": [scene.caption()]}))
    (root / "captions.jsonl").write_text("\n".join(lines) + "\n")
    for scene in singles():
        folder = root / "classes" / scene.objects[0].words()
        folder.mkdir(parents=True, exist_ok=True)
        for j in range(3):
            path = folder / f"{j}.png"
            render(scene, rng).save(path)
            scenes[str(path)] = scene
    blank = root / "blank.png"
    render(Scene(), rng).save(blank)
    return Split(root, root / "captions.jsonl", root / "classes", blank, scenes)


def training_scenes() -> Iterator[Scene]:
    """What training draws pictures from: the training compositions, single objects, blanks."""
    train, _ = split()
    return itertools.chain(train, singles(), [Scene()])
