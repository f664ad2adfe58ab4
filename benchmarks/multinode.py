"""The platform on a multi-node Ray cluster simulated on this machine (issue 37; prints JSON).

    python -m benchmarks.multinode [--scenarios prepare,train,serve,autoscale,loop] [--requests 3000] [--out X.json]

Each scenario starts its own cluster with ``ray.cluster_utils.Cluster`` -- a head and two worker
nodes, each a raylet of its own with 2 logical CPUs; the second worker also holds ``accel``, a
custom resource standing in for a GPU -- and leaves nothing running:

- ``prepare``: jobs.prepare's Ray Data pipeline on the cluster; its tasks per node (Ray's state
  API), and its output against the same logs prepared on a one-node Ray (same counts, same rows);
- ``train``: pre-training with 2 Ray Train workers placed SPREAD (on two nodes), elastic down to 1;
  once the controller holds epoch 0, the node of a worker (not the head) is removed mid-epoch.
  Reported: the workers' nodes before and after, the epochs rank 0 finished in order and the
  checkpoint it resumed from (its printed lines), epochs lost, seconds until the workers were
  restarted, and the MLflow run's train_loss steps (each epoch once);
- ``serve``: the Serve app (tiny untrained GReF arm, 2 reranker replicas, the Router's feedback
  store on PostgreSQL) with replicas on two nodes; under a bounded loopback load (benchmarks.load's
  retrying clients) the node of a reranker replica that is not the head is removed. Reported:
  replicas per node before and after, requests failed, feedback lost / doubled;
- ``autoscale``: a head started with the fake multi-node autoscaler (Ray's ``fake_multi_node``
  provider, RAY_FAKE_CLUSTER=1) and cluster.yaml's worker node types (their names, min/max
  workers and idle timeout shape; CPUs scaled down, GPU kept as a logical resource); a task that
  asks for a GPU makes the autoscaler start a GPU worker, the task finishes, the idle worker is
  released. Reported: the node started, seconds to start and to release;
- ``loop``: one round of the continuous loop (gref.loop) on the cluster: the challenger trained on a
  Train worker, both arms' reranker replicas spread over the nodes, the Router's store on PostgreSQL.

What one machine cannot show (a real network, a file system shared across machines, GPUs):
docs/cluster.md.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import tempfile
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from benchmarks.tiny_app import _free_port

NODE_MEMORY = 200 * 2**20  # object store per simulated node
NODE_CPUS = 2  # logical CPUs per simulated node: a Train worker (1) leaves room for the data tasks beside it
SMALL_WORLD = ["n_users=300", "n_items=1500", "n_series=50", "n_creators=200", "days=5"]


@contextmanager
def _address_file_kept() -> Iterator[None]:
    """A simulated cluster's head writes its address to Ray's ray_current_cluster file, where a later
    ``ray.init()`` on this machine would look for a cluster to join: put back what was there."""
    from ray._common.utils import get_ray_address_file

    path = Path(get_ray_address_file(None))
    before = path.read_text() if path.exists() else None
    try:
        yield
    finally:
        if before is None:
            path.unlink(missing_ok=True)
        else:
            path.write_text(before)


@contextmanager
def local_cluster(workers: int = 2) -> Iterator[Any]:
    """A head and ``workers`` worker nodes on this machine (NODE_CPUS each; the last worker holds
    the ``accel`` resource), the driver connected; everything stopped on exit."""
    import ray
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={
        "num_cpus": NODE_CPUS, "object_store_memory": NODE_MEMORY, "include_dashboard": True,
        "resources": {"head": 1}})
    for i in range(workers):
        cluster.add_node(num_cpus=NODE_CPUS, object_store_memory=NODE_MEMORY,
                         resources={"worker": 1, **({"accel": 1} if i == workers - 1 else {})})
    cluster.wait_for_nodes()
    ray.init(address=cluster.address, log_to_driver=False)
    try:
        yield cluster
    finally:
        ray.shutdown()
        cluster.shutdown()


def _node_names(cluster) -> dict[str, str]:
    """Node id -> head | worker1 | worker2 ..."""
    names = {cluster.head_node.node_id: "head"}
    for i, node in enumerate(sorted(cluster.worker_nodes, key=lambda n: n.node_id)):
        names[node.node_id] = f"worker{i + 1}"
    return names


def _simulate(out: Path, requests: int) -> Path:
    from gref.config import override
    from gref.sim import World, WorldConfig, generate_logs

    world = World.generate(override(WorldConfig(seed=3), dict(o.split("=") for o in SMALL_WORLD)))
    world.save(out / "world")
    for _ in generate_logs(world, requests, out / "logs", chunk=max(requests // 4, 1), progress=False):
        pass
    return out


def _same_output(a: Path, b: Path) -> dict[str, Any]:
    """Two prepare outputs compared: summary counts and every split's sequences and pairs (sorted by request)."""
    import pyarrow.compute as pc

    from gref.data.batch import read_split

    sa, sb = (json.loads((p / "summary.json").read_text()) for p in (a, b))
    keys = ("requests_read", "sequences", "pairs", "quarantined", "quarantined_by_reason")
    rows_equal = {}
    for sub, split in [("sequences", s) for s in ("train", "valid", "test")] + [("pairs", "train"), ("pairs", "valid")]:
        ta, tb = (read_split(p / sub / split) for p in (a, b))
        ta, tb = (t.take(pc.sort_indices(t, [("request_id", "ascending")])) for t in (ta, tb))
        rows_equal[f"{sub}/{split}"] = ta.equals(tb)
    return {"counts_equal": all(sa[k] == sb[k] for k in keys), "rows_equal": rows_equal,
            "sequences": sa["sequences"], "quarantined": sa["quarantined"]}


