"""Bad inputs: each is refused with a clear error, and never hurts the other requests."""
from __future__ import annotations

import json

import pytest
import torch
from pydantic import ValidationError

from agentrt.engine import (MODEL_ALIASES, EngineConfig, LLMEngine, ModelNotFoundError, SamplingParams,
                            UnsupportedModelError)
from agentrt.engine.loader import load_model
from agentrt.engine.tiny import tiny_config, tiny_reference_model

GOOD = SamplingParams(max_tokens=12, ignore_eos=True, return_logits=True)


# ------------------------------------------------------------------------------------------ prompts
def test_prompt_longer_than_the_context(make_engine):
    engine = make_engine(kv_cache_tokens=64)
    for n in (64, 65, 500):
        with pytest.raises(ValueError, match="max_model_len") as info:
            engine.add_request([1] * n, GOOD)
        assert str(n) in str(info.value) and "64" in str(info.value)
    with pytest.raises(ValueError, match="max_model_len"):
        engine.generate("x" * 100, GOOD)                     # a string prompt is measured in tokens
    assert not engine.has_unfinished()
    engine.add_request([1] * 63, GOOD)                      # one below the limit is fine


@pytest.mark.parametrize("prompt", ["", []], ids=["empty-str", "empty-list"])
def test_empty_prompt(make_engine, prompt):
    engine = make_engine()
    with pytest.raises(ValueError, match="empty"):
        engine.add_request(prompt, GOOD)
    with pytest.raises(ValueError, match="empty"):
        engine.generate([prompt], GOOD)
    assert not engine.has_unfinished()


@pytest.mark.parametrize("bad", [259, 10_000, -1], ids=["vocab", "far", "negative"])
def test_token_ids_out_of_vocab(make_engine, bad):
    engine = make_engine()
    with pytest.raises(ValueError, match=r"out of range \[0, 259\)") as info:
        engine.add_request([1, 2, bad, 3], GOOD)
    assert str(bad) in str(info.value)
    engine.add_request([0, 258], GOOD)                       # both ends of the vocab are fine
    engine.generate([[5]], GOOD)


def test_prompt_of_wrong_type(make_engine):
    engine = make_engine()
    with pytest.raises(TypeError):
        engine.add_request([1, 2.5, 3], GOOD)
    with pytest.raises(TypeError):
        engine.add_request(["a", "b"], GOOD)
    with pytest.raises(TypeError):
        engine.add_request([1, 2], "greedy")                 # params of the wrong type
    assert not engine.has_unfinished()


def test_duplicate_request_id(make_engine, drain):
    engine = make_engine()
    engine.add_request([1, 2, 3], GOOD, request_id="r")
    with pytest.raises(ValueError, match="already in use"):
        engine.add_request([4, 5, 6], GOOD, request_id="r")
    done = drain(engine)
    assert done["r"].prompt_token_ids == [1, 2, 3]


# ------------------------------------------------------------------------------------------ sampling params
@pytest.mark.parametrize("fields", [
    {"temperature": -0.1}, {"top_p": 0.0}, {"top_p": 1.5}, {"max_tokens": 0}, {"max_tokens": -3},
    {"top_k": -1}, {"stop": [""]}, {"stop": ["ok", ""]}, {"stop_token_ids": [-2]}, {"seed": -1},
    {"temprature": 0.5}, {"max_new_tokens": 5},
], ids=lambda f: "-".join(f"{k}={v}" for k, v in f.items()))
def test_invalid_sampling_params(make_engine, fields):
    with pytest.raises(ValidationError) as info:
        SamplingParams(**fields)
    assert next(iter(fields)) in str(info.value)             # the error names the field
    engine = make_engine()
    with pytest.raises(ValidationError):
        engine.add_request([1, 2, 3], fields)                # the same check through a dict
    with pytest.raises(ValidationError):
        engine.generate([[1, 2, 3]], fields)
    assert not engine.has_unfinished()


def test_sampling_params_are_frozen():
    p = SamplingParams()
    with pytest.raises(ValidationError):
        p.temperature = 1.0


def test_invalid_engine_config():
    for fields in ({"block_size": 0}, {"kv_cache_tokens": 8}, {"max_num_seqs": 0},
                   {"max_num_batched_tokens": 4}, {"dtype": "int8"}, {"kv_blocks": 4}):
        with pytest.raises(ValidationError):
            EngineConfig(**fields)


