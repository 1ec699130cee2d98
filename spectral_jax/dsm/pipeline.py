"""The DSM pipeline: images → backbone → graph → eigenvectors → masks, boxes, segments (and
semantic crop embeddings) as one jitted program per batch shape.

    segmenter = dsm.make_pipeline(backbone, dsm.PipelineConfig())
    result = segmenter(images, valid)            # a DSMResult of device arrays

Everything the command, the benchmark, the tests and the dataset evaluation run goes through
:func:`make_pipeline`. Images of different sizes share a program by padding to a common patch
grid: ``valid`` (B, h, w) marks each image's real patches (a top-left rectangle), and padding
changes no result — the backbone masks padded tokens out of attention and resamples each
image's positional embeddings for its own grid, the graph drops padded nodes, the eigensolver
starts from the rows an unpadded solve would get, and K-means, the sign rule, the border rule,
components and crops ignore padding. Nothing inside the program goes back to the host (tested
under ``jax.transfer_guard("disallow")``); the per-photo outputs at the photo's own size are
made on the host from the patch-level results (``dsm.masks``).
"""

from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple

import chex
import jax
import jax.numpy as jnp
import numpy as np

from spectral_jax import backbones, regions
from spectral_jax.dsm import localisation, multi_region, objects as objects_lib, spectral
from spectral_jax.dsm import tokencut as tokencut_lib
from spectral_jax.dsm import semantic as semantic_lib

GRAPH_FEATURES = ("keys", "queries", "values", "tokens")  # Features fields; "keys" is DSM's
# A photo whose pixels (0–1) vary less than this (standard deviation) is flagged as constant.
CONSTANT_STD = 1.0 / 255


class PatchResult(NamedTuple):
  """Patch-level DSM outputs of a batch of B images on an h×w grid (n = h·w, k eigenpairs).

  On a padded grid every map is 0/False on padding and eigenvectors are 0 there. M is the
  number of box slots (``PipelineConfig.max_objects``).

  Attributes:
    eigenvalues: (B, k) ascending, λ₀ ≈ 0.
    eigenvectors: (B, n, k) columns y₀..y_{k−1} (``Yᵀ D Y = I``, SPEC §3 sign rule).
    fiedler: (B, h, w) the object map, positive exactly on the object mask: for "dsm" y₁
      oriented so that its positive side is the foreground (SPEC §4); for the other discovery
      methods ``dsm.objects.object_map`` of their cut vector (TokenCut — also for
      "tokencut+maskcut" —, MaskCut's first cut) or of y₁ (multi_region).
    foreground: (B, h, w) bool object mask: "dsm" ``fiedler > 0`` (all real patches when
      nothing is positive); "tokencut" and "tokencut+maskcut" TokenCut's seed component;
      "maskcut" the union of the objects; "multi_region" the segments barely touching the
      border (``objects.region_mask``).
    component: (B, h, w) bool, the best object: "dsm" the largest connected component of
      ``foreground``; "tokencut+maskcut" TokenCut's component; else ``boxes``' first object.
    box: (B, 4) int32 box of ``component`` in the backbone's input frame (pixels).
    boxes: (B, M, 4) int32 a box per object, best first, 0 in empty slots
      (``boxes[:, 0] = box`` when present, except for "tokencut+maskcut", whose ``boxes`` are
      MaskCut's and ``box`` TokenCut's: MaskCut's first cut differs from TokenCut's object
      only where its corner prior reverses the cut).
    box_valid: (B, M) bool the slots holding an object.
    instances: (B, h, w) int32 id m + 1 on the patches of object m (``boxes[:, m]``), 0 else.
    segments: (B, h, w) int32 multi-region labels, ``BACKGROUND`` = border majority.
    converged: (B,) bool, the eigensolver reached its tolerance on every eigenpair.
    num_segments: (B,) int32 segments K-means formed per image (the eigengap's count when
      adaptive).
  """

  eigenvalues: jax.Array
  eigenvectors: jax.Array
  fiedler: jax.Array
  foreground: jax.Array
  component: jax.Array
  box: jax.Array
  segments: jax.Array
  converged: jax.Array
  num_segments: jax.Array
  boxes: jax.Array
  box_valid: jax.Array
  instances: jax.Array


