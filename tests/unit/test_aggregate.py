import pytest
import torch

from rvepfl.maths.aggregate import mean_state


def test_golden_mean_and_weighted_mean():
    a = {"w": torch.tensor([[1.0, 2.0]]), "b": torch.tensor([0.0])}
    b = {"w": torch.tensor([[3.0, 4.0]]), "b": torch.tensor([1.0])}
    c = {"w": torch.tensor([[5.0, 0.0]]), "b": torch.tensor([2.0])}
    assert mean_state([a, b, c])["w"].tolist() == [[3.0, 2.0]]
    assert mean_state([a, b, c])["b"].tolist() == [1.0]
    weighted = mean_state([a, b, c], weights=[1, 2, 1])
    assert weighted["w"].tolist() == [[3.0, 2.5]]
    assert weighted["b"].tolist() == [1.0]


def test_order_does_not_matter_and_dtype_is_kept():
    torch.manual_seed(0)
    states = [{"w": torch.randn(5, 5)} for _ in range(4)]
    forward = mean_state(states)["w"]
    backward = mean_state(states[::-1])["w"]
    assert torch.equal(forward, backward)
    assert forward.dtype == torch.float32


def test_mean_of_identical_states_is_the_state():
    s = {"w": torch.randn(3, 3)}
    assert torch.equal(mean_state([s, s, s])["w"], s["w"])


@pytest.mark.parametrize(
    "states, weights, match",
    [
        ([], None, "at least one state"),
        ([{"w": torch.zeros(2)}, {"v": torch.zeros(2)}], None, "keys"),
        ([{"w": torch.zeros(2)}, {"w": torch.zeros(3)}], None, "shape"),
        ([{"w": torch.zeros(2)}], [1, 2], "Expected 1 weights"),
        ([{"w": torch.zeros(2)}], [0], "positive sum"),
    ],
)
def test_bad_inputs(states, weights, match):
    with pytest.raises(ValueError, match=match):
        mean_state(states, weights)
