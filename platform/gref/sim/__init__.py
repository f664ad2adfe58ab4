"""The simulated log world: hidden ground truth, the user model, and an exact oracle."""

from gref.sim.logs import generate_logs, production_policy, simulate_requests, upstream_candidates
from gref.sim.user_model import expected_feedback, sample_feedback
from gref.sim.world import World, WorldConfig

__all__ = ["World", "WorldConfig", "expected_feedback", "sample_feedback", "generate_logs",
           "simulate_requests", "upstream_candidates", "production_policy"]