class DSMResult(NamedTuple):
  """What :func:`make_pipeline`'s segmenter returns for a batch of B images.

  Attributes:
    patches: the :class:`PatchResult`.
    grid: (B, 2) int32 each image's real patch grid (h_b, w_b).
    nonfinite: (B,) bool, the image had NaN/Inf pixels (replaced by 0; results meaningless).
    out_of_range: (B,) bool, float pixels outside [0, 1] (e.g. 0–255 values).
    constant: (B,) bool, the image is (nearly) one colour: no object to find.
    semantic_segments: (B, h, w) int32 segments of the semantic pass (None when off).
    semantic_boxes: (B, S, 4) int32 crop boxes per segment (None when off).
    semantic_valid: (B, S) bool segments that exist and are not background (None when off).
    semantic_embeddings: (B, S, C) CLS features of the crops (None when off).
  """

  patches: PatchResult
  grid: jax.Array
  nonfinite: jax.Array
  out_of_range: jax.Array
  constant: jax.Array
  semantic_segments: Any = None
  semantic_boxes: Any = None
  semantic_valid: Any = None
  semantic_embeddings: Any = None


# Where the fields of the semantic pass sit in the commands' ml_collections config (section
# "semantic", key); every other field is ``dsm.<field>`` (experiments/configs/segment.py).
_SEMANTIC_KEYS = {"semantic": "enabled", "semantic_num_segments": "num_segments",
                  "crop_size": "crop_size", "num_erode": "num_erode", "num_dilate": "num_dilate"}


