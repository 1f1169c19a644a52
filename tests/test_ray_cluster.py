"""The Ray backend on several nodes of one machine (``ray.cluster_utils.Cluster``, one CPU each)."""

import logging
import threading
import time

import numpy as np
import pytest
import ray
import torch
from ray.cluster_utils import Cluster

from metarl.backends import make_sampler
from metarl.config import load_config
from metarl.functional import parameters_of
from metarl.policies import make_policy
from metarl.tasks import sample_tasks
from tests.test_ray import FIELDS, assert_identical, config_with, dying_config, sample_both


@pytest.fixture(scope="module")
def cluster():
    """A head and two more nodes, one CPU each."""
    # Ray declares a node dead after missed health checks: every 0.5 s here, not every 3 s.
    system_config = {"health_check_period_ms": 500, "health_check_failure_threshold": 3}
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "_system_config": system_config})
    try:
        for _ in range(2):
            cluster.add_node(num_cpus=1)
        ray.init(address=cluster.address, logging_level=logging.WARNING)
        cluster.wait_for_nodes()
        yield cluster
    finally:
        ray.shutdown()
        cluster.shutdown()


def test_actors_on_two_nodes_give_the_local_backend_s_episodes(cluster):
    config = load_config("experiments/smoke.yaml", ["env.workers=2"])
    (local, local_rng, _), (remote, remote_rng, sampler) = sample_both(config)
    assert len(set(sampler.used_nodes)) == 2  # one actor on each of two nodes
    for field in FIELDS:
        assert torch.equal(getattr(local, field), getattr(remote, field)), field
    assert torch.equal(local_rng, remote_rng)


def test_a_node_that_dies_mid_call_is_reported_and_its_actor_recreated_elsewhere(cluster, tmp_path, caplog):
    # Two actors, one task each at 0.2 s per step; while they sample their second call, the node
    # of one of them (not the head) is killed. The call's episodes are still the local backend's.
    settings = "env.workers=2", "env.horizon=6", "inner.episodes_per_task=1", "env.worker_timeout=5"
    configs = {
        "local": config_with(dying_config(tmp_path, -1, -1, *settings, fault="slow", delay=0.0), "local"),
        "ray": config_with(dying_config(tmp_path, -1, -1, *settings, fault="slow", delay=0.2), "ray"),
    }
    episodes = {}
    for backend, config in configs.items():  # the delay changes nothing in the episodes
        sampler = make_sampler(config)
        try:
            torch.manual_seed(0)
            policy = make_policy(sampler.observation_space, sampler.action_space, config.policy)
            tasks = sample_tasks(sampler.env, 2, np.random.default_rng(1))
            torch.manual_seed(1)
            sampler.sample(policy, parameters_of(policy), tasks)  # the actors are placed
            if backend == "ray":
                nodes = sampler.actor_nodes()
                victim = next(i for i, node in enumerate(nodes) if node != cluster.head_node.node_id)
                node = next(n for n in cluster.list_all_nodes() if n.node_id == nodes[victim])
                threading.Timer(0.4, cluster.remove_node, (node,), {"allow_graceful": False}).start()
            start = time.monotonic()
            with caplog.at_level(logging.WARNING, logger="metarl.backends"):
                episodes[backend] = sampler.sample(policy, parameters_of(policy), tasks)
            if backend == "ray":
                assert time.monotonic() - start < 30  # in seconds (46 s with Ray's default health checks)
                assert sampler.statistics()["sampler/actor_restarts"] == 1
                assert nodes[victim] not in sampler.actor_nodes()
        finally:
            sampler.close()
    assert_identical(episodes["local"], episodes["ray"])
    assert f"Ray actor {victim} (pid" in caplog.text and f"{nodes[victim][:8]}) died" in caplog.text
    assert "re-created it and sampled its tasks" in caplog.text
