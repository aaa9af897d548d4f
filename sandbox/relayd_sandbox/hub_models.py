"""A realistic small model repo on the fake Hub: safetensors shards of generated content, their index,
the config files and a tokenizer, as a model repo on the Hub holds them."""

from __future__ import annotations

import json
import struct
from typing import TYPE_CHECKING

from relayd_sandbox.hub_store import Gated, Generated, RepoType

if TYPE_CHECKING:
    from relayd_sandbox.hub import Content, FakeHub


def _safetensors_header(name: str, size: int) -> bytes:
    """Return the prefix of a valid safetensors file of *size* bytes holding one U8 tensor *name*."""
    header = b""
    for _ in range(3):
        count = size - 8 - len(header)
        text = json.dumps(
            {
                "__metadata__": {"format": "pt"},
                name: {"dtype": "U8", "shape": [count], "data_offsets": [0, count]},
            },
            separators=(",", ":"),
        ).encode()
        header = text + b" " * (-len(text) % 8)
    return struct.pack("<Q", len(header)) + header


def _tokenizer_json(size: int) -> bytes:
    """Return a valid tokenizer.json-like document of exactly *size* bytes (or its minimum)."""
    vocab: dict[str, int] = {}
    head = b'{"version":"1.0","model":{"type":"BPE","vocab":'
    length = len(head) + 4
    while length < size - 32:
        token = f"tok{len(vocab)}"
        length += len(token) + len(str(len(vocab))) + 4
        vocab[token] = len(vocab)
    body = head + json.dumps(vocab, separators=(",", ":")).encode() + b"}}"
    return body[:-1] + b" " * max(0, size - len(body)) + b"}"


def make_model_repo(
    hub: FakeHub,
    repo_id: str,
    *,
    shards: int = 2,
    shard_size: int = 4 * 1024 * 1024,
    tokenizer_size: int = 64 * 1024,
    seed: int = 0,
    repo_type: RepoType = "model",
    private: bool = False,
    gated: Gated = False,
) -> str:
    """Create a realistic small model repo on *hub* and return its head sha.

    It holds ``model-0000i-of-0000N.safetensors`` shards of *shard_size* bytes (valid safetensors
    files of generated content, LFS), their index, ``config.json``, ``generation_config.json``,
    ``tokenizer.json`` (LFS once over the hub's threshold), ``README.md`` and ``.gitattributes``.
    """
    files: dict[str, Content] = {}
    weight_map: dict[str, str] = {}
    for index in range(1, shards + 1):
        name = f"model-{index:05d}-of-{shards:05d}.safetensors"
        tensor = f"model.layers.{index - 1}.weight"
        prefix = _safetensors_header(tensor, shard_size) if shard_size >= 256 else b""
        files[name] = Generated(shard_size, seed=seed * 1000 + index, prefix=prefix)
        weight_map[tensor] = name
    index_doc = {"metadata": {"total_size": shards * shard_size}, "weight_map": weight_map}
    files["model.safetensors.index.json"] = json.dumps(index_doc, indent=2)
    config = {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": 64,
        "num_hidden_layers": shards,
        "torch_dtype": "bfloat16",
        "vocab_size": 32000,
    }
    files["config.json"] = json.dumps(config, indent=2) + "\n"
    files["generation_config.json"] = json.dumps({"bos_token_id": 1, "eos_token_id": 2}, indent=2) + "\n"
    files["tokenizer.json"] = _tokenizer_json(tokenizer_size)
    files["README.md"] = (
        f"---\nlicense: apache-2.0\nlibrary_name: transformers\n---\n\n# {repo_id}\n\nA test model.\n"
    )
    return hub.create_repo(
        repo_id, repo_type=repo_type, private=private, gated=gated, files=files, message="Add model"
    )