@dataclasses.dataclass(frozen=True)
class PipelineConfig:
  """Settings of the DSM pipeline: the ONE set of DSM defaults.

  ``PipelineConfig()`` is what ``python -m experiments.segment`` runs (its config takes its
  ``dsm.*`` and ``semantic.*`` defaults from these fields, :meth:`config_keys`). The defaults
  are the reference's (SPEC §2–4) except the discovery method, "tokencut+maskcut": the best
  box and the object mask are TokenCut's (τ = the 0.5 quantile of each image's key
  similarities), the multi-object ``boxes``/``instances`` MaskCut's (N = ``max_objects`` = 3
  cuts, same τ rule), chosen by the protocol BUILD_NOTES fixed before the labelled-photo
  comparison (determinism and stability gates, then published CorLoc). Every other method is
  one field away: ``discovery="dsm"`` is the reference recipe, "tokencut", "maskcut" and
  "multi_region" give each method's box, mask and boxes alone. Each value has one meaning,
  here and in :func:`analyse`.
  """

  num_eigenvectors: int = spectral.NUM_EIGENVECTORS  # K = 20
  features: str = "keys"            # graph features: one of GRAPH_FEATURES
  image_weight: float = 0.0         # λ of the colour graph (reference command line: 0)
  method: str = "auto"              # eigensolver: "auto", "eigh", "lobpcg"
  # LOBPCG's relative-residual tolerance (graph eigenvectors and the cuts); 0: the solver's
  # default, eigensolvers.default_tol (1.4e-5 in float32). Not used by "eigh".
  solver_tol: float = 0.0
  foreground: str = "minority"      # side of y₁ that is the object: "minority" or "border";
  # TokenCut/MaskCut: "minority" = their published seed rule, "border" = the border rule
  connectivity: int = localisation.CONNECTIVITY  # 4 (SPEC); the DSM code's skimage uses 8
  num_segments: int = multi_region.NUM_SEGMENTS  # multi-region segments per image
  adaptive_segments: bool = False   # per-image count from the largest eigengap
  segment_eigenvectors: int = 0     # m eigenvectors for K-means; 0 = all K − 1
  # how the eigenvectors become the multi-region segments: "cluster_qr" (the default:
  # deterministic column-pivoted QR on y₀..y_{S−1}, Damle, Minden & Ying 2019; no key; not with
  # adaptive_segments) or "kmeans" (DSM's, keyed by the photo's pixels). K-means segments fail
  # issue 21's stability gate (53% of astronaut's pixels keep their segment under the other
  # eigensolver), cluster_qr keeps 100% on all six photos (BUILD_NOTES). The semantic pass
  # keeps the reference's K-means (SPEC §4).
  segment_assign: str = "cluster_qr"
  semantic: bool = False            # crops + CLS embeddings for dataset-level clustering
  semantic_num_segments: int = semantic_lib.SEMANTIC_NUM_SEGMENTS
  crop_size: int = semantic_lib.CROP_SIZE
  num_erode: int = semantic_lib.NUM_ERODE
  num_dilate: int = semantic_lib.NUM_DILATE
  # Object discovery (dsm.objects): "tokencut+maskcut" (the default: best box and mask from
  # TokenCut, boxes from MaskCut's max_objects cuts; chosen by the protocol fixed before the
  # labelled-photo table, BUILD_NOTES), "dsm" (reference: one box from y₁), "tokencut",
  # "maskcut" or "multi_region" (a box per segment).
  discovery: str = objects_lib.DEFAULT_DISCOVERY
  tau: float = -1.0                 # TokenCut/MaskCut's fixed τ; < 0: the published value
  # (tokencut.TAU = 0.2, MASKCUT_TAU = 0.15), used when tau_quantile is 0;
  # τ as this quantile of each image's similarities: the median, half the edges on, the
  # scale-free choice fixed by the default's protocol (BUILD_NOTES; the published fixed τ
  # makes DINOv2's key graph complete)
  tau_quantile: float = 0.5
  graph_eps: float = tokencut_lib.EPS  # ε, the binarised graph's non-edge weight
  max_objects: int = objects_lib.MAX_OBJECTS  # box slots; MaskCut's number of cuts N
  # multi_region's mask: segments with at most this share of their patches on the border
  region_border_share: float = objects_lib.MAX_BORDER_SHARE

  @classmethod
  def config_keys(cls) -> dict[str, tuple[str, str]]:
    """field → (section, key) of the commands' ml_collections config, in field order."""
    return {f.name: ("semantic", _SEMANTIC_KEYS[f.name]) if f.name in _SEMANTIC_KEYS
            else ("dsm", f.name) for f in dataclasses.fields(cls)}

  @classmethod
  def from_config(cls, cfg) -> "PipelineConfig":
    """From a DSM command's ml_collections config (its ``dsm`` and ``semantic`` sections, see
    :meth:`config_keys`): the one config → settings function (commands, benchmarks, tests)."""
    types = {f.name: type(f.default) for f in dataclasses.fields(cls)}
    values = {}
    for name, (section, key) in cls.config_keys().items():
      value = cfg[section][key]
      values[name] = float(value) if types[name] is float else value
    return cls(**values)

  def cut_settings(self, cut: str | None = None) -> dict:
    """Keyword arguments of ``tokencut.tokencut`` (``cut="tokencut"``) or ``maskcut``
    (``cut="maskcut"``) for these settings (τ, ε, the quantile, the eigensolver and its
    tolerance, the component's connectivity and the foreground rule); ``cut=None``: the one
    ``discovery`` names ("maskcut" for "maskcut", else "tokencut"). Only the fixed τ differs
    between the two (the published 0.2 / 0.15, used when ``tau < 0`` and ``tau_quantile``
    is 0)."""
    if cut is None:
      cut = "maskcut" if self.discovery == "maskcut" else "tokencut"
    if cut not in ("tokencut", "maskcut"):
      raise ValueError(f"cut must be 'tokencut' or 'maskcut'; got {cut!r}")
    published = tokencut_lib.MASKCUT_TAU if cut == "maskcut" else tokencut_lib.TAU
    return dict(tau=published if self.tau < 0 else self.tau, eps=self.graph_eps,
                tau_quantile=self.tau_quantile or None, method=self.method,
                tol=self.solver_tol or None,
                connectivity=self.connectivity,
                rule="border" if self.foreground == "border" else "seed")

  def validate(self) -> None:
    """Raises ValueError naming the first bad field and what it accepts."""
    def need(ok, text):
      if not ok:
        raise ValueError(text)
    ints = ("num_eigenvectors", "connectivity", "num_segments", "segment_eigenvectors",
            "semantic_num_segments", "crop_size", "num_erode", "num_dilate", "max_objects")
    for name in ints:
      v = getattr(self, name)
      need(isinstance(v, (int, np.integer)) and not isinstance(v, bool),
           f"{name} must be an int; got {v!r}")
    need(self.num_eigenvectors >= 2, f"num_eigenvectors must be ≥ 2 (y₀ and the Fiedler vector "
                                     f"y₁); got {self.num_eigenvectors}")
    need(self.features in GRAPH_FEATURES,
         f"features must be one of {GRAPH_FEATURES}; got {self.features!r}")
    need(np.isfinite(self.image_weight) and self.image_weight >= 0,
         f"image_weight (λ) must be a finite number ≥ 0; got {self.image_weight}")
    need(self.method in ("auto", "eigh", "lobpcg"),
         f"method must be 'auto', 'eigh' or 'lobpcg'; got {self.method!r}")
    need(np.isfinite(self.solver_tol) and 0 <= self.solver_tol < 1,
         f"solver_tol must lie in [0, 1) (0: the eigensolver's default); got {self.solver_tol}")
    need(self.foreground in localisation.FOREGROUND_RULES,
         f"foreground must be one of {localisation.FOREGROUND_RULES}; got {self.foreground!r}")
    need(self.connectivity in (4, 8), f"connectivity must be 4 or 8; got {self.connectivity}")
    need(self.num_segments >= 2 and self.semantic_num_segments >= 2,
         "the number of segments must be at least 2 (background + one region)")
    need(0 <= self.segment_eigenvectors < self.num_eigenvectors,
         f"segment_eigenvectors must lie in [0, num_eigenvectors − 1 = "
         f"{self.num_eigenvectors - 1}] (0 = all); got {self.segment_eigenvectors}")
    need(not self.adaptive_segments or self.num_eigenvectors >= 3,
         "adaptive_segments needs num_eigenvectors ≥ 3")
    need(self.segment_assign in multi_region.ASSIGN_METHODS,
         f"segment_assign must be one of {multi_region.ASSIGN_METHODS}; got "
         f"{self.segment_assign!r}")
    need(self.segment_assign == "kmeans" or (
        not self.adaptive_segments and self.segment_eigenvectors == 0
        and self.num_segments <= self.num_eigenvectors),
         "segment_assign='cluster_qr' (the default) uses y₀..y_{S−1}: it needs num_segments ≤ "
         "num_eigenvectors, adaptive_segments off and segment_eigenvectors 0; for the others "
         "set segment_assign='kmeans'")
    need(self.crop_size >= 1 and self.num_erode >= 0 and self.num_dilate >= 0,
         "crop_size must be ≥ 1 and num_erode, num_dilate ≥ 0")
    need(self.discovery in objects_lib.DISCOVERY_METHODS,
         f"discovery must be one of {objects_lib.DISCOVERY_METHODS}; got {self.discovery!r}")
    need(np.isfinite(self.tau) and self.tau <= 1,
         f"tau must be a finite cosine threshold ≤ 1 (< 0: the method's published value); got "
         f"{self.tau}")
    need(0 <= self.tau_quantile < 1,
         f"tau_quantile must lie in [0, 1) (0: the fixed tau); got {self.tau_quantile}")
    need(0 < self.graph_eps < 1, f"graph_eps must lie in (0, 1); got {self.graph_eps}")
    need(self.max_objects >= 1, f"max_objects must be ≥ 1; got {self.max_objects}")
    need(0 <= self.region_border_share <= 1, f"region_border_share must lie in [0, 1] (1: every "
                                             f"segment); got {self.region_border_share}")

  def min_patches(self) -> int:
    """Fewest real patches an image needs (k < n, and at least one patch per segment)."""
    segs = max(self.num_segments, self.semantic_num_segments if self.semantic else 0)
    if self.adaptive_segments:
      segs = max(segs, self.num_eigenvectors - 1)
    return max(self.num_eigenvectors + 1, segs)


