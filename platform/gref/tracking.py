"""MLflow tracking for the jobs: runs, params, metrics, the model artifact and the registry.

Embedded default: ``sqlite:///<cwd>/mlflow.db`` (absolute, because Ray workers chdir).
Any other store via $MLFLOW_TRACKING_URI or the job config's ``tracking.uri``.
A registered model version is a pyfunc whose artifact ``reranker/`` holds model.pt +
model.json + features.json; ``load_reranker_uri`` rebuilds it (GenReranker or a baseline).
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REGISTERED_MODEL = "gref-reranker"


@dataclass
class TrackingConfig:
    uri: str = ""  # MLflow tracking URI; "" -> $MLFLOW_TRACKING_URI or sqlite:///<cwd>/mlflow.db
    experiment: str = "gref"  # MLflow experiment name
    registered_model: str = REGISTERED_MODEL  # registry name the DPO job registers into


def tracking_uri(cfg: TrackingConfig) -> str:
    """The store's URI; a relative sqlite path is made absolute (Train workers run elsewhere)."""
    uri = cfg.uri or os.environ.get("MLFLOW_TRACKING_URI", "")
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        uri = f"sqlite:///{Path(uri[len('sqlite:///'):]).resolve()}"
    return uri or f"sqlite:///{Path.cwd().resolve() / 'mlflow.db'}"


def artifact_location(uri: str) -> str | None:
    """Where a new experiment of a sqlite store keeps its artifacts: ``mlruns/`` beside the
    database file (MLflow's own default is ``./mlruns`` of whatever directory the process runs in,
    so a store in a temporary directory would leave its models in the caller's). None for any
    other store: its server decides."""
    if not uri.startswith("sqlite:///"):
        return None
    return (Path(uri[len("sqlite:///"):]).parent / "mlruns").as_uri()


def setup(cfg: TrackingConfig) -> str:
    """Point MLflow at the store, create the experiment once (before any worker logs), return
    the experiment id."""
    import mlflow

    logging.getLogger("mlflow.store.db.utils").setLevel(logging.WARNING)  # "Creating initial ... tables"
    uri = tracking_uri(cfg)
    mlflow.set_tracking_uri(uri)
    exp = mlflow.get_experiment_by_name(cfg.experiment)
    return exp.experiment_id if exp else mlflow.create_experiment(cfg.experiment, artifact_location(uri))


def resumable_run(id_file: str | Path, run_name: str, **start_kwargs: Any):
    """The MLflow run whose id ``id_file`` holds, reopened; else a new run (``start_kwargs`` go to
    ``mlflow.start_run``) whose id is written there. A job re-run under the same name thus continues
    its MLflow run. Returns (active run, resumed)."""
    import mlflow

    id_file = Path(id_file)
    if id_file.exists():
        return mlflow.start_run(run_id=id_file.read_text().strip(), nested=start_kwargs.get("nested", False)), True
    run = mlflow.start_run(run_name=run_name, **start_kwargs)
    id_file.write_text(run.info.run_id)
    return run, False


def data_lineage(data_dir: str | Path) -> dict[str, Any]:
    """Input path + a hash of the prepared data's summary (counts, config, feature spec)."""
    data_dir = Path(data_dir).resolve()
    summary_path = data_dir / "summary.json"
    text = summary_path.read_text() if summary_path.exists() else ""
    features = (data_dir / "features.json").read_bytes() if (data_dir / "features.json").exists() else b""
    digest = hashlib.sha256(text.encode() + features).hexdigest()[:16]
    summary = json.loads(text) if text else {}
    return {"data.path": str(data_dir), "data.summary_sha256": digest,
            "data.train_sequences": summary.get("sequences", {}).get("train"),
            "data.valid_sequences": summary.get("sequences", {}).get("valid"),
            "data.train_pairs": summary.get("pairs", {}).get("train"),
            "data.quarantined": summary.get("quarantined")}




def log_training_inputs(data_dir: str | Path, train_path: str | Path) -> None:
    """The prepared splits a stage reads, as MLflow datasets of the active run (metadata only:
    the Parquet stays where it is; the digest is ``data_lineage``'s)."""
    import warnings

    import mlflow
    from mlflow.data.dataset_source_registry import resolve_dataset_source
    from mlflow.data.meta_dataset import MetaDataset

    data_dir = Path(data_dir).resolve()
    digest = data_lineage(data_dir)["data.summary_sha256"]
    for context, path in (("training", Path(train_path)), ("validation", data_dir / "sequences" / "valid")):
        with warnings.catch_warnings():  # "dataset source resolved without a hint": a local path, as meant
            warnings.simplefilter("ignore")
            source = resolve_dataset_source(str(path.resolve()))
        mlflow.log_input(MetaDataset(source, name=f"{data_dir.name}/{path.parent.name}/{path.name}",
                                     digest=digest), context=context)


