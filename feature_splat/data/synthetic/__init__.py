"""Synthetic worlds with ground truth: analytic primitives, an independent ray-caster, built-in scenes.

Offline there is no dataset to download, so feature-splat makes its own: seeded, deterministic
scenes (``room``, ``tabletop``, ``street``) rendered with diffuse shading and smooth procedural
textures, with exact per-pixel class labels, instance ids and depths. Two more worlds
(:data:`MESH_WORLD_NAMES`: ``tabletop-real``, ``playroom-real``) are assembled from the textured
meshes that ship with pybullet and rendered by its CPU tiny renderer, with the same ground truth
(rendering them needs ``pip install 'feature-splat[worlds]'``).

- :func:`load_world` -> :class:`~feature_splat.data.dataset.Dataset` (cached on disk);
- :func:`build_world` -> :class:`World` (or :class:`MeshWorld` for a mesh world, same interface);
  ``world.without(classes)`` / ``world.only(classes)`` edit it, ``world.cameras(width, height,
  n_views)`` gives its rig, ``world.render(cameras)`` renders it (:func:`render_views` ray-casts a
  :class:`World`), :func:`render_dataset` turns any world into a Dataset;
- ``world.class_names`` is a world's label vocabulary (label ``k`` names ``class_names[k]``, 0 is
  ``sky``, so every pixel has a class): :data:`CLASS_NAMES` for the procedural worlds, ``sky`` and
  then its own classes (in :data:`MESH_CLASS_NAMES` order) for a mesh world; :data:`SYNONYMS` and
  :func:`resolve_class` map text to the procedural classes;
- :data:`SKY_COLOR` is the colour of rays that hit nothing (the background for a renderer).

Object mode (FeatureNeRF-style categories with parts and keypoints):

- :func:`build_object` -> :class:`ObjectInstance`: instance ``index`` of a category in
  :data:`CATEGORY_NAMES` (parts :data:`PART_NAMES`, keypoints :data:`KEYPOINT_NAMES`);
- :func:`load_objects` -> a list of :class:`ObjectViews` (renders, part ids, projected keypoints)
  of a split in :data:`SPLITS` (cached on disk); :func:`render_object_views` renders any cameras.
"""

from feature_splat.data.synthetic.classes import CLASS_NAMES, SKY, SYNONYMS, resolve_class
from feature_splat.data.synthetic.load import load_world, render_dataset
from feature_splat.data.synthetic.mesh_worlds import (
    MESH_CLASS_NAMES,
    MeshObject,
    MeshWorld,
    build_mesh_world,
)
from feature_splat.data.synthetic.object_views import (
    SPLITS,
    ObjectViews,
    load_objects,
    render_object_views,
)
from feature_splat.data.synthetic.objects import (
    CATEGORY_NAMES,
    KEYPOINT_NAMES,
    PART_NAMES,
    ObjectInstance,
    build_object,
)
from feature_splat.data.synthetic.raycast import render_views
from feature_splat.data.synthetic.worlds import (
    MESH_WORLD_NAMES,
    SKY_COLOR,
    WORLD_NAMES,
    World,
    build_world,
)

__all__ = [
    "CATEGORY_NAMES",
    "CLASS_NAMES",
    "KEYPOINT_NAMES",
    "MESH_CLASS_NAMES",
    "MESH_WORLD_NAMES",
    "PART_NAMES",
    "SKY",
    "SKY_COLOR",
    "SPLITS",
    "SYNONYMS",
    "WORLD_NAMES",
    "MeshObject",
    "MeshWorld",
    "ObjectInstance",
    "ObjectViews",
    "World",
    "build_mesh_world",
    "build_object",
    "build_world",
    "load_objects",
    "load_world",
    "render_dataset",
    "render_object_views",
    "render_views",
    "resolve_class",
]
