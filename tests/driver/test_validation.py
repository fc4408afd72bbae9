"""Validation while training, the parts that need no cluster: its config rules, which result is best,
and pruning that leaves the best checkpoint and those still to be evaluated."""

from __future__ import annotations

import json

import pytest

from raytf.config import config_from_dict
from raytf.driver.checkpoints import FORMAT, MANIFEST, complete, prune
from raytf.driver.validation import Evaluation, better
from raytf.errors import ConfigError

BASE = {"model": "m:f", "loss": "mse", "metrics": ["accuracy"], "data": {"train": "a:b", "eval": "a:c"}}


def test_the_eval_schedule_in_steps_or_epochs():
    assert config_from_dict({**BASE, "eval": {"every_steps": 10}}).eval_every_steps() == 10
    by_epochs = config_from_dict({**BASE, "epochs": 3, "steps_per_epoch": 7, "steps": 21, "eval": {"every_epochs": 2}})
    assert by_epochs.eval_every_steps() == 14
    assert config_from_dict(BASE).eval_every_steps() is None


@pytest.mark.parametrize("changes, key, fix", [
    ({"eval": {"every_steps": 10, "every_epochs": 1}}, "eval.every_epochs", "Keep one"),
    ({"eval": {"every_epochs": 1}}, "eval.every_epochs", "Set epochs"),
    ({"eval": {"every_steps": 5}, "data": {"train": "a:b"}}, "eval", "Set data.eval"),
    ({"checkpoint": {"keep_best": "accuracy"}}, "checkpoint.keep_best", "Schedule it"),
    ({"eval": {"every_steps": 5}, "checkpoint": {"keep_best": "acuracy"}}, "checkpoint.keep_best", "Did you mean 'accuracy'?"),
])
def test_bad_eval_settings_name_the_key_and_the_fix(changes, key, fix):
    with pytest.raises(ConfigError, match=rf"^<config>: {key}: ") as err:
        config_from_dict({**BASE, **changes})
    assert fix in err.value.fix


def test_lower_is_better_for_losses_and_errors_higher_for_the_rest():
    assert better("loss", 0.1, 0.2) and not better("loss", 0.3, 0.2)
    assert better("mean_absolute_error", 1.0, 2.0) and better("accuracy", 0.9, 0.8) and not better("auc", 0.5, 0.6)


def test_the_progress_line_shows_the_kept_metric_or_the_first_one():
    evaluation = Evaluation(79, 1, {"loss": 0.25, "accuracy": 0.875})
    assert evaluation.brief("loss") == "eval loss 0.2500 @79"
    assert evaluation.brief(None) == "eval accuracy 0.8750 @79"
    assert evaluation.line() == "eval at epoch 1, step 79: accuracy 0.8750, loss 0.2500"


def test_pruning_leaves_the_newest_and_the_steps_asked_for(tmp_path):
    for step in (10, 20, 30, 40):
        directory = tmp_path / f"step-{step:08d}"
        directory.mkdir()
        (directory / MANIFEST).write_text(json.dumps({"format": FORMAT, "step": step}))
    prune(tmp_path, keep=1, also={20})
    assert [c.step for c in complete(tmp_path)] == [20, 40]
    prune(tmp_path, keep=1)
    assert [c.step for c in complete(tmp_path)] == [40]
