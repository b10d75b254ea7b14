"""Fuzzing the readers: random mutations of small valid files must give a valid result or a
FeatureSplatError, never another exception, within a deadline and without blowing memory.

Each test writes a valid dataset or PLY itself (json, struct, PIL, plyfile), then hypothesis
mutates one of its files: bytes (flips, truncation, insertion, deletion, overwriting with
extreme numbers), text (tokens and lines replaced, deleted, repeated) and JSON values (replaced by
other JSON values, keys deleted). ``FEATURE_SPLAT_FUZZ_EXAMPLES`` raises the number of examples
per reader (default 150, derandomised so runs repeat; a set count also randomises the search).
Run with ``-s`` to see the outcome counts.
"""

from __future__ import annotations

import copy
import io
import json
import math
import os
import resource
import struct
import tempfile
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image
from plyfile import PlyData, PlyElement

from feature_splat.data import load_blender, load_colmap, load_nerfstudio
from feature_splat.errors import FeatureSplatError
from feature_splat.io import read_ply
from feature_splat.io.ply import read_ply_points

EXAMPLES = int(os.environ.get("FEATURE_SPLAT_FUZZ_EXAMPLES", "150"))
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=2000,  # ms per example
    derandomize="FEATURE_SPLAT_FUZZ_EXAMPLES" not in os.environ,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
MEMORY_GROWTH_LIMIT_KIB = 200 * 1024
W, H = 8, 6
Files = dict[str, bytes]

# ---- mutations ----

EXTREME_BYTES = [
    struct.pack("<Q", 2**64 - 1),
    struct.pack("<Q", 2**40),
    struct.pack("<q", -1),
    struct.pack("<i", -(2**31)),
    struct.pack("<I", 2**31),
    struct.pack("<d", math.nan),
    struct.pack("<d", math.inf),
    struct.pack("<d", -1e308),
    struct.pack("<f", math.nan),
    struct.pack(">d", math.nan),
    struct.pack(">I", 2**32 - 1),
    b"\0" * 8,
    b"\xff",
]
EXTREME_TOKENS = [
    "nan", "inf", "-inf", "-1", "0", "1", "1e400", "1e-400", "-0", "2.5", "1e308",
    "99999999999999999999999999", "1000000000000", "PINHOLE", "SIMPLE_PINHOLE", "OPENCV",
    "SIMPLE_RADIAL", "FOV", "a.png", "../x.png", "/etc/passwd", "#", "", "x", "list", "uchar",
    "int", "double", "float", "face", "vertex", "element", "property", "end_header", "ascii",
    "binary_big_endian", "binary_little_endian",
]  # fmt: skip
_EXTREME_JSON_VALUES = [
    None, True, 0, -1, 1, 10**400, -(10**30), 1e308, -1e308, math.nan, math.inf, 0.5, "",
    "images/0.png", "../secret.png", "/etc/passwd", "transforms.json", "points3D.ply",
    "images", ".", "\u0000", [], {}, [[1, 0, 0, 0]] * 4, [[0] * 4] * 4,
]  # fmt: skip
EXTREME_JSON = st.sampled_from(_EXTREME_JSON_VALUES).map(copy.deepcopy)  # never shared
JSON_VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=12)
    | EXTREME_JSON,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=6), children, max_size=3)
    ),
    max_leaves=8,
)
POSITION = st.floats(0, 1)
BYTE_EDIT = st.one_of(
    st.tuples(st.just("flip"), POSITION, st.integers(1, 255)),
    st.tuples(st.just("truncate"), POSITION),
    st.tuples(st.just("insert"), POSITION, st.binary(min_size=1, max_size=16)),
    st.tuples(st.just("delete"), POSITION, st.integers(1, 32)),
    st.tuples(st.just("overwrite"), POSITION, st.sampled_from(EXTREME_BYTES)),
)
TEXT_EDIT = st.one_of(
    st.tuples(st.just("token"), POSITION, POSITION, st.sampled_from(EXTREME_TOKENS)),
    st.tuples(st.just("delete_token"), POSITION, POSITION),
    st.tuples(st.just("delete_line"), POSITION),
    st.tuples(st.just("repeat_line"), POSITION),
    st.tuples(st.just("swap_lines"), POSITION, POSITION),
    st.tuples(st.just("insert_line"), POSITION, st.sampled_from(EXTREME_TOKENS)),
)