def prepare_scenario(tmp: Path, requests: int, reference: str = "ray") -> dict[str, Any]:
    """``reference``: what the cluster's output is compared with -- ray: the same job on one node;
    polars: the one-process reference (benchmarks/prepare_polars.py, tested equal to the job; no
    second Ray start, for the CI's budget)."""
    import ray
    from ray.util.state import list_tasks

    from gref.data import prepare
    from gref.data.schema import DatasetConfig
    from gref.ray_utils import init_ray

    sim = _simulate(tmp / "sim", requests)
    cfg = DatasetConfig(valid_days=1, test_days=1, slice_mb=1)  # several slices: several tasks to spread
    with local_cluster() as cluster:
        names = _node_names(cluster)
        t0 = time.time()
        prepare.run(str(sim / "logs"), str(tmp / "multi"), cfg)
        seconds = time.time() - t0
        time.sleep(2)  # the state API hears of the last tasks a moment later
        per_node: dict[str, int] = {}
        for task in list_tasks(limit=10_000, raise_on_missing_output=False):
            if task.node_id and task.type == "NORMAL_TASK":
                per_node[names.get(task.node_id, task.node_id[:8])] = per_node.get(
                    names.get(task.node_id, task.node_id[:8]), 0) + 1
    if reference == "polars":
        from benchmarks.prepare_polars import prepare as polars_prepare

        polars_prepare(str(sim / "logs"), str(tmp / "single"), cfg)
    else:
        init_ray(num_cpus=2, include_dashboard=False)  # the same logs on one node
        try:
            prepare.run(str(sim / "logs"), str(tmp / "single"), cfg)
        finally:
            ray.shutdown()
    return {"requests": requests, "seconds": round(seconds, 1), "tasks_per_node": per_node, "compared_with": reference,
            **_same_output(tmp / "multi", tmp / "single")}


def _train_workers(names: dict[str, str]) -> dict[str, str]:
    """The live Ray Train worker actors: actor id -> node name."""
    from ray.util.state import list_actors

    return {a.actor_id: names.get(a.node_id, a.node_id[:8]) for a in list_actors(
        filters=[("state", "=", "ALIVE")], limit=1000, raise_on_missing_output=False)
        if "RayTrainWorker" in a.class_name}


def _train_log(session_dir: Path) -> dict[str, list[int]]:
    """What the Train workers printed (rank 0 prints): the epochs finished, in order, by every
    worker group, and the checkpoints the groups resumed from."""
    epochs, resumed = [], []
    for path in sorted((session_dir / "logs").glob("worker-*.out"), key=lambda f: f.stat().st_mtime):
        text = path.read_text(errors="replace")
        if ":actor_name:RayTrainWorker" not in text:
            continue
        epochs += [int(m) for m in re.findall(r"\[pretrain\] epoch (\d+)/\d+ ", text)]
        resumed += [int(m) for m in re.findall(r"resumed from the checkpoint of epoch (\d+)", text)]
    return {"epochs_finished": [e - 1 for e in epochs], "resumed_from": resumed}


