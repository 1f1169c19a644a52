"""metarl: model-agnostic meta-reinforcement learning for robots, on Gymnasium and PyTorch.

import metarl
run_dir = metarl.train(metarl.load_config("experiments/navigation_2d.yaml"))
run_dir = metarl.resume(run_dir)           # continue a stopped run exactly where it stopped
result = metarl.evaluate(run_dir)          # adaptation curve on held-out tasks
policy = metarl.load(run_dir)              # adapt to a new robot variant, then act
adapted = policy.adapt(env, episodes=20)
action = adapted.act(observation)
"""

from metarl.config import Config, ConfigError, config_from_dict, load_config
from metarl.evaluation import EvaluationResult, MetaPolicy, evaluate, load
from metarl.maml import adapt, meta_step, sample_meta_batch
from metarl.sampler import Episodes, Sampler
from metarl.tasks import TaskDistribution, make_env
from metarl.train import resume, train

__version__ = "0.1.0"

__all__ = [
    "Config",
    "ConfigError",
    "Episodes",
    "EvaluationResult",
    "MetaPolicy",
    "Sampler",
    "TaskDistribution",
    "adapt",
    "config_from_dict",
    "evaluate",
    "load",
    "load_config",
    "make_env",
    "meta_step",
    "resume",
    "sample_meta_batch",
    "train",
]
