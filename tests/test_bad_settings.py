"""The settings rows of the bad-input table, run in-process: each sets ONE bad value (or a
bad pair) in a command's config and runs the check that command runs first, before its
backbone loads or anything is written (`segment.check_config`, the first call of
`experiments.segment.run`; `neuralef.config.check` inside `_cli.usage_errors`, as
`experiments.train_neuralef.validated_config`), inside the commands' own error boundary
(`_cli.error_boundary`). Each row asserts exit status 2, exactly one ``error: ...`` line on
stderr naming the field (no traceback), and that nothing was written (the output folder the
config names does not exist). test_bad_inputs.py runs the commands themselves as subprocesses
(its ``seg-*``/``train-*`` rows): the same checks, wired to the flags. In-process, a row costs
milliseconds instead of the 2-4 s of a Python start-up."""

import pytest

from experiments import segment
from experiments.configs import neuralef as neuralef_configs
from experiments.configs import segment as segment_configs
from spectral_jax import _cli
from spectral_jax.neuralef import config as config_lib

NAN, INF = float("nan"), float("inf")

# (field(s) → bad value, a fragment of the one error line). Rows of test_bad_inputs.CASES are
# not repeated here (k=1, image_weight=nan, connectivity=6, batch_size=0, image_size=-1 and
# huge, panel_height huge, viz.num_eigenvectors 0 and > K-1, crf.w1=nan, crf.alpha=0, ...).
SEGMENT = [
    ({"dsm.features": "pixels"}, "features must be one of"),
    ({"dsm.image_weight": -0.5}, "image_weight (λ) must be a finite number ≥ 0; got -0.5"),
    ({"dsm.image_weight": INF}, "image_weight (λ) must be a finite number ≥ 0; got inf"),
    ({"dsm.method": "arpack"}, "method must be 'auto', 'eigh' or 'lobpcg'; got 'arpack'"),
    ({"dsm.segment_assign": "spectral"}, "segment_assign must be one of"),
    ({"dsm.segment_assign": "cluster_qr", "dsm.adaptive_segments": True},
     "segment_assign='cluster_qr' (the default) uses"),
    ({"dsm.discovery": "tokencut+lost"}, "discovery must be one of"),
    ({"dsm.solver_tol": 1.0}, "solver_tol must lie in [0, 1)"),
    ({"dsm.solver_tol": -0.1}, "solver_tol must lie in [0, 1)"),
    ({"dsm.solver_tol": NAN}, "solver_tol must lie in [0, 1)"),
    ({"dsm.foreground": "biggest"}, "foreground must be one of"),
    ({"dsm.num_segments": 1}, "the number of segments must be at least 2"),
    ({"dsm.segment_eigenvectors": -1}, "segment_eigenvectors must lie in [0, num_eigenvectors"),
    ({"dsm.segment_eigenvectors": 6}, "segment_eigenvectors must lie in [0, num_eigenvectors"),
    ({"dsm.adaptive_segments": True, "dsm.num_eigenvectors": 2},
     "adaptive_segments needs num_eigenvectors ≥ 3"),
    ({"dsm.discovery": "nope"}, "discovery must be one of"),
    ({"dsm.tau": 2.0}, "tau must be a finite cosine threshold ≤ 1"),
    ({"dsm.tau": NAN}, "tau must be a finite cosine threshold ≤ 1"),
    ({"dsm.tau_quantile": 1.0}, "tau_quantile must lie in [0, 1)"),
    ({"dsm.tau_quantile": -0.1}, "tau_quantile must lie in [0, 1)"),
    ({"dsm.graph_eps": 0.0}, "graph_eps must lie in (0, 1)"),
    ({"dsm.graph_eps": 1.0}, "graph_eps must lie in (0, 1)"),
    ({"dsm.max_objects": 0}, "max_objects must be ≥ 1"),
    ({"dsm.region_border_share": 1.5}, "region_border_share must lie in [0, 1]"),
    ({"dsm.region_border_share": -0.1}, "region_border_share must lie in [0, 1]"),
    ({"dsm.upsample": "cubic"}, "dsm.upsample must be one of"),
    ({"bucket_step": 0}, "batch_size, bucket_step and prefetch must be ≥ 1"),
    ({"prefetch": 0}, "batch_size, bucket_step and prefetch must be ≥ 1"),
    ({"viz.panel_height": 0}, "viz.panel_height and viz.num_eigenvectors must be ≥ 1"),
    ({"crf.enabled": True, "crf.w2": -1.0}, "crf.w2 must be a finite number ≥ 0; got -1.0"),
    ({"crf.enabled": True, "crf.w1": INF}, "crf.w1 must be a finite number ≥ 0; got inf"),
    ({"crf.enabled": True, "crf.iterations": 0}, "crf.iterations must be an int ≥ 1; got 0"),
    ({"crf.enabled": True, "crf.beta": 0.0}, "crf.beta must be a finite number > 0; got 0.0"),
    ({"crf.enabled": True, "crf.gamma": NAN}, "crf.gamma must be a finite number > 0; got nan"),
    ({"crf.enabled": True, "bilateral.enabled": True}, "choose one mask refinement"),
    ({"bilateral.enabled": True, "bilateral.sigma_spatial": 0.0},
     "bilateral sigma_spatial must be a positive number; got 0.0"),
    ({"bilateral.enabled": True, "bilateral.sigma_luma": NAN},
     "bilateral sigma_luma must be a positive number; got nan"),
    ({"bilateral.enabled": True, "bilateral.lam": -1.0},
     "bilateral lam must be a finite number ≥ 0; got -1.0"),
    ({"bilateral.enabled": True, "bilateral.confidence": 0.0},
     "bilateral confidence must lie in (0, 1]; got 0.0"),
    ({"bilateral.enabled": True, "bilateral.cg_maxiter": 0},
     "bilateral cg_maxiter must be an int ≥ 1; got 0"),
    ({"bilateral.enabled": True, "bilateral.a_diag_min": 0.0},
     "bilateral cg_tol must be ≥ 0 and a_diag_min > 0"),
    ({"backbone.weights": "offline", "backbone.overrides": "depth=1"},
     "backbone.overrides only applies to weights='random'"),
    ({"backbone.overrides": "patch_size=0"}, "bad backbone settings 'patch_size=0'"),
    ({"images": "/photos", "samples": "voc"}, "cannot be combined with images"),
]


