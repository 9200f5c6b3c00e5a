"""The mutation check itself (tests/mutations.py): its mutations still apply to the code and name tests that
exist (cheap, every run); and, marked slow, that it kills two planted bugs without touching the repository."""

import re

import pytest

import mutations
from mutations import MUTATIONS, ROOT


def test_there_are_at_least_a_dozen_mutations_across_every_layer():
    assert len(MUTATIONS) >= 12
    assert len({m.name for m in MUTATIONS}) == len(MUTATIONS)
    assert {m.area for m in MUTATIONS} >= {"models", "emulator", "compiler", "runtime", "hil"}


@pytest.mark.parametrize("mutation", MUTATIONS, ids=lambda m: m.name)
def test_each_mutation_applies_once_and_names_tests_that_exist(mutation):
    """When the code moves, a mutation whose snippet is gone would survive silently: this says which to update."""
    mutations.check_applies(mutation)
    assert mutation.old != mutation.new
    for node in mutation.tests:
        path, _, function = node.partition("::")
        assert (ROOT / path).is_file(), node
        if function:
            assert re.search(rf"^def {re.escape(function)}\(", (ROOT / path).read_text(), re.M), node


@pytest.mark.slow  # two mutations and their baseline: about a minute
def test_the_check_kills_planted_bugs_in_a_copy_and_leaves_the_repository_alone():
    chosen = [m for m in MUTATIONS if m.name in ("crc-skipped", "fidelity-warns-at-equality")]
    before = {m.path: (ROOT / m.path).read_bytes() for m in chosen}
    results, baseline = mutations.run_check(chosen, progress=lambda line: None)
    assert baseline is not None and not baseline.failed and baseline.ran > 0
    assert [r.mutation.name for r in results] == [m.name for m in chosen]
    assert all(r.killed and r.outcome.failed for r in results), [r.killer for r in results]
    assert {path: (ROOT / path).read_bytes() for path in before} == before