def train_scenario(tmp: Path, requests: int) -> dict[str, Any]:
    from mlflow import MlflowClient

    from gref.config import load_config
    from gref.data import prepare
    from gref.data.schema import DatasetConfig
    from gref.train.config import PretrainConfig
    from gref.train.runner import run_training

    sim = _simulate(tmp / "sim", requests)
    uri = f"sqlite:///{tmp / 'mlflow.db'}"
    epochs = 6
    cfg = load_config(PretrainConfig, None, [
        f"data={tmp / 'prep'}", f"run.storage={tmp / 'ray'}", "run.name=pre-multinode", f"tracking.uri={uri}",
        f"eval.world={sim / 'world'}", "eval.max_requests=200", f"optim.epochs={epochs}", "optim.batch_size=64",
        "model.d_model=32", "model.enc_layers=1", "model.dec_layers=1", "model.omtp_heads=2",
        "scaling.num_workers=2", "scaling.min_workers=1", "scaling.placement=SPREAD", "scaling.cpus_per_worker=1",
        "scaling.threads_per_worker=1", "scaling.read_cpus=0.25", "run.max_failures=3"])
    with local_cluster() as cluster:
        names = _node_names(cluster)
        prepare.run(str(sim / "logs"), str(tmp / "prep"), DatasetConfig(valid_days=1, test_days=1))
        report: dict[str, Any] = {}
        checkpoints = tmp / "ray" / "pre-multinode"

        def remove_a_worker_node() -> None:
            """Once the controller holds epoch 0 (its checkpoint registered, its metrics in MLflow), in
            epoch 1: remove the node of a Train worker (not the head)."""
            from mlflow import MlflowClient

            client = MlflowClient(uri)
            while not (checkpoints / "mlflow_run_id").exists():
                time.sleep(0.2)
            run_id = (checkpoints / "mlflow_run_id").read_text().strip()
            while not client.get_metric_history(run_id, "train_loss"):
                time.sleep(0.2)
            first_group = _train_workers(names)
            nodes = sorted(first_group.values())
            report["workers_before"] = nodes
            victim = next(n for n in cluster.worker_nodes if names[n.node_id] in nodes)
            report["removed"] = names[victim.node_id]
            report["removed_at"] = time.time()
            cluster.remove_node(victim, allow_graceful=False)
            resumed: dict[str, str] = {}
            while not finished.is_set():  # the group the run resumed with: workers started after the removal
                resumed.update({a: n for a, n in _train_workers(names).items() if a not in first_group})
                if resumed and "restarted_at" not in report:
                    report["restarted_at"] = time.time()
                time.sleep(0.5)
            report["workers_after"] = sorted(resumed.values())

        finished = threading.Event()
        thread = threading.Thread(target=remove_a_worker_node, daemon=True)
        thread.start()
        t0 = time.time()
        try:
            out = run_training("pretrain", cfg)
        finally:
            finished.set()
        seconds = time.time() - t0
        thread.join(10)
        printed = _train_log(Path(cluster.head_node.get_session_dir_path()))
    history = out["history"]
    logged = MlflowClient(uri).get_metric_history(out["mlflow_run_id"], "train_loss")
    steps = [m.step for m in logged]
    restarted = report.get("restarted_at")
    return {"epochs": epochs, "seconds": round(seconds, 1), "workers_before": report.get("workers_before"),
            "removed_node": report.get("removed"), "workers_after": report.get("workers_after"),
            "epochs_finished_in_order": printed["epochs_finished"], "resumed_from_checkpoint_of": printed["resumed_from"],
            # epochs finished twice, plus the one in progress when the node went (its work lost too)
            "epochs_lost": len(printed["epochs_finished"]) - epochs + 1,
            "seconds_to_restart_workers": round(restarted - report["removed_at"], 1) if restarted else None,
            "history_epochs": [h["epoch"] for h in history], "mlflow_train_loss_steps": steps,
            "mlflow_steps_doubled": len(steps) - len(set(steps))}


