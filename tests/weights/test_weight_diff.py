"""weight_diff.py: bit-exact round trips, the manifest check, streaming over shards, the original's diffs, and
hostile or damaged inputs refused in one sentence before any work."""

import json
import os
import pathlib
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time

import numpy as np
import pytest
import torch
from compare_checkpoints import first_difference
from safetensors import safe_open
from safetensors.torch import save_file
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM

from alpaca import cli
from alpaca.testing.tiny_model import make_tiny_model
from alpaca.train.sft import DEFAULT_PAD_TOKEN, missing_special_tokens, smart_tokenizer_and_embedding_resize
from alpaca.weights import diff as weight_diff
from alpaca.weights import raw as raw_weights
from alpaca.weights import safetensors_stream

INTEGERS = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}  # diff tensors, by width


def perturb(model: torch.nn.Module, seed: int) -> None:
    """Small noise on every weight, plus what breaks arithmetic diffs: exponent jumps, inf, NaN, -0.0."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in model.parameters():
            flat = param.view(-1)
            flat.add_(torch.randn(flat.shape, generator=generator) * 1e-3)
            picks = torch.randint(0, flat.numel(), (8,), generator=generator)
            flat[picks[:4]] *= 2.0 ** torch.randint(-60, 60, (4,), generator=generator).float()
            flat[picks[4:]] = torch.tensor([float("inf"), float("-inf"), float("nan"), -0.0])


def make_tuned(raw_dir: pathlib.Path, out_dir: pathlib.Path, dtype: torch.dtype, seed: int = 0, **save) -> pathlib.Path:
    """A stand-in for a fine-tuned model: the raw model with its tokenizer and embeddings resized exactly as
    train.py does (missing pad/eos/bos/unk added, embeddings resized to len(tokenizer)), then perturbed."""
    tokenizer = AutoTokenizer.from_pretrained(raw_dir)
    model = AutoModelForCausalLM.from_pretrained(raw_dir, dtype=torch.float32)
    smart_tokenizer_and_embedding_resize(missing_special_tokens(tokenizer), tokenizer, model)
    perturb(model, seed)
    model.to(dtype).save_pretrained(out_dir, **save)
    tokenizer.save_pretrained(out_dir)
    return out_dir


def leftovers(parent: pathlib.Path) -> list[str]:
    return sorted(p.name for p in parent.iterdir() if ".partial-" in p.name)


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> pathlib.Path:
    return tmp_path_factory.mktemp("weight-diff")


@pytest.fixture(scope="module")
def tuned_bf16(tiny_model_dir, work) -> pathlib.Path:
    return make_tuned(tiny_model_dir, work / "tuned-bf16", torch.bfloat16)


@pytest.fixture(scope="module")
def diff_bf16(tiny_model_dir, tuned_bf16, work) -> pathlib.Path:
    return weight_diff.make_diff(str(tiny_model_dir), str(tuned_bf16), str(work / "diff-bf16"))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_round_trip_is_bit_exact_in_the_tuned_dtype(tiny_model_dir, tmp_path, dtype):
    tuned = make_tuned(tiny_model_dir, tmp_path / "tuned", dtype, seed=1)
    diff = weight_diff.make_diff(str(tiny_model_dir), str(tuned), str(tmp_path / "diff"))
    recovered = weight_diff.recover(str(tiny_model_dir), str(diff), str(tmp_path / "recovered"), test_inference=False)
    assert first_difference(str(tuned), str(recovered)) is None
    manifest = json.loads((diff / weight_diff.MANIFEST_NAME).read_text())
    assert {entry["dtype"] for entry in manifest["tensors"].values()} == {str(dtype).removeprefix("torch.")}
    assert manifest["pad_token_resize"]["added_tokens"] == 1  # the tiny raw tokenizer has no pad token
    assert manifest["pad_token_resize"]["pad_token"] == DEFAULT_PAD_TOKEN  # the token training added
    with safe_open(str(diff / "model.safetensors"), "pt") as f:  # diffs are integers as wide as the weights
        assert f.get_tensor("model.norm.weight").dtype == INTEGERS[dtype.itemsize]
    for name in ("config.json", "generation_config.json", "tokenizer_config.json", "tokenizer.json"):
        assert (tuned / name).read_bytes() == (diff / name).read_bytes() == (recovered / name).read_bytes()
    assert AutoTokenizer.from_pretrained(recovered).pad_token == DEFAULT_PAD_TOKEN


def test_round_trip_of_arbitrary_bit_patterns(tiny_model_dir, tmp_path):
    """Every float bit pattern (NaN payloads, inf, -0.0, subnormals, any exponent gap) comes back exactly."""
    generator = torch.Generator().manual_seed(0)

    def random_bits(shape, dtype):
        info = torch.iinfo(INTEGERS[dtype.itemsize])
        return torch.randint(info.min, info.max, shape, generator=generator, dtype=torch.int64).to(
            INTEGERS[dtype.itemsize]).view(dtype)

    shapes = {"matrix": (300, 7), "vector": (11,), "scalar": ()}
    for name, dtypes in (("raw", {}), ("tuned", {"f32": torch.float32, "bf16": torch.bfloat16, "f16": torch.float16})):
        model_dir = tmp_path / name
        model_dir.mkdir()
        for file in ("config.json", "tokenizer.json", "tokenizer_config.json"):
            (model_dir / file).write_bytes((tiny_model_dir / file).read_bytes())
        tensors = {f"{kind}.{tag}": random_bits(shape, dtypes.get(tag, torch.float32))
                   for kind, shape in shapes.items() for tag in ("f32", "bf16", "f16")}
        save_file(tensors, str(model_dir / "model.safetensors"), metadata={"format": "pt"})
    assert torch.isnan(safe_open(str(tmp_path / "tuned/model.safetensors"), "pt").get_tensor("matrix.f32")).any()
    diff = weight_diff.make_diff(str(tmp_path / "raw"), str(tmp_path / "tuned"), str(tmp_path / "diff"))
    recovered = weight_diff.recover(str(tmp_path / "raw"), str(diff), str(tmp_path / "out"), test_inference=False)
    assert first_difference(str(tmp_path / "tuned"), str(recovered)) is None


def test_streamed_pad_resize_equals_smart_tokenizer_and_embedding_resize(tiny_model_dir, tmp_path):
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    smart_tokenizer_and_embedding_resize({"pad_token": DEFAULT_PAD_TOKEN}, tokenizer, model)
    specs = safetensors_stream.checkpoint_tensors(tiny_model_dir)
    config = json.loads((tiny_model_dir / "config.json").read_text())
    tokenizer.save_pretrained(tmp_path / "tuned-tokenizer")
    added, vocab_size = raw_weights.vocabulary_resize(tiny_model_dir, config, tmp_path / "tuned-tokenizer",
                                                      model.config.vocab_size)
    assert (added, vocab_size) == (1, len(tokenizer))
    targets = {name: ("F32", tuple(p.shape)) for name, p in model.state_dict().items()}
    sources = raw_weights.match_raw_tensors(specs, targets, config, added, vocab_size, tiny_model_dir)
    for name, param in model.state_dict().items():
        split = min(100, param.shape[0] - 1)  # in blocks of rows, as streamed: one block ends mid-vocabulary
        streamed = np.concatenate([raw_weights.raw_operand(sources[name], start, stop, "F32")
                                   for start, stop in [(0, split), (split, param.shape[0])]])
        assert np.array_equal(streamed.view(np.uint32), param.numpy().reshape(-1).view(np.uint32)), name


@pytest.mark.slow
@pytest.mark.parametrize("rows,width", [(1, 64), (17, 64), (513, 128), (4097, 64), (32001, 4096), (70000, 192)])
def test_streamed_column_sums_add_in_pytorchs_order(rows, width):
    """The [PAD] row is the mean of the embedding rows: summed block by block in numpy, it must come out bit for
    bit as PyTorch's sum (on any number of threads), or the recovered [PAD] rows would not be the tuned ones."""
    generator = np.random.default_rng(rows)
    matrix = (generator.standard_normal((rows, width)) * generator.choice([1e-3, 1.0, 1e3], (rows, 1))).astype(
        np.float32)
    ours = raw_weights.cascade_column_sums((matrix[i:i + 1000] for i in range(0, rows, 1000)), rows, width)
    assert not np.array_equal(ours, matrix.sum(axis=0)) or rows < 64  # numpy's own order differs
    previous = torch.get_num_threads()
    try:
        for threads in (1, 2, 8):
            torch.set_num_threads(threads)
            expected = torch.from_numpy(matrix).sum(dim=0).numpy()
            assert np.array_equal(ours.view(np.uint32), expected.view(np.uint32)), threads
    finally:
        torch.set_num_threads(previous)


