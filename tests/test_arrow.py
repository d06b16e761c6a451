"""Arrow routing from TT cores: the input directions equal the dense SVD's, routing follows the
expert whose direction the tokens carry, experts can be added, bad inputs are refused."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from studies import arrow
from tests.tinymodels import random_expert, tiny_bert, tiny_expert
from ttmoe_core import tt


@pytest.mark.parametrize("m,n,rank", [([4, 3], [3, 4], 2), ([2, 3, 2], [4, 3], 3), ([8, 6], [6, 8], 5)])
def test_input_directions_match_dense_svd(m, n, rank):
    gen = torch.Generator().manual_seed(sum(m) + rank)
    cores = [torch.randn(s, generator=gen, dtype=torch.float64) for s in tt.core_shapes(m, n, rank)]
    dirs, sing = arrow.input_directions(cores, m, n, alpha=2.0, top=2)
    dense = 2.0 * tt.reconstruct(cores, m, n)                              # [d_out, d_in]
    _, s, vh = torch.linalg.svd(dense)
    torch.testing.assert_close(sing, s[:2])
    for k in range(2):   # same direction up to sign
        assert abs(float(dirs[k] @ vh[k])) == pytest.approx(1.0, abs=1e-8)
    torch.testing.assert_close(dirs @ dirs.T, torch.eye(2, dtype=torch.float64))


def _planted(template, name: str, direction: torch.Tensor, seed: int):
    """An expert whose every ΔW maps ``direction`` (input space) strongly: rank-1 cores."""
    expert = random_expert(template, name, rank=1, seed=seed, scale=0.0)
    tensors = dict(expert.tensors)
    for key in list(tensors):
        if ".cores.0" not in key:
            continue
        module = key.rsplit(".cores.", 1)[0]
        layout = template.tt_layout[module.rpartition(".")[2]]
        m, n = layout["in_factors"], layout["out_factors"]
        shapes = tt.core_shapes(m, n, 1)
        # a rank-1 TT chain of x ↦ ⟨direction, x⟩·u: TT-SVD of the outer product
        u = torch.ones(int(torch.tensor(n).prod())) / 10
        cores = tt.tt_svd(torch.outer(u, direction), m, n, 1)
        for k, shape in enumerate(shapes):
            tensors[f"{module}.cores.{k}"] = cores[k].reshape(shape).float()
    return dataclasses.replace(expert, tensors=tensors)


def test_arrow_routes_to_the_expert_whose_direction_the_tokens_carry():
    bb = tiny_bert()
    template = tiny_expert(bb, "sst2", rank=2, steps=1)
    hidden = bb.info.hidden_size
    basis = torch.eye(hidden)
    experts = [_planted(template, f"e{i}", basis[i], seed=i) for i in range(3)]
    router = arrow.ArrowRouter(experts, top=1, temperature=0.1)
    assert router.directions.shape == (2 * bb.info.num_layers, 3, 1, hidden)
    states = [torch.zeros(3, 4, hidden) for _ in range(bb.info.num_layers + 1)]
    for row in range(3):           # row r's tokens lie along expert r's direction
        for s in states:
            s[row, :, row] = 5.0
    mask = torch.ones(3, 4, dtype=torch.long)
    for mode in ("arrow", "energy"):
        scores = router.scores(states, mask, mode)
        assert scores.shape == (3, 3)
        torch.testing.assert_close(scores.sum(-1), torch.ones(3))
        assert scores.argmax(-1).tolist() == [0, 1, 2]
    # padding tokens do not count
    states[0][0, 3, :] = 0.0
    states[0][0, 3, 2] = 100.0
    mask[0, 3] = 0
    assert router.scores(states, mask).argmax(-1)[0] == 0
    # a fourth expert joins without changing the others' prototypes
    before = router.directions.clone()
    router.add(_planted(template, "e3", basis[3], seed=3))
    assert router.names == ["e0", "e1", "e2", "e3"]
    torch.testing.assert_close(router.directions[:, :3], before)
    assert router.directions.shape[1] == 4


def test_route_runs_the_base_model_on_a_batch():
    bb = tiny_bert()
    experts = [tiny_expert(bb, "sst2", rank=2, steps=2, seed=s, name=f"x{s}") for s in range(2)]
    router = arrow.ArrowRouter(experts)
    from ttmoe_core.base.backbone import tokenize

    batch = tokenize(bb.tokenizer, ["a fine film", "dull"], None, 16, torch.device("cpu"))
    scores = router.route(bb.model, batch)
    assert scores.shape == (2, 2) and torch.isfinite(scores).all()


def test_arrow_errors():
    bb = tiny_bert()
    expert = tiny_expert(bb, "sst2", rank=2, steps=1)
    with pytest.raises(arrow.ArrowError):
        arrow.ArrowRouter([])
    no_cores = dataclasses.replace(expert, tensors={k: v for k, v in expert.tensors.items()
                                                    if k.startswith("head.")})
    with pytest.raises(arrow.ArrowError, match="no TT cores"):
        arrow.expert_directions(no_cores.tensors, no_cores.tt_layout, 1.0)
    router = arrow.ArrowRouter([expert])
    with pytest.raises(arrow.ArrowError, match="inputs of layers"):
        router.scores([torch.zeros(1, 2, bb.info.hidden_size)], torch.ones(1, 2))
    states = [torch.zeros(1, 2, bb.info.hidden_size)] * (bb.info.num_layers + 1)
    with pytest.raises(arrow.ArrowError, match="unknown Arrow mode"):
        router.scores(states, torch.ones(1, 2), mode="nope")


def test_standardised_decision_compares_experts_on_their_own_scale():
    bb = tiny_bert()
    router = arrow.ArrowRouter([tiny_expert(bb, "sst2", rank=2, steps=1)])
    router.names = ["a", "b"]
    scores = torch.tensor([[0.9, 0.1], [0.8, 0.2], [0.7, 0.3]])      # expert a always larger
    assert router.decide(scores).tolist() == [0, 0, 0]
    router.standardise(scores)
    assert router.decide(scores).tolist() == [0, 0, 1]      # z: (1,-1), (0,0), (-1,1)
    torch.testing.assert_close(router.center, scores.mean(0))
    assert router.decide(torch.tensor([[0.7, 0.35]])).tolist() == [1]
