"""Training: the stages' configs (config.py), objectives, on-policy pairs, the Ray-free steps, the Ray
Train worker loop (ray_loop.py) and its driver (runner.py: checkpoints, resume, MLflow, registry)."""
