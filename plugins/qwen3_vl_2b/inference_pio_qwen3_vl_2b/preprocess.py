"""Image preprocessing of Qwen3-VL (models.md §6.2): Pillow decodes and resizes, our native ops
normalise and cut patches.

An image is decoded, converted to RGB and resized by Pillow (bicubic) to the "smart" size (both
sides a multiple of patch x merge = 32, the pixel count within the processor's bounds),
normalised to fp32 (``ops.image_normalize``) and cut into patches (``ops.patchify``) in the 2x2
merge-block order the vision tower expects. This is transformers' ``Qwen2VLImageProcessorPil``
path: the same sizes, the same patch order, values within fp32 rounding.
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from inference_pio import ops
from inference_pio.checkpoint import read_json
from inference_pio.dtypes import DType
from inference_pio.tensor import Tensor

#: Anything :func:`load_image` takes: a path, encoded image bytes, or a ``PIL.Image.Image``.
ImageSource = str | Path | bytes | Any

MAX_ASPECT = 200


@dataclass(frozen=True)
class ProcessorConfig:
    """The fields of ``preprocessor_config.json`` that change the result."""

    min_pixels: int = 256 * 256
    max_pixels: int = 4096 * 4096
    patch_size: int = 16
    temporal_patch_size: int = 2
    merge_size: int = 2
    image_mean: tuple[float, float, float] = (0.5, 0.5, 0.5)
    image_std: tuple[float, float, float] = (0.5, 0.5, 0.5)
    rescale_factor: float = 1 / 255

    @classmethod
    def from_file(cls, path: Path) -> ProcessorConfig:
        """Reads ``preprocessor_config.json`` when it exists (Qwen3-VL's defaults otherwise)."""
        if not path.is_file():
            return cls()
        data = read_json(path)  # CheckpointError naming the file: bad JSON, not an object
        size = data.get("size") or {}
        if not isinstance(size, dict) or (
            size and not {"shortest_edge", "longest_edge"} <= set(size)
        ):
            raise ValueError(
                f"{path.name}: 'size' needs 'shortest_edge' and 'longest_edge' (pixel counts), "
                f"got {size!r}"
            )
        # the processor's own steps, which this one does not make optional
        for key, default in (
            ("do_resize", True),
            ("do_rescale", True),
            ("do_normalize", True),
            ("do_convert_rgb", True),
        ):
            if data.get(key, default) is not default:
                raise ValueError(f"{path.name}: {key} = {data[key]!r} is not supported")
        if data.get("resample", 3) != 3:
            raise ValueError(f"{path.name}: only bicubic resampling (resample 3) is supported")
        base = cls()
        # top-level min_pixels / max_pixels override size, as in transformers
        min_pixels = data.get("min_pixels")
        max_pixels = data.get("max_pixels")
        values = {
            "min_pixels": min_pixels
            if min_pixels is not None
            else size.get("shortest_edge", base.min_pixels),
            "max_pixels": max_pixels
            if max_pixels is not None
            else size.get("longest_edge", base.max_pixels),
            "patch_size": data.get("patch_size", base.patch_size),
            "temporal_patch_size": data.get("temporal_patch_size", base.temporal_patch_size),
            "merge_size": data.get("merge_size", base.merge_size),
            "rescale_factor": data.get("rescale_factor", base.rescale_factor),
        }
        for key, value in values.items():
            if not isinstance(value, (int, float)) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"{path.name}: {key!r} must be a positive number, got {value!r}")
        mean = tuple(float(v) for v in data.get("image_mean", base.image_mean))
        std = tuple(float(v) for v in data.get("image_std", base.image_std))
        if len(mean) != 3 or len(std) != 3 or any(s == 0 for s in std):
            raise ValueError(f"{path.name}: image_mean / image_std need 3 values, std non-zero")
        return cls(
            min_pixels=int(values["min_pixels"]),
            max_pixels=int(values["max_pixels"]),
            patch_size=int(values["patch_size"]),
            temporal_patch_size=int(values["temporal_patch_size"]),
            merge_size=int(values["merge_size"]),
            image_mean=(mean[0], mean[1], mean[2]),
            image_std=(std[0], std[1], std[2]),
            rescale_factor=float(values["rescale_factor"]),
        )


@dataclass(frozen=True)
class PreparedImage:
    """One image ready for the vision tower."""

    patches: Tensor  #: fp32 ``[grid_h * grid_w, 3 * temporal * patch * patch]``, merge-block order
    grid_h: int  #: patches down
    grid_w: int  #: patches across
    merge: int  #: spatial merge size (2: four patches make one text token)

    @property
    def tokens(self) -> int:
        """Text tokens the image takes (one per merged block)."""
        return self.grid_h * self.grid_w // (self.merge * self.merge)