def _ids(rows):
  return ["+".join(f"{k}={v}" for k, v in fields.items()) for fields, _ in rows]


def assert_one_usage_line(capsys, status, fragment):
  err = capsys.readouterr().err
  assert status == _cli.EXIT_USAGE, err
  assert "Traceback" not in err
  lines = err.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith("error: "), err
  assert fragment in lines[0], lines[0]


@pytest.mark.parametrize("fields, fragment", SEGMENT, ids=_ids(SEGMENT))
def test_segment_setting_is_refused_before_any_work(capsys, tmp_path, monkeypatch, fields,
                                                    fragment):
  def past_the_checks(*args):
    raise AssertionError(f"{fields} passed the checks")
  monkeypatch.setattr(segment, "collect_sources", past_the_checks)   # the first read of input
  cfg = segment_configs.get_config("test")
  cfg.out = str(tmp_path / "out")
  for name, value in fields.items():
    _cli.set_field(cfg, name, value)
  status = _cli.error_boundary(lambda argv: segment.run(cfg), ["segment"])
  assert_one_usage_line(capsys, status, fragment)
  assert not (tmp_path / "out").exists()


# train_neuralef's config (the test preset; ViT-S/14 patches): not repeated from CASES.
TRAIN = [
    ({"seed": -1}, "seed must be an integer ≥ 0; got -1"),
    ({"eval.image_size": 0}, "eval.image_size must be an integer ≥ 1"),
    ({"eval.image_size": -56}, "eval.image_size must be an integer ≥ 1"),
    ({"graph.distance_weights": (NAN, 0.1)},
     "graph.distance_weights must be a tuple of finite numbers ≥ 0 (one per graph.n_neighbors); "
     "got (nan, 0.1)"),
    ({"graph.distance_weights": (-1.0, 0.1)}, "graph.distance_weights must be a tuple of finite"),
    ({"graph.distance_weights": (INF, 0.1)}, "graph.distance_weights must be a tuple of finite"),
    ({"graph.n_neighbors": (4, 2, 1)}, "graph.n_neighbors must be ≥ 1 each, as many as"),
    ({"graph.n_neighbors": (0, 2)}, "graph.n_neighbors must be ≥ 1 each"),
    ({"train.num_steps": 0}, "train.num_steps must be ≥ 1; got 0"),
    ({"optim.final_learning_rate": 1.0}, "optim.final_learning_rate must be in (0, "),
    ({"optim.final_learning_rate": 0.0}, "optim.final_learning_rate must be in (0, "),
    ({"graph.k": 0}, "graph.k must be ≥ 1; got 0"),
    ({"graph.alpha": NAN}, "graph.alpha must be a finite number ≥ 0; got nan"),
    ({"graph.alpha": -1.0}, "graph.alpha must be a finite number ≥ 0; got -1.0"),
    ({"graph.block_size": 0}, "graph.block_size must be None or ≥ 1; got 0"),
    ({"psi.k": 0}, "psi.k must be ≥ 1; got 0"),
    ({"psi.num_heads": 0}, "psi.num_heads must be ≥ 1; got 0"),
    ({"psi.num_blocks": 0}, "psi.num_blocks must be ≥ 1; got 0"),
    ({"loss.beta_times_k": 0.0}, "loss.beta_times_k must be a finite number > 0"),
    ({"loss.t": NAN}, "loss.t must be a finite number > 0; got nan"),
    ({"loss.tau_min": 10.0}, "loss.tau_min must be ≤ loss.tau_max"),
    ({"loss.eig_momentum": 1.0}, "loss.eig_momentum must be in [0, 1); got 1.0"),
    ({"checkpoint.every": 0}, "checkpoint.every must be ≥ 1; got 0"),
    ({"checkpoint.keep": 0}, "checkpoint.keep must be ≥ 1; got 0"),
    ({"log.every": 0}, "log.every must be ≥ 1; got 0"),
    ({"data.image_size": 8}, "data.image_size must be ≥ the backbone's 14-px patch"),
    ({"psi.k": 100000}, "psi.k = 100000 eigenfunctions exceed the"),
]


@pytest.mark.parametrize("fields, fragment", TRAIN, ids=_ids(TRAIN))
def test_training_setting_is_refused_before_any_work(capsys, tmp_path, fields, fragment):
  config = neuralef_configs.get_config("test")
  for name, value in fields.items():
    _cli.set_field(config, name, value)

  def validated(argv):
    with _cli.usage_errors():
      config_lib.check(config, patch_size=14, devices=1)

  assert_one_usage_line(capsys, _cli.error_boundary(validated, ["train_neuralef"]), fragment)
  assert not list(tmp_path.iterdir())
