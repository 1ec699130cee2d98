"""The NeuralEF feature cache: backbone features of fixed views, extracted once, on disk (SPEC §1, §5).

The backbone is frozen, so its features are a pure function of (backbone weights, image, crop)
and training need not rerun the ViT. This module turns images into a `FeatureSet` of the arrays
``neuralef.features`` describes (``psi_inputs``, ``graph_features``, ``image_grids``) for the
fixed views of every image (``datasets.transforms.fixed_views``: view 0 the centre crop, the
others random resized crops and flips drawn from ``np.random.default_rng([seed, image,
view])``, so the views are a function of the cache key).

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
import tempfile
import zipfile
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from spectral_jax import backbones
from spectral_jax import graphs
from spectral_jax import progress as progress_lib
from spectral_jax.datasets import pipeline
from spectral_jax.datasets import transforms
from spectral_jax.datasets.images import NamedImage
from spectral_jax.neuralef import config as config_lib
from spectral_jax.neuralef import features as features_lib

CACHE_VERSION = 1
_ARRAYS = ("psi_inputs", "graph_features", "image_grids", "image_index", "view_index")


class FeatureCacheError(ValueError):
  """A feature cache entry exists but is unreadable or inconsistent."""


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


def image_hash(rgb: np.ndarray) -> str:
  return hashlib.sha256(np.ascontiguousarray(rgb).tobytes() + str(rgb.shape).encode()).hexdigest()


# ----------------------------------------------------------------------------- cache


def cache_key(backbone_id: dict[str, Any], images: Sequence[NamedImage],
              aug: transforms.FixedViews, dtype: str) -> str:
  """Hex SHA-256 over everything the cached arrays depend on (see the module docstring).

  The text hashed is unchanged since ``CACHE_VERSION`` 1, so caches already on disk stay hits
  (``transforms.FixedViews`` has the field names of the former ``features.AugmentConfig``).
  Image names come from ``datasets.images.output_names``: for a folder whose files all have
  distinct stems they are the stems as before (``sub/x.png`` → ``sub/x``); files that share a
  stem in one folder (``a.jpg``, ``a.png``) are now named with their suffix, where both used
  to be ``a`` — so only such folders get a new key (one extraction), and their two images no
  longer share a name.
  """
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


def extract_feature_set(backbone, images: Sequence[NamedImage], aug: transforms.FixedViews, *,
                        batch_size: int = 8, dtype: str = "float32",
                        progress: bool = False) -> FeatureSet:
  """Runs the frozen backbone on the augmented views of ``images`` (no cache).

  Args:
    backbone: a ``backbones.Backbone``.
    images: the training images (uint8 RGB).
    aug: the crops to take.
    batch_size: views per backbone call.
    dtype: storage dtype of ψ's input and the graph features ("float32" or "float16").
    progress: show progress on stderr.
  Returns:
    The `FeatureSet` (its ``key`` computed as `cache_key` does).
  """
  if not images:
    raise ValueError("no training images given")
  if dtype not in config_lib.CACHE_DTYPES:
    raise ValueError(f"cache dtype must be 'float32' or 'float16'; got {dtype!r}")
  p = backbone.config.patch_size
  grid = (aug.image_size // p, aug.image_size // p)
  if min(grid) < 1:
    raise ValueError(f"image_size {aug.image_size} is smaller than one {p}-px patch")
  views, image_index, view_index = [], [], []
  for i, im in enumerate(images):
    crops = transforms.fixed_views(im.rgb, i, aug)
    views.append(crops)
    image_index += [i] * len(crops)
    view_index += list(range(len(crops)))
  views = np.concatenate(views)
  run = features_lib.jitted_backbone_features()
  psi_inputs, graph_feats = [], []
  starts = range(0, len(views), batch_size)
  if progress:
    starts = progress_lib.progress(starts, desc="backbone features", unit="batch")
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


def cached_feature_set(backbone, images: Sequence[NamedImage], aug: transforms.FixedViews,
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
  if dtype not in config_lib.CACHE_DTYPES:
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


def default_cache_dir() -> pathlib.Path:
  """``<backbones.cache_dir()>/neuralef_features`` (under $SPECTRAL_JAX_CACHE or
  ~/.cache/spectral_jax)."""
  return backbones.cache_dir() / "neuralef_features"


def prepare_features(config, *, backbone=None, refresh: bool = False, progress: bool = True,
                     images: Sequence[NamedImage] | None = None) -> tuple[Any, FeatureSet, bool]:
  """Backbone and cached training features of a checked training config (``data``,
  ``backbone``; ``neuralef.config.check``).

  The images are read (``images``, or ``pipeline.training_images`` of ``config.data``) before
  the backbone is loaded, so a folder without readable images fails fast.

  Returns:
    ``(backbone, features, cache_hit)``.
  """
  data = config.data
  if images is None:
    images = pipeline.training_images(data.images, data.recursive)
  if backbone is None:
    backbone = backbones.load(config.backbone.name, config.backbone.weights)
  cache_dir = data.cache_dir or default_cache_dir()
  feats, hit = cached_feature_set(backbone, images, config_lib.fixed_views(data), cache_dir,
                                  dtype=data.cache_dtype, batch_size=int(data.extract_batch_size),
                                  refresh=refresh, progress=progress)
  return backbone, feats, hit


__all__ = ["CACHE_VERSION", "FeatureCacheError", "FeatureSet", "backbone_identity", "cache_key",
           "cached_feature_set", "default_cache_dir", "extract_feature_set", "image_hash",
           "load_cached", "params_fingerprint", "prepare_features", "save_cached"]
