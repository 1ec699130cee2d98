"""Backbone features for NeuralEF training, extracted once and cached on disk (SPEC §1, §5).

The backbone is frozen, so its features are a pure function of (backbone weights, image, crop)
and training need not rerun the ViT. This module turns images into a `FeatureSet`:

* ``psi_inputs`` (V, N, 3C): ψ's input, the concatenation of block 0, block ``depth // 2`` and
  the high-level features (``psi.psi_features``; 1152 dims for ViT-S).
* ``graph_features`` (V, N, C): the high-level features the batch k-NN graph is built from:
  the last block's attention keys for DINO / DINOv2 backbones, the final normed tokens otherwise
  (SPEC §1).
* ``image_grids`` (V, h, w, 3): the crop bilinearly downsampled to the patch grid (PyTorch's
  ``F.interpolate`` convention, ``graphs.resize_to_grid(convention="torch")``), RGB in [0, 1]:
  the pixel graph's input.

Augmentation (done on the host, before the backbone): every image gives ``views_per_image``
square crops of ``image_size`` pixels. View 0 is the centre crop after resizing the short side
to ``image_size``; the others resize the short side to ``s·image_size`` with
``s ~ U(min_scale, max_scale)``, crop a random square and flip it horizontally with probability
½ (the reference trains on random resized crops and flips). Draws come from
``np.random.default_rng([seed, image, view])``, so the views are a function of the cache key.

Cache: a directory ``<cache_dir>/<key>`` with ``shard_00000.npz``… (``views_per_shard`` views
each) and ``meta.json`` written last, so an interrupted extraction is a miss, never a hit. The
key is the SHA-256 of the backbone (name, configuration and a fingerprint of its weights), the
layers, the image size, the augmentation and the image list (names and pixel hashes). A shard
that cannot be read or does not match ``meta.json`` raises `FeatureCacheError`, naming the
directory to delete.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import pathlib
import shutil
import sys
import tempfile
import zipfile
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image

from spectral_jax import graphs
from spectral_jax.data.images import NamedImage
from spectral_jax.neuralef import psi as psi_lib

CACHE_VERSION = 1
# Backbone families whose graph features are the last block's keys (SPEC §1).
KEY_FEATURE_FAMILIES = ("dino", "dinov2")
_ARRAYS = ("psi_inputs", "graph_features", "image_grids", "image_index", "view_index")


class FeatureCacheError(ValueError):
  """A feature cache entry exists but is unreadable or inconsistent."""


@dataclasses.dataclass(frozen=True)
class AugmentConfig:
  """Crops taken from every training image (see the module docstring).

  Attributes:
    image_size: side of the square crops in pixels (a multiple of the patch size is best:
      the backbone crops the rest away).
    views_per_image: V ≥ 1 crops per image; view 0 is the centre crop.
    min_scale, max_scale: range of the short-side scale s of views ≥ 1 (1 ≤ min ≤ max).
    flip: random horizontal flips for views ≥ 1.
    seed: seed of the crop draws.
  """
  image_size: int = 336
  views_per_image: int = 4
  min_scale: float = 1.0
  max_scale: float = 2.0
  flip: bool = True
  seed: int = 0

  def __post_init__(self):
    if self.image_size < 1 or self.views_per_image < 1:
      raise ValueError(f"image_size and views_per_image must be ≥ 1; got {self.image_size}, "
                       f"{self.views_per_image}")
    if not 1.0 <= self.min_scale <= self.max_scale:
      raise ValueError(f"need 1 ≤ min_scale ≤ max_scale; got {self.min_scale}, {self.max_scale}")


@dataclasses.dataclass(frozen=True)
class FeatureSet:
  """Cached backbone features of V training views (host NumPy arrays).

  Attributes:
    psi_inputs: (V, N, 3C) ψ's input (float32 or the cache dtype).
    graph_features: (V, N, C) high-level features of the feature graph.
    image_grids: (V, h, w, 3) float32 RGB in [0, 1] at the patch grid.
    image_index: (V,) int32 index into ``names`` of each view's image.
    view_index: (V,) int32 view number within its image (0 = centre crop).
    grid: (h, w), N = h·w.
    names: the image names.
    key: the cache key (hex SHA-256).
  """
  psi_inputs: np.ndarray
  graph_features: np.ndarray
  image_grids: np.ndarray
  image_index: np.ndarray
  view_index: np.ndarray
  grid: tuple[int, int]
  names: tuple[str, ...]
  key: str

  def __len__(self) -> int:
    return self.psi_inputs.shape[0]

  def batch(self, indices: np.ndarray) -> dict[str, np.ndarray]:
    """The training batch of the given views: ``psi_inputs``, ``graph_features``,
    ``image_grids`` (float32). No labels: nothing here can reach ψ's gradient (SPEC §5)."""
    return {"psi_inputs": np.asarray(self.psi_inputs[indices], np.float32),
            "graph_features": np.asarray(self.graph_features[indices], np.float32),
            "image_grids": np.asarray(self.image_grids[indices], np.float32)}


