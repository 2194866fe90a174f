"""The demo's pipeline (train -> iterative pruning with distillation -> clustering -> convert -> save -> reload into
a fresh skeleton) in a reduced configuration: the reloaded model is the in-memory compressed model, the file is
smaller, the clustered values travel as a codebook."""
from __future__ import annotations

import os

import pytest
import torch

from sparsecomp import demo
from sparsecomp.cli import main
from sparsecomp.nn import SparseLinear

QUICK_MLP = demo.Setup("mlp", epochs=6, lr=3e-3, target=0.9, step=0.5, finetune_epochs=1, final_epochs=2,
                       cluster_bits=4, cluster_epochs=1)
QUICK = demo.Config((QUICK_MLP,), batches=(1, 32), convert_batch=32, repeats=3, convert_repeats=2, progress=False)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """As the demo runs (tiny batches: more threads only add synchronisation on a busy machine)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def result(tmp_path_factory):
    return demo.compress_model(QUICK_MLP, QUICK, tmp_path_factory.mktemp("demo"), verbose=False)


def test_reloaded_model_is_the_compressed_model(result):
    dense_acc, reloaded_acc = result["accuracy"]
    assert reloaded_acc == result["compressed_accuracy"]  # compress_model also checked the logits bit for bit
    assert dense_acc > 0.9, "the dense MLP did not learn the digits"
    assert reloaded_acc > 0.8, "pruning to 90% with distillation should keep most of the accuracy"
    history = result["history"]
    assert history[-1]["sparsity"] == pytest.approx(0.9, abs=1e-4)


def test_compressed_file_is_smaller(result):
    dense_bytes, compressed_bytes = result["bytes"]
    assert (dense_bytes, compressed_bytes) == (os.path.getsize(result["dense_path"]), os.path.getsize(result["path"]))
    # 10% of the weights kept: ~4 B per kept weight + ~1 bit per weight of index mask, vs 4 B per weight dense
    assert dense_bytes > 4 * compressed_bytes
    dense_params, kept_params = result["params"]
    assert dense_params == 64 * 300 + 300 + 300 * 100 + 100 + 100 * 10 + 10
    assert kept_params < 0.1 * (dense_params - 410) + 410 + 1  # weights at 90% sparsity plus dense biases


def test_clustered_values_are_stored_as_a_codebook(result):
    """After clustering every pruned layer holds at most 2**bits - 1 distinct nonzeros, the file stores them as a
    palette (codebook + Huffman-coded value numbers), and the note reports the codebook-layer alternative."""
    from sparsecomp.io import load_compressed as load
    from sparsecomp.demo_models import mlp

    model = load(result["path"], into=mlp(7))
    layers = [m for m in model.modules() if isinstance(m, (torch.nn.Linear, SparseLinear))]
    for m in layers:
        w = m.to_dense().weight if isinstance(m, SparseLinear) else m.weight
        assert torch.unique(w[w != 0]).numel() <= 15
    report = result["size_report"]
    assert report.bytes_by_kind["codes"] > 0 and report.bytes_by_kind["codebooks"] > 0
    assert report.bytes_by_kind["values"] < 4 * 0.1 * 64 * 300  # not fp32 values any more
    assert "4-bit codebooks" in result["cluster_note"] and "as codebook layers the file would be" in \
        result["cluster_note"]
    setup = demo.Setup("mlp", epochs=1, lr=1e-3, target=0.5)
    same = torch.nn.Linear(3, 2)
    assert demo.cluster_hook(same, setup)[0] is same  # cluster_bits=None: unchanged


def test_tables_and_target_report(result):
    table = demo.summary_table(result)
    for text in ("params (nonzero)", "on-disk bytes", "test accuracy", "latency batch 1", "latency batch 32",
                 "compressed, reloaded"):
        assert text in table
    met, text = demo.target_check(result)
    assert text.startswith("mlp target MET" if met else "mlp target NOT met")
    (b0, b1), (a0, a1) = result["bytes"], result["accuracy"]
    size_line, acc_line = text.splitlines()[1:3]
    assert "smaller on disk" in size_line and size_line.startswith("  yes" if b0 / b1 >= 20 else "  NO ")
    assert "accuracy lost" in acc_line and acc_line.startswith("  yes" if a0 - a1 <= 0.01 else "  NO ")
    # a file only 10x smaller, or 2 points lost, is a miss the check must name
    met, text = demo.target_check(dict(result, bytes=(b0, b0 // 10)))
    assert not met and text.splitlines()[1].startswith("  NO  10.0x smaller")
    met, text = demo.target_check(dict(result, accuracy=(a0, a0 - 0.02)))
    assert not met and text.splitlines()[2].startswith("  NO  2.00 pt accuracy lost")
    assert all(len(t) == 2 and min(t) > 0 for t in result["latency"].values())


def test_a_reload_that_differs_is_an_error(tmp_path, monkeypatch):
    """compress_model compares the reloaded model's outputs with the in-memory one's: a silent change in the
    file round trip must fail loudly, not print a table."""
    real = demo.load_compressed

    def lossy(path, into):
        model = real(path, into)
        with torch.no_grad():
            next(m for m in model.modules() if isinstance(m, (torch.nn.Linear, SparseLinear))).bias[0] += 1e-3
        return model

    monkeypatch.setattr(demo, "load_compressed", lossy)
    setup = demo.Setup("mlp", epochs=1, lr=3e-3, target=0.5, step=0.5, finetune_epochs=1, final_epochs=0)
    with pytest.raises(RuntimeError, match="reloaded model's outputs differ"):
        demo.compress_model(setup, QUICK, tmp_path, verbose=False)


def test_command_line_options():
    config = demo.config_from_args(sparsity=0.95, batch=64, repeats=5, threads=1, seed=3, models="mlp",
                                   progress=False)
    assert [s.name for s in config.models] == ["mlp"] and config.models[0].target == 0.95
    assert (config.batches, config.convert_batch, config.repeats, config.seed) == ((1, 64), 64, 5, 3)
    with pytest.raises(SystemExit):
        main(["demo", "--sparsity", "1.5"])
