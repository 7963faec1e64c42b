"""The Asperathos submission format, validated field by field.

A submission is JSON::

    {"plugin": "local" | "kubejobs",          # executor plugin (entry point group
                                              #   securecloud.batch.executors)
     "plugin_info": {
        "cmd": ["prog", "arg"],               # command run once per item (item on stdin
                                              #   and in $BATCH_ITEM), or instead:
        "entry_point": "sleep",               # a registered task (securecloud.batch.tasks)
        "img": "registry/image:tag",          # container image (kubejobs only)
        "init_size": 2,                       # workers at start
        "redis_workload": [...] | "redis://host:port/db#key" | "file:///path",
        "control_plugin": "kubejobs",         # progress-error controller
        "control_parameters": {
            "schedule_strategy": "default" | "pid",
            "actuation_size": 1,              # workers added/removed per step (default)
            "min_rep": 1, "max_rep": 10,      # worker bounds
            "trigger_up": 0.05,               # act when late by this fraction of the job
            "trigger_down": 0.05,             # act when ahead by this fraction
            "check_interval": 5,              # seconds between decisions
            "cooldown": 0,                    # seconds without change after a change
            "heuristic_options": {"proportional_gain": 5, "integral_gain": 0.5,
                                  "derivative_gain": 0, "feed_forward": true}},
        "monitor_plugin": "kubejobs",
        "monitor_info": {"expected_time": 600},   # seconds: the deadline
        "env_vars": {"NAME": "value"},
        "enclave_heap_mb": 32,                # enclave memory per worker (MB)
        "max_retries": 3,                     # failures before an item goes to job:errors
        "lease_seconds": 60}}                 # lease of an item before it returns to the queue

Errors are lists of JSON paths with the reason, e.g.
`plugin_info.control_parameters.min_rep: must be ≥ 1`. Unknown fields are refused.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from securecloud.services.batch.errors import SubmissionInvalid

EXECUTORS = ("local", "kubejobs")
CONTROL_PLUGINS = ("kubejobs", "progress-error")
MONITOR_PLUGINS = ("kubejobs", "progress")
STRATEGIES = ("default", "pid")
MAX_ITEMS = 1_000_000


@dataclass(frozen=True)
class Gains:
    proportional_gain: float = 5.0
    integral_gain: float = 0.5
    derivative_gain: float = 0.0
    feed_forward: bool = True


@dataclass(frozen=True)
class ControlParameters:
    schedule_strategy: str = "default"
    actuation_size: int = 1
    min_rep: int = 1
    max_rep: int = 10
    trigger_up: float = 0.0
    trigger_down: float = 0.0
    check_interval: float = 5.0
    cooldown: float = 0.0
    gains: Gains = field(default_factory=Gains)


@dataclass(frozen=True)
class Submission:
    plugin: str
    cmd: tuple[str, ...] | None
    entry_point: str | None
    image: str | None
    init_size: int
    workload: tuple[str, ...] | None
    workload_url: str | None
    control: ControlParameters
    expected_time: float
    env_vars: dict[str, str]
    enclave_heap_mb: int
    max_retries: int
    lease_seconds: float
    document: dict


class _Checker:
    """Collects every problem of a document, so one answer lists them all."""

    def __init__(self):
        self.problems: list[str] = []

    def fail(self, path: str, reason: str) -> None:
        self.problems.append(f"{path}: {reason}")

    def mapping(self, doc: Any, path: str, allowed: set[str]) -> dict:
        if not isinstance(doc, dict):
            self.fail(path, "must be an object")
            return {}
        for key in sorted(set(doc) - allowed):
            self.fail(f"{path}.{key}", "unknown field")
        return doc

    def integer(self, doc: dict, key: str, path: str, lo: int, hi: int, default=None):
        value = doc.get(key, default)
        if value is None:
            self.fail(f"{path}.{key}", "is required")
            return lo
        if not isinstance(value, int) or isinstance(value, bool):
            self.fail(f"{path}.{key}", "must be an integer")
            return lo
        if not lo <= value <= hi:
            self.fail(f"{path}.{key}", f"must be in {lo}..{hi}")
        return value

    def number(self, doc: dict, key: str, path: str, lo: float, hi: float, default=None):
        value = doc.get(key, default)
        if value is None:
            self.fail(f"{path}.{key}", "is required")
            return lo
        if (
            isinstance(value, bool)
            or not isinstance(value, int | float)
            or not math.isfinite(value)
        ):
            self.fail(f"{path}.{key}", "must be a number")
            return lo
        if not lo <= value <= hi:
            self.fail(f"{path}.{key}", f"must be in {lo}..{hi}")
        return float(value)

    def choice(self, doc: dict, key: str, path: str, options: tuple[str, ...], default=None):
        value = doc.get(key, default)
        if value not in options:
            self.fail(f"{path}.{key}", f"must be one of {', '.join(options)}")
            return options[0]
        return value


def parse_submission(doc: Any) -> Submission:
    """Validate a submission document; raise SubmissionInvalid listing every problem."""
    check = _Checker()
    top = check.mapping(doc, "submission", {"plugin", "plugin_info"})
    plugin = check.choice(top, "plugin", "submission", EXECUTORS)
    info_path = "plugin_info"
    info = check.mapping(
        top.get("plugin_info"),
        info_path,
        {
            "cmd",
            "entry_point",
            "img",
            "init_size",
            "redis_workload",
            "control_plugin",
            "control_parameters",
            "monitor_plugin",
            "monitor_info",
            "env_vars",
            "enclave_heap_mb",
            "max_retries",
            "lease_seconds",
            "username",
            "password",
            "config_id",
            "enable_visualizer",
            "visualizer_plugin",
            "visualizer_info",
        },
    )
    for secret_field in ("username", "password"):
        if secret_field in info:
            check.fail(
                f"{info_path}.{secret_field}",
                "credentials never go in the body: authenticate with the API token",
            )
    cmd = info.get("cmd")
    entry_point = info.get("entry_point")
    if (cmd is None) == (entry_point is None):
        check.fail(info_path, "give exactly one of cmd (a command) or entry_point (a task name)")
    if cmd is not None and (
        not isinstance(cmd, list) or not cmd or not all(isinstance(c, str) for c in cmd)
    ):
        check.fail(f"{info_path}.cmd", "must be a non-empty list of strings")
    if entry_point is not None and (not isinstance(entry_point, str) or not entry_point):
        check.fail(f"{info_path}.entry_point", "must be a task name")
    image = info.get("img")
    if plugin == "kubejobs" and not isinstance(image, str):
        check.fail(f"{info_path}.img", "the kubejobs executor needs a container image")

    workload = info.get("redis_workload")
    items, url = None, None
    if isinstance(workload, list):
        if not 1 <= len(workload) <= MAX_ITEMS:
            check.fail(f"{info_path}.redis_workload", f"must hold 1..{MAX_ITEMS} items")
        elif not all(isinstance(i, str) for i in workload):
            check.fail(f"{info_path}.redis_workload", "items must be strings")
        else:
            items = tuple(workload)
    elif isinstance(workload, str) and workload.startswith(("redis://", "file://")):
        url = workload
    else:
        check.fail(
            f"{info_path}.redis_workload",
            "must be a list of items, a redis://host:port/db#key URL or a file:// URL",
        )

    check.choice(info, "control_plugin", info_path, CONTROL_PLUGINS, default="kubejobs")
    check.choice(info, "monitor_plugin", info_path, MONITOR_PLUGINS, default="kubejobs")
    cp_path = f"{info_path}.control_parameters"
    cp = check.mapping(
        info.get("control_parameters", {}),
        cp_path,
        {
            "schedule_strategy",
            "actuation_size",
            "min_rep",
            "max_rep",
            "trigger_up",
            "trigger_down",
            "check_interval",
            "cooldown",
            "heuristic_options",
            "actuator",
            "metric_source",
        },
    )
    min_rep = check.integer(cp, "min_rep", cp_path, 1, 1000, default=1)
    max_rep = check.integer(cp, "max_rep", cp_path, 1, 1000, default=10)
    if max_rep < min_rep:
        check.fail(f"{cp_path}.max_rep", f"must be ≥ min_rep ({min_rep})")
    h_path = f"{cp_path}.heuristic_options"
    h = check.mapping(
        cp.get("heuristic_options", {}),
        h_path,
        {"proportional_gain", "integral_gain", "derivative_gain", "feed_forward"},
    )
    feed_forward = h.get("feed_forward", True)
    if not isinstance(feed_forward, bool):
        check.fail(f"{h_path}.feed_forward", "must be true or false")
    gains = Gains(
        proportional_gain=check.number(h, "proportional_gain", h_path, 0, 1000, default=5.0),
        integral_gain=check.number(h, "integral_gain", h_path, 0, 1000, default=0.5),
        derivative_gain=check.number(h, "derivative_gain", h_path, 0, 1000, default=0.0),
        feed_forward=bool(feed_forward),
    )
    control = ControlParameters(
        schedule_strategy=check.choice(
            cp, "schedule_strategy", cp_path, STRATEGIES, default="default"
        ),
        actuation_size=check.integer(cp, "actuation_size", cp_path, 1, 1000, default=1),
        min_rep=min_rep,
        max_rep=max_rep,
        trigger_up=check.number(cp, "trigger_up", cp_path, 0, 1, default=0.0),
        trigger_down=check.number(cp, "trigger_down", cp_path, 0, 1, default=0.0),
        check_interval=check.number(cp, "check_interval", cp_path, 0.1, 3600, default=5.0),
        cooldown=check.number(cp, "cooldown", cp_path, 0, 3600, default=0.0),
        gains=gains,
    )
    init_size = check.integer(info, "init_size", info_path, 1, 1000, default=min_rep)
    if not min_rep <= init_size <= max_rep:
        check.fail(
            f"{info_path}.init_size", f"must be within min_rep..max_rep ({min_rep}..{max_rep})"
        )
    mi_path = f"{info_path}.monitor_info"
    mi = check.mapping(info.get("monitor_info", {}), mi_path, {"expected_time"})
    expected_time = check.number(mi, "expected_time", mi_path, 1, 30 * 86400)
    env_vars = info.get("env_vars", {}) or {}
    if not isinstance(env_vars, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in env_vars.items()
    ):
        check.fail(f"{info_path}.env_vars", "must map names to strings")
        env_vars = {}
    if check.problems:
        raise SubmissionInvalid("; ".join(check.problems))
    return Submission(
        plugin=plugin,
        cmd=tuple(cmd) if cmd else None,
        entry_point=entry_point,
        image=image,
        init_size=init_size,
        workload=items,
        workload_url=url,
        control=control,
        expected_time=expected_time,
        env_vars=dict(env_vars),
        enclave_heap_mb=check.integer(info, "enclave_heap_mb", info_path, 1, 4096, default=32),
        max_retries=check.integer(info, "max_retries", info_path, 0, 100, default=3),
        lease_seconds=check.number(info, "lease_seconds", info_path, 1, 86400, default=60),
        document=doc,
    )