def _at(fraction: float, length: int) -> int:
    return min(int(fraction * length), max(length - 1, 0))


def apply_byte_edits(data: bytes, edits: list[tuple]) -> bytes:
    buffer = bytearray(data)
    for kind, fraction, *args in edits:
        k = _at(fraction, len(buffer))
        if kind == "flip" and buffer:
            buffer[k] ^= args[0]
        elif kind == "truncate":
            del buffer[k:]
        elif kind == "insert":
            buffer[k:k] = args[0]
        elif kind == "delete":
            del buffer[k : k + args[0]]
        elif kind == "overwrite":
            buffer[k : k + len(args[0])] = args[0]
    return bytes(buffer)


def apply_text_edits(text: str, edits: list[tuple]) -> str:
    lines = text.split("\n")
    for kind, fraction, *args in edits:
        k = _at(fraction, len(lines))
        if kind in ("token", "delete_token"):
            words = lines[k].split(" ")
            j = _at(args[0], len(words))
            words[j : j + 1] = [args[1]] if kind == "token" else []
            lines[k] = " ".join(words)
        elif kind == "delete_line" and len(lines) > 1:
            del lines[k]
        elif kind == "repeat_line":
            lines.insert(k, lines[k])
        elif kind == "swap_lines":
            j = _at(args[0], len(lines))
            lines[k], lines[j] = lines[j], lines[k]
        elif kind == "insert_line":
            lines.insert(k, args[0])
    return "\n".join(lines)


def _value_paths(value: Any, path: tuple = ()) -> list[tuple]:
    """Paths (keys and indices) to every value nested in a JSON document or a checkpoint's
    dicts and lists, itself first."""
    paths = [path]
    children = (
        value.items()
        if isinstance(value, dict)
        else enumerate(value)
        if isinstance(value, list)
        else []
    )
    for key, child in children:
        paths += _value_paths(child, (*path, key))
    return paths


def edit_values(data: st.DataObject, document: Any, edits: list[str], edit: Callable) -> Any:
    """``document`` after 1 to 3 edits: each picks a nested value and an edit among ``edits``,
    and ``edit(data, parent, key, choice)`` applies it."""
    for _ in range(data.draw(st.integers(1, 3), label="edits")):
        paths = _value_paths(document)[1:]
        if not paths:
            break
        *parent_path, key = data.draw(st.sampled_from(paths), label="path")
        parent = document
        for step in parent_path:
            parent = parent[step]
        edit(data, parent, key, data.draw(st.sampled_from(edits), label="edit"))
    return document


def _edit_json(data: st.DataObject, parent: Any, key: Any, choice: str) -> None:
    if choice == "delete":
        del parent[key]
    else:
        parent[key] = data.draw(EXTREME_JSON | JSON_VALUES, label="value")


def mutate_json(data: st.DataObject, document: Any) -> Any:
    """``document`` with a few values replaced by other JSON values, or deleted."""
    return edit_values(data, document, ["delete", "value"], _edit_json)


TENSOR_VALUES = st.one_of(
    st.tuples(st.lists(st.integers(0, 5), max_size=3), st.sampled_from(["float", "nan", "int"])),
    st.just(((10**9,), "meta")),  # a shape that would not fit in memory
)


def _tensor(spec: tuple) -> Any:
    import torch

    shape, kind = spec
    if kind == "meta":  # only its declared size is large: torch.save stores no data for meta
        return torch.empty(shape, device="meta")
    if kind == "int":
        return torch.arange(math.prod(shape)).reshape(shape)
    values = torch.randn(shape)
    return values.fill_(math.nan) if kind == "nan" else values


