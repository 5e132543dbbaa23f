"""Image pad expansion and 3-D MRoPE positions against models.md §6.5 and transformers'
``Qwen3VLModel.get_rope_index``."""

from __future__ import annotations

import random

import pytest

from inference_pio_qwen3_vl_2b.positions import expand_image_pads, mrope_positions

IMG = 9


def test_the_reference_example() -> None:
    # a b <vs> [2x3 image] <ve> c <vs> [1x1 image] <ve> d e
    ids = [1, 2, 3] + [IMG] * 6 + [4, 5, 3, IMG, 4, 6, 7]
    (t, h, w), delta = mrope_positions(ids, IMG, [(2, 3), (1, 1)])
    assert t == [0, 1, 2, 3, 3, 3, 3, 3, 3, 6, 7, 8, 9, 10, 11, 12]
    assert h == [0, 1, 2, 3, 3, 3, 4, 4, 4, 6, 7, 8, 9, 10, 11, 12]
    assert w == [0, 1, 2, 3, 4, 5, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12]
    assert delta == -3


def test_text_only_positions_are_plain() -> None:
    (t, h, w), delta = mrope_positions([5, 6, 7], IMG, [])
    assert t == h == w == [0, 1, 2]
    assert delta == 0


def test_expand_and_mismatches() -> None:
    assert expand_image_pads([1, IMG, 2, IMG], IMG, [2, 3]) == [1, IMG, IMG, 2, IMG, IMG, IMG]
    with pytest.raises(ValueError, match="2 image placeholder"):
        expand_image_pads([IMG, IMG], IMG, [4])
    with pytest.raises(ValueError, match="fewer pads"):
        mrope_positions([1, IMG, IMG, 2], IMG, [(2, 2)])
    with pytest.raises(ValueError, match="more image tokens"):
        mrope_positions([1, IMG, 2], IMG, [])
    with pytest.raises(ValueError, match="fewer image tokens"):
        mrope_positions([1, 2], IMG, [(1, 1)])


@pytest.mark.parametrize("seed", range(6))
def test_random_layouts_match_transformers(seed: int) -> None:
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    from inference_pio_qwen3_vl_2b.testing import IMAGE, tiny_config

    rng = random.Random(seed)
    grids: list[tuple[int, int]] = []
    ids: list[int] = []
    for _ in range(rng.randint(1, 3)):
        ids += [rng.randrange(400) for _ in range(rng.randint(0, 4))] + [502]
        rows, cols = rng.randint(1, 5), rng.randint(1, 5)
        grids.append((rows, cols))
        ids += [IMAGE] * (rows * cols) + [503]
    ids += [rng.randrange(400) for _ in range(rng.randint(0, 4))]
    cfg = transformers.Qwen3VLConfig(**tiny_config())
    model = transformers.Qwen3VLModel(cfg)
    inp = torch.tensor([ids])
    want, delta = model.get_rope_index(
        inp,
        mm_token_type_ids=(inp == IMAGE).int(),
        image_grid_thw=torch.tensor([[1, 2 * r, 2 * c] for r, c in grids]),
    )
    got, got_delta = mrope_positions(ids, IMAGE, grids)
    assert got == want[:, 0].tolist()
    assert got_delta == int(delta)
