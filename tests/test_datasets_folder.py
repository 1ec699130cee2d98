"""The one folder reader (datasets.images.read_folder): collision-free names on every training
path (the feature cache's images, the grain folder source), and cache keys that did not move."""

import numpy as np
import pytest
from PIL import Image

from spectral_jax.datasets import images
from spectral_jax.datasets import pipeline
from spectral_jax.datasets import transforms
from spectral_jax.neuralef import feature_cache


def _save(path, seed, shape=(12, 16, 3), fmt=None):
  rgb = np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)
  Image.fromarray(rgb).save(path, format=fmt)
  return rgb


@pytest.fixture
def colliding(tmp_path):
  """``a.jpg`` and ``a.png`` (different pixels) and ``b.png``; the PNGs' pixels are returned."""
  _save(tmp_path / "a.jpg", 1, fmt="JPEG")
  pngs = {"a.png": _save(tmp_path / "a.png", 2), "b": _save(tmp_path / "b.png", 3)}
  return tmp_path, pngs


def test_training_images_keep_both_of_a_stem(colliding):
  folder, pngs = colliding
  got = pipeline.training_images(str(folder))
  assert [im.name for im in got] == ["a.jpg", "a.png", "b"]
  by_name = {im.name: im.rgb for im in got}
  np.testing.assert_array_equal(by_name["a.png"], pngs["a.png"])
  np.testing.assert_array_equal(by_name["b"], pngs["b"])
  np.testing.assert_array_equal(by_name["a.jpg"], images.read_image(folder / "a.jpg"))
  assert not np.array_equal(by_name["a.jpg"], by_name["a.png"])


def test_grain_folder_source_yields_both(colliding):
  folder, _ = colliding
  source = pipeline.training_source("folder", str(folder))
  assert len(source) == 3 and sorted(source.ids) == ["a.jpg", "a.png", "b"]
  decoded = [source[i].image for i in range(len(source))]
  assert not np.array_equal(decoded[0], decoded[1])
  pytest.importorskip("grain")
  aug = transforms.TrainAugment(crop_size=8, scale=(16, 16), photometric=False)
  it = iter(pipeline.training_dataset(source, aug, batch_size=1, seed=0, shard_index=0,
                                      shard_count=1, num_threads=1, prefetch=0))
  seen = {int(next(it)["index"][0]) for _ in range(len(source))}  # one epoch
  assert seen == {0, 1, 2}


def test_image_list_source_refuses_shared_names():
  rgb = np.zeros((4, 4, 3), np.uint8)
  with pytest.raises(ValueError, match=r"share the names \['a'\]"):
    pipeline.ImageListSource([images.NamedImage("a", rgb), images.NamedImage("a", rgb + 1)])


def test_unreadable_files_are_skipped_and_named_as_given(tmp_path):
  rgb = _save(tmp_path / "good.png", 0)
  (tmp_path / "bad.jpg").write_bytes(b"not a jpeg")
  skipped = []
  got = pipeline.training_images(str(tmp_path),
                                 on_skip=lambda path, e: skipped.append((path, str(e))))
  assert [im.name for im in got] == ["good"]
  np.testing.assert_array_equal(got[0].rgb, rgb)
  assert [path for path, _ in skipped] == [str(tmp_path / "bad.jpg")]
  assert "cannot read" in skipped[0][1]
  (tmp_path / "good.png").unlink()
  with pytest.raises(FileNotFoundError, match="none of the 1 image files"):
    pipeline.training_images(str(tmp_path), on_skip=lambda path, e: None)
  with pytest.raises(FileNotFoundError, match="does not exist or is not a folder"):
    pipeline.training_images(str(tmp_path / "missing"))


def test_bundled_photos_without_a_folder():
  names = [im.name for im in pipeline.training_images("")]
  assert names[:2] == ["voc", "arc2017"] and len(set(names)) == len(names)


def test_cache_key_text_unchanged_without_collisions(tmp_path):
  """Names and key of a folder without shared stems are what the former reader gave
  (``with_suffix("")`` names; the key below was computed by that code), so caches on disk hit."""
  (tmp_path / "sub").mkdir()
  rng = np.random.default_rng(7)
  for name, shape in (("b.png", (9, 11, 3)), ("c.d.png", (8, 8, 3)), ("sub/x.png", (10, 7, 3))):
    Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8)).save(tmp_path / name)
  got = pipeline.training_images(str(tmp_path), recursive=True)
  assert [im.name for im in got] == ["b", "c.d", "sub/x"]
  key = feature_cache.cache_key({"config": {"name": "tiny"}, "weights": "0" * 64}, got,
                                transforms.FixedViews(image_size=28, views_per_image=2), "float32")
  assert key == "b769bd099492c1de416863ade85ab5475996e1f057002bafca08570129684c75"
