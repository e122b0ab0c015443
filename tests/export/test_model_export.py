"""``edgetrain export``: each format reads back and computes what PyTorch computes, with a
dynamic batch; files are written atomically and a foreign file is never replaced silently."""

from __future__ import annotations

import importlib.util
import json

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

import edgetrain
from edgetrain.cli import main
from edgetrain.config import load_config
from edgetrain.errors import EdgeTrainError
from edgetrain.export import export_run
from edgetrain.safefs import DirLock, read_marker
from edgetrain.train.api import prepare

HAS_ONNX = all(importlib.util.find_spec(p) for p in ("onnx", "onnxscript", "onnxruntime"))
needs_onnx = pytest.mark.skipif(not HAS_ONNX, reason='needs the onnx extra: "edgetrain[onnx]"')


@pytest.fixture(scope="module")
def cnn_run(tmp_path_factory):
    """A small CNN on digits, half its weights pruned (permanent in model.pt)."""
    out = tmp_path_factory.mktemp("runs") / "cnn"
    config = {
        "model": "cnn",
        "data": "digits",
        "epochs": 2,
        "batch_size": 128,
        "max_batches_per_epoch": 4,
        "model_args": {"channels": [4, 8]},
        "prune": {"ratio": 0.5},
        "monitor": {"enabled": False},
        "out": str(out),
    }
    edgetrain.train(config, progress=False)
    return out


@pytest.fixture(scope="module")
def gpt_run(tmp_path_factory):
    """A tiny GPT on byte tokens: int64 inputs."""
    out = tmp_path_factory.mktemp("runs") / "gpt"
    config = {
        "model": "gpt",
        "data": "pycorpus",
        "data_args": {"max_bytes": 20_000, "seq_len": 16},
        "model_args": {"d_model": 16, "n_layers": 1, "n_heads": 2},
        "epochs": 1,
        "batch_size": 32,
        "max_batches_per_epoch": 2,
        "monitor": {"enabled": False},
        "out": str(out),
    }
    edgetrain.train(config, progress=False)
    return out


def reference(run, which: str = "final") -> nn.Module:
    """The run's model rebuilt by hand from config.yaml and its weights file."""
    _, model = prepare(load_config(run / "config.yaml"))
    if which == "final":
        state = torch.load(run / "model.pt", map_location="cpu", weights_only=True)
    else:
        path = run / "checkpoints" / f"{which}.pt"
        state = torch.load(path, map_location="cpu", weights_only=True)["model"]
    model.load_state_dict(state)
    return model.eval()


def images(n: int) -> torch.Tensor:
    return torch.randn(n, 1, 8, 8, generator=torch.Generator().manual_seed(n))


def test_pt2_round_trip_with_a_dynamic_batch(cnn_run):
    result = export_run(cnn_run, "pt2")
    assert result.path == cnn_run / "export" / "model.pt2"
    assert result.inputs == [{"name": "input", "shape": ["batch", 1, 8, 8], "dtype": "float32"}]
    assert result.max_abs_diff == pytest.approx(0, abs=1e-6)
    assert result.epoch == 2 and result.which == "final"
    assert result.preprocessing == "standardize"
    program = torch.export.load(result.path).module()
    model = reference(cnn_run)
    with torch.no_grad():
        for n in (1, 5, 17):  # traced with 2 samples
            torch.testing.assert_close(program(images(n)), model(images(n)))
    assert read_marker(cnn_run / "export")["kind"] == "export"
    assert DirLock.is_free(cnn_run / "export")
    assert not [p for p in (cnn_run / "export").iterdir() if p.name.endswith(".tmp.pt2")]


def test_the_best_weights_export_as_best(cnn_run):
    result = export_run(cnn_run, "pt2", which="best")
    summary = json.loads((cnn_run / "summary.json").read_text())
    assert result.path.name == "best.pt2"
    assert result.epoch == summary["checkpoints"]["best"]["epoch"]
    program = torch.export.load(result.path).module()
    with torch.no_grad():
        torch.testing.assert_close(program(images(4)), reference(cnn_run, "best")(images(4)))