def test_mean_of_rows_of_any_width_and_dtype_matches_pytorch(tmp_path):
    generator = torch.Generator().manual_seed(0)
    tensors = {f"w{width}.{str(dtype)[6:]}": torch.randn(300, width, generator=generator).to(dtype)
               for width in (64, 100) for dtype in (torch.float32, torch.bfloat16, torch.float16)}
    save_file(tensors, str(tmp_path / "model.safetensors"))
    specs = safetensors_stream.checkpoint_tensors(tmp_path)
    for name, tensor in tensors.items():
        expected = tensor.float()[:299].mean(dim=0, keepdim=True).numpy()
        assert np.array_equal(raw_weights.mean_of_rows(specs[name], 299).view(np.uint32), expected.view(np.uint32))


def test_float_conversions_round_as_pytorch_does():
    patterns = np.random.default_rng(0).integers(0, 2**32, 200_000, dtype=np.uint64).astype(np.uint32)
    patterns[:6] = [0x7F800000, 0xFF800000, 0x7FC00001, 0xFFFFFFFF, 0x80000000, 0x00000001]  # inf, NaNs, -0, tiny
    values = patterns.view(np.float32)
    numbers = ~np.isnan(values)  # a NaN stays a NaN; its payload after rounding differs among PyTorch's kernels
    for name, dtype in (("BF16", torch.bfloat16), ("F16", torch.float16)):
        ours = safetensors_stream.from_float32(values, name)
        expected = torch.from_numpy(values.copy()).to(dtype)
        assert np.array_equal(ours.view(np.uint16)[numbers], expected.view(torch.int16).numpy().view(np.uint16)[
            numbers]), name
        back = safetensors_stream.to_float32(ours, name)  # widening is exact
        widened = torch.from_numpy(ours.view(np.int16)).view(dtype).float().numpy()
        same = ~np.isnan(widened)
        assert np.isnan(back[~same]).all() and np.array_equal(back.view(np.uint32)[same], widened.view(np.uint32)[
            same]), name


def test_special_tokens_read_from_files_agree_with_the_tokenizer(tiny_model_dir, tmp_path):
    variants = {"none": None, "unk": "<unk>", "new": "<pad>", "empty": ""}
    for label, pad in variants.items():
        tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
        if pad is not None:
            tokenizer.pad_token = pad
        tokenizer.save_pretrained(tmp_path / label)
        loaded = AutoTokenizer.from_pretrained(tmp_path / label)
        declared = raw_weights.declared_special_tokens(tmp_path / label)
        assert declared == {role: getattr(loaded, role) or None for role in declared}, label
        # train.py adds exactly the roles declared missing here
        assert set(missing_special_tokens(loaded)) == {role for role, token in declared.items() if token is None}
    with pytest.raises(FileNotFoundError, match="no tokenizer files"):
        raw_weights.declared_special_tokens(tmp_path)


