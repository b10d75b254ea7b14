"""Built-in real-mesh worlds: textured meshes from ``pybullet_data`` under pybullet's tiny renderer.

The procedural worlds (:mod:`~feature_splat.data.synthetic.worlds`) are analytic primitives; these
are assembled from the real meshes that ship with pybullet (a table, a tray, mugs, a rubber duck, a
teddy bear, a soccer ball, the Stanford bunny, lego bricks, jenga blocks, dominoes, a toy robot),
with their own textures, and rendered on the CPU by pybullet's software "tiny renderer":

- ``tabletop-real``: a table with a tray of lego bricks, two mugs, a rubber duck, a teddy bear,
  the bunny, a jenga stack and a row of dominoes; two soccer balls lie on the checkered floor beside
  it. Cameras orbit it through 360 degrees at varied elevations; sky shows above the horizon.
- ``playroom-real``: a 6 x 5 m room with a wooden floor and four walls; a low table holds a tray,
  a mug, a duck and the bunny, and toys lie on the floor (a big teddy bear, two soccer balls, a
  jenga tower, dominoes, lego bricks, a toy robot, a second duck); cameras stand inside near the
  walls at varied heights and look inward.

A :class:`MeshWorld` has the interface of :class:`~feature_splat.data.synthetic.worlds.World` (so
:func:`~feature_splat.data.synthetic.load.load_world` and ``render_dataset`` take either): its
rig's ``cameras``, ``render`` (``rgb``, ``depth``, ``labels``, ``instances``), ``without`` /
``only`` edits and a ``fingerprint``. Its labels index its own vocabulary ``class_names``: ``sky``
(0, rays that hit nothing) and then the world's classes in :data:`MESH_CLASS_NAMES` order. Building
a world and asking for its classes needs no pybullet; rendering does (``pip install
'feature-splat[worlds]'``).

Rendering. Our cameras become OpenGL matrices exactly (:func:`gl_view_matrix`,
:func:`gl_projection_matrix`), so a world point lands on the pixel where
:meth:`~feature_splat.cameras.Cameras.project` puts it. ``rgb`` is rendered at ``supersample``
times the resolution, rays that hit nothing painted with the sky colour, and box-averaged down
(anti-aliasing); ``depth`` (camera z, from the non-linear depth buffer), ``labels`` and
``instances`` come from a render at 1x, sampled at pixel centres like the ray-caster's truth.
Lighting is diffuse and view-independent (ambient plus one directional light, no specular, no
shadows). Renders are deterministic: the same world and cameras give bit-identical arrays.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import math
import re
from collections.abc import Iterable
from dataclasses import dataclass, replace
from pathlib import Path
from types import ModuleType

import numpy as np
import torch
from torch import Tensor

from feature_splat.cameras import Cameras
from feature_splat.data.synthetic.textures import Vec3
from feature_splat.data.synthetic.worlds import MESH_WORLD_NAMES, SKY_COLOR, InwardRig, OrbitRig
from feature_splat.errors import BackendUnavailableError, DatasetError, InputShapeError

# Every class a mesh world may hold, in label order after "sky". The names are what a person (or a
# text encoder such as CLIP) calls these objects: the yellow duck is a toy, so "rubber duck" (a bare
# "duck" reads as the bird); "teddy bear" and "soccer ball" are COCO and ImageNet class names; the
# Stanford bunny is a "bunny"; the bricks, blocks and tiles are named by their game ("lego brick",
# "jenga block", "domino"), which a caption would use; R2-D2 is a "toy robot" in a playroom.
MESH_CLASS_NAMES: tuple[str, ...] = (
    "sky",
    "floor",
    "wall",
    "table",
    "tray",
    "mug",
    "rubber duck",
    "teddy bear",
    "soccer ball",
    "bunny",
    "lego brick",
    "jenga block",
    "domino",
    "toy robot",
)

# Other words accepted by ``without`` / ``only`` for these classes.
MESH_SYNONYMS: dict[str, str] = {
    "ground": "floor",
    "rug": "floor",
    "desk": "table",
    "cup": "mug",
    "coffee mug": "mug",
    "duck": "rubber duck",
    "toy duck": "rubber duck",
    "teddy": "teddy bear",
    "ball": "soccer ball",
    "football": "soccer ball",
    "rabbit": "bunny",
    "stanford bunny": "bunny",
    "lego": "lego brick",
    "brick": "lego brick",
    "jenga": "jenga block",
    "domino tile": "domino",
    "robot": "toy robot",
}

_RENDERER_VERSION = 1  # bump when the renderer's output changes for the same world and cameras


# ----------------------------------------------------------------------------------------------
# Objects and worlds


@dataclass(frozen=True)
class MeshObject:
    """One placed mesh of class ``class_name``.

    ``asset`` is a path under ``pybullet_data``: a ``.urdf`` (loaded with ``globalScaling=scale``,
    a float) or an ``.obj`` (a visual shape with ``meshScale=scale``, a float or per-axis).
    ``position`` is the base origin in world coordinates (metres, z up), ``orientation`` the
    roll, pitch, yaw of the base in radians (pybullet's Euler angles: yaw about z applied last).
    ``color`` (RGB in [0, 1]) replaces the mesh's colour, which multiplies its texture; ``texture``
    (an image under ``pybullet_data``) replaces its texture. ``instance_id`` labels its pixels.
    """

    class_name: str
    asset: str
    position: Vec3
    orientation: Vec3 = (0.0, 0.0, 0.0)
    scale: float | Vec3 = 1.0
    color: Vec3 | None = None
    texture: str | None = None
    instance_id: int = 0

    def __post_init__(self) -> None:
        suffix = Path(self.asset).suffix
        if suffix not in (".urdf", ".obj"):
            raise DatasetError(f"MeshObject.asset: expected a .urdf or .obj, got {self.asset!r}")
        if suffix == ".urdf" and not isinstance(self.scale, int | float):
            raise DatasetError(
                f"MeshObject.scale: a URDF scales uniformly, expected a float, got {self.scale!r}"
            )


@dataclass(frozen=True)
class MeshWorld:
    """A static scene of pybullet meshes, its lighting, sky colour and the camera rig that views it.

    ``vocabulary`` gives its labels' names (see :attr:`class_names`); edits keep it, so labels
    mean the same in an edited world. ``near`` and ``far`` (metres) are the clip
    planes of every camera; they bracket the whole scene.
    """

    name: str
    seed: int
    objects: tuple[MeshObject, ...]
    rig: InwardRig | OrbitRig
    vocabulary: tuple[str, ...]
    sky_color: Vec3 = SKY_COLOR
    light_direction: Vec3 = (0.4, 0.3, 0.85)
    ambient: float = 0.45
    near: float = 0.05
    far: float = 40.0

    def __post_init__(self) -> None:
        if not self.vocabulary or self.vocabulary[0] != "sky":
            raise DatasetError(
                f"MeshWorld.vocabulary: expected 'sky' first, got {list(self.vocabulary)}"
            )
        unknown = sorted({o.class_name for o in self.objects} - set(self.vocabulary))
        if unknown:
            raise DatasetError(
                f"MeshWorld.objects: classes {unknown} are not in the vocabulary "
                f"{list(self.vocabulary)}"
            )

    @property
    def class_names(self) -> list[str]:
        """Label ``k`` names ``class_names[k]``: ``sky`` (0), then the world's classes."""
        return list(self.vocabulary)

    def classes(self) -> list[str]:
        """Names of the classes that have objects in this world (``sky`` excluded), label order."""
        present = {o.class_name for o in self.objects}
        return [name for name in self.vocabulary[1:] if name in present]

    def cameras(self, width: int = 128, height: int = 96, n_views: int | None = None) -> Cameras:
        """The rig's ``n_views`` cameras (default: the rig's own count) for images of this size."""
        return self.rig.cameras(width, height, n_views or self.rig.default_views)

    def render(self, cameras: Cameras, *, supersample: int = 2) -> dict[str, Tensor]:
        """Render ``cameras`` with pybullet's tiny renderer.

        Returns ``rgb`` [V, H, W, 3] float32 in [0, 1] (``supersample**2`` samples per pixel),
        and at pixel centres ``depth`` [V, H, W] float32 camera z (inf on a miss), ``labels``
        [V, H, W] int64 indices into ``class_names`` (``sky`` on a miss) and ``instances``
        [V, H, W] int64 (-1 on a miss). Raises :class:`BackendUnavailableError` without pybullet.
        """
        if supersample < 1:
            raise InputShapeError(f"render: supersample must be >= 1, got {supersample}")
        return _render(self, cameras, supersample)

    def without(self, classes: str | Iterable[str | int]) -> MeshWorld:
        """The same world with every object of ``classes`` (names, synonyms or ids) removed."""
        drop = self._resolve(classes)
        return replace(self, objects=tuple(o for o in self.objects if o.class_name not in drop))

    def only(self, classes: str | Iterable[str | int]) -> MeshWorld:
        """The same world keeping only the objects of ``classes`` (everything else is sky)."""
        keep = self._resolve(classes)
        return replace(self, objects=tuple(o for o in self.objects if o.class_name in keep))

    def fingerprint(self) -> str:
        """A hash of everything that determines this world's renders (objects, light, rig, the
        pybullet version that ships the meshes and the renderer)."""
        text = f"{self!r}|pybullet={_pybullet_version()}|renderer={_RENDERER_VERSION}"
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    def _resolve(self, classes: str | Iterable[str | int]) -> set[str]:
        """Class names in this world's vocabulary for names, synonyms or label ids."""
        if isinstance(classes, str):
            classes = [classes]
        names = set()
        for item in classes:
            if isinstance(item, int):
                if not 0 <= item < len(self.vocabulary):
                    raise DatasetError(
                        f"classes: class id {item} outside 0..{len(self.vocabulary) - 1}"
                    )
                names.add(self.vocabulary[item])
                continue
            name = _mesh_class(item)
            if name not in self.vocabulary:
                raise DatasetError(
                    f"classes: unknown class {item!r} in world {self.name!r}; known classes: "
                    f"{list(self.vocabulary)}"
                )
            names.add(name)
        return names


_WORD = re.compile(r"[a-z0-9]+")


def _singular(word: str) -> str:
    """A crude singular ("mugs" -> "mug", "dominoes" -> "domino", "bunnies" -> "bunny")."""
    for plural, single in (("ies", "y"), ("oes", "o"), ("s", "")):
        if len(word) > len(plural) + 2 and word.endswith(plural) and not word.endswith("ss"):
            return word[: -len(plural)] + single
    return word


def _key(text: str) -> str:
    return " ".join(_singular(w) for w in _WORD.findall(text.lower()))


_LOOKUP = {_key(name): name for name in MESH_CLASS_NAMES} | {
    _key(word): name for word, name in MESH_SYNONYMS.items()
}


def _mesh_class(text: str) -> str | None:
    """The mesh class that ``text`` names (case-insensitive, plurals and synonyms), or None."""
    return _LOOKUP.get(_key(text))


# ----------------------------------------------------------------------------------------------
# Rendering


def _pybullet_version() -> str:
    try:
        return importlib.metadata.version("pybullet")
    except importlib.metadata.PackageNotFoundError:
        return "absent"


def _import_pybullet(world: str) -> tuple[ModuleType, Path]:
    """The pybullet module and the ``pybullet_data`` folder, or :class:`BackendUnavailableError`."""
    try:
        import pybullet
        import pybullet_data
    except ImportError as error:
        raise BackendUnavailableError(
            f"world {world!r} needs pybullet: pip install 'feature-splat[worlds]'"
        ) from error
    return pybullet, Path(pybullet_data.getDataPath())


def gl_view_matrix(viewmat: np.ndarray) -> list[float]:
    """pybullet's view matrix (column-major, OpenGL camera axes) for our world -> camera
    ``viewmat`` [4, 4] (OpenCV axes: x right, y down, z forward): flip camera y and z."""
    return (np.diag([1.0, -1.0, -1.0, 1.0]) @ viewmat).T.reshape(-1).tolist()


def gl_projection_matrix(
    K: np.ndarray, width: int, height: int, near: float, far: float
) -> list[float]:
    """pybullet's projection matrix (column-major) for intrinsics ``K`` [3, 3] and this image size.

    A camera point ``(x, y, z)`` (OpenCV) lies at pixel ``u = fx x / z + cx``, ``v = fy y / z + cy``
    (``v`` counted down from the top); the matrix maps it to normalised device coordinates
    ``2 u / W - 1`` and ``1 - 2 v / H`` with clip ``w = z``. The tiny renderer samples pixel ``(i,
    j)`` at viewport point ``(i, H - 1 - j)`` from the bottom-left corner, a pixel corner where
    ours sample the centre ``(i + 0.5, j + 0.5)``; the principal point moves by half a pixel to
    match (``cx - 0.5``, ``cy + 0.5``).
    """
    fx, fy = K[0, 0], K[1, 1]
    cx, cy = K[0, 2] - 0.5, K[1, 2] + 0.5
    projection = np.zeros((4, 4))
    projection[0, 0] = 2.0 * fx / width
    projection[0, 2] = 1.0 - 2.0 * cx / width
    projection[1, 1] = 2.0 * fy / height
    projection[1, 2] = 2.0 * cy / height - 1.0
    projection[2, 2] = -(far + near) / (far - near)
    projection[2, 3] = -2.0 * far * near / (far - near)
    projection[3, 2] = -1.0
    return projection.T.reshape(-1).tolist()


def _load(p: ModuleType, client: int, data: Path, obj: MeshObject) -> int:
    """Add ``obj`` to the pybullet ``client``; returns its body id."""
    for field, name in (("asset", obj.asset), ("texture", obj.texture)):
        if name is not None and not (data / name).is_file():
            raise DatasetError(f"MeshObject.{field}: no file {name!r} under {data}")
    try:
        return _add_body(p, client, data, obj)
    except p.error as error:
        raise DatasetError(
            f"MeshObject.asset: pybullet cannot load {obj.asset!r} (texture {obj.texture!r}): "
            f"{error}"
        ) from error


def _add_body(p: ModuleType, client: int, data: Path, obj: MeshObject) -> int:
    orientation = p.getQuaternionFromEuler(obj.orientation)
    path = str(data / obj.asset)
    if obj.asset.endswith(".urdf"):
        body = p.loadURDF(
            path,
            obj.position,
            orientation,
            useFixedBase=True,
            globalScaling=float(obj.scale),  # type: ignore[arg-type]
            physicsClientId=client,
        )
    else:
        scale = [float(obj.scale)] * 3 if isinstance(obj.scale, int | float) else list(obj.scale)
        shape = p.createVisualShape(
            p.GEOM_MESH, fileName=path, meshScale=scale, physicsClientId=client
        )
        body = p.createMultiBody(
            baseMass=0.0,
            baseVisualShapeIndex=shape,
            basePosition=obj.position,
            baseOrientation=orientation,
            physicsClientId=client,
        )
    texture = None
    if obj.texture is not None:
        texture = p.loadTexture(str(data / obj.texture), physicsClientId=client)
    for link in range(-1, p.getNumJoints(body, physicsClientId=client)):
        if obj.color is not None:
            p.changeVisualShape(body, link, rgbaColor=[*obj.color, 1.0], physicsClientId=client)
        if texture is not None:
            p.changeVisualShape(body, link, textureUniqueId=texture, physicsClientId=client)
    return body


def _render(world: MeshWorld, cameras: Cameras, supersample: int) -> dict[str, Tensor]:
    p, data = _import_pybullet(world.name)
    height, width, s = cameras.height, cameras.width, supersample
    client = p.connect(p.DIRECT)
    try:
        bodies = [_load(p, client, data, obj) for obj in world.objects]
        # Lookup tables indexed by body id, with a last entry for -1 (a miss).
        size = max(bodies, default=-1) + 2
        class_of = np.zeros(size, dtype=np.int64)
        instance_of = np.full(size, -1, dtype=np.int64)
        for body, obj in zip(bodies, world.objects, strict=True):
            class_of[body] = world.vocabulary.index(obj.class_name)
            instance_of[body] = obj.instance_id
        sky = np.asarray(world.sky_color, dtype=np.float64)
        light = {
            "lightDirection": list(world.light_direction),
            "lightColor": [1.0, 1.0, 1.0],
            "lightAmbientCoeff": world.ambient,
            "lightDiffuseCoeff": 1.0 - world.ambient,
            "lightSpecularCoeff": 0.0,
            "shadow": 0,
            "renderer": p.ER_TINY_RENDERER,
            "physicsClientId": client,
        }

        def shoot(view: int, scale: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
            K = cameras.Ks[view].double().numpy() * np.array([[scale], [scale], [1.0]])
            w, h = width * scale, height * scale
            _, _, rgb, depth, seg = p.getCameraImage(
                w,
                h,
                viewMatrix=gl_view_matrix(cameras.viewmats[view].double().numpy()),
                projectionMatrix=gl_projection_matrix(K, w, h, world.near, world.far),
                **light,
            )
            rgb = np.asarray(rgb, dtype=np.uint8).reshape(h, w, 4)[..., :3]
            depth = np.asarray(depth, dtype=np.float64).reshape(h, w)
            return rgb, depth, np.asarray(seg, dtype=np.int64).reshape(h, w)

        out: dict[str, list[np.ndarray]] = {k: [] for k in ("rgb", "depth", "labels", "instances")}
        near, far = world.near, world.far
        for view in range(len(cameras)):
            rgb, depth, seg = shoot(view, s)
            color = np.where(seg[..., None] >= 0, rgb / 255.0, sky)  # sky before anti-aliasing
            out["rgb"].append(color.reshape(height, s, width, s, 3).mean(axis=(1, 3)))
            if s > 1:  # the truth comes from one sample at each pixel centre
                _, depth, seg = shoot(view, 1)
            z = far * near / (far - (far - near) * depth)  # OpenGL depth buffer -> camera z
            out["depth"].append(np.where(seg >= 0, z, np.inf))
            out["labels"].append(class_of[seg])
            out["instances"].append(instance_of[seg])
    finally:
        p.disconnect(physicsClientId=client)
    dtypes = {"rgb": torch.float32, "depth": torch.float32}
    return {
        key: torch.from_numpy(np.stack(values)).to(dtypes.get(key, torch.int64))
        for key, values in out.items()
    }


# ----------------------------------------------------------------------------------------------
# Building the worlds


@dataclass(frozen=True)
class _Kind:
    """A class's asset and how it stands: ``upright`` (roll, pitch, yaw) turns it z-up, and
    ``foot`` is then the centre of its bounding box's bottom (base frame, scale 1)."""

    asset: str
    upright: Vec3
    foot: Vec3
    color: Vec3 | None = None


_UP = (math.pi / 2, 0.0, 0.0)  # the duck, the teddy and the bunny are modelled y-up
_KINDS: dict[str, _Kind] = {
    "table": _Kind("table/table.urdf", (0.0, 0.0, 0.0), (0.0, 0.0, 0.0)),
    "tray": _Kind("tray/traybox.urdf", (0.0, 0.0, 0.0), (0.0, 0.0, -0.005)),
    "mug": _Kind("objects/mug.urdf", (0.0, 0.0, 0.0), (0.0, 0.02, 0.0)),
    "rubber duck": _Kind("duck_vhacd.urdf", _UP, (-0.0067, -0.0019, 0.005)),
    "teddy bear": _Kind("teddy_vhacd.urdf", _UP, (0.068, -0.032, 0.0195), (0.62, 0.42, 0.26)),
    "soccer ball": _Kind("soccerball.urdf", (0.0, 0.0, 0.0), (0.0, 0.0, -0.5)),
    "bunny": _Kind("bunny.obj", _UP, (0.0036, -0.0283, -0.6665), (0.85, 0.80, 0.74)),
    "lego brick": _Kind("lego/lego.urdf", (0.0, 0.0, 0.0), (0.0, 0.0, -0.0125)),
    "jenga block": _Kind("jenga/jenga.urdf", (0.0, 0.0, 0.0), (0.0, 0.0, -0.015)),
    "domino": _Kind("domino/domino.urdf", (0.0, 0.0, 0.0), (0.0, 0.0, -0.0254)),
    "toy robot": _Kind("r2d2.urdf", (0.0, 0.0, 0.0), (0.0, 0.158, -0.472)),
}

_WALL_TEXTURE = "checker_blue.png"
_JENGA_HEIGHT = 0.03  # a jenga block's thickness at scale 1 (0.15 x 0.05 x 0.03 m)


class _Layout:
    """Collects objects, hands out instance ids, and jitters placements from the seed."""

    def __init__(self, seed: int, world_index: int) -> None:
        self.rng = np.random.default_rng([seed, world_index, 5])
        self.objects: list[MeshObject] = []

    def add(self, obj: MeshObject) -> None:
        self.objects.append(replace(obj, instance_id=len(self.objects)))

    def place(
        self,
        class_name: str,
        at: Vec3,
        yaw: float = 0.0,
        scale: float = 1.0,
        *,
        color: Vec3 | None = None,
        jitter: float = 0.0,
        spin: float = 0.0,
    ) -> None:
        """Stand a ``class_name`` on the point ``at`` (its foot there), turned by ``yaw`` plus up
        to ``spin`` radians and moved by up to ``jitter`` metres (seeded)."""
        kind = _KINDS[class_name]
        yaw += float(self.rng.uniform(-spin, spin))
        dx, dy = self.rng.uniform(-jitter, jitter, 2)
        c, s = math.cos(yaw), math.sin(yaw)
        fx, fy, fz = (scale * f for f in kind.foot)
        position = (
            float(at[0] + dx - (c * fx - s * fy)),
            float(at[1] + dy - (s * fx + c * fy)),
            float(at[2] - fz),
        )
        orientation = (kind.upright[0], kind.upright[1], kind.upright[2] + yaw)
        color = color or kind.color
        self.add(MeshObject(class_name, kind.asset, position, orientation, scale, color))

    def world(self, name: str, seed: int, rig: InwardRig | OrbitRig, **options: float) -> MeshWorld:
        present = {o.class_name for o in self.objects}
        vocabulary = ("sky", *(n for n in MESH_CLASS_NAMES[1:] if n in present))
        return MeshWorld(name, seed, tuple(self.objects), rig, vocabulary, **options)


def _tabletop_real(seed: int) -> MeshWorld:
    b = _Layout(seed, 0)
    b.add(MeshObject("floor", "plane.obj", (0.0, 0.0, 0.0)))  # 30 x 30 m, 1 m blue checkers
    b.place("table", (0.0, 0.0, 0.0), spin=0.05)
    top = 0.625
    b.place("tray", (0.42, 0.22, top), 0.2, 0.6, spin=0.1, jitter=0.02)
    for dx, dy in ((-0.06, -0.04), (0.06, 0.05)):
        b.place("lego brick", (0.42 + dx, 0.22 + dy, top + 0.005), scale=3.0, spin=0.8)
    b.place("mug", (-0.5, -0.28, top), 1.0, 1.5, spin=0.5, jitter=0.02)
    b.place("mug", (0.05, 0.35, top), -2.0, 1.5, color=(0.25, 0.5, 0.85), spin=0.5, jitter=0.02)
    b.place("rubber duck", (-0.15, -0.2, top), -0.6, 2.6, spin=0.6, jitter=0.03)
    b.place("teddy bear", (-0.48, 0.2, top), -0.5, 2.8, spin=0.4, jitter=0.02)
    b.place("bunny", (0.15, 0.05, top), 0.4, 0.15, spin=0.6, jitter=0.02)
    for i, (dy, turn) in enumerate(((-0.04, 0.0), (0.04, 0.0), (0.0, math.pi / 2))):
        at = (0.45, -0.28 + dy, top + i // 2 * _JENGA_HEIGHT * 1.5)  # two side by side, one across
        b.place("jenga block", at, 0.3 + turn, 1.5)
    for i in range(4):
        b.place("domino", (-0.2 + 0.09 * i, -0.4, top), 0.2, 3.0, spin=0.1)
    for x, y in ((0.95, -0.55), (-1.0, 0.65)):
        b.place("soccer ball", (x, y, 0.0), scale=0.26, spin=3.1, jitter=0.05)
    rig = OrbitRig(
        target=(0.0, 0.0, 0.68),
        radius=2.1,
        elevations_degrees=(22.0, 55.0),
        fov_x_degrees=55.0,
        seed=seed,
    )
    return b.world("tabletop-real", seed, rig, far=30.0)


def _playroom_real(seed: int) -> MeshWorld:
    b = _Layout(seed, 1)
    half_x, half_y, height = 3.0, 2.5, 2.5
    b.add(MeshObject("floor", "plane.obj", (0.0, 0.0, 0.0), texture="table/table.png"))
    # Walls: thin boxes (cube.obj, one texture image per face), tinted pale blue-and-white checks.
    walls = (
        ((half_x, 0.0), (0.1, 2 * half_y, height)),
        ((-half_x, 0.0), (0.1, 2 * half_y, height)),
        ((0.0, half_y), (2 * half_x, 0.1, height)),
        ((0.0, -half_y), (2 * half_x, 0.1, height)),
    )
    colors = ((0.85, 0.78, 0.62), (0.62, 0.74, 0.80), (0.80, 0.68, 0.68), (0.72, 0.80, 0.64))
    for ((x, y), size), color in zip(walls, colors, strict=True):
        b.add(MeshObject("wall", "cube.obj", (x, y, height / 2), scale=size, color=color,
                         texture=_WALL_TEXTURE))  # fmt: skip
    b.place("table", (0.9, 0.6, 0.0), 0.1, 0.8, spin=0.05)
    top = 0.625 * 0.8
    b.place("tray", (1.2, 0.75, top), 0.3, 0.6, spin=0.1)
    b.place("mug", (0.55, 0.45, top), 0.5, 2.0, spin=0.5, jitter=0.02)
    b.place("rubber duck", (1.2, 0.75, top + 0.01), 2.0, 2.6, spin=0.6)
    b.place("bunny", (0.75, 0.85, top), -0.8, 0.16, spin=0.6, jitter=0.02)
    b.place("teddy bear", (-1.0, 0.75, 0.0), -0.9, 5.0, spin=0.3, jitter=0.05)
    b.place("soccer ball", (-0.5, -0.8, 0.0), scale=0.3, spin=3.1, jitter=0.1)
    b.place("soccer ball", (1.3, -0.9, 0.0), scale=0.3, spin=3.1, jitter=0.1)
    b.place("rubber duck", (-0.2, 0.6, 0.0), 0.8, 4.0, spin=0.6, jitter=0.05)
    for layer in range(6):  # a jenga tower, two blocks a layer, each layer turned a quarter
        turn = (layer % 2) * math.pi / 2
        for side in (-1, 1):
            offset = side * 0.06  # across the blocks' length
            at = (-1.1 - math.sin(turn) * offset, -0.5 + math.cos(turn) * offset, 0.0)
            b.place("jenga block", (at[0], at[1], layer * _JENGA_HEIGHT * 2.0), turn, 2.0)
    for i in range(5):
        b.place("domino", (0.0 + 0.16 * i, -1.2 + 0.05 * i, 0.0), 0.3, 5.0, spin=0.1)
    for x, y in ((-0.3, 0.0), (0.2, -0.3), (-0.7, 0.2)):
        b.place("lego brick", (x, y, 0.0), scale=5.0, spin=3.1, jitter=0.05)
    b.place("toy robot", (1.4, -0.2, 0.0), 2.6, 0.6, spin=0.3)
    rig = InwardRig(
        center=(0.0, 0.0, 0.45),
        radii=(2.35, 1.85),
        heights=(0.9, 1.7),
        target_spread=(1.0, 0.8, 0.2),
        fov_x_degrees=70.0,
        seed=seed,
    )
    return b.world("playroom-real", seed, rig, far=15.0)


_BUILDERS = dict(zip(MESH_WORLD_NAMES, (_tabletop_real, _playroom_real), strict=True))


def build_mesh_world(name: str, seed: int = 0) -> MeshWorld:
    """The real-mesh world ``name`` (one of :data:`MESH_WORLD_NAMES`); ``seed`` jitters it."""
    if name not in _BUILDERS:
        raise DatasetError(
            f"name: unknown mesh world {name!r}; expected one of {list(MESH_WORLD_NAMES)}"
        )
    return _BUILDERS[name](int(seed))