def _replica_nodes(names: dict[str, str], deployment: str) -> dict[str, int]:
    """Live replicas of a Serve deployment per node."""
    from ray.util.state import list_actors

    nodes: dict[str, int] = {}
    for a in list_actors(filters=[("state", "=", "ALIVE")], limit=1000, raise_on_missing_output=False):
        if a.name and f"#{deployment}#" in a.name:
            node = names.get(a.node_id, a.node_id[:8])
            nodes[node] = nodes.get(node, 0) + 1
    return nodes


def serve_scenario(tmp: Path, requests: int, seconds: float = 45.0) -> dict[str, Any]:
    """Replicas on two nodes, one of those nodes removed at 1/3 of a bounded load."""
    import pgserver
    from ray import serve

    from benchmarks.load import Load
    from benchmarks.tiny_app import tiny_app

    server = pgserver.get_server(tmp / "pg", cleanup_mode="stop")
    db = server.get_uri()
    with local_cluster() as cluster:
        names = _node_names(cluster)
        # one HTTP proxy, on the head: every simulated node shares this machine's address and port
        url, key = tiny_app(tmp, name="multinode", proxy_location="HeadOnly", feedback_db=db, colocate=False, replicas=2, routers=1, reranker_cpus=0.5,
                            router_cpus=0.25)
        before = _replica_nodes(names, "reranker-gref")
        router = _replica_nodes(names, "Router")
        load = Load(url, key, clients=4, retry_s=60).start()
        time.sleep(seconds / 3)
        victim = next(n for n in cluster.worker_nodes if names[n.node_id] in before)
        removed_at = time.time()
        cluster.remove_node(victim, allow_graceful=False)
        replaced = None
        # the load runs its course; the replacement is waited for up to 90 s after the removal either way
        while time.time() < removed_at + seconds * 2 / 3 or (replaced is None and time.time() < removed_at + 90):
            now = _replica_nodes(names, "reranker-gref")
            if replaced is None and sum(now.values()) >= 2 and names[victim.node_id] not in now:
                replaced = round(time.time() - removed_at, 1)
            if time.time() >= removed_at + seconds * 2 / 3 and not load.stopping.is_set():
                load.stop()
            time.sleep(1.0)
        load.stop()
        after = _replica_nodes(names, "reranker-gref")
        serve.shutdown()

    def phase(at: float) -> str:
        return "before" if at < removed_at else ("during_node_loss" if at < removed_at + 10 else "after")

    return {"store": "postgres", "reranker_replicas_per_node_before": before, "router_node": router,
            "removed_node": names[victim.node_id], "reranker_replicas_per_node_after": after,
            "seconds_to_replace_replica": replaced, "latency": load.latency(phase), **load.outcome(db)}


def loop_scenario(tmp: Path, requests: int) -> dict[str, Any]:
    """One round of the continuous loop on the cluster: the challenger trained on Train workers,
    both arms' reranker replicas spread over the nodes, the Router's store on PostgreSQL."""
    import pgserver
    from ray import serve

    from gref import loop
    from gref.config import load_config
    from gref.data import prepare
    from gref.data.schema import DatasetConfig
    from gref.model.config import ModelConfig
    from gref.reranker_io import save_reranker
    from gref.train.steps import build_model, data_meta
    from serve.app import loop_app

    sim = _simulate(tmp / "sim", requests)
    db = pgserver.get_server(tmp / "pg", cleanup_mode="stop").get_uri()
    port = _free_port()
    with local_cluster() as cluster:
        names = _node_names(cluster)
        prepare.run(str(sim / "logs"), str(tmp / "prep"), DatasetConfig(valid_days=1, test_days=1))
        champion = save_reranker(tmp / "champion", build_model(ModelConfig(d_model=32, enc_layers=1, dec_layers=1,
                                                                           omtp_heads=2), data_meta(tmp / "prep")),
                                 tmp / "prep" / "features.json")
        serve.start(proxy_location="HeadOnly", http_options={"host": "127.0.0.1", "port": port})
        cfg = load_config(loop.ContinuousConfig, str(REPO / "configs" / "continuous.yaml"), [
            f"out={tmp / 'loop'}", f"world={sim / 'world'}", f"champion={champion}", "rounds=1", "requests=200",
            "concurrency=4", "explore=0.25", "audit_requests=100", "rule.max_looks=1", "rule.min_requests=20",
            f"port={port}", "direct_ingress=false", f"tracking.uri=sqlite:///{tmp / 'mlflow.db'}",
            f"app={{colocate: false, replicas: 2, reranker_cpus: 0.5, router_cpus: 0.25, feedback_db: '{db}'}}",
            *[f"{stage}.{key}" for stage in ("reward", "dpo") for key in (
                "optim.epochs=1", "optim.batch_size=64", "scaling.num_workers=1", "eval.max_requests=200")]])
        placement: dict[str, dict[str, int]] = {}
        watching = threading.Event()

        def watch() -> None:  # where the arms' replicas ran while the round served
            while not watching.is_set():
                for arm in ("champion", "challenger"):
                    for node, n in _replica_nodes(names, f"reranker-{arm}").items():
                        placement.setdefault(arm, {})[node] = max(n, placement.get(arm, {}).get(node, 0))
                time.sleep(1.0)

        watcher = threading.Thread(target=watch, daemon=True)
        watcher.start()
        try:
            summary = loop.run(cfg, loop_app())
        finally:
            watching.set()
            watcher.join(10)
            serve.shutdown()
    r0, r1 = summary["rounds"]
    return {"store": "postgres", "rounds": len(summary["rounds"]) - 1, "challenger": r1.get("challenger"),
            "decision": (r1.get("decision") or {}).get("action"), "train_error": r1.get("train_error"),
            "round0_exported_rows": (r0.get("data") or {}).get("rows"),
            "round0_sequences": (r0.get("data") or {}).get("sequences"), "replicas_per_node": placement}