def test_make_diff_and_recover_need_neither_torch_nor_transformers(tiny_model_dir, tuned_bf16, tmp_path, repo_dir):
    """What keeps their memory small: torch and transformers alone take ~350 MiB before any weight is read."""
    script = f"""
import sys, weight_diff
weight_diff.make_diff({str(tiny_model_dir)!r}, {str(tuned_bf16)!r}, {str(tmp_path / "diff")!r})
weight_diff.recover({str(tiny_model_dir)!r}, {str(tmp_path / "diff")!r}, {str(tmp_path / "out")!r},
                    test_inference=False)
print("LOADED", sorted(name for name in ("torch", "transformers") if name in sys.modules))
print("PEAK_KB", dict(line.split(":", 1) for line in open("/proc/self/status"))["VmHWM"].split()[0])
"""
    done = subprocess.run([sys.executable, "-c", script], cwd=repo_dir, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "LOADED []" in done.stdout
    peak_mib = int(done.stdout.split("PEAK_KB")[1].split()[0]) / 1024
    assert peak_mib < 150, peak_mib
    assert first_difference(str(tuned_bf16), str(tmp_path / "out")) is None


def test_sharded_checkpoints_in_and_out(tiny_model_dir, tmp_path):
    raw = tmp_path / "raw"
    AutoModelForCausalLM.from_pretrained(tiny_model_dir).save_pretrained(raw, max_shard_size="100KB")
    AutoTokenizer.from_pretrained(tiny_model_dir).save_pretrained(raw)
    tuned = make_tuned(tiny_model_dir, tmp_path / "tuned", torch.float16, max_shard_size="60KB")
    assert (raw / "model.safetensors.index.json").exists() and (tuned / "model.safetensors.index.json").exists()
    diff = weight_diff.make_diff(str(raw), str(tuned), str(tmp_path / "diff"), max_shard_size="50KB")
    recovered = weight_diff.recover(str(raw), str(diff), str(tmp_path / "out"), test_inference=False,
                                    max_shard_size="80KB")
    for out in (diff, recovered):
        index = json.loads((out / "model.safetensors.index.json").read_text())
        assert len(set(index["weight_map"].values())) > 2
        assert not (out / "model.safetensors").exists()
    assert first_difference(str(tuned), str(recovered)) is None
    model = AutoModelForCausalLM.from_pretrained(recovered)  # a normal sharded checkpoint
    assert model.dtype == torch.float16


def test_tied_embeddings_and_a_raw_tokenizer_with_pad(tmp_path):
    raw = make_tiny_model(str(tmp_path / "raw"))
    config = LlamaConfig.from_pretrained(raw)
    config.tie_word_embeddings = True
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(raw)
    with safe_open(str(raw / "model.safetensors"), "pt") as f:
        assert "lm_head.weight" not in f.keys()  # what makes tied checkpoints special
    tuned = make_tuned(raw, tmp_path / "tuned", torch.bfloat16)
    diff = weight_diff.make_diff(str(raw), str(tuned), str(tmp_path / "diff"))
    recovered = weight_diff.recover(str(raw), str(diff), str(tmp_path / "out"), test_inference=False)
    assert first_difference(str(tuned), str(recovered)) is None

    # The same base with a pad token already: no [PAD] is added, the embeddings keep their size.
    tokenizer = AutoTokenizer.from_pretrained(raw)
    tokenizer.pad_token = tokenizer.unk_token
    tokenizer.save_pretrained(raw)
    tuned_same_vocab = make_tuned(raw, tmp_path / "tuned2", torch.float32)
    diff = weight_diff.make_diff(str(raw), str(tuned_same_vocab), str(tmp_path / "diff2"))
    assert json.loads((diff / weight_diff.MANIFEST_NAME).read_text())["pad_token_resize"]["added_tokens"] == 0
    recovered = weight_diff.recover(str(raw), str(diff), str(tmp_path / "out2"), test_inference=False)
    assert first_difference(str(tuned_same_vocab), str(recovered)) is None


def test_a_fine_tune_that_padded_with_an_existing_token_keeps_the_raw_vocabulary(tiny_model_dir, tmp_path):
    """Not every fine-tune adds [PAD]: one that padded with eos has the raw vocabulary, and its diff is taken
    against the raw embeddings as they are (the original stopped at a shape mismatch here)."""
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    perturb(model, seed=5)
    model.to(torch.bfloat16).save_pretrained(tmp_path / "tuned")
    AutoTokenizer.from_pretrained(tiny_model_dir).save_pretrained(tmp_path / "tuned")
    diff = weight_diff.make_diff(str(tiny_model_dir), str(tmp_path / "tuned"), str(tmp_path / "diff"))
    resize = json.loads((diff / weight_diff.MANIFEST_NAME).read_text())["pad_token_resize"]
    assert resize["added_tokens"] == 0 and resize["vocab_size"] == model.config.vocab_size
    recovered = weight_diff.recover(str(tiny_model_dir), str(diff), str(tmp_path / "out"), test_inference=False)
    assert first_difference(str(tmp_path / "tuned"), str(recovered)) is None


def word_level_model(out_dir: pathlib.Path, vocab: int, rows: int, hidden: int = 64, **special) -> pathlib.Path:
    """A raw model whose tokenizer has `vocab` words and the given special tokens, and `rows` embedding rows."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = {"<s>": 0, "</s>": 1, **{f"w{i}": i for i in range(2, vocab)}}
    backend = Tokenizer(models.WordLevel(words, unk_token="</s>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=backend, **special).save_pretrained(out_dir)
    config = LlamaConfig(vocab_size=rows, hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=2, tie_word_embeddings=False)
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(out_dir)
    return out_dir


@pytest.mark.parametrize("label,rows,special,added", [
    ("no pad, no unk (Llama-3)", 300, {"bos_token": "<s>", "eos_token": "</s>"}, 2),
    ("spare rows, pad (Qwen)", 320, {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "</s>",
                                     "pad_token": "</s>"}, 0),
    ("spare rows, no pad (Pythia)", 320, {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "</s>"}, 1),
])
def test_every_vocabulary_resize_train_py_does_round_trips(tmp_path, label, rows, special, added):
    raw = word_level_model(tmp_path / "raw", vocab=300, rows=rows, **special)
    tuned = make_tuned(raw, tmp_path / "tuned", torch.bfloat16)
    diff = weight_diff.make_diff(str(raw), str(tuned), str(tmp_path / "diff"))
    resize = json.loads((diff / weight_diff.MANIFEST_NAME).read_text())["pad_token_resize"]
    assert (resize["added_tokens"], resize["vocab_size"]) == (added, 300 + added), label
    recovered = weight_diff.recover(str(raw), str(diff), str(tmp_path / "out"), test_inference=False)
    assert first_difference(str(tuned), str(recovered)) is None


def test_tokens_added_some_other_way_grow_the_vocabulary_too(tiny_model_dir, tmp_path):
    """A fine-tune that added its own tokens (a chat template's) besides [PAD] is diffed all the same."""
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    tokenizer.add_tokens(["<|im_start|>", "<|im_end|>"], special_tokens=True)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    smart_tokenizer_and_embedding_resize(missing_special_tokens(tokenizer), tokenizer, model)
    perturb(model, seed=2)
    model.save_pretrained(tmp_path / "tuned")
    tokenizer.save_pretrained(tmp_path / "tuned")
    diff = weight_diff.make_diff(str(tiny_model_dir), str(tmp_path / "tuned"), str(tmp_path / "diff"))
    assert json.loads((diff / weight_diff.MANIFEST_NAME).read_text())["pad_token_resize"]["vocab_size"] == 515
    recovered = weight_diff.recover(str(tiny_model_dir), str(diff), str(tmp_path / "out"), test_inference=False)
    assert first_difference(str(tmp_path / "tuned"), str(recovered)) is None


def test_a_matrix_as_tall_as_the_vocabulary_is_not_an_embedding(tmp_path):
    raw = make_tiny_model(str(tmp_path / "raw"), hidden_size=256)  # intermediate_size 512 == vocab_size 512
    tuned = make_tuned(raw, tmp_path / "tuned", torch.bfloat16)
    diff = weight_diff.make_diff(str(raw), str(tuned), str(tmp_path / "diff"))
    recovered = weight_diff.recover(str(raw), str(diff), str(tmp_path / "out"), test_inference=False)
    assert first_difference(str(tuned), str(recovered)) is None


def test_damaged_diff_is_named_and_nothing_is_written(tiny_model_dir, diff_bf16, tmp_path):
    damaged = tmp_path / "damaged"
    damaged.mkdir()
    for file in diff_bf16.iterdir():
        (damaged / file.name).write_bytes(file.read_bytes())
    data = bytearray((damaged / "model.safetensors").read_bytes())
    header_size = int.from_bytes(data[:8], "little")
    header = json.loads(data[8:8 + header_size])
    begin, end = header["model.layers.1.mlp.up_proj.weight"]["data_offsets"]
    data[8 + header_size + (begin + end) // 2] ^= 0x10
    (damaged / "model.safetensors").write_bytes(bytes(data))
    with pytest.raises(ValueError, match=r"diff is damaged: tensor 'model\.layers\.1\.mlp\.up_proj\.weight'"):
        weight_diff.recover(str(tiny_model_dir), str(damaged), str(tmp_path / "out"), test_inference=False)
    assert not (tmp_path / "out").exists() and leftovers(tmp_path) == []


def test_wrong_raw_model_is_named_and_nothing_is_written(diff_bf16, tmp_path):
    other_raw = make_tiny_model(str(tmp_path / "other-raw"), seed=1)  # same architecture, other weights
    with pytest.raises(ValueError, match=r"raw model is not the one this diff was made from: tensor 'lm_head\.weight'"):
        weight_diff.recover(str(other_raw), str(diff_bf16), str(tmp_path / "new" / "dirs" / "out"),
                            test_inference=False)
    assert not (tmp_path / "new").exists() and leftovers(tmp_path) == []  # not even the parents it made

    bigger_raw = make_tiny_model(str(tmp_path / "bigger-raw"), hidden_size=32)  # another architecture
    with pytest.raises(ValueError, match=r"Tensor 'lm_head\.weight' has shape \[513, 64\] in the tuned model"):
        weight_diff.recover(str(bigger_raw), str(diff_bf16), str(tmp_path / "out"), test_inference=False)
    assert not (tmp_path / "out").exists() and leftovers(tmp_path) == []


def test_missing_paths_and_files_give_clear_errors(tiny_model_dir, tuned_bf16, diff_bf16, tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere does not exist"):
        weight_diff.make_diff(str(tmp_path / "nowhere"), str(tuned_bf16), str(tmp_path / "diff"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="has no model.safetensors"):
        weight_diff.make_diff(str(tmp_path / "empty"), str(tuned_bf16), str(tmp_path / "diff"))
    assert not (tmp_path / "diff").exists()
    no_tokenizer = tmp_path / "no-tokenizer"  # found before any tensor is written, not after
    no_tokenizer.mkdir()
    for name in ("config.json", "model.safetensors"):
        (no_tokenizer / name).write_bytes((tuned_bf16 / name).read_bytes())
    with pytest.raises(FileNotFoundError, match="no-tokenizer has no tokenizer files"):
        weight_diff.make_diff(str(tiny_model_dir), str(no_tokenizer), str(tmp_path / "diff"))
    assert not (tmp_path / "diff").exists() and leftovers(tmp_path) == []
    incomplete = tmp_path / "incomplete"
    incomplete.mkdir()
    for file in diff_bf16.iterdir():
        if file.name != "config.json":
            (incomplete / file.name).write_bytes(file.read_bytes())
    with pytest.raises(FileNotFoundError, match="has no config.json"):
        weight_diff.recover(str(tiny_model_dir), str(incomplete), str(tmp_path / "out"), test_inference=False)
    assert not (tmp_path / "out").exists() and leftovers(tmp_path) == []
    with pytest.raises(FileExistsError, match="already exists"):
        weight_diff.recover(str(tiny_model_dir), str(diff_bf16), str(tuned_bf16), test_inference=False)


def original_recover_in_memory(raw_dir, diff_dir) -> dict[str, torch.Tensor]:
    """The 2023 recover: both models in float32, raw resized for [PAD], diff += raw tensor by tensor."""
    raw = AutoModelForCausalLM.from_pretrained(raw_dir, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(raw_dir)
    smart_tokenizer_and_embedding_resize({"pad_token": DEFAULT_PAD_TOKEN}, tokenizer, raw)
    recovered = AutoModelForCausalLM.from_pretrained(diff_dir, dtype=torch.float32)
    state, raw_state = recovered.state_dict(), raw.state_dict()
    for name in state:
        state[name].add_(raw_state[name])
    return state


def test_a_damaged_or_missing_manifest_is_named(tiny_model_dir, diff_bf16, tmp_path):
    def copy_of_diff(label: str) -> pathlib.Path:
        copy = tmp_path / label
        copy.mkdir()
        for file in diff_bf16.iterdir():
            (copy / file.name).write_bytes(file.read_bytes())
        return copy

    no_manifest = copy_of_diff("no-manifest")  # an XOR diff must not be added to the raw weights as numbers
    (no_manifest / weight_diff.MANIFEST_NAME).unlink()
    with pytest.raises(ValueError, match="integer tensors.*no weight_diff_manifest.json"):
        weight_diff.recover(str(tiny_model_dir), str(no_manifest), str(tmp_path / "out"), test_inference=False,
                            check_integrity_naively=False)
    edits = {"no digest": lambda m: m["tensors"]["lm_head.weight"].pop("diff_sha256"),
             "version text": lambda m: m.update(version="1"),
             "no resize": lambda m: m.pop("pad_token_resize"),
             "tensor list": lambda m: m.update(tensors=[])}
    for label, edit in edits.items():
        damaged = copy_of_diff(label.replace(" ", "-"))
        manifest = json.loads((damaged / weight_diff.MANIFEST_NAME).read_text())
        edit(manifest)
        (damaged / weight_diff.MANIFEST_NAME).write_text(json.dumps(manifest))
        with pytest.raises(ValueError, match="manifest|format version|is damaged"):
            weight_diff.recover(str(tiny_model_dir), str(damaged), str(tmp_path / "out"), test_inference=False)
    assert not (tmp_path / "out").exists() and leftovers(tmp_path) == []


def test_diff_made_by_the_original_code_recovers_as_the_original_did(tiny_model_dir, tmp_path):
    tuned = make_tuned(tiny_model_dir, tmp_path / "tuned", torch.float32)
    raw_model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    raw_tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    smart_tokenizer_and_embedding_resize({"pad_token": DEFAULT_PAD_TOKEN}, raw_tokenizer, raw_model)
    legacy = AutoModelForCausalLM.from_pretrained(tuned, dtype=torch.float32)
    with torch.no_grad():
        for name, param in legacy.state_dict().items():
            param.add_(-raw_model.state_dict()[name])  # the 2023 make_diff: tuned - raw in float32
    legacy.save_pretrained(tmp_path / "legacy-diff")
    AutoTokenizer.from_pretrained(tuned).save_pretrained(tmp_path / "legacy-diff")

    with pytest.raises(ValueError, match="not 50637.1836 as Alpaca-7B's do.*--check_integrity_naively False"):
        weight_diff.recover(str(tiny_model_dir), str(tmp_path / "legacy-diff"), str(tmp_path / "out"),
                            test_inference=False)  # no manifest: the naive check is on, as in the original
    assert not (tmp_path / "out").exists()
    out = weight_diff.recover(str(tiny_model_dir), str(tmp_path / "legacy-diff"), str(tmp_path / "out"),
                              test_inference=False, check_integrity_naively=False)
    expected = original_recover_in_memory(tiny_model_dir, tmp_path / "legacy-diff")
    recovered = safetensors_stream.checkpoint_tensors(out)
    assert set(recovered) == set(expected)
    for name, tensor in expected.items():
        got = safetensors_stream.read_rows(recovered[name])
        assert recovered[name].dtype == "F32" and np.array_equal(got.view(np.uint32), tensor.numpy().reshape(-1).view(
            np.uint32)), name


def test_naive_sum_counts_the_rope_buffers_the_2023_llama_checkpoints_had(tiny_model_dir, tmp_path, monkeypatch):
    """The original summed a state dict holding one inv_freq per layer; a 2023 diff converted with today's
    transformers has lost those tensors, one converted with safetensors alone still has them (as ~0)."""
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    raw_model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    smart_tokenizer_and_embedding_resize({"pad_token": DEFAULT_PAD_TOKEN}, tokenizer, raw_model)
    legacy = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    smart_tokenizer_and_embedding_resize({"pad_token": DEFAULT_PAD_TOKEN}, AutoTokenizer.from_pretrained(
        tiny_model_dir), legacy)
    with torch.no_grad():  # a fine-tune with ordinary, finite weights: a sum to check against
        for param in legacy.parameters():
            param.add_(torch.randn(param.shape, generator=torch.Generator().manual_seed(3)) * 1e-3)
    tuned = tmp_path / "tuned"
    legacy.save_pretrained(tuned)
    state = {name: (param - raw_model.state_dict()[name]).contiguous() for name, param in legacy.state_dict().items()}
    config = legacy.config
    head_dim = config.hidden_size // config.num_attention_heads
    inv_freq = 1.0 / (10000.0 ** (torch.arange(0, head_dim, 2).float() / head_dim))  # the 2023 LLaMA buffer
    recovered = {name: diff + raw_model.state_dict()[name] for name, diff in state.items()}
    expected = sum(t.double().sum().item() for t in recovered.values()) + config.num_hidden_layers * inv_freq.sum(
        ).item()
    monkeypatch.setattr(weight_diff, "ALPACA_7B_NAIVE_SUM", expected)
    buffers = {f"model.layers.{i}.self_attn.rotary_emb.inv_freq": torch.zeros_like(inv_freq)
               for i in range(config.num_hidden_layers)}
    for label, tensors in (("converted", state), ("with-buffers", {**state, **buffers})):
        diff = tmp_path / label
        legacy.config.save_pretrained(diff)
        tokenizer.save_pretrained(diff)
        save_file(tensors, str(diff / "model.safetensors"), metadata={"format": "pt"})
        weight_diff.recover(str(tiny_model_dir), str(diff), str(tmp_path / f"out-{label}"), test_inference=False)
        assert first_difference(str(tuned), str(tmp_path / f"out-{label}")) is None


def test_naive_check_stays_available_behind_its_flag(tiny_model_dir, diff_bf16, tmp_path):
    with pytest.raises(ValueError, match="Naive integrity check failed"):
        weight_diff.recover(str(tiny_model_dir), str(diff_bf16), None, test_inference=False,
                            check_integrity_naively=True)


@pytest.mark.slow
def test_recovered_model_generates_like_the_tuned_model(tiny_model_dir, tuned_bf16, diff_bf16, tmp_path, capsys):
    scratch = lambda: set(pathlib.Path(tempfile.gettempdir()).glob("recover-*"))  # noqa: E731
    before = scratch()
    assert weight_diff.recover(str(tiny_model_dir), str(diff_bf16), None, test_inference=True) is None
    printed = capsys.readouterr().out
    assert "every tensor matches the manifest" in printed
    assert "### Instruction:\nList three technologies that make life easier.\n\n### Response:" in printed
    assert scratch() == before  # verify-only mode keeps nothing

    out = weight_diff.recover(str(tiny_model_dir), str(diff_bf16), str(tmp_path / "out"), test_inference=False)
    tokenizer = AutoTokenizer.from_pretrained(out)
    ids = tokenizer("Give three tips for staying healthy.", return_tensors="pt").input_ids
    generated = [AutoModelForCausalLM.from_pretrained(d).generate(ids, max_new_tokens=8, do_sample=False)
                 for d in (tuned_bf16, out)]
    assert generated[0].shape[1] == ids.shape[1] + 8 and torch.equal(generated[0], generated[1])


@pytest.mark.slow
def test_command_line_as_in_the_readme(tiny_model_dir, tuned_bf16, tmp_path, repo_dir):
    def run(*args):
        return subprocess.run([sys.executable, str(repo_dir / "weight_diff.py"), *args], cwd=tmp_path,
                              capture_output=True, text=True, timeout=300)

    made = run("make_diff", "--path_raw", str(tiny_model_dir), "--path_tuned", str(tuned_bf16), "--path_diff", "diff")
    assert made.returncode == 0, made.stderr
    done = run("recover", "--path_raw", str(tiny_model_dir), "--path_diff", "diff", "--path_tuned", "out",
               "--device", "cpu", "--test_inference", "True")
    assert done.returncode == 0, done.stderr
    assert "### Response:" in done.stdout and first_difference(str(tuned_bf16), str(tmp_path / "out")) is None


@pytest.mark.slow
def test_command_line_mistakes_print_one_line_and_help_lists_the_flags(tuned_bf16, tmp_path, repo_dir):
    def run(*args):
        return subprocess.run([sys.executable, str(repo_dir / "weight_diff.py"), *args], cwd=tmp_path,
                              capture_output=True, text=True, timeout=60)

    done = run("make_diff", "--path_raw", str(tmp_path / "nowhere"), "--path_tuned", str(tuned_bf16),
               "--path_diff", "diff")
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert done.stderr.strip() == f"error: {tmp_path / 'nowhere'} does not exist or is not a directory."
    assert not (tmp_path / "diff").exists()
    shown = run("recover", "--help")
    text = shown.stdout + shown.stderr  # fire writes help to stderr when it is not a terminal
    assert "--check_integrity_naively" in text and "--test_inference" in text


# ----------------------------------------------------------------------------- the command-line contract

def run_weight_diff(repo_dir: pathlib.Path, *args: str, cwd: pathlib.Path, timeout: int = 120):
    return subprocess.run([sys.executable, str(repo_dir / "weight_diff.py"), *args], cwd=cwd, capture_output=True,
                          text=True, timeout=timeout)


def assert_one_error(done: subprocess.CompletedProcess, exit_code: int, *fragments: str) -> None:
    """The contract of every script: the exit code, one `error: <sentence>` line on stderr, no traceback."""
    lines = done.stderr.strip().splitlines()
    assert done.returncode == exit_code, done.stderr
    assert len(lines) == 1 and lines[0].startswith("error: "), done.stderr
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])


@pytest.mark.slow
def test_command_line_contract(tiny_model_dir, tuned_bf16, diff_bf16, tmp_path, repo_dir):
    """Unknown flags, true/false spellings, a missing input and malformed inputs: exit code, one error line,
    nothing written and no work done before the check (not even the output's parent directories)."""
    raw, tuned, diff = str(tiny_model_dir), str(tuned_bf16), str(diff_bf16)
    nothing_written = lambda: not (tmp_path / "new").exists() and leftovers(tmp_path) == []  # noqa: E731
    typos = {("make_diff", "--path_tune"): ["make_diff", "--path_raw", raw, "--path_tune", tuned, "--path_diff",
                                            "new/diff"],
             ("recover", "--test_inferece"): ["recover", "--path_raw", raw, "--path_diff", diff, "--path_tuned",
                                              "new/out", "--test_inferece", "False"],
             ("recover", "maybe"): ["recover", "--path_raw", raw, "--path_diff", diff, "--path_tuned", "new/out",
                                    "--test_inference", "maybe"]}
    for (command, flag), args in typos.items():
        done = run_weight_diff(repo_dir, *args, cwd=tmp_path)
        assert_one_error(done, 2, flag)
        assert done.stdout == "" and nothing_written(), command

    done = run_weight_diff(repo_dir, "make_diff", "--path_raw", str(tmp_path / "nowhere"), "--path_tuned", tuned,
                           "--path_diff", "new/diff", cwd=tmp_path)
    assert_one_error(done, 1, "nowhere does not exist")
    done = run_weight_diff(repo_dir, "recover", "--path_raw", raw, "--path_diff", str(tmp_path / "nowhere"),
                           "--path_tuned", "new/out", cwd=tmp_path)
    assert_one_error(done, 1, "nowhere does not exist")
    assert nothing_written()

    corrupt_manifest = shutil.copytree(diff_bf16, tmp_path / "corrupt-manifest")
    (corrupt_manifest / weight_diff.MANIFEST_NAME).write_text('{"format": "alpaca-weight-diff", "tensors": {')
    done = run_weight_diff(repo_dir, "recover", "--path_raw", raw, "--path_diff", str(corrupt_manifest),
                           "--path_tuned", "new/out", cwd=tmp_path)
    assert_one_error(done, 1, f"{corrupt_manifest / weight_diff.MANIFEST_NAME} is not valid JSON")
    corrupt_weights = shutil.copytree(tuned_bf16, tmp_path / "corrupt-weights")
    (corrupt_weights / "model.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all}")
    done = run_weight_diff(repo_dir, "make_diff", "--path_raw", raw, "--path_tuned", str(corrupt_weights),
                           "--path_diff", "new/diff", cwd=tmp_path)
    assert_one_error(done, 1, f"{corrupt_weights / 'model.safetensors'} has a damaged safetensors header")
    assert nothing_written()

    for spelling in ("false", "False", "0"):  # all mean False: no sample generation, a recovered model
        done = run_weight_diff(repo_dir, "recover", "--path_raw", raw, "--path_diff", diff, "--path_tuned",
                               f"out-{spelling}", "--test_inference", spelling, cwd=tmp_path)
        assert done.returncode == 0, done.stderr
        assert "test_inference" not in done.stdout and "every tensor matches the manifest" in done.stdout
        assert first_difference(tuned, str(tmp_path / f"out-{spelling}")) is None


SLOW_READS = """import runpy, sys, time
from alpaca.weights import safetensors_stream
read_rows = safetensors_stream.read_rows
safetensors_stream.read_rows = lambda *args: (time.sleep(0.1), read_rows(*args))[1]  # time to be interrupted
sys.argv[0] = "weight_diff.py"
runpy.run_path("weight_diff.py", run_name="__main__")
"""


@pytest.mark.parametrize("command,signum", [("make_diff", signal.SIGTERM), ("recover", signal.SIGINT),
                                            ("recover", signal.SIGTERM)])
@pytest.mark.slow
def test_an_interrupted_run_leaves_nothing_behind(tiny_model_dir, tuned_bf16, diff_bf16, tmp_path, repo_dir,
                                                  command, signum):
    """SIGTERM (kill, a scheduler) and Ctrl-C in the middle of writing: one line, exit 130, no hidden .partial
    directory and none of the parent directories the run made for its output."""
    inputs = {"make_diff": ["--path_tuned", str(tuned_bf16), "--path_diff"],
              "recover": ["--path_diff", str(diff_bf16), "--test_inference", "False", "--path_tuned"]}[command]
    output = tmp_path / "new" / "dirs" / "out"
    process = subprocess.Popen([sys.executable, "-c", SLOW_READS, command, "--path_raw", str(tiny_model_dir),
                                *inputs, str(output)], cwd=repo_dir, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 60
    while not list(output.parent.glob(".out.partial-*/model.safetensors")) and time.time() < deadline:
        time.sleep(0.02)
    assert process.poll() is None, process.communicate()
    time.sleep(0.3)  # well inside the writing of the weights
    process.send_signal(signum)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 130, stderr
    assert stderr.strip() == weight_diff.INTERRUPTED
    assert not (tmp_path / "new").exists()


def test_output_directories_are_private_whatever_the_umask(tiny_model_dir, tuned_bf16, tmp_path):
    previous = os.umask(0o000)  # a umask that would leave new directories open to everyone
    try:
        diff = weight_diff.make_diff(str(tiny_model_dir), str(tuned_bf16), str(tmp_path / "shared" / "diff"))
        os.umask(0o277)  # one that would leave them unwritable even for their owner
        out = weight_diff.recover(str(tiny_model_dir), str(diff), str(tmp_path / "mine" / "out"),
                                  test_inference=False)
    finally:
        os.umask(previous)
    for directory in (tmp_path / "shared", diff, tmp_path / "mine", out):
        assert directory.stat().st_mode & 0o777 == 0o700, directory
    assert first_difference(str(tuned_bf16), str(out)) is None


def test_an_empty_output_directory_is_used_and_a_non_empty_one_refused(tiny_model_dir, tuned_bf16, tmp_path):
    (tmp_path / "diff").mkdir()  # made ahead, e.g. by a job script
    diff = weight_diff.make_diff(str(tiny_model_dir), str(tuned_bf16), str(tmp_path / "diff"))
    (tmp_path / "out").mkdir()
    out = weight_diff.recover(str(tiny_model_dir), str(diff), str(tmp_path / "out"), test_inference=False)
    assert first_difference(str(tuned_bf16), str(out)) is None

    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "notes.txt").write_text("mine")
    with pytest.raises(cli.OutputExistsError, match="taken already exists and is not empty; .*never overwrites"):
        weight_diff.recover(str(tiny_model_dir), str(diff), str(tmp_path / "taken"), test_inference=False)
    assert os.listdir(tmp_path / "taken") == ["notes.txt"] and leftovers(tmp_path) == []
    (tmp_path / "a-file").write_text("mine")
    with pytest.raises(cli.OutputExistsError, match="a-file already exists and is not a directory"):
        weight_diff.make_diff(str(tiny_model_dir), str(tuned_bf16), str(tmp_path / "a-file"))
    assert (tmp_path / "a-file").read_text() == "mine"


def test_cuda_without_a_gpu_is_refused_before_any_work(tiny_model_dir, diff_bf16, tmp_path):
    if torch.cuda.is_available():
        pytest.skip("a CUDA GPU is present")
    with pytest.raises(cli.UserError, match="no CUDA GPU is available; use --device cpu"):
        weight_diff.recover(str(tiny_model_dir), str(diff_bf16), str(tmp_path / "new" / "out"), device="cuda")
    assert not (tmp_path / "new").exists()


# ----------------------------------------------------------------------------- hostile and damaged files

@pytest.mark.slow
def test_links_and_special_files_in_a_diff_are_refused_before_any_work(tiny_model_dir, diff_bf16, tmp_path,
                                                                       repo_dir):
    """A diff is downloaded from strangers: a link in it must not put a file from elsewhere (a key) into the
    recovered model, a FIFO must not hang recover, a device must not fill the disk or memory."""
    secret = tmp_path / "id_rsa"
    secret.write_text("-----BEGIN OPENSSH PRIVATE KEY-----\n")
    cases = [  # (file, how it is replaced, what the error says)
        ("generation_config.json", lambda path: path.symlink_to(secret), "is a symbolic link"),
        ("chat_template.jinja", lambda path: path.symlink_to(secret), "is a symbolic link"),
        ("vocab.txt", lambda path: path.symlink_to("/dev/zero"), "is a symbolic link"),
        ("model.safetensors", lambda path: path.symlink_to(diff_bf16 / "model.safetensors"), "is a symbolic link"),
        (weight_diff.MANIFEST_NAME, lambda path: path.symlink_to(secret), "is a symbolic link"),
        ("tokenizer_config.json", os.mkfifo, "is a FIFO, not a regular file"),
        ("model.safetensors", os.mkfifo, "is a FIFO, not a regular file"),  # would hang recover for ever
    ]
    for i, (name, replace, message) in enumerate(cases):
        diff = shutil.copytree(diff_bf16, tmp_path / f"diff-{i}")
        (diff / name).unlink(missing_ok=True)
        replace(diff / name)
        if replace is os.mkfifo:  # in a process of its own: a regression would hang it, not the test session
            done = run_weight_diff(repo_dir, "recover", "--path_raw", str(tiny_model_dir), "--path_diff", str(diff),
                                   "--path_tuned", "new/out", "--test_inference", "False", cwd=tmp_path, timeout=60)
            assert_one_error(done, 1, f"{diff / name} {message}")
        else:
            with pytest.raises(cli.DataError, match=re.escape(f"{diff / name} {message}")):
                weight_diff.recover(str(tiny_model_dir), str(diff), str(tmp_path / "new" / "out"),
                                    test_inference=False)
        assert not (tmp_path / "new").exists() and leftovers(tmp_path) == [], name


def test_shards_must_lie_next_to_their_index(tiny_model_dir, tuned_bf16, diff_bf16, tmp_path):
    for label, shard in (("parent", "../../../etc/passwd"), ("absolute", "/etc/passwd"), ("below", "sub/x")):
        diff = shutil.copytree(diff_bf16, tmp_path / f"diff-{label}")
        (diff / "model.safetensors.index.json").write_text(json.dumps(
            {"metadata": {}, "weight_map": {"lm_head.weight": shard, "model.norm.weight": "model.safetensors"}}))
        with pytest.raises(cli.DataError, match=f"names the shard '{shard}', which is not a file in {diff}"):
            weight_diff.recover(str(tiny_model_dir), str(diff), str(tmp_path / "out"), test_inference=False)
        raw = shutil.copytree(tiny_model_dir, tmp_path / f"raw-{label}")  # the raw model too, links or not
        (raw / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {"lm_head.weight": shard}}))
        with pytest.raises(cli.DataError, match="which is not a file in"):
            weight_diff.make_diff(str(raw), str(tuned_bf16), str(tmp_path / "diff"))
    misplaced = shutil.copytree(diff_bf16, tmp_path / "misplaced")
    (misplaced / "other.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{}      ")
    (misplaced / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {
        "lm_head.weight": "other.safetensors", "model.norm.weight": "model.safetensors"}}))
    with pytest.raises(cli.DataError, match="puts tensor 'lm_head.weight' in other.safetensors, which does not hold"):
        weight_diff.recover(str(tiny_model_dir), str(misplaced), str(tmp_path / "out"), test_inference=False)
    assert not (tmp_path / "out").exists() and not (tmp_path / "diff").exists() and leftovers(tmp_path) == []


