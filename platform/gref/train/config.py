"""Configs of the pre-training and Rerank-DPO jobs (YAML + key=value overrides)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from gref.baselines.config import BaselineConfig
from gref.model.config import ModelConfig
from gref.tracking import TrackingConfig


@dataclass
class OptimConfig:
    lr: float = 1e-3  # AdamW learning rate (paper: Adam 5e-6 at batch 1024 on 252M requests)
    weight_decay: float = 0.0  # AdamW's decoupled weight decay (0 = Adam)
    schedule: Literal["constant", "cosine"] = "constant"  # constant | cosine (linear warm-up, then cosine decay to 0 over all epochs)
    warmup: float = 0.05  # cosine: share of the steps spent warming up
    batch_size: int = 256  # per worker (paper: 1024)
    epochs: int = 6
    grad_clip: float = 1.0  # max grad norm; 0 = off


@dataclass
class ScalingConfig:
    num_workers: int = 1  # Ray Train workers; 0 = in the driver process (fast, but checkpoints
    #                       stay local: no resume after a failure -- use >= 1 for real runs)
    min_workers: int = 0  # > 0: elastic, between min_workers and num_workers as the cluster allows (a lost
    #                       node shrinks the group instead of stalling it); 0 = exactly num_workers
    placement: Literal["PACK", "SPREAD", "STRICT_SPREAD"] = "PACK"  # PACK | SPREAD (workers on different nodes where possible) | STRICT_SPREAD
    use_gpu: bool | None = None  # None = use GPUs when the cluster has them
    cpus_per_worker: float = 1.0
    threads_per_worker: int = 0  # torch intra-op threads; 0 = Ray's default (= cpus_per_worker)
    mixed_precision: Literal["auto", "bf16", "fp16", "off"] = "auto"  # auto | bf16 | fp16 | off (GPU only; CPU trains in fp32)
    materialize: bool = True  # read the train set into the object store once (else stream Parquet every epoch)
    read_cpus: float = 1.0  # CPUs per Ray Data read task; fractional lets concurrent Tune trials share 2 cores


@dataclass
class EvalConfig:
    world: str = ""  # simulated world dir (DIR/world) for the oracle; "" = no oracle metrics
    max_requests: int = 2000  # validation requests evaluated each epoch
    metric: str = "auto"  # model-selection metric: auto = oracle_clicks with a world, else est_clicks_dbn;
    #                       reward_clicks = post-training's reward's value of the greedy lists; losses and
    #                       NLLs (val_nll, val_loss, val_dpo_loss) are minimised, every other metric maximised
    batch_size: int = 512


@dataclass
class RunSettings:
    name: str = ""  # Ray Train run name; "" = <stage>-<timestamp>. Same name = resume.
    storage: str = "runs"  # Ray Train storage path (made absolute)
    max_failures: int = 1  # worker failures tolerated; training resumes from the last checkpoint
    seed: int = 0
    log_every_steps: int = 0  # also a progress line every N steps on rank 0 (0 = one line per epoch)
    fail_once_at_epoch: int = -1  # fault injection for tests: raise once after this epoch's checkpoint, before its MLflow log


@dataclass
class PretrainConfig:
    data: str = ""  # prepared data dir (jobs.prepare --out)
    # The defaults are the project's default recipe (configs/paper.yaml: the paper's; docs/results.md, ablations):
    model: ModelConfig = field(default_factory=lambda: ModelConfig(list_bias=True))  # + list-context logits (paper: off)
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(  # paper: Adam 5e-6, constant, batch 1024
        lr=3e-3, weight_decay=0.01, schedule="cosine", epochs=5))
    lambda1: float = 1.0  # weight of L_n (Eq. 11)
    lambda2: float = 0.0  # weight of L_o (Eq. 11; paper: 1): no measured gain here, 27 % of a CPU step; 0 with k = 1: Eq. 6
    lo_window: int = 0  # items per L_o window; 0 = the k heads; > k with k = 1: Eq. 10 on a single head
    target: Literal["exposure", "eq7"] = "exposure"  # exposure (the paper: the logged order) | eq7 (it re-sorted by Eq. 7, clicks first)
    scaling: ScalingConfig = field(default_factory=ScalingConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    run: RunSettings = field(default_factory=RunSettings)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)


@dataclass
class OnPolicySettings:
    samples: int = 8  # lists sampled from the policy per request (besides its greedy list)
    temperature: float = 1.0  # sampling temperature (1 = the policy's own distribution)
    search_list: bool = True  # add the reward's own beam-search list as a candidate
    min_gap: float = 0.0  # skip a request whose best and worst lists differ by less (reward units)


@dataclass
class DPOConfig:
    """Post-training (the paper's Rerank-DPO stage and the list-level options beyond it)."""

    data: str = ""  # prepared data dir
    init: str = ""  # pre-trained model: directory, models:/name@alias or runs:/...; "" = from scratch
    objective: Literal["distill", "dpo"] = "distill"  # distill: the NLL of the reward's best list (the default recipe) | dpo: a preference
    #                             loss on pairs (the paper's Rerank-DPO with pairs=logged; configs/paper.yaml)
    pairs: Literal["logged", "onpolicy"] = "logged"  # dpo: logged = Eq. 7 pairs of jobs.prepare (the paper) | onpolicy = the
    #                        reward's best vs worst of lists the policy produces (train.onpolicy)
    reward: str = ""  # distill / onpolicy: a list click model (jobs.reward; dir or URI), or "oracle" =
    #                   the simulated world's exact user model (a diagnostic reference, needs eval.world)
    search_width: int = 4  # beam width of the reward's list search (distill targets, onpolicy search list)
    search_horizon: int = 32  # distill: the reward's list is searched (and taught) for the first positions only --
    #                           where users look; a news log's lists of 200 would cost 200 search steps a request
    onpolicy: OnPolicySettings = field(default_factory=OnPolicySettings)
    beta: float = 0.1  # Eq. 8 temperature (paper: 0.1)
    loss_type: Literal["sigmoid", "ipo"] = "sigmoid"  # sigmoid = Eq. 8 | ipo
    label_smoothing: float = 0.0  # conservative DPO: the probability a preference label is wrong
    length_norm: bool = False  # log-probs per item (divided by the list length) before the margin
    sft_weight: float = 0.0  # + weight * NLL(winner) per item (RPO); 0 = the paper's pure DPO
    decode_heads: int = 0  # heads per pass in log pi(Y); 0 = all the model's heads (its decoding)
    model: ModelConfig = field(default_factory=ModelConfig)  # used only when init = "" (post-training from scratch)
    # a student with list-context terms but no value-pair tables gains them (zero at start) when its
    # reward has them (RewardConfig.candidates may pick such a reward): it can then place what goes together
    grow_value_pairs: bool = True
    # distillation's lr; Rerank-DPO wants ~2e-5 (larger ones over-optimise: docs/training.md)
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(lr=1e-3, epochs=2))
    scaling: ScalingConfig = field(default_factory=ScalingConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    run: RunSettings = field(default_factory=RunSettings)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    register: bool = True  # register the final model in the MLflow registry

    @property
    def needs_reward(self) -> bool:
        """Distillation and on-policy pairs score lists with a list-level reward; Rerank-DPO on
        logged pairs does not."""
        return self.objective == "distill" or self.pairs == "onpolicy"


@dataclass
class BaselineTrainConfig:
    data: str = ""  # prepared data dir; trains on sequences/train like pre-training
    model: BaselineConfig = field(default_factory=BaselineConfig)  # model.kind picks the baseline
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(epochs=3))
    scaling: ScalingConfig = field(default_factory=ScalingConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)  # best epoch by the same metric as GReF
    run: RunSettings = field(default_factory=RunSettings)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    register: bool = True  # register the model, with alias champion, as registered_model
    registered_model: str = ""  # "" = gref-<kind> (e.g. gref-nar4rec: the A/B test's B arm)

    def registry_name(self) -> str:
        return self.registered_model or f"gref-{self.model.kind.replace('_', '-')}"


@dataclass
class RewardConfig(BaselineTrainConfig):
    """The list-wise reward of post-training (jobs.reward): a list click model
    (gref.baselines.clickmodel) fitted to the logged clicks, anchored on a pre-trained GReF."""

    init: str = ""  # the pre-trained GReF whose first-step logits anchor a(i) (dir or URI); "" = a DCN over the features
    # the structured click model + a 4-network list-context ensemble searched pessimistically (issue 33)
    model: BaselineConfig = field(default_factory=lambda: BaselineConfig(kind="clickmodel", context_members=4))
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(lr=3e-3, epochs=2))
    eval: EvalConfig = field(default_factory=lambda: EvalConfig(metric="val_loss"))  # held-out click NLL
    # other rewards fitted beside this one (dotted overrides of this config); one teaches instead only if
    # its validation click NLL is lower beyond chance (gref.recipe.preferred_reward). The default: the same
    # reward with effects between attribute values (rank 8), so the data decide whether a log has them
    # (issue 33: docs/results-families.md); [] fits this reward alone
    candidates: list[dict] = field(default_factory=lambda: [{"model.value_pairs": 8}])
    register: bool = False  # a training artifact of post-training, not a serving candidate
    registered_model: str = "gref-clickmodel"