REPO = Path(__file__).resolve().parents[1]
IDLE_TIMEOUT_MIN = 0.1  # cluster.yaml's idle_timeout_minutes (10), scaled down for a run of minutes


def fake_autoscaling_config(gcs_address: str) -> dict[str, Any]:
    """cluster.yaml's shape for Ray's fake multi-node provider: its node type names, min / max
    workers, max_workers and upscaling speed; a GPU worker's resources as its instance would
    report them, scaled down (2 CPUs, 1 GPU as a logical resource); the idle timeout scaled down."""
    import yaml
    from ray.autoscaler._private.fake_multi_node.node_provider import FAKE_HEAD_NODE_TYPE

    raw = yaml.safe_load((REPO / "cluster.yaml").read_text())
    head = raw["available_node_types"][raw["head_node_type"]]
    types = {FAKE_HEAD_NODE_TYPE: {"resources": dict(head["resources"]), "node_config": {}, "max_workers": 0}}
    for name, spec in raw["available_node_types"].items():
        if name != raw["head_node_type"]:
            types[name] = {"resources": {"CPU": 2, **({"GPU": 1} if "gpu" in name else {}),
                                         "object_store_memory": NODE_MEMORY, **spec.get("resources", {})},
                           "node_config": {}, "min_workers": spec.get("min_workers", 0),
                           "max_workers": spec["max_workers"]}
    return {"cluster_name": raw["cluster_name"], "max_workers": raw["max_workers"],
            "upscaling_speed": raw.get("upscaling_speed", 1.0), "idle_timeout_minutes": IDLE_TIMEOUT_MIN,
            "provider": {"type": "fake_multinode", "use_node_id_as_ip": True, "disable_node_updaters": True,
                         "disable_launch_config_check": True, "gcs_address": gcs_address},
            "available_node_types": types, "head_node_type": FAKE_HEAD_NODE_TYPE, "auth": {}, "docker": {},
            "initialization_commands": [], "setup_commands": [], "head_setup_commands": [],
            "worker_setup_commands": [], "head_start_ray_commands": [], "worker_start_ray_commands": [],
            "file_mounts": {}, "cluster_synced_files": [], "file_mounts_sync_continuously": False,
            "rsync_exclude": [], "rsync_filter": []}


def _kill_nodes_of(gcs_address: str) -> int:
    """Kill what is left of the nodes joined to ``gcs_address`` (their raylets carry it on the command line)."""
    import psutil

    killed = 0
    for proc in psutil.process_iter(["cmdline"]):
        if any(f"--gcs-address={gcs_address}" in a or f"--gcs_address={gcs_address}" in a
               for a in proc.info["cmdline"] or []):
            proc.kill()
            killed += 1
    return killed