def test_torchscript_round_trip(cnn_run):
    result = export_run(cnn_run, "torchscript", which="last")
    assert result.path.name == "last.torchscript.pt"
    loaded = torch.jit.load(str(result.path), map_location="cpu")
    with torch.no_grad():
        torch.testing.assert_close(loaded(images(6)), reference(cnn_run, "last")(images(6)))


def test_safetensors_holds_the_pruned_weights(cnn_run):
    pytest.importorskip("safetensors")
    from safetensors import safe_open
    from safetensors.torch import load_file

    result = export_run(cnn_run, "safetensors")
    tensors = load_file(result.path)
    final = torch.load(cnn_run / "model.pt", map_location="cpu", weights_only=True)
    assert set(tensors) == set(final)
    for name, tensor in final.items():
        assert torch.equal(tensors[name], tensor)
    weights = [t for n, t in tensors.items() if n.endswith("weight") and t.dim() > 1]
    zeros = sum(int((t == 0).sum()) for t in weights) / sum(t.numel() for t in weights)
    assert zeros == pytest.approx(0.5, abs=0.02)  # pruning is permanent in the export
    with safe_open(str(result.path), "pt") as fh:
        meta = fh.metadata()
    assert (meta["which"], meta["epoch"], meta["model"]) == ("final", "2", "cnn")


@needs_onnx
def test_onnx_round_trip_with_onnxruntime(cnn_run):
    import onnxruntime as ort

    result = export_run(cnn_run, "onnx")
    assert result.checked_with == "onnxruntime"
    session = ort.InferenceSession(str(result.path), providers=["CPUExecutionProvider"])
    (name,) = [i.name for i in session.get_inputs()]
    model = reference(cnn_run)
    for n in (1, 7):
        (got,) = session.run(None, {name: images(n).numpy()})
        with torch.no_grad():
            torch.testing.assert_close(
                torch.from_numpy(got), model(images(n)), atol=1e-5, rtol=1e-4
            )


@needs_onnx
def test_onnx_dynamic_int8(cnn_run):
    import onnxruntime as ort

    result = export_run(cnn_run, "onnx", quantize="int8")
    assert result.path.name == "model.int8.onnx" and result.quantize == "int8"
    session = ort.InferenceSession(str(result.path), providers=["CPUExecutionProvider"])
    (got,) = session.run(None, {session.get_inputs()[0].name: images(3).numpy()})
    assert got.shape == (3, 10)
    assert result.max_abs_diff is not None and result.max_abs_diff < 1.0


def test_token_models_export_with_int64_inputs(gpt_run):
    result = export_run(gpt_run, "pt2")
    assert result.inputs == [{"name": "input", "shape": ["batch", 16], "dtype": "int64"}]
    assert result.preprocessing == "none"
    program = torch.export.load(result.path).module()
    tokens = torch.randint(0, 256, (5, 16), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(program(tokens), reference(gpt_run)(tokens))


def test_a_fit_run_needs_its_model(tmp_path):
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(32, 4, generator=g), torch.randn(32, 1, generator=g)
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 1))
    edgetrain.fit(
        net,
        TensorDataset(x, y),
        epochs=1,
        batch_size=8,
        out=str(tmp_path / "fit"),
        progress=False,
        monitor={"enabled": False},
    )
    with pytest.raises(EdgeTrainError, match=r"cannot rebuild; call edgetrain\.export"):
        export_run(tmp_path / "fit", "pt2")
    torch.manual_seed(1)
    fresh = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 1))
    target = tmp_path / "out" / "net.pt2"
    result = export_run(tmp_path / "fit", "pt2", model=fresh, example_inputs=x[:4], to=target)
    assert result.path == target and read_marker(target.parent)["kind"] == "export"
    program = torch.export.load(target).module()
    torch.testing.assert_close(program(x[:9]), net(x[:9]).detach())