def analyse(features: jax.Array, grid: tuple[int, int], *, patch_size: int, rngs: jax.Array,
            config: PipelineConfig = PipelineConfig(), valid: jax.Array | None = None,
            input_hw: tuple[int, int] | None = None, image_grid: jax.Array | None = None,
            solver=None) -> PatchResult:
  """All patch-level DSM stages of a batch: eigenvectors, localisation, multi-region segments,
  the discovery method's objects.

  Jit-able with ``grid``, ``patch_size``, ``config`` (a frozen, hashable dataclass),
  ``input_hw`` and ``solver`` static. The semantic pass's fields of ``config`` are not used
  here (:class:`Segmenter` runs it).

  Args:
    features: (B, n, d) patch features (DSM: last-block attention keys), n = h·w.
    grid: (h, w).
    patch_size: P.
    rngs: (B,) PRNG keys, one per image, for its multi-region K-means (so that an image's
      segments do not depend on the batch it came in).
    config: the :class:`PipelineConfig` (its fields mean here what they mean there):
      λ = ``image_weight`` needs ``image_grid``; ``foreground`` is the side of y₁ that is the
      object (``localisation.fiedler_map``; TokenCut/MaskCut: "minority" = their seed rule,
      "border" = ``tokencut.orient``'s border rule); ``adaptive_segments``: the largest eigengap
      after λ₁ (``multi_region.adaptive_num_segments``) counts the segments per image, one
      K-means with up to k − 1 clusters of which the first count are used; ``discovery``: the
      DSM stages run for every method (eigenvectors, segments), the objects, boxes and mask come
      from it (``dsm.objects``).
    valid: optional (B, h, w) bool real patches of a padded grid.
    input_hw: (H', W') the backbone's input size before its crop (clips the box).
    image_grid: (B, h, w, 3) colours for λ > 0.
    solver: see ``spectral.spectral_decomposition``.
  Returns:
    A :class:`PatchResult`.
  """
  c = config
  chex.assert_rank(features, 3)
  chex.assert_shape(rngs, (features.shape[0],))
  b, n = features.shape[:2]
  flat_valid = None if valid is None else valid.reshape(b, n)
  lam, y, info = spectral.spectral_decomposition(
      features, image_grid, num_eigenvectors=c.num_eigenvectors, image_weight=c.image_weight,
      method=c.method, tol=c.solver_tol or None, solver=solver, return_info=True,
      valid=flat_valid)
  fiedler = localisation.fiedler_map(y, grid, c.foreground, valid)
  foreground = localisation.foreground_patches(fiedler, valid)
  component, box = localisation.localise(foreground, patch_size=patch_size, image_size=input_hw,
                                         connectivity=c.connectivity)
  num_segments = c.num_segments
  if c.adaptive_segments:
    counts = multi_region.adaptive_num_segments(lam)
    num_segments = c.num_eigenvectors - 1
  else:
    counts = jnp.full((b,), num_segments, jnp.int32)

  def segment(key, vectors, mask, active):
    return multi_region.multi_region_segments(
        key, vectors, grid, num_segments, num_eigenvectors=c.segment_eigenvectors or None,
        valid=mask, num_active=None if c.segment_assign == "cluster_qr" else active,
        assign=c.segment_assign)

  segments = jax.vmap(segment)(rngs, y, valid, counts)
  converged = jnp.all(info.converged, axis=-1)
  mask = jnp.ones((b,) + tuple(grid), bool) if valid is None else valid
  discovery, max_objects = c.discovery, c.max_objects
  if discovery not in objects_lib.DISCOVERY_METHODS:
    raise ValueError(f"discovery must be one of {objects_lib.DISCOVERY_METHODS}; got "
                     f"{discovery!r}")
  def single(cut):       # TokenCut: one object, its component and oriented cut vector
    oriented, comp, ok = jax.vmap(lambda f, v: tokencut_lib.tokencut(f, v, **cut))(features,
                                                                                   mask)
    return objects_lib.object_map(oriented, comp, mask), comp, ok

  def several(cut):      # MaskCut: N cuts, best first
    oriented, cuts, ok = jax.vmap(lambda f, v: tokencut_lib.maskcut(
        f, v, num_cuts=max_objects, **cut))(features, mask)
    found = jax.vmap(objects_lib.best_first)(cuts)
    union = jnp.any(found, axis=1)
    return objects_lib.object_map(oriented[:, 0], union, mask), found, union, ok

  if discovery == "dsm":
    objects = jax.vmap(objects_lib.pad_objects, in_axes=(0, None))(component[:, None],
                                                                   max_objects)
  elif discovery == "tokencut":
    fiedler, comp, ok = single(c.cut_settings("tokencut"))
    objects = jax.vmap(objects_lib.pad_objects, in_axes=(0, None))(comp[:, None], max_objects)
    foreground, converged = comp, converged & ok
  elif discovery == "maskcut":
    fiedler, objects, foreground, ok = several(c.cut_settings("maskcut"))
    converged = converged & ok
  elif discovery == "tokencut+maskcut":  # the best object and mask: TokenCut; boxes: MaskCut
    fiedler, comp, ok_single = single(c.cut_settings("tokencut"))
    _, objects, _, ok_several = several(c.cut_settings("maskcut"))
    foreground, converged = comp, converged & ok_single & ok_several
  else:  # multi_region
    objects = jax.vmap(lambda sg, v: objects_lib.region_objects(
        sg, num_segments, max_objects, c.connectivity, v))(segments, mask)
    foreground = jax.vmap(lambda sg, ob, v: objects_lib.region_mask(
        sg, ob, num_segments, c.region_border_share, v))(segments, objects, mask)
    fiedler = objects_lib.object_map(fiedler, foreground, mask)
  boxes, present = objects_lib.boxes_of(objects, patch_size=patch_size,
                                        image_size=None if input_hw is None else tuple(input_hw))
  if discovery != "dsm":
    component = foreground if discovery == "tokencut+maskcut" else objects[:, 0]
    box = regions.mask_to_box(component, patch_size=patch_size,
                              image_size=None if input_hw is None else tuple(input_hw))
  return PatchResult(lam, y, fiedler, foreground, component, box, segments, converged, counts,
                     boxes, present, objects_lib.instance_map(objects))