def _edit_checkpoint(data: st.DataObject, parent: Any, key: Any, choice: str) -> None:
    if choice == "delete" and isinstance(parent, dict):
        del parent[key]
    elif choice == "tensor":
        parent[key] = _tensor(data.draw(TENSOR_VALUES, label="tensor"))
    else:
        parent[key] = data.draw(EXTREME_JSON | JSON_VALUES, label="value")


def mutate_checkpoint(data: st.DataObject, content: bytes) -> bytes:
    """A ``torch.save`` file whose contents had a few values replaced (by JSON-like values or
    tensors of other shapes, dtypes, NaN) or deleted."""
    import torch

    document = torch.load(io.BytesIO(content), weights_only=True)
    edit_values(data, document, ["delete", "value", "tensor"], _edit_checkpoint)
    buffer = io.BytesIO()
    torch.save(document, buffer)
    return buffer.getvalue()


def mutate_file(data: st.DataObject, name: str, content: bytes) -> bytes:
    """``content`` after byte edits, text edits (text files and PLY headers), JSON edits or
    (``.pt`` files) edits of the saved values."""
    kinds = ["bytes"]
    if name.endswith((".txt", ".json", ".ply")):
        kinds.append("text")
    if name.endswith(".json"):
        kinds += ["json", "json"]
    if name.endswith(".pt"):
        kinds += ["checkpoint", "checkpoint", "checkpoint"]
    kind = data.draw(st.sampled_from(kinds), label="kind")
    if kind == "bytes":
        return apply_byte_edits(content, data.draw(st.lists(BYTE_EDIT, min_size=1, max_size=4)))
    if kind == "checkpoint":
        return mutate_checkpoint(data, content)
    if kind == "json":
        document = mutate_json(data, json.loads(content))
        return json.dumps(document).encode()
    edits = data.draw(st.lists(TEXT_EDIT, min_size=1, max_size=4), label="text edits")
    end = content.find(b"end_header")
    if name.endswith(".ply") and end >= 0:  # the header only: the body may be binary
        header = content[:end].decode("ascii")
        return apply_text_edits(header, edits).encode() + content[end:]
    return apply_text_edits(content.decode(), edits).encode()


# ---- the harness ----


def fuzz(
    name: str, files: Files, targets: list[str], read: Callable[[Path, str], Any]
) -> Counter[str]:
    """Run ``read(folder, target)`` on ``files``, written in a fresh folder with one of
    ``targets`` mutated; count the outcomes."""
    outcomes: Counter[str] = Counter()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss

    @FUZZ
    @given(data=st.data())
    def check(data: st.DataObject) -> None:
        target = data.draw(st.sampled_from(targets), label="target")
        mutated = dict(files, **{target: mutate_file(data, target, files[target])})
        with tempfile.TemporaryDirectory() as folder:
            root = Path(folder)
            for relative, content in mutated.items():
                (root / relative).parent.mkdir(parents=True, exist_ok=True)
                (root / relative).write_bytes(content)
            try:
                read(root, target)
            except FeatureSplatError:
                outcomes["FeatureSplatError"] += 1
            else:
                outcomes["valid"] += 1

    check()
    growth = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
    print(
        f"\nfuzz {name}: {sum(outcomes.values())} runs: {outcomes['valid']} valid, "
        f"{outcomes['FeatureSplatError']} FeatureSplatError; peak RSS +{growth // 1024} MiB"
    )
    assert growth < MEMORY_GROWTH_LIMIT_KIB, f"peak RSS grew by {growth // 1024} MiB"
    return outcomes


