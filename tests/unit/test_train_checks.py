"""gref.train without a Ray cluster: the SIGTERM handler, the epochs MLflow receives, and the
scaling checks that run before any work."""

from __future__ import annotations

import pytest

from gref.config import load_config
from gref.train.config import PretrainConfig


@pytest.fixture
def mlflow_uri(tmp_path):
    return f"sqlite:///{tmp_path / 'mlflow.db'}"


def test_the_sigterm_handler_is_not_swallowed_by_library_code():
    """The driver's SIGTERM handler raises where the main thread is; Ray Data's iteration stats once
    caught it with ``except Exception`` and training ran on to its last epoch (exit 0, FINISHED)."""
    import os
    import signal
    import time

    from gref.train.runner import _raise_stopped

    def library_call():  # what Ray's stats update does around its remote call
        try:
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(1)  # the handler runs here, in this frame
        except Exception:
            return "swallowed"

    previous = signal.signal(signal.SIGTERM, _raise_stopped)
    try:
        with pytest.raises(BaseException, match="signal 15"):
            library_call()
    finally:
        signal.signal(signal.SIGTERM, previous)


def test_epochs_reach_mlflow_from_the_controllers_accepted_reports(mlflow_uri):
    """EpochsToMlflow (the Train controller's callback): rank 0's metrics of a report every worker
    made, at step = epoch; a report without an epoch logs nothing. Rank 0 logging on its own
    could log an epoch whose other reports never came (benchmarks.multinode: step 0 twice)."""
    from mlflow import MlflowClient

    from gref.train.ray_loop import EpochsToMlflow

    client = MlflowClient(mlflow_uri)
    run_id = client.create_run(client.create_experiment("callback")).info.run_id
    callback = EpochsToMlflow({"uri": mlflow_uri, "run_id": run_id})
    callback.after_report(None, [{"epoch": 0, "train_loss": 1.5, "note": "text"}, {"epoch": 0, "train_loss": 9.0}], None)
    callback.after_report(None, [{"train_loss": 7.0}], None)
    history = client.get_metric_history(run_id, "train_loss")
    assert [(m.step, m.value) for m in history] == [(0, 1.5)]


def test_scaling_placement_and_elastic_bounds_are_checked_before_any_work():
    from gref.config import ConfigError
    from gref.train.runner import _worker_count, check_config

    cfg = load_config(PretrainConfig, None, ["scaling.num_workers=2", "scaling.min_workers=1",
                                             "scaling.placement=SPREAD"])
    check_config("pretrain", cfg, gref_model=True)
    assert _worker_count(cfg.scaling) == (1, 2)  # Ray Train's elastic (min, max)
    assert _worker_count(load_config(PretrainConfig, None, ["scaling.num_workers=2"]).scaling) == 2
    for bad, says in ((["scaling.placement=ANYWHERE"], "placement"), (["scaling.min_workers=3"], "min_workers")):
        with pytest.raises(ConfigError, match=says):
            check_config("pretrain", load_config(PretrainConfig, None, ["scaling.num_workers=2", *bad]),
                         gref_model=True)


def test_post_training_that_needs_a_reward_without_one_is_refused_before_any_work():
    from gref.config import ConfigError
    from gref.recipe import post_train
    from gref.train.config import DPOConfig

    assert DPOConfig().needs_reward and DPOConfig(objective="dpo", pairs="onpolicy").needs_reward
    assert not DPOConfig(objective="dpo", pairs="logged").needs_reward
    with pytest.raises(ConfigError, match="objective=distill pairs=logged needs a reward"):
        post_train(DPOConfig(), None, None)


