"""spectral_jax.datasets on format-true miniatures of the official layouts (tests/conftest.py)."""

import pathlib

import numpy as np
import pytest
from PIL import Image

from conftest import DIFFICULT_OBJECT, TRUNCATED_OBJECT, VOC_IDS
from spectral_jax import datasets
from spectral_jax.datasets import samples
from spectral_jax.datasets import core, saliency, voc


def _boxes_from_masks(masks):
  """Independent ground truth: the tight 0-based exclusive box of each mask."""
  out = []
  for m in masks:
    ys, xs = np.nonzero(m)
    out.append([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1])
  return np.asarray(out)


# ----------------------------------------------------------------------------- VOC


def test_voc_reads_every_image_of_the_split_with_its_ground_truth(voc_tree):
  base, truth = voc_tree
  ds = datasets.load("voc12", base)
  assert len(ds) == 3 and ds.ids == list(VOC_IDS)
  photo = samples.labelled_photo("voc")
  first = ds[0]
  np.testing.assert_array_equal(first.boxes, _boxes_from_masks(photo.masks))
  np.testing.assert_array_equal(first.labels, photo.labels)
  assert first.difficult.tolist() == [i == DIFFICULT_OBJECT for i in range(19)]
  assert first.truncated.tolist() == [i == TRUNCATED_OBJECT for i in range(19)]
  np.testing.assert_array_equal(first.class_mask, truth[VOC_IDS[0]]["class_mask"])
  np.testing.assert_array_equal(first.instance_mask, truth[VOC_IDS[0]]["instance_mask"])
  assert core.IGNORE in first.class_mask and set(np.unique(first.class_mask)) <= {
      0, 5, 9, 11, 15, 255}
  # JPEG round trip: the decoded photo is close to the original, not equal.
  assert np.abs(first.image.astype(int) - photo.rgb).mean() < 4


def test_voc_greyscale_jpeg_becomes_three_equal_channels_and_mirrored_boxes(voc_tree):
  base, truth = voc_tree
  rec = datasets.load("voc12", base)[1]
  assert rec.image.shape == (375, 500, 3) and rec.image.dtype == np.uint8
  assert np.array_equal(rec.image[..., 0], rec.image[..., 2])
  w = rec.image.shape[1]
  direct = _boxes_from_masks(samples.labelled_photo("voc").masks[:, :, ::-1])
  np.testing.assert_array_equal(rec.boxes, direct)
  assert rec.class_mask is None and int(rec.boxes[:, 2].max()) <= w


def test_voc_image_without_objects_has_empty_boxes(voc_tree):
  rec = datasets.load("voc12", voc_tree[0])[2]
  assert rec.boxes.shape == (0, 4) and rec.labels.shape == (0,) and rec.image.shape[2] == 3


@pytest.mark.parametrize("sub", ["", "VOCdevkit", "VOCdevkit/VOC2007"])
def test_voc_accepts_the_devkit_parent_the_devkit_or_the_year_folder(voc_tree, sub):
  ds = datasets.load("voc07", pathlib.Path(voc_tree[0]) / sub)
  assert ds.root.name == "VOC2007" and ds.ids == list(VOC_IDS) and ds.name == "voc07"


@pytest.mark.parametrize("name", ["voc12_semantic", "voc12_seg"])   # the old name is an alias
def test_voc_segmentation_split_reads_class_masks(voc_tree, name):
  ds = datasets.load(name, voc_tree[0])
  assert ds.ids == [VOC_IDS[0]] and ds[0].class_mask.shape == (375, 500)
  assert datasets.kind(name) == "semantic" and ds.num_classes == len(ds.class_names) == 21


def test_voc_xml_is_one_based_inclusive(tmp_path):
  """xmin=1, xmax=W spans the whole image: [0, 0, W, H] (LOST's extract_gt_VOC)."""
  xml = tmp_path / "a.xml"
  xml.write_text("<annotation><size><width>50</width><height>40</height></size><object>"
                 "<name>cat</name><bndbox><xmin>1</xmin><ymin>1</ymin><xmax>50</xmax>"
                 "<ymax>40</ymax></bndbox></object><object><name>dog</name><difficult>1"
                 "</difficult><bndbox><xmin>10.0</xmin><ymin>5</ymin><xmax>20</xmax><ymax>15"
                 "</ymax></bndbox></object></annotation>")
  ann = voc.parse_annotation(xml)
  assert ann["boxes"].tolist() == [[0, 0, 50, 40], [9, 4, 20, 15]]
  assert ann["labels"].tolist() == [voc.CLASS_NAMES.index("cat"), voc.CLASS_NAMES.index("dog")]
  assert ann["difficult"].tolist() == [False, True] and ann["truncated"].tolist() == [False] * 2
  xml.write_text(xml.read_text().replace("<name>cat</name>", "<name>kitten</name>"))
  with pytest.raises(ValueError, match="unknown VOC class 'kitten'"):
    voc.parse_annotation(xml)