def test_a_raw_model_may_be_made_of_links_as_in_a_hugging_face_cache(tiny_model_dir, tuned_bf16, diff_bf16,
                                                                     tmp_path):
    """Nothing of the raw model is copied into the output, and the Hugging Face cache stores snapshots as links
    into a blobs directory: the raw model's links are followed, to regular files only."""
    blobs, snapshot = tmp_path / "blobs", tmp_path / "snapshots" / "abc123"
    shutil.copytree(tiny_model_dir, blobs)
    snapshot.mkdir(parents=True)
    for file in blobs.iterdir():
        (snapshot / file.name).symlink_to(os.path.relpath(file, snapshot))
    diff = weight_diff.make_diff(str(snapshot), str(tuned_bf16), str(tmp_path / "diff"))
    out = weight_diff.recover(str(snapshot), str(diff), str(tmp_path / "out"), test_inference=False)
    assert first_difference(str(tuned_bf16), str(out)) is None
    (snapshot / "tokenizer_config.json").unlink()
    (snapshot / "tokenizer_config.json").symlink_to("/dev/zero")  # would fill the memory
    with pytest.raises(cli.DataError, match="tokenizer_config.json is a device, not a regular file"):
        weight_diff.recover(str(snapshot), str(diff_bf16), str(tmp_path / "out2"), test_inference=False)
    assert not (tmp_path / "out2").exists() and leftovers(tmp_path) == []


