"""gpt2.registry: a run folder names its model by kind, never by a module path."""
import json
import sys

import numpy as np
import pytest

import minigrad as mg
from gpt2 import GPT2, GPT2Config
from gpt2.classifier import GPT2Classifier
from gpt2.registry import UnknownModelKindError, build_model, model_kind
from tasks.runs.checkpoint import save_checkpoint
from tasks.runs.models import load_run_model
from tasks.common.jsonfiles import write_json

CONFIG = GPT2Config(vocab_size=64, n_ctx=16, n_embd=16, n_layer=1, n_head=2)


def test_kinds_and_legacy_builders():
    assert model_kind({}) == "gpt2"
    assert model_kind({"model_kind": "gpt2-classifier"}) == "gpt2-classifier"
    assert model_kind({"model_builder": "tasks.classify.build_from_run"}) == "gpt2-classifier"
    assert model_kind({"model_builder": "tasks.instruct.with_lora"}) == "gpt2"


@pytest.mark.parametrize("run", [{"model_kind": "resnet"}, {"model_builder": "os.system"},
                                 {"model_builder": "evil_module_xyz.build"}])
def test_unknown_kind_is_refused_and_nothing_is_imported(tmp_path, run):
    with pytest.raises(UnknownModelKindError):
        model_kind(run)
    assert "evil_module_xyz" not in sys.modules
    # through a run folder, as a task opens one
    model = GPT2(CONFIG)
    save_checkpoint(tmp_path, 1, model)
    write_json(tmp_path / "run.json", {"model_config": CONFIG.to_dict(), **run})
    with pytest.raises(UnknownModelKindError, match="known|never"):
        load_run_model(tmp_path)


def test_legacy_classifier_run_with_lora_loads(tmp_path):
    mg.manual_seed(0)
    model = GPT2Classifier(GPT2(CONFIG), 3, "last-real")
    mg.nn.apply_lora(model.gpt, rank=2, alpha=4.0)
    save_checkpoint(tmp_path, 1, model)
    (tmp_path / "run.json").write_text(json.dumps({
        "model_config": model.config.to_dict(), "model_builder": "tasks.classify.build_from_run",
        "classifier": {"labels": ["a", "b", "c"], "pool": "last-real", "trainable": "lora",
                       "lora_rank": 2, "lora_alpha": 4.0}}))
    loaded = load_run_model(tmp_path)
    ids = np.array([[1, 2, 3]])
    with mg.no_grad():
        np.testing.assert_array_equal(loaded(ids).data, model.eval()(ids).data)
    assert build_model({"model_config": CONFIG.to_dict()}).__class__ is GPT2
