"""The 2023 `utils` module: JSON helpers (`jload`, `jdump`) and the LLM client (`openai_completion`,
`OpenAIDecodingArguments`).

The code lives in the `alpaca` package: JSON files and records in alpaca/files.py, the client in alpaca/llm/client.py.
`openai_completion` below keeps the original's synchronous interface on top of that client.
"""

import asyncio
import logging
import sys
from collections.abc import Sequence
from contextlib import aclosing
from typing import TYPE_CHECKING

from alpaca.files import (  # noqa: F401  (re-exported)
    check_local_weights,
    hub_reachable,
    jdump,
    jload,
    load_alpaca_records,
    load_records,
    read_jsonl,
)

if TYPE_CHECKING:
    from alpaca.llm.client import OpenAIDecodingArguments

logger = logging.getLogger(__name__)

# The LLM client's names, re-exported here (the original kept them in utils) but imported on first use: the openai
# package takes ~1 s to import, which train.py and inference.py, readers of JSON files only, need not pay.
_CLIENT_NAMES = ("DEFAULT_MODEL_NAMES", "LLMEndpoint", "LLMError", "OpenAIDecodingArguments", "complete_in_order")


def __getattr__(name: str):
    if name in _CLIENT_NAMES:
        from alpaca.llm import client as llm_client

        return getattr(llm_client, name)
    raise AttributeError(f"module 'utils' has no attribute {name!r}")



# -- the original's synchronous interface ------------------------------------------------------------


def openai_completion(
    prompts: str | Sequence[str],
    decoding_args: "OpenAIDecodingArguments",
    model_name: str | None = None,
    sleep_time: float = 2,
    batch_size: int = 1,
    max_instances: int = sys.maxsize,
    max_batches: int = sys.maxsize,
    return_text: bool = False,
    *,
    api_type: str = "completions",
    api_base: str | None = None,
    max_concurrency: int = 1,
    max_retries: int = 8,
    request_timeout: float = 600.0,
    cache_dir: str | None = None,
    **decoding_kwargs,
):
    """Complete `prompts` (`batch_size` per request) and return their choices in order.

    Each choice is a dict with `text`, `finish_reason`, `index`, `total_tokens` (of its request, as in the
    original) and `usage` (token counts of its request); with return_text only the texts. With
    decoding_args.n > 1 every prompt gets a list of n; a single str prompt gets its result unwrapped.
    `sleep_time` is the first retry's backoff in seconds. Runs its own event loop: call it from plain code.
    """
    from alpaca.llm.client import LLMEndpoint, complete_in_order

    is_single_prompt = isinstance(prompts, str)
    prompts = [prompts] if is_single_prompt else list(prompts)
    if max_batches < sys.maxsize:
        logger.warning("max_batches is deprecated; using max_instances = max_batches * batch_size.")
        max_instances = max_batches * batch_size
    prompts = prompts[:max_instances]
    batches = [prompts[i:i + batch_size] for i in range(0, len(prompts), batch_size)]

    async def run() -> list[dict]:
        choices: list[dict] = []
        async with LLMEndpoint(api_type=api_type, model_name=model_name, api_base=api_base,
                               max_concurrency=max_concurrency, max_retries=max_retries, retry_base_delay=sleep_time,
                               request_timeout=request_timeout, cache_dir=cache_dir) as endpoint:
            results = complete_in_order(endpoint, lambda i: batches[i], decoding_args, 0, len(batches) - 1,
                                        **decoding_kwargs)
            async with aclosing(results) as stream:
                async for _, _, result in stream:
                    for choice in result["choices"]:
                        choices.append({**choice, "total_tokens": result["usage"]["total_tokens"],
                                        "usage": result["usage"]})
        return choices

    completions = asyncio.run(run()) if batches else []
    if return_text:
        completions = [c["text"] for c in completions]
    if decoding_args.n > 1:
        completions = [completions[i:i + decoding_args.n] for i in range(0, len(completions), decoding_args.n)]
    if is_single_prompt:
        (completions,) = completions
    return completions
