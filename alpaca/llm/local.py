"""The in-process backend of `LLMEndpoint(api_type="local")`: a Hugging Face causal LM answering completions
requests without a server.

Its own module because loading a model pulls torch and transformers (seconds to import): llm_client.py imports it
only when a local endpoint is built, so the client stays light for the HTTP endpoints and for utils' JSON readers.
"""

from alpaca.errors import LLMError
from alpaca.llm.model import load_model, local_context_length  # noqa: F401  (local_context_length: re-exported)


class LocalCausalLM:
    """A local causal LM answering completions requests in-process: left-padded batches, sampling with the
    request's temperature and top_p, text cut at the first stop string like the API does."""

    def __init__(self, path: str, lora_path: str | None = None, trust_remote_code: bool = False):
        import torch

        self.torch = torch
        # The loader inference.py uses: a LoRA adapter directory (alone, or with lora_path), dtype, device, the pad
        # token, safetensors only.
        self.model, self.tokenizer = load_model(path, lora_path=lora_path, trust_remote_code=trust_remote_code)
        self.tokenizer.padding_side = "left"
        if self.tokenizer.pad_token is None:  # padding positions are masked out, so any id will do
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.device = self.model.device
        self.context = local_context_length(self.model.config, self.tokenizer)
        self.tokenizer.model_max_length = self.context  # no false "longer than the maximum" warning for long prompts

    def generate(self, request: dict, seed: int) -> dict:
        """A completions-format response for request["prompt"] (a list of strings)."""
        torch, tokenizer = self.torch, self.tokenizer
        prompts = request["prompt"] if "prompt" in request else [request["messages"][-1]["content"]]
        batch = tokenizer(prompts, return_tensors="pt", padding=True).to(self.device)
        prompt_length = batch["input_ids"].shape[1]
        if prompt_length >= self.context:
            raise LLMError(f"The prompt has {prompt_length} tokens, more than the local model's context of "
                           f"{self.context}; lower --num_prompt_instructions.")
        # Capped to the context, as a server would have to; a cut-short answer reports finish_reason "length".
        max_new_tokens = max(1, min(int(request.get("max_tokens") or 16), self.context - prompt_length))
        temperature = float(request.get("temperature", 1.0))
        n = int(request.get("n", 1))
        sampling = {"do_sample": True, "temperature": temperature, "top_p": float(request.get("top_p", 1.0))} \
            if temperature > 0 else {"do_sample": False}
        stop = [s for s in request.get("stop") or [] if s]
        torch.manual_seed(seed)
        with torch.no_grad():
            output = self.model.generate(**batch, max_new_tokens=max_new_tokens, num_return_sequences=n,
                                         pad_token_id=tokenizer.pad_token_id, **sampling,
                                         **({"stop_strings": stop, "tokenizer": tokenizer} if stop else {}))
        choices, completion_tokens = [], 0
        for i, ids in enumerate(output):
            prompt_ids = batch["input_ids"][i // n]
            prompt_text = tokenizer.decode(prompt_ids, skip_special_tokens=True)
            full_text = tokenizer.decode(ids, skip_special_tokens=True)
            new_ids = ids[prompt_length:]
            # Decoding prompt + continuation keeps the continuation's leading space, which SentencePiece drops.
            text = full_text[len(prompt_text):] if full_text.startswith(prompt_text) else tokenizer.decode(
                new_ids, skip_special_tokens=True)
            cuts = [text.find(s) for s in stop if s in text]
            ended = tokenizer.eos_token_id is not None and bool((new_ids == tokenizer.eos_token_id).any())
            if cuts:
                text = text[:min(cuts)]
            completion_tokens += int((new_ids != tokenizer.pad_token_id).sum())
            choices.append({"index": i, "text": text, "finish_reason": "stop" if cuts or ended else "length",
                            "logprobs": None})
        prompt_tokens = int(batch["attention_mask"].sum())
        return {"object": "text_completion", "model": request.get("model"), "choices": choices,
                "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                          "total_tokens": prompt_tokens + completion_tokens}}