# ------------------------------------------------------------------------------------------ models
def test_unknown_model_alias():
    with pytest.raises(ModelNotFoundError) as info:
        load_model("no-such-model")
    msg = str(info.value)
    assert "no-such-model" in msg
    assert "smollm2-135m" in msg and "tiny-random-llama" in msg
    assert set(MODEL_ALIASES) == {"smollm2-135m", "tiny-random-llama"}
    with pytest.raises(ModelNotFoundError, match="tiny-random-llama"):
        LLMEngine.from_pretrained("no-such-model")


def test_model_dir_that_is_not_llama_family(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "gpt2", "n_layer": 2}))
    with pytest.raises(UnsupportedModelError, match="gpt2") as info:
        load_model(str(tmp_path))
    assert "llama" in str(info.value)


def test_model_dir_without_config(tmp_path):
    (tmp_path / "model.safetensors").write_bytes(b"")
    with pytest.raises(UnsupportedModelError, match="config.json"):
        load_model(str(tmp_path))


def test_model_dir_without_weights(tmp_path):
    tiny_config().save_pretrained(tmp_path)
    with pytest.raises(UnsupportedModelError, match="safetensors"):
        load_model(str(tmp_path))


def test_sliding_window_mistral_is_refused(tmp_path):
    from transformers import MistralConfig
    MistralConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=1, num_attention_heads=4,
                  num_key_value_heads=2, vocab_size=300, sliding_window=16).save_pretrained(tmp_path)
    from safetensors.torch import save_file
    save_file({"x": torch.zeros(1)}, str(tmp_path / "model.safetensors"))
    with pytest.raises(UnsupportedModelError, match="sliding"):
        load_model(str(tmp_path))


def test_local_hf_directory_loads_with_parity(tmp_path, make_engine, logit_error):
    """A Llama directory saved by transformers (safetensors + tokenizer) serves with parity."""
    from agentrt.engine.tiny import byte_tokenizer
    ref = tiny_reference_model(tiny_config(), seed=3)
    ref.save_pretrained(tmp_path)
    byte_tokenizer().save_pretrained(tmp_path)
    loaded = load_model(str(tmp_path))
    assert loaded.config.model_type == "llama"
    engine = make_engine(loaded)
    outs = engine.generate(["Hello there", [1, 2, 3, 4, 5]], GOOD)
    for out in outs:
        assert logit_error(ref, out) < 1e-4


# ------------------------------------------------------------------------------------------ isolation
def test_bad_request_never_hurts_other_requests(make_engine, tiny_ref, logit_error, drain):
    prompt = list(range(30, 70))
    [clean] = make_engine().generate([prompt], GOOD)

    engine = make_engine(kv_cache_tokens=64)
    good = engine.add_request(prompt, GOOD)
    engine.step()                                            # the good request is running
    bad_inputs = [
        ([1] * 64, GOOD, ValueError),                        # longer than the context
        ([], GOOD, ValueError),
        ("", GOOD, ValueError),
        ([1, 999], GOOD, ValueError),
        ([1, 2], {"temperature": -1}, ValidationError),
        ([1, 2], {"top_p": 0}, ValidationError),
        ([1, 2], {"bogus": 1}, ValidationError),
        ([1, 2.0], GOOD, TypeError),
    ]
    for prompt_bad, params, exc in bad_inputs:
        state = (engine.pool.num_in_use, len(engine.scheduler.waiting), len(engine.scheduler.running))
        with pytest.raises(exc):
            engine.add_request(prompt_bad, params)
        with pytest.raises(exc):
            engine.generate([[9, 9, 9], prompt_bad], params)  # validated before anything is queued
        assert (engine.pool.num_in_use, len(engine.scheduler.waiting), len(engine.scheduler.running)) == state
        engine.step()
    done = drain(engine)
    assert list(done) == [good]
    out = done[good]
    assert out.token_ids == clean.token_ids and out.finish_reason == "length"
    assert torch.allclose(torch.stack(out.logits), torch.stack(clean.logits), atol=1e-5)
    assert logit_error(tiny_ref, out) < 1e-4


def test_unschedulable_request_raises_instead_of_hanging(make_engine, monkeypatch):
    engine = make_engine()
    monkeypatch.setattr(engine.scheduler, "_allocate", lambda req, n: False)
    with pytest.raises(RuntimeError, match="cannot schedule"):
        engine.generate([[1, 2, 3]], SamplingParams(max_tokens=2))
    assert not engine.has_unfinished()      # generate aborted it; make_engine checks the blocks
