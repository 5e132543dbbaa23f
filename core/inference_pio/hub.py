"""Hugging Face Hub repo ids (``Qwen/Qwen3-0.6B``) as ``--model``: the checkpoint's files from the
local Hub cache, downloaded first where they are missing (``huggingface_hub``, the optional
``inference-pio[hub]`` extra), as transformers and vLLM resolve them."""

from __future__ import annotations

import re
from pathlib import Path

from inference_pio.errors import ModelNotFoundError

#: what a checkpoint needs: config, weights, tokenizer and chat template; not *.bin / *.pth
#: copies, GGUF or ONNX exports, nor a repo's ``original/`` weights
ALLOW_PATTERNS = ["*.json", "*.safetensors", "*.jinja"]
IGNORE_PATTERNS = ["original/*", "onnx/*", "gguf/*", "*.gguf"]

_NAME = r"[A-Za-z0-9][A-Za-z0-9_.-]*"
_REPO_ID = re.compile(rf"^{_NAME}/{_NAME}(@[A-Za-z0-9_./-]+)?$")


def looks_like_repo_id(text: str) -> bool:
    """``owner/name`` or ``owner/name@revision`` (an existing path is checked first by the
    caller)."""
    return bool(_REPO_ID.match(text)) and ".." not in text


def snapshot_path(text: str, progress: bool = True) -> Path:
    """The local snapshot directory of repo id ``text`` (``owner/name[@revision]``), downloading
    the files a checkpoint needs where the cache lacks them. Offline (``HF_HUB_OFFLINE=1`` or no
    network) a cached snapshot is used as it is. Raises ModelNotFoundError with the reason."""
    repo_id, _, revision = text.partition("@")
    try:
        from huggingface_hub import errors, snapshot_download
        from huggingface_hub.utils import (
            are_progress_bars_disabled,
            disable_progress_bars,
            enable_progress_bars,
        )
    except ImportError:
        raise ModelNotFoundError(
            f"{text!r} is not a local directory and looks like a Hugging Face repo id; install "
            f"`inference-pio[hub]` (huggingface_hub) to download it, or download it yourself "
            f"(`huggingface-cli download {repo_id} --local-dir ./{repo_id.split('/')[1]}`) and "
            f"pass the directory"
        ) from None
    quiet = not progress and not are_progress_bars_disabled()
    if quiet:
        disable_progress_bars()
    try:
        path = snapshot_download(
            repo_id,
            revision=revision or None,
            allow_patterns=ALLOW_PATTERNS,
            ignore_patterns=IGNORE_PATTERNS,
        )
    except errors.GatedRepoError:
        raise ModelNotFoundError(
            f"{repo_id!r} is gated on the Hugging Face Hub: accept its terms on the model's page "
            f"and log in (`huggingface-cli login` or HF_TOKEN)"
        ) from None
    except errors.RevisionNotFoundError:
        raise ModelNotFoundError(f"{repo_id!r} has no revision {revision!r} on the Hub") from None
    except errors.RepositoryNotFoundError:
        raise ModelNotFoundError(
            f"{text!r} is neither a local directory nor a model repo on the Hugging Face Hub "
            f"(private repos need `huggingface-cli login` or HF_TOKEN)"
        ) from None
    except errors.HFValidationError as exc:
        raise ModelNotFoundError(f"{text!r} is not a valid Hugging Face repo id: {exc}") from None
    except errors.LocalEntryNotFoundError:
        raise ModelNotFoundError(
            f"{text!r} is not a local directory, and as a Hugging Face repo id it is not in the "
            f"local Hub cache and the Hub cannot be reached "
            f"(offline, or HF_HUB_OFFLINE is set); download it where there is network and copy "
            f"the directory here"
        ) from None
    except (errors.HfHubHTTPError, OSError) as exc:
        raise ModelNotFoundError(
            f"downloading {repo_id!r} from the Hugging Face Hub failed: {exc}"
        ) from None
    finally:
        if quiet:
            enable_progress_bars()
    snapshot = Path(path)
    missing = _missing_weights(snapshot)
    if missing:
        raise ModelNotFoundError(
            f"the Hugging Face cache's copy of {text!r} ({snapshot}) is incomplete ({missing}): "
            f"offline only what was cached is used; download the rest where there is network "
            f"(`huggingface-cli download {repo_id}`)"
        )
    return snapshot


def _missing_weights(snapshot: Path) -> str:
    """What a snapshot lacks of its weights ("" when complete): no safetensors at all, or shards
    its index names (a cache left by AutoTokenizer / AutoConfig holds only json files)."""
    import json

    index = snapshot / "model.safetensors.index.json"
    if index.is_file():
        try:
            shards = set(json.loads(index.read_text(encoding="utf-8"))["weight_map"].values())
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            return ""  # the checkpoint loader reports a malformed index itself
        absent = sorted(name for name in shards if not (snapshot / name).exists())
        return f"no {', '.join(absent)}" if absent else ""
    return "" if any(snapshot.glob("*.safetensors")) else "no *.safetensors file"
