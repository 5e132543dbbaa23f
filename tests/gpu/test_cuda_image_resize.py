"""toc_image_resize, the device twin of the Pillow-compatible resize, against the CPU op on the
same inputs: uint8 [H, W, C] must give the same bits (integer fixed point), float32 [C, H, W]
too on x86-64, where neither side fuses the fp64 multiply-adds (the weights are computed on the
host by the same code in both libraries)."""

from __future__ import annotations

import platform

import pytest

torch = pytest.importorskip("torch")

from inference_pio import cuda, ops  # noqa: E402
from inference_pio.dtypes import DType  # noqa: E402
from inference_pio.errors import NativeError  # noqa: E402
from inference_pio.ops.image import BICUBIC, BILINEAR, LANCZOS  # noqa: E402
from inference_pio.testing import torch_bridge as tb  # noqa: E402

theirs = tb.from_device
ours = tb.to_device

if not cuda.is_available():
    pytest.skip(f"CUDA unavailable: {cuda.unavailable_reason()}", allow_module_level=True)

DEV = "cuda:0"
# An fp64 sum of products differs from its fused form in the last bits of fp64 only, so after
# rounding to fp32 the two agree except for an occasional last-bit flip (more where the negative
# lobes cancel); a CPU build that fuses (e.g. aarch64, where FMA is baseline) gets that tolerance.
EXACT_F32 = platform.machine().lower() in ("x86_64", "amd64")


SIZES = [
    ((37, 53), (64, 96)),  # upscale
    ((120, 90), (33, 47)),  # downscale
    ((64, 64), (64, 31)),  # horizontal only
    ((50, 40), (17, 40)),  # vertical only
    ((7, 300), (96, 32)),  # non-square, up one axis and down the other
    ((31, 31), (31, 31)),  # identity (a copy)
    ((1, 1), (5, 7)),  # one pixel
    ((9, 13), (1, 1)),
    ((1, 40), (3, 9)),
    ((25, 1), (7, 1)),
    ((600, 5), (3, 2)),  # wide kernels (support scaled by 200)
]


@pytest.mark.parametrize("resample", [BILINEAR, BICUBIC, LANCZOS])
@pytest.mark.parametrize("c", [1, 3, 4])
@pytest.mark.parametrize(("src", "dst"), SIZES)
def test_resize_matches_cpu(
    src: tuple[int, int], dst: tuple[int, int], c: int, resample: int
) -> None:
    (h, w), size = src, dst
    g = torch.Generator().manual_seed(h * 1000 + w * 10 + c + resample)
    img = torch.randint(0, 256, (h, w, c), dtype=torch.uint8, generator=g)
    cpu = theirs(ops.image_resize(ours(img), size, resample))
    gpu = theirs(ops.image_resize(ours(img, DEV), size, resample))
    assert torch.equal(gpu, cpu)

    planar = (torch.rand(c, h, w, generator=g) - 0.25) * 300
    cpu = theirs(ops.image_resize(ours(planar), size, resample))
    gpu = theirs(ops.image_resize(ours(planar, DEV), size, resample))
    if EXACT_F32:
        assert torch.equal(gpu, cpu)
    else:
        torch.testing.assert_close(gpu, cpu, rtol=1e-6, atol=1e-5)


def test_bad_arguments_are_errors_not_crashes() -> None:
    img = ours(torch.zeros(4, 4, 3, dtype=torch.uint8), DEV)
    out = ours(torch.zeros(2, 2, 3, dtype=torch.uint8), DEV)
    fn = cuda.function("image_resize", DEV)
    u8, f32 = int(DType.uint8), int(DType.float32)
    bad = [
        ((img.data_ptr, out.data_ptr, 4, 4, 3, 0, 2, BICUBIC, u8), "sizes"),
        ((img.data_ptr, out.data_ptr, 4, -1, 3, 2, 2, BICUBIC, u8), "sizes"),
        ((img.data_ptr, out.data_ptr, 4, 4, 3, 2, 2, 9, u8), "filter"),
        ((img.data_ptr, out.data_ptr, 4, 4, 3, 2, 2, BICUBIC, int(DType.bfloat16)), "dtype"),
        ((None, out.data_ptr, 4, 4, 3, 2, 2, BICUBIC, u8), "NULL"),
        ((img.data_ptr, None, 4, 4, 3, 2, 2, BICUBIC, f32), "NULL"),
    ]
    for args, match in bad:
        with pytest.raises(NativeError, match=match):
            cuda.check(fn(*args), "toc_image_resize")
    # weights are uploaded from the host, so a graph capture is refused cleanly
    cuda.check(cuda.lib().toc_graph_begin(), "toc_graph_begin")
    try:
        with pytest.raises(NativeError, match="captured"):
            cuda.check(
                fn(img.data_ptr, out.data_ptr, 4, 4, 3, 2, 2, BICUBIC, u8), "toc_image_resize"
            )
    finally:
        cuda.lib().toc_graph_abort()
    # the device still works afterwards
    good = torch.arange(48, dtype=torch.uint8).reshape(4, 4, 3)
    cpu = theirs(ops.image_resize(ours(good), (2, 2)))
    assert torch.equal(theirs(ops.image_resize(ours(good, DEV), (2, 2))), cpu)