def test_the_manifest_covers_config_tokenizer_and_chat_template_files(tiny_model_dir, tuned_bf16, diff_bf16,
                                                                      tmp_path, capsys):
    manifest = json.loads((diff_bf16 / weight_diff.MANIFEST_NAME).read_text())
    assert manifest["version"] == 2
    assert set(manifest["files"]) == {f.name for f in tuned_bf16.iterdir() if f.name != "model.safetensors"}

    def copy(label: str, change) -> pathlib.Path:
        diff = shutil.copytree(diff_bf16, tmp_path / label)
        change(diff)
        return diff

    changed = copy("changed", lambda d: (d / "tokenizer_config.json").write_text(
        (d / "tokenizer_config.json").read_text().replace('"</s>"', '"<|evil|>"')))
    with pytest.raises(cli.DataError, match="tokenizer_config.json does not match the SHA-256 recorded"):
        weight_diff.recover(str(tiny_model_dir), str(changed), str(tmp_path / "out"), test_inference=False)
    added = copy("added", lambda d: (d / "chat_template.jinja").write_text("{{ messages }}"))
    with pytest.raises(cli.DataError, match="chat_template.jinja is not listed in weight_diff_manifest.json"):
        weight_diff.recover(str(tiny_model_dir), str(added), str(tmp_path / "out"), test_inference=False)
    missing = copy("missing", lambda d: (d / "generation_config.json").unlink())
    with pytest.raises(cli.MissingPathError, match="generation_config.json is listed in .* but missing"):
        weight_diff.recover(str(tiny_model_dir), str(missing), str(tmp_path / "out"), test_inference=False)
    assert not (tmp_path / "out").exists() and leftovers(tmp_path) == []

    def version_1(diff: pathlib.Path) -> None:  # a diff made before the manifest listed the files
        old = json.loads((diff / weight_diff.MANIFEST_NAME).read_text())
        del old["files"]
        old["version"] = 1
        (diff / weight_diff.MANIFEST_NAME).write_text(json.dumps(old))

    old = copy("version-1", version_1)
    capsys.readouterr()
    out = weight_diff.recover(str(tiny_model_dir), str(old), str(tmp_path / "out"), test_inference=False)
    assert "of version 1, which predates checksums" in capsys.readouterr().out
    assert first_difference(str(tuned_bf16), str(out)) is None
    assert (out / "tokenizer_config.json").read_bytes() == (tuned_bf16 / "tokenizer_config.json").read_bytes()