def test_a_failed_check_writes_nothing(cnn_run, monkeypatch):
    import edgetrain.export.api as api

    monkeypatch.setattr(api, "max_abs_diff", lambda expected, got: 1.0)
    target = cnn_run / "export" / "broken.pt2"
    with pytest.raises(EdgeTrainError, match="differs from PyTorch by up to 1"):
        export_run(cnn_run, "pt2", to=target)
    assert not target.exists()
    assert not [p for p in target.parent.iterdir() if ".tmp" in p.name]


# -- the command ----------------------------------------------------------------------------------
def run_cli(capsys, *args):
    try:
        main(list(args))
        code = 0
    except SystemExit as exc:
        code = exc.code
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def one_line_error(code, err):
    assert code == 2, err
    lines = [ln for ln in err.strip().splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), err
    return lines[0]


def test_cli_exports_and_says_where(capsys, cnn_run):
    code, out, err = run_cli(capsys, "export", str(cnn_run), "--format", "torchscript")
    assert code == 0, err
    assert f"to {cnn_run / 'export' / 'model.torchscript.pt'}" in out
    assert "input 'input': float32 [batch, 1, 8, 8]" in out
    assert "checked with torch.jit.load" in out
    # a file edgetrain wrote in its export directory is replaced without asking
    code, out, err = run_cli(capsys, "export", str(cnn_run), "--format", "torchscript")
    assert code == 0, err


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["--format", "tflite"], "export --format must be one of pt2, onnx"),
        (["--which", "worst"], "export --which must be one of final, best, last"),
        (["--quantize", "int8"], "--quantize int8 is for --format onnx"),
        (["--format", "onnx", "--quantize", "int4"], "export --quantize must be one of int8"),
    ],
)
def test_cli_refuses_bad_options(capsys, cnn_run, args, fragment):
    code, _, err = run_cli(capsys, "export", str(cnn_run), *args)
    assert fragment in one_line_error(code, err)


def test_cli_refuses_what_is_not_a_finished_run(capsys, tmp_path):
    code, _, err = run_cli(capsys, "export", str(tmp_path / "nowhere"))
    assert "is not a run directory (no config.yaml in it)" in one_line_error(code, err)
    run = tmp_path / "half"
    run.mkdir()
    (run / "config.yaml").write_text("model: cnn\n")
    code, _, err = run_cli(capsys, "export", str(run))
    assert "no final weights at" in one_line_error(code, err)


def test_cli_never_replaces_a_foreign_file_without_overwrite(capsys, cnn_run, tmp_path):
    target = tmp_path / "mine.pt2"
    target.write_text("my own file")
    code, _, err = run_cli(capsys, "export", str(cnn_run), "--to", str(target))
    assert "already exists and edgetrain did not create it" in one_line_error(code, err)
    assert target.read_text() == "my own file"
    code, _, err = run_cli(capsys, "export", str(cnn_run), "--to", str(target), "--overwrite")
    assert code == 0, err
    assert torch.export.load(target) is not None
    assert not (tmp_path / ".edgetrain.json").exists()  # a folder it did not make stays unmarked
    code, _, err = run_cli(capsys, "export", str(cnn_run), "--to", str(tmp_path))
    assert "--to must name a file" in one_line_error(code, err)


def test_cli_names_the_extra_when_onnx_is_missing(capsys, cnn_run, monkeypatch):
    import edgetrain.export.formats as formats

    real = importlib.util.find_spec
    monkeypatch.setattr(
        formats.importlib.util,
        "find_spec",
        lambda name, *a: None if name == "onnxscript" else real(name, *a),
    )
    code, _, err = run_cli(capsys, "export", str(cnn_run), "--format", "onnx")
    line = one_line_error(code, err)
    assert "'onnxscript' package, which is not installed" in line
    assert 'pip install "edgetrain[onnx]"' in line
