import numpy as np
import pytest

from rvepfl.data.partition import make_partition, partition_indices
from rvepfl.errors import ConfigError

LABELS = np.repeat(np.arange(10), 100)  # 1,000 samples, 100 per class


def _check_disjoint(parts):
    joined = np.concatenate(parts)
    assert len(joined) == len(np.unique(joined))


@pytest.mark.parametrize("scheme", ["iid", "shards", "dirichlet"])
def test_partitions_are_disjoint_and_seeded(scheme):
    a = partition_indices(LABELS, 7, scheme, np.random.default_rng(1))
    b = partition_indices(LABELS, 7, scheme, np.random.default_rng(1))
    c = partition_indices(LABELS, 7, scheme, np.random.default_rng(2))
    assert len(a) == 7
    _check_disjoint(a)
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    assert not all(np.array_equal(x, y) for x, y in zip(a, c))


def test_iid_is_equal_shards_and_leaves_only_the_remainder():
    parts = partition_indices(LABELS, 7, "iid", np.random.default_rng(0))
    assert {len(p) for p in parts} == {1000 // 7}
    assert sum(len(p) for p in parts) == 1000 - 1000 % 7


def test_dirichlet_is_complete():
    parts = partition_indices(LABELS, 5, "dirichlet", np.random.default_rng(0), alpha=0.3)
    assert sorted(np.concatenate(parts).tolist()) == list(range(1000))


def test_shards_give_few_labels_per_client():
    parts = partition_indices(LABELS, 10, "shards", np.random.default_rng(0), shards_per_client=2)
    assert all(len(np.unique(LABELS[p])) <= 2 for p in parts)
    assert sum(len(p) for p in parts) == 1000


def test_small_alpha_is_more_skewed_than_large():
    def skew(alpha):
        parts = partition_indices(LABELS, 10, "dirichlet", np.random.default_rng(0), alpha=alpha)
        return np.mean([np.bincount(LABELS[p], minlength=10).max() / len(p) for p in parts])

    assert skew(0.1) > skew(100.0) + 0.2


def test_too_many_clients_is_a_config_error():
    with pytest.raises(ConfigError, match=r"Expected `data.num_clients` <= 500 for 1000 samples"):
        partition_indices(LABELS, 600, "iid", np.random.default_rng(0))


def test_combined_split_keeps_a_fixed_tenth_per_client():
    train_y, test_y = LABELS[:800], LABELS[800:]
    part = make_partition(train_y, test_y, num_clients=4, scheme="iid", split="combined",
                          test_fraction=0.1, rng=np.random.default_rng(0))
    for c in part.clients:
        assert len(c.test) == 25 and len(c.train) == 225
        assert not set(c.train) & set(c.test)
    _check_disjoint([np.concatenate([c.train, c.test]) for c in part.clients])


def test_standard_split_shares_test_images_by_label():
    train_y = np.repeat(np.arange(10), 80)
    test_y = np.repeat(np.arange(10), 20)
    part = make_partition(train_y, test_y, num_clients=5, scheme="shards", split="standard",
                          test_fraction=0.1, rng=np.random.default_rng(0), shards_per_client=2)
    pool = np.concatenate([train_y, test_y])
    for c in part.clients:
        assert c.train.max() < 800 and c.test.min() >= 800  # train from train, test from test
        assert set(np.unique(pool[c.test])) <= set(np.unique(pool[c.train]))
    assert sum(len(c.test) for c in part.clients) == 200


def test_label_counts_and_arrays():
    part = make_partition(LABELS[:900], LABELS[900:], num_clients=3, scheme="iid", split="combined",
                          test_fraction=0.1, rng=np.random.default_rng(0))
    counts = part.label_counts(LABELS, 10)
    assert sum(counts[0]["train"]) == len(part.clients[0].train)
    arrays = part.to_arrays()
    assert arrays["train_sizes"].tolist() == [len(c.train) for c in part.clients]