def _image_flags(images: jax.Array, pixel_valid: jax.Array):
  """(nonfinite, out_of_range, constant) per image over its real pixels."""
  axes = (1, 2, 3)
  m = jnp.broadcast_to(pixel_valid[..., None], images.shape)
  nonfinite = jnp.any(m & ~jnp.isfinite(images), axis=axes)
  clean = jnp.where(m & jnp.isfinite(images), images, 0.0)
  out_of_range = jnp.any((clean < 0) | (clean > 1), axis=axes)
  count = jnp.maximum(jnp.sum(m, axis=axes), 1)
  mean = jnp.sum(clean, axis=axes) / count
  var = jnp.sum(jnp.where(m, (clean - mean[:, None, None, None]) ** 2, 0), axis=axes) / count
  return nonfinite, out_of_range, jnp.sqrt(var) < CONSTANT_STD, clean


class Segmenter:
  """The DSM pipeline for one backbone and config; call it on batches (see :func:`make_pipeline`).

  Attributes:
    backbone, config: what it was built from.
    compiled_shapes: the distinct (B, H, W) input shapes seen, one compiled program each.
  """

  def __init__(self, backbone: backbones.Backbone, config: PipelineConfig):
    config.validate()
    self.backbone, self.config = backbone, config
    self.patch_size = backbone.config.patch_size
    self.compiled_shapes: set[tuple[int, int, int]] = set()
    self._run = jax.jit(self._program, compiler_options=backbones.compiler_options() or None)

  def __call__(self, images, valid=None, rngs=None, image_grid=None) -> DSMResult:
    """Runs the pipeline on a batch.

    Args:
      images: (B, H, W, 3) RGB, uint8 (0–255) or float (0–1), NumPy or jax. Cropped to
        (h·P, w·P), h = H // P, w = W // P. Float NumPy input outside [0, 1] or with NaN/Inf is
        refused; device arrays are not read back (the result's flags report such images).
      valid: optional (B, h, w) bool real patches per image, each a top-left rectangle (images
        padded at the bottom/right to one shape); None: every patch.
      rngs: optional (B,) PRNG keys for the per-image K-means; default ``split(key(0), B)``.
      image_grid: (B, h, w, 3) colours in [0, 1] at the patch grid, needed when λ > 0 (only
        without padding).
    Returns:
      A :class:`DSMResult` of device arrays (``jax.device_get`` it for NumPy).
    """
    p, c = self.patch_size, self.config
    chex.assert_rank(images, 4)
    b, hp, wp, ch = images.shape
    h, w = hp // p, wp // p
    if ch != 3:
      raise ValueError(f"images must be (B, H, W, 3) RGB; got shape {images.shape}")
    check_pixel_values(images, "images")
    if h * w < c.min_patches():
      raise ValueError(f"{hp}×{wp} px images have {h}×{w} = {h * w} patches of {p} px; the "
                       f"pipeline needs at least {c.min_patches()} (num_eigenvectors + 1): use "
                       "larger images or lower num_eigenvectors")
    if valid is None:
      valid = np.ones((b, h, w), bool)
    elif tuple(valid.shape) != (b, h, w):
      raise ValueError(f"valid must be (B, h, w) = {(b, h, w)} for {hp}×{wp} px images; got "
                       f"{tuple(valid.shape)}")
    if isinstance(valid, np.ndarray):
      check_valid_rectangles(valid, c.min_patches())
    if rngs is None:
      rngs = jax.random.split(jax.random.key(0), b)
    if c.image_weight > 0 and image_grid is None:
      raise ValueError(f"image_weight={c.image_weight} needs image_grid (the photo resized to "
                       "the patch grid)")
    put = lambda x: x if x is None or isinstance(x, jax.Array) else jax.device_put(x)
    self.compiled_shapes.add((b, hp, wp))
    return self._run(self.backbone, put(images), put(valid), put(rngs), put(image_grid))

  def _program(self, backbone, images, valid, rngs, image_grid) -> DSMResult:
    c, p = self.config, self.patch_size
    b, h, w = valid.shape
    images = images[:, :h * p, :w * p]
    if images.dtype == jnp.uint8:
      images = images.astype(jnp.float32) / 255.0
    grid_hw = jnp.stack([jnp.sum(valid[:, :, 0], axis=-1), jnp.sum(valid[:, 0, :], axis=-1)],
                        axis=-1).astype(jnp.int32)
    pixel_valid = jnp.repeat(jnp.repeat(valid, p, axis=1), p, axis=2)
    nonfinite, out_of_range, constant, images = _image_flags(images.astype(jnp.float32),
                                                             pixel_valid)
    feats = backbones.extract_features(backbone, images, blocks=(-1,), patch_valid=valid)
    graph_features = getattr(feats, c.features)
    # λ > 0 runs unpadded (spectral_decomposition refuses a mask with the colour graph).
    mask = valid if image_grid is None else None
    res = analyse(graph_features, (h, w), patch_size=p, rngs=rngs, config=c, valid=mask,
                  image_grid=image_grid)
    out = DSMResult(res, grid_hw, nonfinite, out_of_range, constant)
    if not c.semantic:
      return out
    s = c.semantic_num_segments
    seg = jax.vmap(lambda k, y, m: multi_region.multi_region_segments(
        k, y, (h, w), s, valid=m))(rngs, res.eigenvectors, mask)
    boxes, present = semantic_lib.segment_boxes(seg, s, patch_size=p, image_size=(h * p, w * p),
                                            num_erode=c.num_erode, num_dilate=c.num_dilate,
                                            valid=mask)
    crops = semantic_lib.crop_and_resize(images, boxes, c.crop_size, grid_hw * p)
    crops = crops.reshape((b * s,) + crops.shape[2:])
    cls = backbones.extract_features(backbone, crops, blocks=(-1,)).cls.reshape(b, s, -1)
    return out._replace(semantic_segments=seg, semantic_boxes=boxes, semantic_valid=present,
                        semantic_embeddings=cls)


