"""Configs of the pre-training and Rerank-DPO jobs (YAML + key=value overrides)."""

from __future__ import annotations

from dataclasses import dataclass, field

from gref.baselines.config import BaselineConfig
from gref.model.config import ModelConfig
from gref.tracking import TrackingConfig


@dataclass
class OptimConfig:
    lr: float = 1e-3  # Adam learning rate (paper: 5e-6 at batch 1024 on 252M requests)
    weight_decay: float = 0.0
    batch_size: int = 256  # per worker (paper: 1024)
    epochs: int = 6
    grad_clip: float = 1.0  # max grad norm; 0 = off


@dataclass
class ScalingConfig:
    num_workers: int = 1  # Ray Train workers; 0 = in the driver process (fast, but checkpoints
    #                       stay local: no resume after a failure -- use >= 1 for real runs)
    use_gpu: bool | None = None  # None = use GPUs when the cluster has them
    cpus_per_worker: float = 1.0
    threads_per_worker: int = 0  # torch intra-op threads; 0 = Ray's default (= cpus_per_worker)
    mixed_precision: str = "auto"  # auto | bf16 | fp16 | off (GPU only; CPU trains in fp32)
    materialize: bool = True  # read the train set into the object store once (else stream Parquet every epoch)
    read_cpus: float = 1.0  # CPUs per Ray Data read task; fractional lets concurrent Tune trials share 2 cores


@dataclass
class EvalConfig:
    world: str = ""  # simulated world dir (DIR/world) for the oracle; "" = no oracle metrics
    max_requests: int = 2000  # validation requests evaluated each epoch
    metric: str = "auto"  # model-selection metric: auto = oracle_clicks with a world, else ndcg
    batch_size: int = 512


@dataclass
class RunSettings:
    name: str = ""  # Ray Train run name; "" = <stage>-<timestamp>. Same name = resume.
    storage: str = "runs"  # Ray Train storage path (made absolute)
    max_failures: int = 1  # worker failures tolerated; training resumes from the last checkpoint
    seed: int = 0
    log_every_steps: int = 50  # progress line every N steps on rank 0 (0 = per epoch only)
    fail_once_at_epoch: int = -1  # fault injection for tests: raise once after this epoch's checkpoint


@dataclass
class PretrainConfig:
    data: str = ""  # prepared data dir (jobs.prepare --out)
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    lambda1: float = 1.0  # weight of L_n (Eq. 11)
    lambda2: float = 1.0  # weight of L_o (Eq. 11); 0 with model.omtp_heads=1 = plain Eq. 6
    scaling: ScalingConfig = field(default_factory=ScalingConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    run: RunSettings = field(default_factory=RunSettings)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)


@dataclass
class DPOConfig:
    data: str = ""  # prepared data dir; trains on pairs/train
    init: str = ""  # pre-trained model: directory, models:/name@alias or runs:/...; "" = from scratch
    beta: float = 0.1  # Eq. 8 temperature (paper: 0.1)
    sft_weight: float = 0.0  # + weight * NLL(winner) per item (RPO); 0 = the paper's pure DPO
    decode_heads: int = 0  # heads per pass in log pi(Y); 0 = all the model's heads (its decoding)
    model: ModelConfig = field(default_factory=ModelConfig)  # used only when init = ""
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(lr=2e-5, epochs=2))  # small lr: larger ones over-optimise (README)
    scaling: ScalingConfig = field(default_factory=ScalingConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    run: RunSettings = field(default_factory=RunSettings)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    register: bool = True  # register the final model in the MLflow registry


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