@functools.cache  # defined once per process: MLflow warns at each definition (predict has no type hints)
def _pyfunc_class():
    import mlflow.pyfunc

    class RerankerPyfunc(mlflow.pyfunc.PythonModel):
        """Registry wrapper. ``predict`` takes encoded requests and returns ranked candidates;
        the platform itself loads the GenReranker through ``load_reranker_uri``."""

        def load_context(self, context):
            from gref.reranker_io import load_reranker

            self.model = load_reranker(context.artifacts["reranker"])

        def predict(self, context, model_input, params=None):
            import torch

            n = int((params or {}).get("n", 10))
            num = torch.tensor(model_input["num"], dtype=torch.float32)
            cat = torch.tensor(model_input["cat"], dtype=torch.long)
            mask = torch.tensor(model_input["cand_mask"], dtype=torch.bool)
            with torch.no_grad():
                return self.model.rerank(num, cat, mask, n).tolist()

    return RerankerPyfunc


def log_reranker(model_dir: str | Path, registered_model: str | None = None) -> dict[str, Any]:
    """Log a saved reranker directory to the active run (as artifact ``reranker/`` and as a
    pyfunc model); optionally register it. Returns {"model_uri", "version"}."""
    import mlflow
    import numpy
    import pyarrow
    import torch

    import gref

    mlflow.log_artifacts(str(model_dir), artifact_path="reranker")
    # explicit requirements: left to infer them, MLflow loads the model in a subprocess (5-15 s a
    # model, measured); the gref package travels as code so the pyfunc loads without the repo
    requirements = [f"torch=={torch.__version__.split('+')[0]}", f"numpy=={numpy.__version__}",
                    f"pyarrow=={pyarrow.__version__}", f"mlflow=={mlflow.__version__}"]
    # a notice per model that a user cannot act on: it is our own class that CloudPickle serialises
    pyfunc_logger = logging.getLogger("mlflow.pyfunc")
    level = pyfunc_logger.level
    pyfunc_logger.setLevel(logging.ERROR)
    try:
        info = mlflow.pyfunc.log_model(name="model", python_model=_pyfunc_class()(),
                                       artifacts={"reranker": str(model_dir)}, pip_requirements=requirements,
                                       code_paths=[str(Path(gref.__file__).parent)])
    finally:
        pyfunc_logger.setLevel(level)
    out = {"model_uri": info.model_uri, "version": None}
    if registered_model:
        mv = mlflow.register_model(info.model_uri, registered_model)
        out["version"] = int(mv.version)
    return out


def reranker_dir(uri: str) -> Path:
    """A local directory with model.pt / model.json / features.json for a directory,
    ``models:/name@alias``, ``models:/name/3`` or ``runs:/id/model`` (downloaded)."""
    if "://" not in uri and ":/" not in uri:
        return Path(uri)
    import mlflow

    local = Path(mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=tempfile.mkdtemp()))
    for c in (local, local / "artifacts" / "reranker", local / "reranker"):
        if (c / "model.json").exists():
            return c
    found = next(local.rglob("model.json"), None)
    if found is None:
        raise FileNotFoundError(f"{uri} holds no reranker (no model.json)")
    return found.parent


def load_reranker_uri(uri: str, device: str = "cpu"):
    """A reranker (GenReranker or baseline) from a directory, ``models:/name@alias``,
    ``models:/name/3`` or ``runs:/id/model``."""
    from gref.reranker_io import load_reranker

    return load_reranker(reranker_dir(uri), device)


def pin_version(uri: str) -> tuple[str, str]:
    """``uri`` with its registry alias resolved, once, to the version it points at now, and that
    version: ``models:/name@alias`` -> (``models:/name/N``, "N"); ``models:/name/N`` -> (itself, "N");
    other URIs -> (itself, ""). Load the pinned URI and report its version: resolving the alias
    twice (once to load, once to label) mislabels the weights when the alias moves in between."""
    if not uri.startswith("models:/"):
        return uri, ""
    from mlflow import MlflowClient

    name, _, alias = uri[len("models:/"):].partition("@")
    if alias:
        version = str(MlflowClient().get_model_version_by_alias(name, alias).version)
        return f"models:/{name}/{version}", version
    return uri, uri.rstrip("/").rsplit("/", 1)[-1]


def set_aliases(registered_model: str, aliases: dict[str, int]) -> None:
    from mlflow import MlflowClient

    client = MlflowClient()
    for alias, version in aliases.items():
        client.set_registered_model_alias(registered_model, alias, str(version))


def plot_curves(history: list[dict[str, Any]], keys: list[str], path: str | Path, title: str) -> Path:
    """Loss / metric curves per epoch as a PNG (one panel per key)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    keys = [k for k in keys if any(k in h for h in history)]
    fig, axes = plt.subplots(1, max(len(keys), 1), figsize=(4.2 * max(len(keys), 1), 3.2), squeeze=False)
    for ax, key in zip(axes[0], keys):
        pts = [(h["epoch"], h[key]) for h in history if key in h]
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o")
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_title(key)
        ax.grid(alpha=0.3)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Path(path)