def test_reward_candidates_are_named_checked_and_chosen_by_held_out_click_nll():
    """train_reward's choice among rewards: every variant's config and run name, a wrong key refused
    before any fit, and a candidate teaches only when its per-request held-out click NLL beats the
    configured reward's beyond chance (paired 95 % t interval above 0), the lowest such one."""
    from gref.config import ConfigError
    from gref.recipe import preferred_reward, reward_variants, variant_name
    from gref.train.config import RewardConfig

    cfg = RewardConfig(candidates=[{"model.value_pairs": 8}, {"model": {"value_pairs": 2, "context_members": 0}}])
    variants = reward_variants(cfg)
    assert [ov for ov, _ in variants] == [{}, *cfg.candidates]
    assert [v.model.value_pairs for _, v in variants] == [0, 8, 2]
    assert [v.model.context_members for _, v in variants] == [4, 4, 0]
    assert all(v.candidates == [] for _, v in variants)
    assert [variant_name("reward-pre", ov) for ov, _ in variants] == [
        "reward-pre", "reward-pre-value_pairs8", "reward-pre-context_members0-value_pairs2"]
    # the default recipe: the configured reward and its value-pair twin (issue 33); [] fits one
    assert [ov for ov, _ in reward_variants(RewardConfig())] == [{}, {"model.value_pairs": 8}]
    assert len(reward_variants(RewardConfig(candidates=[]))) == 1
    with pytest.raises(ConfigError, match="model.value_pair"):
        reward_variants(RewardConfig(candidates=[{"model.value_pair": 8}]))
    with pytest.raises(ConfigError, match="val_loss"):
        reward_variants(load_config(RewardConfig, overrides=["eval.metric=oracle_clicks"]))

    # per-request held-out NLL of the configured reward (first) and two candidates, on 4 requests
    base = [1.0, 2.0, 3.0, 4.0]
    assert preferred_reward([base, [0.9, 1.9, 2.9, 3.9]]) == 1  # better on every request: the interval is [0.1, 0.1]
    # gains [0.3, -0.1, 0.2, 0.0]: mean 0.1, sd 0.1826, t(0.975, 3) = 3.182 -> half-width 0.29 > 0.1: chance
    assert preferred_reward([base, [0.7, 2.1, 2.8, 4.0]]) == 0
    assert preferred_reward([base, [1.0, 2.0, 3.0, 4.0]]) == 0  # a tie keeps the configured reward
    assert preferred_reward([base, [0.9, 1.9, 2.9, 3.9], [0.5, 1.5, 2.5, 3.5]]) == 2  # both beat it: the lower NLL
    assert preferred_reward([base, [0.5, 1.5, 2.5, 3.5], [0.9, 1.9, 2.9, 3.9]]) == 1
    assert preferred_reward([base, [0.7, 2.1, 2.8, 4.0], [0.95, 1.95, 2.95, 3.95]]) == 2  # the better mean is chance


def test_a_student_gains_value_pair_tables_only_when_its_reward_has_them():
    """Post-training's initial model: a student with list-context terms and a value-pair reward
    gets zero-effect tables of the reward's rank (unless grow_value_pairs=false); otherwise it is
    the pre-trained model as it was."""
    import torch

    from gref.model import GenReranker, ModelConfig
    from gref.train.config import DPOConfig
    from gref.train.ray_loop import _initial_model

    def init(**kw):
        torch.manual_seed(0)
        model = GenReranker(ModelConfig(num_features=2, cat_sizes=[5, 4], d_model=16, n_heads=2, enc_layers=1,
                                         dec_layers=1, omtp_heads=2, **kw))
        return {"init_state": model.state_dict(), "init_model_cfg": model.cfg.__dict__}

    def reward(rank):
        return {"reward_model_cfg": {"kind": "clickmodel", "value_pairs": rank}}

    grown = _initial_model("dpo", DPOConfig(), {}, init(list_bias=True) | reward(8))
    assert grown.cfg.value_pairs == 8 and grown.list_bias.pair_adjacency is not None
    assert _initial_model("dpo", DPOConfig(), {}, init(list_bias=True) | reward(0)).cfg.value_pairs == 0
    assert _initial_model("dpo", DPOConfig(grow_value_pairs=False), {}, init(list_bias=True) | reward(8)).cfg.value_pairs == 0
    assert _initial_model("dpo", DPOConfig(), {}, init(list_bias=False) | reward(8)).cfg.value_pairs == 0  # nowhere to put them
    assert _initial_model("dpo", DPOConfig(), {}, init(list_bias=True, value_pairs=3) | reward(8)).cfg.value_pairs == 3