def check_pixel_values(images, what: str = "images") -> None:
  """Raises TypeError unless ``images`` are uint8 (0–255) or floats, and for float NumPy arrays
  ValueError on NaN/Inf or values outside [0, 1] (device arrays are not read back: the
  ``DSMResult`` flags report such images). ``what`` names them in the message."""
  if images.dtype != np.uint8 and not jnp.issubdtype(images.dtype, jnp.floating):
    raise TypeError(f"{what} must be uint8 (0–255) or floats in [0, 1]; got {images.dtype}")
  if isinstance(images, np.ndarray) and images.dtype != np.uint8:
    if not np.all(np.isfinite(images)):
      raise ValueError(f"NaN or Inf pixels in the {what}; clean them first")
    lo, hi = float(images.min()), float(images.max())
    if lo < 0 or hi > 1:
      raise ValueError(f"float {what} must hold values in [0, 1]; got [{lo:.3g}, {hi:.3g}] "
                       "(for 0–255 values pass uint8 or divide by 255)")


def check_valid_rectangles(valid: np.ndarray, min_patches: int = 1) -> None:
  """Raises ValueError unless each (h, w) mask of ``valid`` is a top-left rectangle of at least
  ``min_patches`` patches."""
  for i, v in enumerate(np.asarray(valid, bool)):
    rows, cols = int(v[:, 0].sum()), int(v[0, :].sum())
    expected = np.zeros_like(v)
    expected[:rows, :cols] = True
    if not np.array_equal(v, expected):
      raise ValueError(f"valid[{i}] is not a top-left rectangle of real patches (pad images at "
                       "the bottom and right)")
    if rows * cols < min_patches:
      raise ValueError(f"image {i} has {rows}×{cols} real patches; the pipeline needs at least "
                       f"{min_patches}")


def make_pipeline(backbone: backbones.Backbone,
                  config: PipelineConfig | None = None) -> Segmenter:
  """Builds the DSM pipeline once: ``segmenter(images, valid) -> DSMResult``.

  One jitted program per input shape (B, H, W); batch images of many sizes by padding them to a
  few shapes (``valid``), which changes no result.

  Args:
    backbone: a ``backbones.Backbone`` (pretrained or random).
    config: a :class:`PipelineConfig` (default: ``PipelineConfig()``, the command's settings).
  Returns:
    A :class:`Segmenter`.
  """
  return Segmenter(backbone, config or PipelineConfig())