def test_chat_templates_are_carried_byte_for_byte(tiny_model_dir, tmp_path):
    """A checkpoint's chat template (chat_template.jinja, named templates, or the tokenizer_config.json key of
    older checkpoints) goes into the diff and comes back in the recovered model unchanged."""
    template = "{% for m in messages %}### {{ m['role'] }}:\n{{ m['content'] }}\n\n{% endfor %}### Response:"
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    smart_tokenizer_and_embedding_resize(missing_special_tokens(tokenizer), tokenizer, model)
    forms = {"jinja": (template, {}), "named": ({"default": template, "with_input": template + "\n"}, {}),
             "config": (template, {"save_jinja_files": False})}
    for label, (chat_template, save) in forms.items():
        tuned = tmp_path / f"tuned-{label}"
        model.save_pretrained(tuned)
        tokenizer.chat_template = chat_template
        tokenizer.save_pretrained(tuned, **save)
        carried = sorted(str(p.relative_to(tuned)) for p in tuned.rglob("*") if p.is_file()
                         and ("chat_template" in p.name or p.parent.name == "additional_chat_templates"))
        assert carried == {"jinja": ["chat_template.jinja"], "config": [],
                           "named": ["additional_chat_templates/with_input.jinja", "chat_template.jinja"]}[label]
        diff = weight_diff.make_diff(str(tiny_model_dir), str(tuned), str(tmp_path / f"diff-{label}"))
        out = weight_diff.recover(str(tiny_model_dir), str(diff), str(tmp_path / f"out-{label}"),
                                  test_inference=False)
        for name in carried + ["tokenizer_config.json"]:
            assert (tuned / name).read_bytes() == (diff / name).read_bytes() == (out / name).read_bytes(), name
        messages = [{"role": "user", "content": "Give three tips for staying healthy."}]
        assert AutoTokenizer.from_pretrained(out).apply_chat_template(messages, tokenize=False) == \
            AutoTokenizer.from_pretrained(tuned).apply_chat_template(messages, tokenize=False)
        assert AutoTokenizer.from_pretrained(out).chat_template == chat_template


