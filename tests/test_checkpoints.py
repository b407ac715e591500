"""Checkpoints as they are shared: without tokenizer files (--tokenizer on every command), SentencePiece
tokenizers, sharded safetensors, half precision, and the example run configs."""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

import pytest
import torch

from helpers import on_grid
from qunlearn.cli import main
from qunlearn.config import load_run_config
from qunlearn.fileio import read_json, read_yaml
from qunlearn.models.io import TOKENIZER_FILES, load_model, load_tokenizer, save_model
from qunlearn.quant.layers import weight_matrix
from qunlearn.quant.rtn import rtn_quantize


def without_tokenizer(checkpoint: Path, out: Path) -> Path:
    """A copy of `checkpoint` without its tokenizer files, as checkpoints are often shared."""
    bare = shutil.copytree(checkpoint, out)
    for name in bare.iterdir():
        if name.name in TOKENIZER_FILES or name.name.startswith(("tokenizer", "special_tokens")):
            name.unlink()
    return bare


def test_a_checkpoint_without_tokenizer_quantizes_with_rtn_and_asks_for_one_for_gptq(checkpoints, tmp_path, capsys):
    bare = without_tokenizer(checkpoints["gpt2"], tmp_path / "bare")
    assert (
        main(
            ["quantize", "--model", str(bare), "--scheme", "rtn4", "--group-size", "32", "--out", str(tmp_path / "rtn")]
        )
        == 0
    )
    quantized, tokenizer = load_model(tmp_path / "rtn", need_tokenizer=False)
    assert tokenizer is None and on_grid(weight_matrix(quantized.transformer.h[0].attn.c_attn), 4, 32)
    rc = main(
        [
            "quantize",
            "--model",
            str(bare),
            "--scheme",
            "gptq4",
            "--calibration",
            str(bare / "config.json"),
            "--out",
            str(tmp_path / "gptq"),
        ]
    )
    err = capsys.readouterr().err.strip()
    assert rc == 2 and not (tmp_path / "gptq").exists()
    assert len(err.splitlines()) == 1 and f"{bare}: no tokenizer" in err and "--tokenizer DIR" in err
    assert (
        main(
            [
                "quantize",
                "--model",
                str(bare),
                "--tokenizer",
                str(checkpoints["gpt2"]),
                "--scheme",
                "gptq4",
                "--calibration",
                str(bare / "config.json"),
                "--n-samples",
                "2",
                "--out",
                str(tmp_path / "gptq"),
            ]
        )
        == 0
    )


def test_every_model_loading_command_takes_tokenizer(checkpoints, tiny_benchmark, tmp_path, capsys):
    bare = without_tokenizer(checkpoints["llama"], tmp_path / "bare")
    tokenizer, corpus = str(checkpoints["llama"]), str(tiny_benchmark.corpus_dir)
    assert main(["codeflips", "--a", str(bare), "--b", str(bare), "--scheme", "rtn4"]) == 0  # needs no tokenizer
    commands = {
        "unlearn": [
            "unlearn",
            "--method",
            "ga",
            "--target",
            str(bare),
            "--corpus",
            corpus,
            "--out",
            str(tmp_path / "u"),
            "--max-steps",
            "1",
            "--batch-size",
            "2",
            "--max-length",
            "32",
            "--quiet",
        ],
        "evaluate": [
            "evaluate",
            "--model",
            str(bare),
            "--corpus",
            corpus,
            "--metrics",
            "utility",
            "--out",
            str(tmp_path / "e.json"),
            "--no-progress",
        ],
        "audit": [
            "audit",
            "--target",
            str(bare),
            "--unlearned",
            str(bare),
            "--corpus",
            corpus,
            "--out",
            str(tmp_path / "a"),
            "--attacks",
            "rtn4",
            "--no-code-flips",
        ],
    }
    for name, argv in commands.items():
        capsys.readouterr()
        assert main(argv) == 2, name
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and "no tokenizer" in err and "--tokenizer DIR" in err, name
        assert not (tmp_path / argv[argv.index("--out") + 1]).exists(), f"{name} wrote output before failing"
        assert main([*argv, "--tokenizer", tokenizer]) == 0, name
    assert load_tokenizer(tmp_path / "u").vocab_size == load_tokenizer(tokenizer).vocab_size


def test_a_sentencepiece_tokenizer_loads(tmp_path):
    """Llama-2 and ICLM ship only tokenizer.model: converting it needs sentencepiece and protobuf (dependencies)."""
    import sentencepiece

    texts = [f"The committee met on day {i} and discussed item {i * 7 % 97} at length." for i in range(300)]
    model = io.BytesIO()
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=iter(texts),
        model_writer=model,
        vocab_size=120,
        model_type="bpe",
        bos_id=1,
        eos_id=2,
        unk_id=0,
        pad_id=-1,
        minloglevel=2,
    )
    (tmp_path / "tokenizer.model").write_bytes(model.getvalue())
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": "LlamaTokenizer"}))
    tokenizer = load_tokenizer(tmp_path)
    ids = tokenizer("The committee met on day 5")["input_ids"]
    assert tokenizer.decode(ids, skip_special_tokens=True) == "The committee met on day 5"
    assert tokenizer.pad_token == tokenizer.eos_token == "</s>"


def test_sharded_checkpoints_load_and_save(checkpoints, tmp_path):
    model, tokenizer = load_model(checkpoints["llama"])
    save_model(model, tokenizer, tmp_path / "sharded", max_shard_size="100KB")
    index = read_json(tmp_path / "sharded" / "model.safetensors.index.json")
    assert len(set(index["weight_map"].values())) > 1
    reloaded, _ = load_model(tmp_path / "sharded")
    for (name, a), (_, b) in zip(model.state_dict().items(), reloaded.state_dict().items()):
        assert torch.equal(a, b), name


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_quantization_stays_in_its_dtype_on_the_grid(checkpoints, tmp_path, dtype):
    name = {torch.bfloat16: "bf16", torch.float16: "fp16"}[dtype]
    assert (
        main(
            [
                "quantize",
                "--model",
                str(checkpoints["qwen2"]),
                "--scheme",
                "rtn4",
                "--group-size",
                "32",
                "--dtype",
                name,
                "--out",
                str(tmp_path / "q"),
            ]
        )
        == 0
    )
    original, _ = load_model(checkpoints["qwen2"], dtype=name)
    model, _ = load_model(tmp_path / "q", dtype=name)
    weight = model.model.layers[0].self_attn.q_proj.weight
    assert weight.dtype == dtype and read_yaml(tmp_path / "q" / "quantize.yaml")["dtype"] == name
    assert torch.equal(weight, rtn_quantize(original.model.layers[0].self_attn.q_proj.weight, 4, 32))


EXAMPLES = sorted((Path(__file__).parent.parent / "examples").glob("*.yaml"))


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.stem for p in EXAMPLES])
def test_example_configs_are_valid_runs(path):
    config = load_run_config(path)
    config.validate()
    assert config.target and config.corpus and config.dtype == "bf16" and "gptq4" in config.quantizers
    if config.target.startswith("muse-bench/"):  # MUSE's checkpoints ship no tokenizer; MUSE uses Llama-2's
        assert config.tokenizer == "meta-llama/Llama-2-7b-hf"
