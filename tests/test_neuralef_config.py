"""neuralef.config: the one reader and checker of the NeuralEF training config, run once."""

import jax
import pytest

from experiments.configs import neuralef as configs
from spectral_jax.datasets import transforms
from spectral_jax.neuralef import config as config_lib
from spectral_jax.neuralef import train as train_lib
from test_neuralef_train import synthetic_features


def test_check_returns_the_typed_crops_of_each_path():
  config = configs.get_config("test")
  checked = config_lib.check(config)
  assert checked.config is config and checked.overrides is None
  assert checked.augment == transforms.FixedViews(image_size=56, views_per_image=2)
  config.data.dataset = "folder"
  checked = config_lib.check(config)
  assert isinstance(checked.augment, transforms.TrainAugment)
  assert checked.augment.crop_size == 56 and tuple(checked.augment.scale) == (64, 64)


@pytest.mark.parametrize("text", ["depth=1,width=8", '{"depth": 1, "width": 8}'])
def test_backbone_overrides_both_syntaxes(text):
  config = configs.get_config("test")
  config.data.dataset, config.backbone.weights = "folder", "random"
  config.backbone.overrides = text
  assert config_lib.check(config).overrides == {"depth": 1, "width": 8}
  assert config.backbone.overrides == text   # stored as given


@pytest.mark.parametrize("change, match", [
    ({"backbone.weights": ""}, "needs backbone.weights=random"),
    ({"data.dataset": ""}, "data.dataset runs only"),
    ({"backbone.overrides": "depth"}, "is not key=value"),
    ({"backbone.overrides": "[1, 2]"}, "is not key=value"),
    ({"backbone.overrides": '{"depth": 1'}, "is not a JSON object"),
])
def test_backbone_overrides_errors(change, match):
  config = configs.get_config("test")
  config.data.dataset, config.backbone.weights = "folder", "random"
  config.backbone.overrides = "depth=1"
  for field, value in change.items():
    section, name = field.split(".")
    config[section][name] = value
  with pytest.raises(ValueError, match=match):
    config_lib.check(config)


@pytest.mark.parametrize("field, value, match", [
    ("train.batch_size", 0, "train.batch_size must be ≥ 1"),
    ("graph.form", "csr", "graph.form must be one of"),
    ("graph.global_form", "allgather", "graph.global_form must be one of"),
    ("data.cache_dtype", "int8", "data.cache_dtype"),
    ("data.min_scale", 0.5, "min_scale"),
    ("optim.final_learning_rate", 1.0, "optim.final_learning_rate"),
    ("loss.objective", "eigengame", "loss.objective must be one of segmentor, neuralef, "
     "nested_lora; got 'eigengame'"),
    ("psi.head", "cayley", "psi.head must be one of householder, qr; got 'cayley'"),
])
def test_check_names_the_bad_field(field, value, match):
  config = configs.get_config("test")
  section, name = field.split(".")
  config[section][name] = value
  with pytest.raises(ValueError, match=match):
    config_lib.check(config)


@pytest.mark.parametrize("scope, global_form, refused", [
    ("device", "ring", True), ("device", "gather", False), ("global", "ring", False),
    ("group", "ring", False)])
def test_a_ring_needs_a_kernel_that_spans_devices(scope, global_form, refused):
  """graph.global_form = "ring" passes blocks between devices: with the device scope there are
  none to pass, so the pair is refused by name instead of silently ignored."""
  config = configs.get_config("test")
  config.graph.scope, config.graph.global_form, config.graph.group_size = scope, global_form, 1
  if refused:
    with pytest.raises(ValueError, match="graph.global_form must be 'gather' with graph.scope "
                       "'device'"):
      config_lib.check(config)
  else:
    config_lib.check(config)


def test_the_batch_must_fit_the_tokens_and_devices():
  config = configs.get_config("test")   # batch 8, graph.k 8, psi.k 8
  with pytest.raises(ValueError, match="graph.k = 8 neighbours need more than the 8 tokens"):
    config_lib.check(config, tokens=8)
  with pytest.raises(ValueError, match="multiple of the 3 devices"):
    config_lib.check(config, devices=3)
  with pytest.raises(ValueError, match="≥ the backbone's 64-px patch"):
    config_lib.check(config, patch_size=64)


def test_train_checks_a_raw_config_once_and_a_checked_one_never(tmp_path, monkeypatch):
  calls = []
  real = config_lib.check
  monkeypatch.setattr(config_lib, "check", lambda *a, **k: calls.append(k) or real(*a, **k))
  config = configs.get_config("test")
  config.train.num_steps = 1
  config.log.tensorboard = False
  features = synthetic_features()
  train_lib.train(config, tmp_path / "raw", features)
  assert calls == [{"tokens": 8 * 16, "devices": jax.device_count()}]
  checked = real(config, tokens=8 * 16, devices=jax.device_count())
  train_lib.train(checked, tmp_path / "checked", features)
  assert len(calls) == 1