def png(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def ply(records: np.ndarray, encoding: str) -> bytes:
    text, byte_order = {"ascii": (True, "="), "le": (False, "<"), "be": (False, ">")}[encoding]
    buffer = io.BytesIO()
    PlyData([PlyElement.describe(records, "vertex")], text=text, byte_order=byte_order).write(
        buffer
    )
    return buffer.getvalue()


def gaussian_records() -> np.ndarray:
    names = ["x", "y", "z", "nx", "ny", "nz", "f_dc_0", "f_dc_1", "f_dc_2"]
    names += [f"f_rest_{i}" for i in range(9)] + ["opacity", "scale_0", "scale_1", "scale_2"]
    names += ["rot_0", "rot_1", "rot_2", "rot_3", "f_feat_0", "f_feat_1"]
    records = np.empty(3, dtype=[(n, "f4") for n in names])
    values = np.random.default_rng(0).normal(size=(3, len(names))).astype(np.float32)
    for k, n in enumerate(names):
        records[n] = values[:, k]
    return records


def point_records() -> np.ndarray:
    dtype = [("x", "f4"), ("y", "f4"), ("z", "f4"), ("red", "u1"), ("green", "u1"), ("blue", "u1")]
    records = np.empty(4, dtype=dtype)
    rng = np.random.default_rng(1)
    for c in "xyz":
        records[c] = rng.normal(size=4)
    for c in ("red", "green", "blue"):
        records[c] = rng.integers(0, 256, size=4)
    return records


def images(names: list[str]) -> Files:
    return {name: png(np.full((H, W, 3), 30 * k, np.uint8)) for k, name in enumerate(names)}


# ---- one test per reader ----


def test_fuzz_gaussian_ply_reader() -> None:
    files = {f"field_{e}.ply": ply(gaussian_records(), e) for e in ("ascii", "le", "be")}
    outcomes = fuzz("read_ply", files, list(files), lambda root, target: read_ply(root / target))
    assert outcomes["valid"] > 0 and outcomes["FeatureSplatError"] > 0


def test_fuzz_point_ply_reader() -> None:
    files = {f"points_{e}.ply": ply(point_records(), e) for e in ("ascii", "le", "be")}
    outcomes = fuzz(
        "read_ply_points", files, list(files), lambda root, target: read_ply_points(root / target)
    )
    assert outcomes["valid"] > 0 and outcomes["FeatureSplatError"] > 0


def nerfstudio_files() -> Files:
    frames = [
        {
            "file_path": f"images/{i}.png",
            "transform_matrix": [[1, 0, 0, i], [0, 1, 0, 0], [0, 0, 1, 3], [0, 0, 0, 1]],
        }
        for i in range(3)
    ]
    frames[1]["mask_path"] = "masks/1.png"
    frames[2].update(fl_x=12.0, cx=4.5)
    meta = {
        "camera_model": "OPENCV",
        "fl_x": 10.0,
        "fl_y": 11.0,
        "cx": 4.0,
        "cy": 3.0,
        "w": W,
        "h": H,
        "k1": 0.0,
        "frames": frames,
        "train_filenames": ["images/0.png", "images/2.png"],
        "test_filenames": ["images/1.png"],
        "ply_file_path": "points3D.ply",
    }
    files = images([f"images/{i}.png" for i in range(3)])
    files["masks/1.png"] = png(np.full((H, W), 255, np.uint8))
    files["points3D.ply"] = ply(point_records(), "le")
    files["transforms.json"] = json.dumps(meta).encode()
    return files


def test_fuzz_nerfstudio_loader() -> None:
    files = nerfstudio_files()
    outcomes = fuzz(
        "load_nerfstudio",
        files,
        ["transforms.json", "transforms.json", "transforms.json", "images/0.png", "points3D.ply"],
        lambda root, _: load_nerfstudio(root),
    )
    assert outcomes["valid"] > 0 and outcomes["FeatureSplatError"] > 0


def blender_files() -> Files:
    identity = [[1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]]
    files = images(["train/r_0.png", "train/r_1.png", "test/r_0.png"])
    for split, count in (("train", 2), ("test", 1)):
        frames = [
            {"file_path": f"./{split}/r_{i}", "transform_matrix": identity} for i in range(count)
        ]
        meta = {"camera_angle_x": 0.8, "frames": frames}
        files[f"transforms_{split}.json"] = json.dumps(meta).encode()
    return files


def test_fuzz_blender_loader() -> None:
    files = blender_files()
    outcomes = fuzz(
        "load_blender",
        files,
        ["transforms_train.json", "transforms_test.json"],
        lambda root, _: load_blender(root),
    )
    assert outcomes["valid"] > 0 and outcomes["FeatureSplatError"] > 0


COLMAP_CAMERAS = "# CAMERA_ID MODEL WIDTH HEIGHT PARAMS[]\n1 PINHOLE 8 6 10 11 4 3\n2 SIMPLE_RADIAL 8 6 9 4 3 0\n"
COLMAP_IMAGES = (
    "# IMAGE_ID QW QX QY QZ TX TY TZ CAMERA_ID NAME\n"
    "1 1 0 0 0 0 0 2 1 a.png\n4.0 5.0 1 1.0 2.0 -1\n"
    "2 0.7071067811865476 0 0 0.7071067811865476 1 0 2 2 b.png\n\n"
    "3 0.7071067811865476 0.7071067811865476 0 0 0 1 2 1 c.png\n"
)
COLMAP_POINTS = "# POINT3D_ID X Y Z R G B ERROR TRACK[]\n1 0 0 5 255 0 0 0.5 1 0\n2 1 -1 2 0 255 128 0.1 2 0 3 0\n"


def colmap_text_files() -> Files:
    files = images(["images/a.png", "images/b.png", "images/c.png"])
    files["sparse/0/cameras.txt"] = COLMAP_CAMERAS.encode()
    files["sparse/0/images.txt"] = COLMAP_IMAGES.encode()
    files["sparse/0/points3D.txt"] = COLMAP_POINTS.encode()
    return files


def colmap_binary_files() -> Files:
    files = images(["images/a.png", "images/b.png", "images/c.png"])
    cameras = struct.pack("<Q", 2) + struct.pack("<iiQQ4d", 1, 1, W, H, 10, 11, 4, 3)
    cameras += struct.pack("<iiQQ4d", 2, 2, W, H, 9, 4, 3, 0)
    s = math.sqrt(0.5)
    records = [
        (1, (1, 0, 0, 0, 0, 0, 2), 1, b"a.png", [(4.0, 5.0, 1), (1.0, 2.0, -1)]),
        (2, (s, 0, 0, s, 1, 0, 2), 2, b"b.png", []),
        (3, (s, s, 0, 0, 0, 1, 2), 1, b"c.png", [(3.0, 3.0, 2)]),
    ]
    image_bytes = struct.pack("<Q", len(records))
    for image_id, pose, camera_id, name, points2d in records:
        image_bytes += struct.pack("<i7di", image_id, *pose, camera_id) + name + b"\0"
        image_bytes += struct.pack("<Q", len(points2d))
        image_bytes += b"".join(struct.pack("<ddq", *p) for p in points2d)
    points = struct.pack("<Q", 2) + struct.pack("<Q3d3BdQ", 1, 0, 0, 5, 255, 0, 0, 0.5, 1)
    points += struct.pack("<ii", 1, 0)
    points += struct.pack("<Q3d3BdQ", 2, 1, -1, 2, 0, 255, 128, 0.1, 2) + struct.pack(
        "<iiii", 1, 1, 3, 0
    )
    files["sparse/0/cameras.bin"] = cameras
    files["sparse/0/images.bin"] = image_bytes
    files["sparse/0/points3D.bin"] = points
    return files


def test_fuzz_colmap_text_loader() -> None:
    files = colmap_text_files()
    targets = [name for name in files if name.startswith("sparse/")]
    outcomes = fuzz(
        "load_colmap (text)", files, targets, lambda root, _: load_colmap(root, holdout_every=2)
    )
    assert outcomes["valid"] > 0 and outcomes["FeatureSplatError"] > 0


def test_fuzz_colmap_binary_loader() -> None:
    files = colmap_binary_files()
    targets = [name for name in files if name.startswith("sparse/")]
    outcomes = fuzz(
        "load_colmap (binary)", files, targets, lambda root, _: load_colmap(root, holdout_every=2)
    )
    assert outcomes["valid"] > 0 and outcomes["FeatureSplatError"] > 0


def test_the_unmutated_files_are_valid(tmp_path: Path) -> None:
    """The fuzzers start from valid files: each loads as written."""
    for name, files, read in (
        ("ns", nerfstudio_files(), load_nerfstudio),
        ("colmap_text", colmap_text_files(), load_colmap),
        ("colmap_binary", colmap_binary_files(), load_colmap),
        ("blender", blender_files(), load_blender),
    ):
        for relative, content in files.items():
            (tmp_path / name / relative).parent.mkdir(parents=True, exist_ok=True)
            (tmp_path / name / relative).write_bytes(content)
        assert len(read(tmp_path / name)) == 3
    for encoding in ("ascii", "le", "be"):
        (tmp_path / f"g_{encoding}.ply").write_bytes(ply(gaussian_records(), encoding))
        assert len(read_ply(tmp_path / f"g_{encoding}.ply")) == 3
        (tmp_path / f"p_{encoding}.ply").write_bytes(ply(point_records(), encoding))
        assert len(read_ply_points(tmp_path / f"p_{encoding}.ply")[0]) == 4


# ---- the checkpoint and model loaders ----


def _saved(obj: Any) -> bytes:
    import torch

    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getvalue()


def field_files() -> Files:
    """A field folder: a PLY of 3 Gaussians with 2 features (plyfile) and its decoder file."""
    import torch

    linear = torch.nn.Linear(2, 5)
    decoder = {"decoder_config": {"in_dim": 2, "out_dim": 5, "hidden": [], "identity": False},
               "decoder_state": {f"layers.0.{k}": v for k, v in linear.state_dict().items()},
               "background": torch.zeros(5), "sh_degree": 1}  # fmt: skip
    return {"point_cloud.ply": ply(gaussian_records(), "le"), "decoder.pt": _saved(decoder)}


def test_fuzz_field_loader() -> None:
    from feature_splat.field import FeatureField

    files = field_files()
    outcomes = fuzz(
        "FeatureField.load", files, ["decoder.pt", "decoder.pt", "point_cloud.ply"],
        lambda root, _: FeatureField.load(root),
    )  # fmt: skip
    assert outcomes["valid"] > 0 and outcomes["FeatureSplatError"] > 0


def _tiny_trainer(out: Path):
    import torch

    from feature_splat.cameras import orbit
    from feature_splat.data import Dataset
    from feature_splat.training import TrainConfig, Trainer

    cameras = orbit(3, 3.0, 16, 16)
    dataset = Dataset(torch.rand(3, 16, 16, 3), cameras, ["a", "b", "c"], [0, 1], [2],
                      points=torch.randn(40, 3))  # fmt: skip
    config = TrainConfig(out=out, feature_dim=2, teacher_dim=4, teacher_stride=4, iterations=4,
                         init_points=40, sh_degree=1)  # fmt: skip
    return Trainer(config, dataset, torch.zeros(3, 4, 4, 4, dtype=torch.float16), 4, 4)


def test_fuzz_training_checkpoint_loader(tmp_path: Path) -> None:
    trainer = _tiny_trainer(tmp_path)
    trainer.train(show_progress=False, until=2)
    files = {"checkpoint.pt": trainer.save_checkpoint().read_bytes()}
    outcomes = fuzz(
        "Trainer.load_checkpoint", files, ["checkpoint.pt"],
        lambda root, _: _tiny_trainer(root).load_checkpoint(),
    )  # fmt: skip
    assert outcomes["valid"] > 0 and outcomes["FeatureSplatError"] > 0


def test_fuzz_predictor_loader(tmp_path: Path) -> None:
    from feature_splat.generalizable.config import PredictorConfig
    from feature_splat.generalizable.network import GaussianPredictor
    from feature_splat.generalizable.training import load_model, save_model

    model = GaussianPredictor(PredictorConfig(feature_dim=2, teacher_dim=4, widths=(4, 8)))
    files = {"model.pt": save_model(tmp_path / "model.pt", model).read_bytes()}
    outcomes = fuzz(
        "load_model", files, ["model.pt"], lambda root, _: load_model(root / "model.pt")
    )
    assert outcomes["FeatureSplatError"] > 0  # nearly every edit breaks a network's weights
