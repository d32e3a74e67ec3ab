"""Analogy samples and splits: which pair is the exemplar and which the query, and where each sample goes.

A sample is (exemplar pair, query pair) of one task, never the same pair twice. Like the authors'
script, pairs are rotated within a task: in a seeded order p_0..p_{n-1}, round k = 1, 2, ... gives
(p_i, p_{(i+k) mod n}) for every i, so every pair serves as exemplar and as query before any
combination repeats, until the per-task cap. Each ordered combination appears at most once.

Splits: unseen tasks go whole to test_unseen. In a seen task, ``test_per_task`` pairs are drawn as
test queries; each gets one test_seen sample whose exemplar is a training pair, and those query
pairs are removed from the task's training pool, so no test query ever appears in train.jsonl, as
query or as exemplar (the paper does not promise this; we do). A small task gives fewer test
queries: at most ``max_test_fraction`` of its pairs (by default half, so a task never keeps fewer
training pairs than it has test queries), and never so many that fewer than ``MIN_TRAIN_PAIRS`` remain.

With k exemplar pairs per test sample (``data.exemplar_pairs``), a sample's pairs are its exemplar and
the pairs after it in the same cycle (the training pool for a seen task, the task's order for an unseen
one), skipping the sample's query: the query is never among its exemplars, and a seen test query never
serves as anyone's exemplar.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TypeVar

from ..errors import RelationError

T = TypeVar("T")

MIN_TRAIN_PAIRS = 2  # a seen task keeps at least this many pairs for training


@dataclass
class TaskPlan:
    """The samples of one task, as (exemplar, query) pairs of pair ids."""

    task: str
    unseen: bool
    pairs: int
    train: list[tuple[int, int]] = field(default_factory=list)
    test: list[tuple[int, int]] = field(default_factory=list)
    test_exemplars: list[list[int]] = field(default_factory=list)  # per test sample: its k exemplar pairs
    test_only: bool = False  # a seen task kept whole for test_seen (a synthetic family's new instance)

    @property
    def test_queries(self) -> set[int]:
        return {q for _, q in self.test}


def rotate(pairs: Sequence[T], limit: int) -> list[tuple[T, T]]:
    """(pairs[i], pairs[(i + k) % n]) for k = 1..n-1 and i = 0..n-1, the first ``limit`` of them."""
    n, out = len(pairs), []
    for k in range(1, n):
        for i in range(n):
            if len(out) >= limit:
                return out
            out.append((pairs[i], pairs[(i + k) % n]))
    return out


def count_test_queries(pairs: int, test_per_task: int, cap: int, max_test_fraction: float) -> int:
    """How many of a seen task's ``pairs`` become test queries: ``test_per_task``, less where the task is
    small (at most ``floor(max_test_fraction * pairs)``, at least ``MIN_TRAIN_PAIRS`` left) or ``cap`` is."""
    by_size = math.floor(max_test_fraction * pairs + 1e-9)  # 1e-9: 0.29 * 100 is 28.999999999999996
    return max(0, min(test_per_task, by_size, pairs - MIN_TRAIN_PAIRS, cap))


def plan_task(
    task: str, pair_ids: Sequence[int], seed: int, unseen: bool, cap: int, test_per_task: int,
    max_test_fraction: float, exemplar_pairs: int = 1, test_only: bool = False,
) -> TaskPlan:  # fmt: skip
    """All samples of one task. ``cap`` bounds the task's samples over all splits together; a seen task's
    test queries are :func:`count_test_queries` of its size; each test sample gets up to ``exemplar_pairs``
    exemplar pairs (fewer when the task has fewer to give). ``test_only``: a seen task that goes whole to
    test_seen like an unseen one to test_unseen (a held-out instance of a synthetic family)."""
    order = list(pair_ids)
    random.Random(f"{seed}/{task}").shuffle(order)  # str seeds are hashed with sha512: stable across runs
    plan = TaskPlan(task, unseen, len(order), test_only=test_only)
    if unseen or test_only:
        plan.test = rotate(order, min(test_per_task, cap))
        plan.test_exemplars = [following(order, e, q, exemplar_pairs) for e, q in plan.test]
        return plan
    n_test = count_test_queries(len(order), test_per_task, cap, max_test_fraction)
    queries, pool = order[:n_test], order[n_test:]
    # Each test query gets its own exemplar from the training pool, cycling through it.
    plan.test = [(pool[j % len(pool)], q) for j, q in enumerate(queries)]
    plan.test_exemplars = [following(pool, e, q, exemplar_pairs) for e, q in plan.test]
    plan.train = rotate(pool, cap - n_test)
    return plan


def following(cycle: Sequence[int], first: int, query: int, k: int) -> list[int]:
    """``first`` and the pairs after it in ``cycle`` (wrapping around), without ``query``: at most k."""
    start = cycle.index(first)
    ring = [cycle[(start + j) % len(cycle)] for j in range(len(cycle))]
    return [p for p in ring if p != query][:k]


def choose_unseen(tasks: Sequence[str], count: int, names: Sequence[str], seed: int) -> list[str]:
    """The named tasks, then seeded random others until ``count`` tasks in all are held out."""
    known = set(tasks)
    unknown = [n for n in names if n not in known]
    if unknown:
        shown = ", ".join(sorted(known)[:20]) + (" ..." if len(known) > 20 else "")
        raise RelationError(f"unseen task '{unknown[0]}': not among the dataset's usable tasks ({shown})")
    chosen = list(dict.fromkeys(names))
    rest = sorted(known - set(chosen))
    random.Random(f"{seed}/unseen").shuffle(rest)
    chosen += rest[: max(0, count - len(chosen))]
    if len(chosen) >= len(known):
        raise RelationError(
            f"holding out {len(chosen)} of {len(known)} tasks as unseen leaves none to train on "
            "(lower --unseen-tasks or name fewer --unseen-task)"
        )
    return sorted(chosen)
