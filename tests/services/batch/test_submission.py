"""The submission format: every problem named by its path, credentials refused."""

import pytest

from securecloud.services.batch.errors import SubmissionInvalid
from securecloud.services.batch.submission import parse_submission


def valid(**info):
    base = {
        "entry_point": "sleep",
        "init_size": 1,
        "redis_workload": ["0.1", "0.2"],
        "control_plugin": "kubejobs",
        "control_parameters": {
            "schedule_strategy": "pid",
            "min_rep": 1,
            "max_rep": 4,
            "trigger_up": 0.05,
            "trigger_down": 0.05,
            "check_interval": 2,
            "actuation_size": 1,
            "heuristic_options": {
                "proportional_gain": 4,
                "integral_gain": 0.2,
                "derivative_gain": 0,
            },
        },
        "monitor_plugin": "kubejobs",
        "monitor_info": {"expected_time": 60},
        "env_vars": {"REGION": "north"},
        "enclave_heap_mb": 24,
    }
    base.update(info)
    return {"plugin": "local", "plugin_info": base}


def test_a_complete_submission_parses_with_its_units():
    sub = parse_submission(valid())
    assert sub.workload == ("0.1", "0.2") and sub.entry_point == "sleep"
    assert sub.control.schedule_strategy == "pid" and sub.control.gains.proportional_gain == 4.0
    assert (sub.expected_time, sub.control.check_interval, sub.enclave_heap_mb) == (60.0, 2.0, 24)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"cmd": ["x"]}, "give exactly one of cmd"),
        ({"entry_point": None}, "give exactly one of cmd"),
        ({"init_size": 9}, "plugin_info.init_size: must be within min_rep..max_rep (1..4)"),
        ({"redis_workload": "ftp://x"}, "plugin_info.redis_workload"),
        ({"redis_workload": []}, "plugin_info.redis_workload: must hold"),
        ({"monitor_info": {}}, "plugin_info.monitor_info.expected_time: is required"),
        ({"monitor_info": {"expected_time": "soon"}}, "expected_time: must be a number"),
        ({"control_parameters": {"min_rep": 5, "max_rep": 2}}, "max_rep: must be ≥ min_rep (5)"),
        (
            {"control_parameters": {"schedule_strategy": "magic"}},
            "schedule_strategy: must be one of",
        ),
        ({"control_parameters": {"trigger_up": 2}}, "trigger_up: must be in 0..1"),
        (
            {"control_parameters": {"heuristic_options": {"proportional_gain": "high"}}},
            "proportional_gain: must be a number",
        ),
        ({"password": "hunter2"}, "plugin_info.password: credentials never go in the body"),
        ({"env_vars": {"A": 1}}, "plugin_info.env_vars: must map names to strings"),
        ({"surprise": 1}, "plugin_info.surprise: unknown field"),
    ],
)
def test_invalid_submissions_name_the_field(change, message):
    doc = valid(**change)
    doc["plugin_info"] = {k: v for k, v in doc["plugin_info"].items() if v is not None}
    with pytest.raises(SubmissionInvalid) as caught:
        parse_submission(doc)
    assert message in str(caught.value)


def test_all_problems_are_listed_at_once():
    with pytest.raises(SubmissionInvalid) as caught:
        parse_submission({"plugin": "spark", "plugin_info": {"init_size": 0}})
    text = str(caught.value)
    for field in (
        "submission.plugin",
        "plugin_info: give exactly one",
        "redis_workload",
        "init_size",
        "expected_time",
    ):
        assert field in text


def test_kubejobs_needs_an_image():
    doc = valid()
    doc["plugin"] = "kubejobs"
    with pytest.raises(SubmissionInvalid, match=r"plugin_info\.img"):
        parse_submission(doc)