def test_voc_missing_folder_names_the_path_and_the_archive(tmp_path):
  with pytest.raises(datasets.MissingDataError, match=r"VOCtrainval_11-May-2012\.tar") as e:
    datasets.load("voc12", tmp_path)
  assert str(tmp_path) in str(e.value) and "\n" not in str(e.value)
  with pytest.raises(datasets.MissingDataError, match="not a folder"):
    datasets.load("voc12", tmp_path / "nowhere")


def test_voc_unknown_split_lists_the_splits_there(voc_tree):
  with pytest.raises(datasets.MissingDataError, match=r"split 'tset'.*\['train', 'trainval'\]"):
    datasets.load("voc12", voc_tree[0], split="tset")


def test_voc_missing_annotation_names_the_file(tmp_path):
  from conftest import write_voc
  write_voc(tmp_path, "2012")
  xml = tmp_path / "VOCdevkit/VOC2012/Annotations" / f"{VOC_IDS[1]}.xml"
  xml.unlink()
  ds = datasets.load("voc12", tmp_path)
  with pytest.raises(datasets.MissingDataError, match=f"{VOC_IDS[1]}.xml.*VOCtrainval"):
    ds[1]


def test_voc_rgb_label_png_is_refused(tmp_path):
  from conftest import write_voc
  write_voc(tmp_path, "2012")
  png = tmp_path / "VOCdevkit/VOC2012/SegmentationClass" / f"{VOC_IDS[0]}.png"
  Image.open(png).convert("RGB").save(png)
  with pytest.raises(ValueError, match="RGB image; label maps must be palette"):
    datasets.load("voc12", tmp_path)[0]


# ----------------------------------------------------------------------------- saliency


def test_ecssd_pairs_images_and_binary_masks(ecssd_tree):
  base, truth = ecssd_tree
  for folder in (base, base / "ECSSD"):
    ds = datasets.load("ecssd", folder)
    assert ds.ids == ["0001", "0002", "0003"]
  recs = list(ds)
  for r in recs:
    np.testing.assert_array_equal(r.mask, truth[r.id])
    assert r.image.shape[:2] == r.mask.shape and r.image.shape[2] == 3
  assert np.array_equal(recs[1].image[..., 0], recs[1].image[..., 1])  # greyscale JPEG
  assert not recs[2].mask.any()


def test_saliency_image_without_mask_is_reported(tmp_path):
  from conftest import write_ecssd
  write_ecssd(tmp_path)
  (tmp_path / "ECSSD/ground_truth_mask/0002.png").unlink()
  with pytest.raises(datasets.MissingDataError, match=r"1 of 3 ecssd.*0002\.png.*ground_truth"):
    datasets.load("ecssd", tmp_path)


@pytest.mark.parametrize("name,folders", [
    ("duts", ("DUTS-TE/DUTS-TE-Image", "DUTS-TE/DUTS-TE-Mask")),
    ("dut_omron", ("DUT-OMRON/DUT-OMRON-image", "DUT-OMRON/pixelwiseGT-new-PNG")),
])
def test_duts_and_dut_omron_layouts(tmp_path, name, folders):
  photo = samples.labelled_photo("voc")
  for f in folders:
    (tmp_path / f).mkdir(parents=True)
  Image.fromarray(photo.rgb).save(tmp_path / folders[0] / "ILSVRC2012_x.jpg")
  Image.fromarray(np.where(photo.foreground, 255, 0).astype(np.uint8)).save(
      tmp_path / folders[1] / "ILSVRC2012_x.png")
  rec = datasets.load(name, tmp_path)[0]
  np.testing.assert_array_equal(rec.mask, photo.foreground)
  (tmp_path / "empty").mkdir()
  with pytest.raises(datasets.MissingDataError, match=folders[0].split("/")[1]):
    datasets.load(name, tmp_path / "empty")


