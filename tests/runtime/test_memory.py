"""The enclave memory budget of a node."""

import os
import subprocess
import sys

import pytest

from securecloud.runtime.errors import BudgetError
from securecloud.runtime.memory import OVERCOMMITS, MemoryBudget


def test_reservations_within_the_budget_and_refusal_beyond(tmp_path):
    budget = MemoryBudget(tmp_path, budget_mb=93)
    budget.reserve("kvs", os.getpid(), 64)
    assert budget.free_mb() == 29
    with pytest.raises(BudgetError, match=r"needs 32 MB .* only 29 of 93 MB are free"):
        budget.reserve("sql", os.getpid(), 32)
    assert budget.free_mb() == 29  # the refusal reserved nothing


def test_overcommit_is_allowed_when_asked_and_counted(tmp_path):
    budget = MemoryBudget(tmp_path, budget_mb=10)
    before = OVERCOMMITS._value.get()
    budget.reserve("big", os.getpid(), 64, overcommit=True)
    assert OVERCOMMITS._value.get() == before + 1
    assert budget.reservations()[0].overcommit


def test_reservations_of_dead_processes_are_released(tmp_path):
    budget = MemoryBudget(tmp_path, budget_mb=93)
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    budget.reserve("gone", child.pid, 90)
    budget.reserve("alive", os.getpid(), 50)  # fits once the dead one is dropped
    assert [r.service for r in budget.reservations()] == ["alive"]


def test_release_frees_memory(tmp_path):
    budget = MemoryBudget(tmp_path, budget_mb=93)
    budget.reserve("kvs", os.getpid(), 64)
    budget.release(os.getpid())
    assert budget.free_mb() == 93