def safetensors_file(path: pathlib.Path, header: object, data: bytes, header_size: int | None = None) -> pathlib.Path:
    encoded = json.dumps(header).encode()
    path.write_bytes((header_size or len(encoded)).to_bytes(8, "little") + encoded + data)
    return path


GOOD_ENTRY = {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}
BAD_HEADERS = {
    "dtype not a string": ({"a": {**GOOD_ENTRY, "dtype": 5}}, "has dtype 5, not a name"),
    "dtype unknown": ({"a": {**GOOD_ENTRY, "dtype": "F8_E4M3"}}, "has dtype F8_E4M3, which is not supported"),
    "shape of strings": ({"a": {**GOOD_ENTRY, "shape": ["2"]}}, "has shape ['2'], not a list of sizes"),
    "negative shape": ({"a": {**GOOD_ENTRY, "shape": [-2]}}, "has shape [-2], not a list of sizes"),
    "boolean shape": ({"a": {**GOOD_ENTRY, "shape": [True, 2]}}, "has shape [True, 2]"),
    "one offset": ({"a": {**GOOD_ENTRY, "data_offsets": [0]}}, "has data_offsets [0], not [begin, end]"),
    "negative offset": ({"a": {**GOOD_ENTRY, "data_offsets": [-8, 0]}}, "has data_offsets [-8, 0]"),
    "reversed offsets": ({"a": {**GOOD_ENTRY, "data_offsets": [8, 0]}}, "has data_offsets [8, 0]"),
    "wrong size": ({"a": {**GOOD_ENTRY, "data_offsets": [0, 4]}}, "takes 8 bytes"),
    "overlap": ({"a": GOOD_ENTRY, "b": GOOD_ENTRY}, "the bytes of tensor 'b' [0, 8) overlap those of tensor 'a'"),
    "gap": ({"a": {**GOOD_ENTRY, "data_offsets": [4, 12]}}, "bytes [0, 4) before tensor 'a' belong to no tensor"),
    "past the end": ({"a": {**GOOD_ENTRY, "shape": [4], "data_offsets": [0, 16]}}, "does not fit in the file"),
    "trailing bytes": ({"a": {**GOOD_ENTRY, "shape": [1], "data_offsets": [0, 4]}}, "4 bytes after its last tensor"),
    "not an object": ([GOOD_ENTRY], "a JSON list, not an object"),
    "entry not an object": ({"a": [0, 8]}, "tensor 'a' is described by a JSON list"),
    "metadata": ({"__metadata__": {"format": 1}, "a": GOOD_ENTRY}, "__metadata__ must map names to strings"),
}