def _write_cub(base, soft: np.ndarray, rgb: np.ndarray):
  root = base / "CUB_200_2011"
  cls = "001.Black_footed_Albatross"
  (root / "images" / cls).mkdir(parents=True)
  (base / "segmentations" / cls).mkdir(parents=True)
  for i, stem in enumerate(("A_0001", "A_0002")):
    Image.fromarray(rgb).save(root / "images" / cls / f"{stem}.jpg", quality=95)
    Image.fromarray(soft).save(base / "segmentations" / cls / f"{stem}.png")
  (root / "images.txt").write_text(f"1 {cls}/A_0001.jpg\n2 {cls}/A_0002.jpg\n")
  (root / "train_test_split.txt").write_text("1 1\n2 0\n")


def test_cub_test_split_binarises_soft_masks_and_centre_crops(tmp_path):
  rgb = samples.labelled_photo("voc").rgb                      # 375 × 500
  soft = np.zeros(rgb.shape[:2], np.uint8)
  soft[:, 100:200] = 127                                       # below DSM's 0.5 cut
  soft[:, 200:300] = 128                                       # above it
  _write_cub(tmp_path, soft, rgb)
  ds = datasets.load("cub", tmp_path)
  assert ds.ids == ["001.Black_footed_Albatross/A_0002"]
  rec = ds[0]
  x0 = int(round((500 - 375) / 2.0))   # torchvision CenterCrop's offset: round(62.5) = 62
  expected = (soft > 127)[:, x0:x0 + 375]
  assert rec.image.shape == (375, 375, 3)
  np.testing.assert_array_equal(rec.mask, expected)
  full = saliency.CUB(tmp_path / "CUB_200_2011", "train", crop=False)[0]
  assert full.image.shape == (375, 500, 3) and full.mask[:, 200:300].all()
  assert not full.mask[:, 100:200].any()


def test_cub_without_segmentations_names_the_archive(tmp_path):
  rgb = samples.skimage_photo("coffee")
  _write_cub(tmp_path, np.zeros(rgb.shape[:2], np.uint8), rgb)
  import shutil
  shutil.rmtree(tmp_path / "segmentations")
  with pytest.raises(datasets.MissingDataError, match="segmentations.tgz"):
    datasets.load("cub", tmp_path)


def test_unknown_dataset_lists_the_known_ones(tmp_path):
  with pytest.raises(ValueError, match="unknown dataset 'voc2007'.*voc07"):
    datasets.load("voc2007", tmp_path)


def test_index_out_of_range(ecssd_tree):
  ds = datasets.load("ecssd", ecssd_tree[0])
  with pytest.raises(IndexError, match="index 3 out of range for 3"):
    ds[3]
  assert ds[-1].id == "0003" and [r.id for r in ds[0:2]] == ["0001", "0002"]


# ----------------------------------------------------------------------------- iteration


def test_iterate_shards_are_disjoint_and_cover_every_record():
  items = list(range(23))
  shards = [list(datasets.iterate(items, shuffle=True, seed=3, shard_index=i, shard_count=3))
            for i in range(3)]
  assert sorted(sum(shards, [])) == items
  assert all(len(s) in (7, 8) for s in shards)


def test_iterate_shuffle_is_seeded():
  items = list(range(50))
  a = list(datasets.iterate(items, shuffle=True, seed=1, shard_index=0, shard_count=1))
  b = list(datasets.iterate(items, shuffle=True, seed=1, shard_index=0, shard_count=1))
  c = list(datasets.iterate(items, shuffle=True, seed=2, shard_index=0, shard_count=1))
  plain = list(datasets.iterate(items, shard_index=0, shard_count=1))
  assert a == b and a != c and sorted(a) == items and plain == items
  two = list(datasets.iterate(items, num_epochs=2, shard_index=0, shard_count=1))
  assert two == items + items


def test_iterate_reads_records_and_defaults_to_this_process(ecssd_tree):
  ds = datasets.load("ecssd", ecssd_tree[0])
  ids = [r.id for r in datasets.iterate(ds)]    # one process: the whole split, in order
  assert ids == ds.ids
  with pytest.raises(ValueError, match=r"shard_index must be in \[0, 2\)"):
    list(datasets.iterate(ds, shard_index=2, shard_count=2))
