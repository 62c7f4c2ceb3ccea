"""Checkpoints: round trips, atomic writes, clear refusals, no pickle."""

import json

import pytest
import torch

from hart_mini import checkpoint


def _model():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))


def test_round_trip_keeps_tensors_and_metadata(tmp_path):
    model = _model()
    path = checkpoint.save(tmp_path / "m.safetensors", model.state_dict(), {"config": {"width": 8}, "step": 3})
    tensors, meta = checkpoint.load(path)
    assert meta == {"config": {"width": 8}, "step": 3}
    assert json.loads((tmp_path / "m.json").read_text()) == meta
    fresh = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
    checkpoint.load_module(fresh, tensors)
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), fresh.state_dict().values()))


def test_failed_write_leaves_previous_file_intact(tmp_path, monkeypatch):
    path = checkpoint.save(tmp_path / "m.safetensors", {"w": torch.ones(3)}, {"step": 1})
    before = path.read_bytes()

    def boom(*args, **kwargs):
        raise OSError("disk full")
    monkeypatch.setattr(checkpoint.os, "fsync", boom)
    with pytest.raises(OSError, match="disk full"):
        checkpoint.save(path, {"w": torch.zeros(3)}, {"step": 2})
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == []


def test_mismatched_shapes_are_refused_with_names(tmp_path):
    path = checkpoint.save(tmp_path / "m.safetensors", _model().state_dict(), {})
    tensors, _ = checkpoint.load(path)
    wider = torch.nn.Sequential(torch.nn.Linear(4, 16), torch.nn.ReLU(), torch.nn.Linear(16, 2))
    with pytest.raises(ValueError, match=r"0.weight: checkpoint has shape \(8, 4\), the model expects \(16, 4\)"):
        checkpoint.load_module(wider, tensors)


def test_config_differences_are_listed():
    with pytest.raises(ValueError, match=r"tokenizer.V: expected 512, checkpoint has 256"):
        checkpoint.check_config({"tokenizer": {"V": 512, "C": 16}}, {"tokenizer": {"V": 256, "C": 16}})
    checkpoint.check_config({"a": 1}, {"a": 1})


def test_non_checkpoints_are_refused(tmp_path):
    with pytest.raises(FileNotFoundError):
        checkpoint.load(tmp_path / "none.safetensors")
    (tmp_path / "x.safetensors").write_bytes(b"\x00" * 64)
    with pytest.raises(ValueError, match="not a readable safetensors checkpoint"):
        checkpoint.load(tmp_path / "x.safetensors")
    with pytest.raises(ValueError, match="must end in .safetensors"):
        checkpoint.save(tmp_path / "x.pt", {}, {})


def test_optimizer_state_round_trip_continues_identically(tmp_path):
    def step(model, opt):
        opt.zero_grad()
        model(torch.ones(2, 4)).pow(2).sum().backward()
        opt.step()

    model = _model()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    step(model, opt)
    tensors, meta = checkpoint.optimizer_to_tensors(opt)
    path = checkpoint.save(tmp_path / "s.safetensors", {**checkpoint.prefixed("model", model.state_dict()), **tensors},
                           {"optim": meta})
    step(model, opt)  # the reference continues

    loaded, meta = checkpoint.load(path)
    model2 = _model()
    checkpoint.load_module(model2, checkpoint.sub_state(loaded, "model"))
    opt2 = torch.optim.AdamW(model2.parameters(), lr=1e-2)
    checkpoint.optimizer_from_tensors(opt2, loaded, meta["optim"])
    step(model2, opt2)
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), model2.state_dict().values()))


def test_rng_state_round_trip():
    state = checkpoint.rng_to_tensors()
    a = torch.rand(3)
    checkpoint.rng_from_tensors(state)
    assert torch.equal(a, torch.rand(3))


def test_checksums_of_tensors_and_metadata_are_saved_and_checked(tmp_path):
    from safetensors import safe_open

    tensors = {"w": torch.arange(6.0), "b": torch.ones(2, dtype=torch.bfloat16)}
    path = checkpoint.save(tmp_path / "m.safetensors", tensors, {"step": 1})
    with safe_open(str(path), framework="pt") as f:
        sums = json.loads(f.metadata()[checkpoint.CHECKSUM_KEY])
    assert sums["tensors"] == checkpoint.tensors_sha256({"b": torch.ones(2, dtype=torch.bfloat16),
                                                         "w": torch.arange(6.0)})
    assert checkpoint.tensors_sha256({"w": torch.arange(6.0)}) != checkpoint.tensors_sha256({"w": torch.arange(6)})
    assert checkpoint.read_meta(path) == {"step": 1}


def test_files_saved_before_checksums_still_load_with_a_warning(tmp_path):
    from safetensors.torch import save_file

    path = tmp_path / "old.safetensors"
    save_file({"w": torch.ones(3)}, str(path), metadata={checkpoint.META_KEY: json.dumps({"step": 1})})
    with pytest.warns(UserWarning, match="carries no checksum"):
        tensors, meta = checkpoint.load(path)
    assert meta == {"step": 1} and torch.equal(tensors["w"], torch.ones(3))


@pytest.mark.parametrize("kind", ["tokenizer", "judge", "hart", "diffusion"])
def test_shipped_files_carry_checksums_and_load_without_warnings(kind):
    import warnings

    from hart_mini import pretrained

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        pretrained.load(kind, "cpu")


def _rewrite_header(path, **changes):
    """The file again with header entries changed (None deletes one), tensors untouched: a hand edit."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    with safe_open(str(path), framework="pt") as f:
        header, tensors = f.metadata(), {k: f.get_tensor(k) for k in f.keys()}
    header.update(changes)
    save_file(tensors, str(path), metadata={k: v for k, v in header.items() if v is not None})


def test_a_file_that_records_its_format_must_carry_its_checksums(tmp_path):
    path = checkpoint.save(tmp_path / "m.safetensors", {"w": torch.ones(3)}, {"step": 1})
    _rewrite_header(path, **{checkpoint.CHECKSUM_KEY: None})
    with pytest.raises(ValueError, match="carries no checksums, but it records checkpoint_format 2"):
        checkpoint.load(path)
    with pytest.raises(ValueError, match="carries no checksums"):
        checkpoint.read_meta(path)


@pytest.mark.parametrize("entry", ["5", "[1, 2]", "{}", '{"tensors": 1, "metadata": "x"}', "not json"])
def test_a_malformed_checksum_entry_is_refused_naming_the_file(tmp_path, entry):
    path = checkpoint.save(tmp_path / "m.safetensors", {"w": torch.ones(3)}, {"step": 1})
    _rewrite_header(path, **{checkpoint.CHECKSUM_KEY: entry})
    with pytest.raises(ValueError, match=r"m\.safetensors': its checksum entry 'hart_mini_sha256' is malformed"):
        checkpoint.load(path)


def test_metadata_that_is_not_a_json_object_is_refused_naming_the_file(tmp_path):
    path = checkpoint.save(tmp_path / "m.safetensors", {"w": torch.ones(3)}, {"step": 1})
    for text, message in (("{x", "is not valid JSON"), ("[1]", "is a list, not a JSON object")):
        _rewrite_header(path, **{checkpoint.META_KEY: text, checkpoint.CHECKSUM_KEY: None})
        with pytest.raises(ValueError, match=f"m.safetensors': its hart_mini metadata {message}"):
            checkpoint.load(path)
