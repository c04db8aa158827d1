"""alpaca/llm/model.py: the one model loader, used by inference.py and by the in-process `--api_type local`
endpoint (a local judge, rater or teacher) alike."""

import torch


def test_the_local_endpoint_loads_a_lora_adapter_as_inference_does(tiny_model_dir, tmp_path):
    from peft import LoraConfig, PeftModel, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from alpaca.llm.local import LocalCausalLM
    from alpaca.llm.model import load_model

    torch.manual_seed(0)
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    adapted = get_peft_model(base, LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
    adapted.save_pretrained(tmp_path / "adapter")  # safetensors; its config names the base model's directory
    AutoTokenizer.from_pretrained(tiny_model_dir).save_pretrained(tmp_path / "adapter")

    local = LocalCausalLM(str(tmp_path / "adapter"))  # before: AutoModelForCausalLM on the adapter dir, no LoRA
    assert isinstance(local.model, PeftModel)
    model, tokenizer = load_model(str(tmp_path / "adapter"))
    batch = tokenizer(["Name a colour."], return_tensors="pt")
    with torch.no_grad():
        expected = model(**batch).logits
        got = local.model(**batch.to(local.device)).logits
        plain = LocalCausalLM(str(tiny_model_dir)).model(**batch).logits
    assert torch.equal(got, expected) and not torch.allclose(got, plain)  # the adapter is applied, as inference's
    request = {"prompt": ["Name a colour."], "max_tokens": 4, "temperature": 0}
    assert local.generate(request, seed=0)["choices"][0]["finish_reason"] in ("stop", "length")


def test_a_missing_chat_template_is_a_warning_for_fine_tunes_only(tiny_model_dir, tmp_path, caplog):
    import shutil

    from alpaca.llm.model import load_model

    with caplog.at_level("WARNING", logger="inference"):
        load_model(str(tiny_model_dir))  # a base model: nothing the user can act on (the demo warned here)
    assert "chat template" not in caplog.text
    tuned = shutil.copytree(tiny_model_dir, tmp_path / "tuned")
    (tuned / "training_args.bin").write_bytes(b"")  # what train.py leaves in its output
    with caplog.at_level("WARNING", logger="inference"):
        load_model(str(tuned))
    assert "has no chat template" in caplog.text
