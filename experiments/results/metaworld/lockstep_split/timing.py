"""A wrapper that adds a function's wall time, and its number of calls, to a dict (the scripts here)."""

import time
from collections.abc import Callable
from typing import Any


def timed(function: Callable[..., Any], key: str, spent: dict[str, float]) -> Callable[..., Any]:
    """`function`, adding its seconds to ``spent[key]`` and one to ``spent[key + "_calls"]`` per call."""

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        start = time.perf_counter()
        try:
            return function(*args, **kwargs)
        finally:
            spent[key] = spent.get(key, 0.0) + time.perf_counter() - start
            spent[f"{key}_calls"] = spent.get(f"{key}_calls", 0) + 1

    return wrapper
