"""gref.tracking without Ray: where a sqlite store keeps its artifacts."""

from __future__ import annotations

from gref.tracking import TrackingConfig, artifact_location, setup


def test_a_sqlite_store_keeps_its_artifacts_beside_it(tmp_path, monkeypatch):
    """MLflow's default artifact root is ./mlruns of the process's directory: a test's store in a
    temporary directory once left its models in the repository's working directory."""
    import mlflow

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    store = tmp_path / "store"
    store.mkdir()
    setup(TrackingConfig(uri=f"sqlite:///{store / 'mlflow.db'}", experiment="beside"))
    try:
        with mlflow.start_run(experiment_id=mlflow.get_experiment_by_name("beside").experiment_id):
            mlflow.log_text("hello", "note.txt")
    finally:
        mlflow.set_tracking_uri("")
    assert [p.read_text() for p in (store / "mlruns").rglob("note.txt")] == ["hello"]
    assert not (elsewhere / "mlruns").exists()


def test_only_a_sqlite_store_gets_an_artifact_location():
    assert artifact_location("sqlite:////data/runs/mlflow.db") == "file:///data/runs/mlruns"
    assert artifact_location("http://mlflow:5000") is None
    assert artifact_location("postgresql://u@h/db") is None
