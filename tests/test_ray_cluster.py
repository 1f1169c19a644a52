"""The Ray backend on two nodes of one machine (``ray.cluster_utils.Cluster``, one CPU each)."""

import logging

import ray
import torch
from ray.cluster_utils import Cluster

from metarl.config import load_config
from tests.test_ray import FIELDS, sample_both


def test_actors_on_two_nodes_give_the_local_backend_s_episodes():
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    try:
        cluster.add_node(num_cpus=1)
        ray.init(address=cluster.address, logging_level=logging.WARNING)
        cluster.wait_for_nodes()
        config = load_config("experiments/smoke.yaml", ["env.workers=2"])
        (local, local_rng, _), (remote, remote_rng, sampler) = sample_both(config)
        assert len(set(sampler.used_nodes)) == 2  # one actor on each node
        for field in FIELDS:
            assert torch.equal(getattr(local, field), getattr(remote, field)), field
        assert torch.equal(local_rng, remote_rng)
    finally:
        ray.shutdown()
        cluster.shutdown()