@pytest.mark.parametrize("label", BAD_HEADERS)
def test_safetensors_headers_are_checked_as_the_format_defines_them(tmp_path, label):
    header, message = BAD_HEADERS[label]
    file = safetensors_file(tmp_path / "model.safetensors", header, bytes(8))
    with pytest.raises(cli.DataError) as raised:
        safetensors_stream.read_safetensors_header(file)
    assert str(raised.value).startswith(str(file)) and message in str(raised.value)
    assert "\n" not in str(raised.value)


def test_a_huge_declared_header_is_refused_before_it_is_read(tmp_path):
    """The reference implementation's 100 MB cap: a sparse file claiming a 1 GB header costs no memory."""
    file = safetensors_file(tmp_path / "model.safetensors", {}, b"", header_size=10**9)
    with open(file, "r+b") as handle:
        handle.truncate(10**9 + 4096)  # sparse: next to nothing on disk
    with pytest.raises(cli.DataError, match=r"declares a safetensors header of 1000000000 bytes, over the format's "
                                            r"limit of 100 MB"):
        safetensors_stream.read_safetensors_header(file)


def test_make_diff_refuses_overlapping_tensors_too(tiny_model_dir, tuned_bf16, tmp_path):
    tuned = shutil.copytree(tuned_bf16, tmp_path / "tuned")
    data = (tuned / "model.safetensors").read_bytes()
    size = int.from_bytes(data[:8], "little")
    header = json.loads(data[8:8 + size])
    header["model.norm.weight"]["data_offsets"] = header["model.layers.0.input_layernorm.weight"]["data_offsets"]
    safetensors_file(tuned / "model.safetensors", header, data[8 + size:])
    with pytest.raises(cli.DataError, match=r"model.safetensors has a damaged safetensors header: the bytes of "
                                            r"tensor .* overlap those of tensor"):
        weight_diff.make_diff(str(tiny_model_dir), str(tuned), str(tmp_path / "new" / "diff"))
    assert not (tmp_path / "new").exists()


def test_json_and_utf8_errors_name_the_file(tiny_model_dir, tuned_bf16, diff_bf16, tmp_path):
    tuned = shutil.copytree(tuned_bf16, tmp_path / "tuned")
    (tuned / "tokenizer_config.json").write_bytes(b'{"pad_token": "\xff"}')
    with pytest.raises(cli.DataError, match=f"{tuned / 'tokenizer_config.json'} is not UTF-8 text"):
        weight_diff.make_diff(str(tiny_model_dir), str(tuned), str(tmp_path / "out"))
    (tuned / "tokenizer_config.json").write_text("[1, 2]")
    with pytest.raises(cli.DataError, match="tokenizer_config.json holds a JSON list, where a JSON object"):
        weight_diff.make_diff(str(tiny_model_dir), str(tuned), str(tmp_path / "out"))
    raw = shutil.copytree(tiny_model_dir, tmp_path / "raw")
    (raw / "model.safetensors.index.json").write_text('{"weight_map": {"lm_head.weight": ')
    with pytest.raises(cli.DataError, match=f"{raw / 'model.safetensors.index.json'} is not valid JSON .* line 1"):
        weight_diff.recover(str(raw), str(diff_bf16), str(tmp_path / "out"), test_inference=False)
    diff = shutil.copytree(diff_bf16, tmp_path / "diff")
    (diff / weight_diff.MANIFEST_NAME).write_bytes(b"\xfe\xff{}")
    with pytest.raises(cli.DataError, match=f"{diff / weight_diff.MANIFEST_NAME} is not UTF-8 text"):
        weight_diff.recover(str(tiny_model_dir), str(diff), str(tmp_path / "out"), test_inference=False)
    assert not (tmp_path / "out").exists() and leftovers(tmp_path) == []