# ----------------------------------------------------------------------------- backbone side


def high_level_features(features, family: str) -> jax.Array:
  """The graph's high-level features from a backbone's `Features` (SPEC §1).

  Args:
    features: ``backbones.Features`` of a batch.
    family: the backbone family (``backbone.config.family``).
  Returns:
    (B, N, C): last-block keys for DINO / DINOv2, the final normed tokens otherwise.
  """
  return features.keys if family in KEY_FEATURE_FAMILIES else features.tokens


def backbone_features(backbone, images: jax.Array) -> tuple[jax.Array, jax.Array]:
  """ψ's input and the graph features of a batch of images (SPEC §1, §5).

  Args:
    backbone: a ``backbones.Backbone``.
    images: (B, H, W, 3) float RGB in [0, 1] (cropped by the backbone to multiples of P).
  Returns:
    ``(psi_inputs (B, N, 3C), graph_features (B, N, C))``, float32.
  """
  from spectral_jax import backbones  # pylint: disable=import-outside-toplevel

  low, mid = psi_lib.feature_levels(backbone.config.depth)
  feats = backbones.extract_features(backbone, images, blocks=(low, mid))
  high = high_level_features(feats, backbone.config.family)
  return psi_lib.psi_features(feats.blocks[0], feats.blocks[1], high), high