def smart_resize(
    height: int,
    width: int,
    factor: int = 32,
    min_pixels: int = 256 * 256,
    max_pixels: int = 4096**2,
) -> tuple[int, int]:
    """The processor's target size: both sides multiples of ``factor``, as close to the original
    as possible (Python's round-half-to-even), the pixel count within [min_pixels, max_pixels]."""
    if height < 1 or width < 1:
        raise ValueError(f"image size must be positive, got {height}x{width}")
    if max(height, width) / min(height, width) > MAX_ASPECT:
        raise ValueError(
            f"image aspect ratio {max(height, width) / min(height, width):.1f} exceeds "
            f"{MAX_ASPECT} ({height}x{width})"
        )
    h = round(height / factor) * factor
    w = round(width / factor) * factor
    if h * w > max_pixels:
        beta = math.sqrt(height * width / max_pixels)
        h = max(factor, math.floor(height / beta / factor) * factor)
        w = max(factor, math.floor(width / beta / factor) * factor)
    elif h * w < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        h = math.ceil(height * beta / factor) * factor
        w = math.ceil(width * beta / factor) * factor
    return h, w


def open_image(source: ImageSource | Tensor) -> Any:
    """An RGB ``PIL.Image`` of ``source``: a path, encoded bytes, a PIL image or a uint8
    ``[H, W, 3]`` tensor. Files that are missing or cannot be decoded raise ValueError."""
    from PIL import Image, ImageOps, UnidentifiedImageError

    if isinstance(source, Tensor):
        if source.dtype != DType.uint8 or source.ndim != 3 or source.shape[2] != 3:
            raise ValueError(f"an image tensor must be uint8 [H, W, 3], got {source.shape}")
        h, w, _ = source.shape
        return Image.frombytes("RGB", (w, h), source.to("cpu").tobytes())
    if isinstance(source, Image.Image):
        return _convert_to_rgb(source)
    else:
        try:
            if isinstance(source, (bytes, bytearray)):
                image = Image.open(io.BytesIO(bytes(source)))
            elif isinstance(source, (str, Path)):
                image = Image.open(Path(source))
            else:
                raise TypeError(
                    f"an image is a path, bytes or a PIL image, got {type(source).__name__}"
                )
            image.load()
            # transformers' load_image for files and bytes: EXIF orientation applied, alpha
            # dropped
            image = ImageOps.exif_transpose(image)
        except FileNotFoundError:
            raise ValueError(f"image file not found: {source!s}") from None
        except (UnidentifiedImageError, OSError, Image.DecompressionBombError) as exc:
            name = str(source) if isinstance(source, (str, Path)) else f"{len(source)} bytes"
            raise ValueError(f"cannot decode image {name}: {exc}") from None
    # load_image's RGB conversion keeps a transparent colour key (palette, RGB or grayscale
    # PNG/GIF with tRNS) in ``info``: the processor's convert_to_rgb then paints it white
    return _convert_to_rgb(image.convert("RGB"))


def _convert_to_rgb(image: Any) -> Any:
    """transformers' ``convert_to_rgb``: transparency (an alpha band or a transparent colour)
    composited onto white."""
    from PIL import Image

    if "A" in image.getbands() or image.info.get("transparency") is not None:
        white = Image.new("RGBA", image.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, image.convert("RGBA")).convert("RGB")
    return image.convert("RGB")


def load_image(source: ImageSource | Tensor) -> Tensor:
    """Decodes an image (path, encoded bytes or PIL image) to RGB uint8 ``[H, W, 3]``."""
    rgb = open_image(source)
    w, h = rgb.size
    return Tensor.frombuffer(bytearray(rgb.tobytes()), DType.uint8, (h, w, 3))


def prepare_image(source: ImageSource | Tensor, config: ProcessorConfig) -> PreparedImage:
    """Decodes, resizes, normalises and patchifies an image.

    The resize is Pillow's bicubic ``Image.resize``, the call transformers' Pillow path makes,
    so the pixels are those of the installed Pillow (Pillow 13 orders its two passes in a way
    ``ops.image_resize``, which does the horizontal pass first, does not always follow)."""
    from PIL import Image

    rgb = open_image(source)
    w, h = rgb.size
    factor = config.patch_size * config.merge_size
    th, tw = smart_resize(h, w, factor, config.min_pixels, config.max_pixels)
    if (th, tw) != (h, w):
        rgb = rgb.resize((tw, th), Image.Resampling.BICUBIC)
    pixels = Tensor.frombuffer(bytearray(rgb.tobytes()), DType.uint8, (th, tw, 3))
    planar = ops.image_normalize(
        pixels, config.image_mean, config.image_std, rescale=config.rescale_factor
    )
    patches = ops.patchify(
        planar,
        patch=config.patch_size,
        temporal=config.temporal_patch_size,
        merge=config.merge_size,
    )
    return PreparedImage(
        patches, th // config.patch_size, tw // config.patch_size, config.merge_size
    )


def prepare_images(
    sources: Sequence[ImageSource | Tensor], config: ProcessorConfig
) -> list[PreparedImage]:
    """:func:`prepare_image` of each source, in order."""
    return [prepare_image(s, config) for s in sources]