def autoscale_scenario(tmp: Path, requests: int, wait_s: float = 180.0) -> dict[str, Any]:
    """A GPU-asking task makes the fake provider start a GPU worker, which is released once idle."""
    import ray
    from ray._private.services import get_node_ip_address
    from ray.cluster_utils import Cluster

    port = _free_port()
    gcs = f"{get_node_ip_address()}:{port}"
    config = fake_autoscaling_config(gcs)
    (tmp / "autoscaling.json").write_text(json.dumps(config))
    os.environ.update({"RAY_FAKE_CLUSTER": "1", "AUTOSCALER_UPDATE_INTERVAL_S": "1"})  # read by the monitor
    head = config["available_node_types"][config["head_node_type"]]["resources"]
    cluster = Cluster(initialize_head=True, head_node_args={
        "num_cpus": head.get("CPU", 0), "resources": {k: v for k, v in head.items() if k != "CPU"},
        "gcs_server_port": port, "autoscaling_config": str(tmp / "autoscaling.json"),
        "object_store_memory": NODE_MEMORY, "include_dashboard": False})
    ray.init(address=cluster.address, log_to_driver=False)

    def workers() -> list[dict]:
        return [n for n in ray.nodes() if n["Alive"] and "gref_head" not in n["Resources"]]

    @ray.remote(num_gpus=1, num_cpus=1)
    def on_a_gpu_node() -> dict:
        return {"node": ray.get_runtime_context().get_node_id(),
                "gpus": ray.get_runtime_context().get_assigned_resources().get("GPU", 0)}

    try:
        before = len(workers())
        t0 = time.time()
        answer = ray.get(on_a_gpu_node.remote(), timeout=wait_s)
        started_s = time.time() - t0
        started = [n for n in workers() if n["NodeID"] == answer["node"]]
        t1, released_s = time.time(), None
        while time.time() < t1 + wait_s:
            if not workers():
                released_s = time.time() - t1
                break
            time.sleep(1.0)
    finally:
        ray.shutdown()
        cluster.shutdown()
        leftover = _kill_nodes_of(gcs)
    return {"node_types": sorted(config["available_node_types"]), "workers_before": before,
            "task_ran_on_gpu_worker": bool(started) and answer["gpus"] == 1,
            "started_node_resources": started[0]["Resources"] if started else None,
            "seconds_to_start_and_run": round(started_s, 1), "idle_timeout_s": IDLE_TIMEOUT_MIN * 60,
            "seconds_to_release_after_the_task": None if released_s is None else round(released_s, 1),
            "processes_killed_at_the_end": leftover}


SCENARIOS = {"prepare": prepare_scenario, "train": train_scenario, "serve": serve_scenario,
             "autoscale": autoscale_scenario, "loop": loop_scenario}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(prog="python -m benchmarks.multinode", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--scenarios", default=",".join(SCENARIOS), help=f"comma-separated, of {', '.join(SCENARIOS)}")
    p.add_argument("--requests", type=int, default=3000, help="simulated requests of the prepare / train scenarios")
    p.add_argument("--serve-seconds", type=float, default=45.0, help="the serve scenario's load (the node goes at 1/3)")
    p.add_argument("--prepare-reference", choices=("ray", "polars"), default="ray",
                   help="the prepare scenario's comparison: the job on one node, or the one-process Polars reference")
    p.add_argument("--out", default="", help="also write the JSON here")
    args = p.parse_args(argv)
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")  # loopback-only clusters of this machine
    unknown = sorted(set(args.scenarios.split(",")) - set(SCENARIOS))
    if unknown:
        raise SystemExit(f"unknown scenario(s) {unknown} (known: {', '.join(SCENARIOS)})")
    result: dict[str, Any] = {}
    for name in args.scenarios.split(","):
        tmp = Path(tempfile.mkdtemp(prefix=f"gref-multinode-{name}-"))
        t0 = time.time()
        extra = ({"seconds": args.serve_seconds} if name == "serve" else
                 {"reference": args.prepare_reference} if name == "prepare" else {})
        with _address_file_kept():
            result[name] = SCENARIOS[name](tmp, args.requests, **extra)
        result[name]["wall_s"] = round(time.time() - t0, 1)
        print(json.dumps({name: result[name]}), flush=True)
    text = json.dumps(result, indent=2)
    if args.out:
        Path(args.out).write_text(text + "\n")
    print(text)
    return result


if __name__ == "__main__":
    main()