def training_batch(backbone, images: jax.Array) -> dict[str, jax.Array]:
  """The training batch (`FeatureSet.batch`'s arrays) of crops, computed on device (SPEC §1, §5).

  What `extract_feature_set` stores for the same crops, as one traceable function: the frozen
  backbone's ψ inputs and graph features (`backbone_features`, under ``stop_gradient``) and
  the crops' pixel grids (``graphs.resize_to_grid(convention="torch")``).

  Args:
    backbone: a ``backbones.Backbone`` (its ``config.dtype`` is the compute dtype).
    images: (B, H, W, 3) uint8 crops, or floats in [0, 1]; cropped to multiples of the patch.
  Returns:
    ``{"psi_inputs": (B, N, 3C), "graph_features": (B, N, C), "image_grids": (B, h, w, 3)}``,
    float32.
  """
  p = backbone.config.patch_size
  grid = (images.shape[1] // p, images.shape[2] // p)
  crops = images[:, :grid[0] * p, :grid[1] * p]
  floats = crops.astype(jnp.float32) / 255.0 if crops.dtype == jnp.uint8 else crops
  psi_inputs, graph_feats = jax.lax.stop_gradient(backbone_features(backbone, floats))
  return {"psi_inputs": psi_inputs.astype(jnp.float32),
          "graph_features": graph_feats.astype(jnp.float32),
          "image_grids": graphs.resize_to_grid(crops, grid, convention="torch")}


def with_compute_dtype(backbone, dtype: str):
  """``backbone`` computing in ``dtype`` ("float32" or "bfloat16"; parameters unchanged)."""
  import ml_collections  # pylint: disable=import-outside-toplevel

  if dtype not in ("float32", "bfloat16"):
    raise ValueError(f"backbone.dtype must be 'float32' or 'bfloat16'; got {dtype!r}")
  if backbone.config.dtype == dtype:
    return backbone
  cfg = backbone.config.to_dict() if hasattr(backbone.config, "to_dict") else dict(backbone.config)
  return backbone.replace(config=ml_collections.FrozenConfigDict({**cfg, "dtype": dtype}))


def jitted_backbone_features():
  """`backbone_features` under `jax.jit` with the backbone's CPU compiler options (an outer jit
  decides them; see `backbones.compiler_options`): ``f(backbone, images)``."""
  from spectral_jax import backbones  # pylint: disable=import-outside-toplevel
  return jax.jit(backbone_features, compiler_options=backbones.compiler_options())


def params_fingerprint(params: Any) -> str:
  """SHA-256 of a parameter pytree (paths, shapes, dtypes and bytes), for cache keys."""
  digest = hashlib.sha256()
  for path, leaf in jax.tree_util.tree_leaves_with_path(params):
    arr = np.ascontiguousarray(np.asarray(leaf))
    digest.update(f"{jax.tree_util.keystr(path)}|{arr.shape}|{arr.dtype}".encode())
    digest.update(arr.tobytes())
  return digest.hexdigest()


def backbone_identity(backbone) -> dict[str, Any]:
  """What identifies a backbone's features: its configuration and a weights fingerprint."""
  cfg = backbone.config.to_dict() if hasattr(backbone.config, "to_dict") else dict(backbone.config)
  return {"config": json.loads(json.dumps(cfg, default=list)),
          "weights": params_fingerprint(backbone.params)}


# ----------------------------------------------------------------------------- augmentation


def _resize(rgb: np.ndarray, height: int, width: int) -> np.ndarray:
  return np.asarray(Image.fromarray(rgb).resize((width, height), Image.BILINEAR))


def augmented_views(rgb: np.ndarray, image_id: int, aug: AugmentConfig) -> np.ndarray:
  """The ``aug.views_per_image`` square crops of one image (see the module docstring).

  Args:
    rgb: (H, W, 3) uint8 image.
    image_id: the image's index in the list (seeds its draws).
    aug: the augmentation.
  Returns:
    (V, S, S, 3) uint8 crops, S = ``aug.image_size``.
  """
  if rgb.ndim != 3 or rgb.shape[-1] != 3 or rgb.dtype != np.uint8:
    raise ValueError(f"images must be (H, W, 3) uint8; got {rgb.shape} {rgb.dtype}")
  size = aug.image_size
  h, w = rgb.shape[:2]
  views = []
  for v in range(aug.views_per_image):
    rng = np.random.default_rng([aug.seed, image_id, v])
    scale = 1.0 if v == 0 else rng.uniform(aug.min_scale, aug.max_scale)
    short = max(size, int(round(size * scale)))
    rh, rw = (short, max(short, round(w * short / h))) if h <= w else (
        max(short, round(h * short / w)), short)
    img = _resize(rgb, rh, rw)
    if v == 0:
      y0, x0 = (rh - size) // 2, (rw - size) // 2
    else:
      y0, x0 = int(rng.integers(0, rh - size + 1)), int(rng.integers(0, rw - size + 1))
    crop = img[y0:y0 + size, x0:x0 + size]
    if v > 0 and aug.flip and rng.uniform() < 0.5:
      crop = crop[:, ::-1]
    views.append(np.ascontiguousarray(crop))
  return np.stack(views)


def image_hash(rgb: np.ndarray) -> str:
  return hashlib.sha256(np.ascontiguousarray(rgb).tobytes() + str(rgb.shape).encode()).hexdigest()


# ----------------------------------------------------------------------------- cache


def cache_key(backbone_id: dict[str, Any], images: Sequence[NamedImage], aug: AugmentConfig,
              dtype: str) -> str:
  """Hex SHA-256 over everything the cached arrays depend on (see the module docstring)."""
  spec = {
      "version": CACHE_VERSION,
      "backbone": backbone_id,
      "layers": "block0+block(depth//2)+high",
      "augment": dataclasses.asdict(aug),
      "dtype": dtype,
      "images": [[im.name, image_hash(im.rgb)] for im in images],
  }
  return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()


def _write_npz(path: pathlib.Path, arrays: dict[str, np.ndarray]) -> None:
  fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp.npz")
  os.close(fd)
  np.savez(tmp, **arrays)
  os.replace(tmp, path)


def _read_shard(path: pathlib.Path, entry: pathlib.Path) -> dict[str, np.ndarray]:
  hint = f"delete {str(entry)!r} (or pass --refresh_cache) to extract the features again"
  if not path.is_file():
    raise FeatureCacheError(f"feature cache shard {str(path)!r} is missing; {hint}")
  try:
    with np.load(path, allow_pickle=False) as data:
      arrays = {name: data[name] for name in _ARRAYS}
  except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as e:
    raise FeatureCacheError(f"feature cache shard {str(path)!r} is corrupt ({e}); {hint}") from e
  return arrays


def _check_loaded(arrays: dict[str, np.ndarray], meta: dict[str, Any], entry: pathlib.Path):
  v = meta["num_views"]
  expect = {"psi_inputs": (v, meta["num_tokens"], meta["psi_dim"]),
            "graph_features": (v, meta["num_tokens"], meta["graph_dim"]),
            "image_grids": (v, *meta["grid"], 3), "image_index": (v,), "view_index": (v,)}
  for name, shape in expect.items():
    if arrays[name].shape != tuple(shape):
      raise FeatureCacheError(
          f"feature cache {str(entry)!r} is inconsistent: {name} has shape {arrays[name].shape}, "
          f"meta.json says {tuple(shape)}; delete the directory to extract again")
  for name in ("psi_inputs", "graph_features", "image_grids"):
    if not np.isfinite(arrays[name]).all():
      raise FeatureCacheError(f"feature cache {str(entry)!r} holds NaN/Inf in {name}; delete it")


def load_cached(entry: str | os.PathLike) -> FeatureSet:
  """Reads a complete cache entry (a directory with ``meta.json`` and its shards).

  Raises:
    FileNotFoundError: no ``meta.json`` (the entry was never completed).
    FeatureCacheError: unreadable ``meta.json`` or shards, or arrays that disagree with it.
  """
  entry = pathlib.Path(entry)
  meta_path = entry / "meta.json"
  if not meta_path.is_file():
    raise FileNotFoundError(f"no feature cache at {str(entry)!r} (meta.json missing)")
  try:
    meta = json.loads(meta_path.read_text())
    shards = meta["shards"]
  except (OSError, ValueError, KeyError, TypeError) as e:
    raise FeatureCacheError(f"feature cache metadata {str(meta_path)!r} is unreadable ({e}); "
                            f"delete {str(entry)!r} to extract again") from e
  parts = [_read_shard(entry / name, entry) for name in shards]
  arrays = {name: np.concatenate([p[name] for p in parts]) for name in _ARRAYS}
  _check_loaded(arrays, meta, entry)
  return FeatureSet(**arrays, grid=tuple(meta["grid"]), names=tuple(meta["names"]),
                    key=meta["key"])


def extract_feature_set(backbone, images: Sequence[NamedImage], aug: AugmentConfig, *,
                        batch_size: int = 8, dtype: str = "float32",
                        progress: bool = False) -> FeatureSet:
  """Runs the frozen backbone on the augmented views of ``images`` (no cache).

  Args:
    backbone: a ``backbones.Backbone``.
    images: the training images (uint8 RGB).
    aug: the crops to take.
    batch_size: views per backbone call.
    dtype: storage dtype of ψ's input and the graph features ("float32" or "float16").
    progress: show a tqdm bar.
  Returns:
    The `FeatureSet` (its ``key`` computed as `cache_key` does).
  """
  if not images:
    raise ValueError("no training images given")
  if dtype not in ("float32", "float16"):
    raise ValueError(f"cache dtype must be 'float32' or 'float16'; got {dtype!r}")
  p = backbone.config.patch_size
  grid = (aug.image_size // p, aug.image_size // p)
  if min(grid) < 1:
    raise ValueError(f"image_size {aug.image_size} is smaller than one {p}-px patch")
  views, image_index, view_index = [], [], []
  for i, im in enumerate(images):
    crops = augmented_views(im.rgb, i, aug)
    views.append(crops)
    image_index += [i] * len(crops)
    view_index += list(range(len(crops)))
  views = np.concatenate(views)
  run = jitted_backbone_features()
  psi_inputs, graph_feats = [], []
  starts = range(0, len(views), batch_size)
  if progress:
    from tqdm import tqdm  # pylint: disable=import-outside-toplevel
    starts = tqdm(starts, desc="backbone features", unit="batch")
  for s in starts:
    chunk = jnp.asarray(views[s:s + batch_size], jnp.float32) / 255.0
    a, b = run(backbone, chunk)
    psi_inputs.append(np.asarray(a, dtype))
    graph_feats.append(np.asarray(b, dtype))
  crops = views[:, :grid[0] * p, :grid[1] * p]
  image_grids = np.asarray(graphs.resize_to_grid(crops, grid, convention="torch"), np.float32)
  return FeatureSet(
      psi_inputs=np.concatenate(psi_inputs), graph_features=np.concatenate(graph_feats),
      image_grids=image_grids, image_index=np.asarray(image_index, np.int32),
      view_index=np.asarray(view_index, np.int32), grid=grid,
      names=tuple(im.name for im in images),
      key=cache_key(backbone_identity(backbone), images, aug, dtype))


def save_cached(features: FeatureSet, entry: str | os.PathLike, *,
                views_per_shard: int = 64) -> None:
  """Writes ``features`` as npz shards plus ``meta.json`` (last, atomically) under ``entry``."""
  entry = pathlib.Path(entry)
  entry.mkdir(parents=True, exist_ok=True)
  shards = []
  for s in range(0, len(features), views_per_shard):
    name = f"shard_{s // views_per_shard:05d}.npz"
    sl = slice(s, s + views_per_shard)
    _write_npz(entry / name, {a: getattr(features, a)[sl] for a in _ARRAYS})
    shards.append(name)
  meta = {"key": features.key, "version": CACHE_VERSION, "shards": shards,
          "num_views": len(features), "num_tokens": features.psi_inputs.shape[1],
          "psi_dim": features.psi_inputs.shape[2], "graph_dim": features.graph_features.shape[2],
          "grid": list(features.grid), "names": list(features.names)}
  fd, tmp = tempfile.mkstemp(dir=entry, suffix=".json.tmp")
  with os.fdopen(fd, "w") as f:
    json.dump(meta, f, indent=1)
  os.replace(tmp, entry / "meta.json")


def cached_feature_set(backbone, images: Sequence[NamedImage], aug: AugmentConfig,
                       cache_dir: str | os.PathLike, *, dtype: str = "float32",
                       batch_size: int = 8, refresh: bool = False,
                       progress: bool = False) -> tuple[FeatureSet, bool]:
  """The features of ``images`` from the cache, extracting and storing them on a miss.

  Args:
    backbone, images, aug, dtype, batch_size, progress: as for `extract_feature_set`.
    cache_dir: root of the cache; the entry is ``cache_dir/<key>``.
    refresh: ignore (and replace) an existing entry.
  Returns:
    ``(features, hit)``; ``hit`` is True when the entry was read from disk.
  Raises:
    FeatureCacheError: the entry exists but is corrupt (delete it or use ``refresh``).
  """
  if dtype not in ("float32", "float16"):
    raise ValueError(f"cache dtype must be 'float32' or 'float16'; got {dtype!r}")
  key = cache_key(backbone_identity(backbone), images, aug, dtype)
  entry = pathlib.Path(cache_dir) / key
  if entry.exists() and refresh:
    shutil.rmtree(entry)
  if (entry / "meta.json").is_file():
    features = load_cached(entry)
    if features.key != key:
      raise FeatureCacheError(f"feature cache {str(entry)!r} holds key {features.key[:12]}…, "
                              f"expected {key[:12]}…; delete the directory")
    return features, True
  features = extract_feature_set(backbone, images, aug, batch_size=batch_size, dtype=dtype,
                                 progress=progress)
  save_cached(features, entry)
  return features, False


# ----------------------------------------------------------------------------- from a config


def training_images(folder: str = "", recursive: bool = False, *,
                    on_skip: Callable[[str, Exception], None] | None = None) -> list[NamedImage]:
  """The training images: every readable image in ``folder``, or the bundled sample photos.

  A file that cannot be read as an image is skipped: ``on_skip(path, error)`` is called (by
  default ``skipping PATH: reason`` is printed on stderr).

  Raises:
    FileNotFoundError: ``folder`` is not a directory, or holds no readable image.
  """
  from spectral_jax.data import images as images_lib  # pylint: disable=import-outside-toplevel
  from spectral_jax.data import samples  # pylint: disable=import-outside-toplevel

  if not folder:
    return [NamedImage(name, rgb) for name, rgb in samples.bundled_photos().items()]
  if on_skip is None:
    on_skip = lambda path, e: print(f"skipping {path}: {e}", file=sys.stderr, flush=True)
  if not pathlib.Path(folder).is_dir():
    raise FileNotFoundError(f"image folder {folder!r} does not exist or is not a folder; point "
                            "data.images at a folder of images (\"\" for the bundled photos)")
  paths = images_lib.list_images(folder, recursive=recursive)
  if not paths:
    raise FileNotFoundError(f"no images (suffixes {', '.join(images_lib.IMAGE_SUFFIXES)}) in "
                            f"{folder!r}; point data.images at a folder of images")
  images = []
  for p in paths:
    try:
      images.append(NamedImage(str(p.relative_to(folder).with_suffix("")),
                               images_lib.read_image(p)))
    except (images_lib.ImageReadError, FileNotFoundError) as e:
      on_skip(str(p), e)
  if not images:
    raise FileNotFoundError(f"none of the {len(paths)} image files in {folder!r} could be read "
                            "(each is reported above); point data.images at readable images")
  return images


def default_cache_dir() -> pathlib.Path:
  """``<backbones.cache_dir()>/neuralef_features`` (under $SPECTRAL_JAX_CACHE or
  ~/.cache/spectral_jax)."""
  from spectral_jax import backbones  # pylint: disable=import-outside-toplevel

  return backbones.cache_dir() / "neuralef_features"


def augment_config(data_config) -> AugmentConfig:
  """The `AugmentConfig` of a config's ``data`` section (and the run's ``seed``)."""
  return AugmentConfig(image_size=int(data_config.image_size),
                       views_per_image=int(data_config.views_per_image),
                       min_scale=float(data_config.min_scale),
                       max_scale=float(data_config.max_scale), flip=bool(data_config.flip))


def check_data_config(data_config) -> None:
  """Checks a config's ``data`` section before anything is loaded.

  Raises:
    ValueError: naming the bad field.
  """
  if data_config.get("dataset", ""):
    from spectral_jax.datasets import pipeline  # pylint: disable=import-outside-toplevel
    pipeline.check_pipeline_config(data_config)
    return
  augment_config(data_config)
  if data_config.cache_dtype not in ("float32", "float16"):
    raise ValueError(f"data.cache_dtype must be 'float32' or 'float16'; got "
                     f"{data_config.cache_dtype!r}")
  if int(data_config.extract_batch_size) < 1:
    raise ValueError(f"data.extract_batch_size must be ≥ 1; got {data_config.extract_batch_size}")


def prepare_features(config, *, backbone=None, refresh: bool = False, progress: bool = True,
                     images: Sequence[NamedImage] | None = None) -> tuple[Any, FeatureSet, bool]:
  """Backbone and cached training features of a training config (``data``, ``backbone``).

  The images are read (``images``, or `training_images` of ``config.data``) before the
  backbone is loaded, so a folder without readable images fails fast.

  Returns:
    ``(backbone, features, cache_hit)``.
  """
  data = config.data
  if images is None:
    images = training_images(data.images, data.recursive)
  if backbone is None:
    from spectral_jax import backbones  # pylint: disable=import-outside-toplevel
    backbone = backbones.load(config.backbone.name, config.backbone.weights)
  cache_dir = data.cache_dir or default_cache_dir()
  feats, hit = cached_feature_set(backbone, images, augment_config(data), cache_dir,
                                  dtype=data.cache_dtype, batch_size=int(data.extract_batch_size),
                                  refresh=refresh, progress=progress)
  return backbone, feats, hit


__all__ = [
    "AugmentConfig", "augment_config", "check_data_config", "default_cache_dir",
    "prepare_features", "training_images", "FeatureCacheError", "FeatureSet", "augmented_views",
    "backbone_features",
    "backbone_identity", "cache_key", "cached_feature_set", "extract_feature_set",
    "high_level_features", "load_cached", "params_fingerprint", "save_cached", "training_batch",
    "with_compute_dtype",
]
