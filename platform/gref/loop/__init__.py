"""Continuous training (``python -m jobs.continuous``): serve -> learn from what was served ->
challenge -> promote only what is proven better.

Round 0 serves the champion alone (``champion``: a registered version, alias, run or directory;
registered into ``tracking.registered_model`` when it is not). Every round r >= 1 then:
  1. post-trains a challenger from the champion on the traffic of the last ``1 + replay_rounds``
     rounds (``reward`` + ``dpo``: the pipeline's recipe, oracle-free: the reward is selected on
     held-out clicks, the challenger by the reward's value of its lists) and registers it with the
     alias ``challenger``;
  2. serves champion and challenger side by side (Ray Serve, users split by a hash), ``requests``
     requests per look: ``traffic=simulated`` sends them from the simulated users of ``world``;
     ``traffic=clients`` leaves them to real clients of the endpoint (``host``:``port``) and waits
     until the feedback store holds that many lists served by the round's arms, each served
     ``feedback_wait_s`` ago (its clicks are in), up to ``look_timeout_s``. A share ``explore`` of
     the requests get a list sampled from the model (temperature ``explore_temperature``) instead
     of its greedy list, its log-probability stored with it -- training data with alternatives;
  3. decides on the served clicks per greedy request (gref.serving.promotion: promote when the
     interval of the lift is above 0, roll back when below, else one more look, up to
     ``rule.max_looks``); a promotion moves the alias ``champion``. With a simulated ``world`` its
     oracle audits every decision (the lift of expected clicks, on the A/B and on a fixed audit
     set, where it also scores the round's reward's own lists: the challenger's teacher) but never
     makes one (``world=''`` with real clients: no audit);
  4. exports the round's lists + feedback (a time window of the feedback store, from where the
     previous round's ended: no row twice, none lost) and prepares them alone, with the round-0
     champion's feature spec (unseen values -> OOV).
A challenger that fails to train leaves the champion serving alone for that round. ``aa=true`` is
the false-promotion check: the challenger is the champion itself (nothing trained). MLflow: one
parent run, a nested run per round, a plot of both arms per round; the registry keeps the
history (aliases + a tag per challenger version). Killed, the same command resumes where it
stopped (``out``/state.json; a look's requests carry fixed ids, so re-sent ones are replayed by
the store, never counted twice). Writes ``out``/summary.json.

The Serve application itself (serve/app.py's deployments) is handed in as a ``ServeApp``: the
library does not import the entrypoints.

The package: ``config`` (settings, where files live), ``state`` (state.json: a ``Round`` per round),
``traffic`` (simulated users | real clients), ``trainer`` (the rounds), ``audit`` (the oracle's),
``report`` (summary.json and the plot).
"""

from gref.loop.audit import audit_model_values
from gref.loop.config import ContinuousConfig, ServeApp, check
from gref.loop.state import LoopState, Round
from gref.loop.trainer import export_round, run

__all__ = ["ContinuousConfig", "LoopState", "Round", "ServeApp", "audit_model_values", "check", "export_round", "run"]
