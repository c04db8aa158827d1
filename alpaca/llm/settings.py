"""The endpoint settings: one meaning per flag, written once. Every command that talks to a model server (the
generator, inference, the judge, the preference stage, the rater) takes these flags and shows these words in its
`--help`; the client (alpaca/llm/client.py) is what gives them their meaning.

Retries of a failed HTTP request are `--max_retries` everywhere; asking a judge again because its reply held no
verdict is `--verdict_retries` (the judge, the preference stage), and a rater's reply without a score is
`--score_retries`.
"""

ENDPOINT_FLAGS: dict[str, str] = {
    "api_type": 'how prompts are sent: "chat" (messages), "completions" (the prompt as text) or "local" (an '
                "in-process Hugging Face model, no server).",
    "api_base": "base URL of an OpenAI-compatible server, e.g. http://localhost:8000/v1 (default OPENAI_BASE_URL, "
                "else OpenAI); several servers of one model: comma-separated URLs, or @FILE with one URL a line "
                "(docs/fleet.md). The key comes from OPENAI_API_KEY.",
    "max_concurrency": "requests in flight at once, shared among the servers; the output does not depend on it.",
    "requests_per_minute": "client-side limit on requests sent per minute, to stay under a quota (default: none).",
    "tokens_per_minute": "client-side limit on tokens per minute, to stay under a quota (default: none).",
    "max_retries": "times a failed HTTP request (429, 5xx, a timeout, a dropped connection, a malformed reply) is "
                   "sent again, with backoff; then the run stops with a sentence saying why.",
    "retry_base_delay": "seconds before the first retry; doubled at each retry, with jitter.",
    "retry_max_delay": "the longest wait between retries, in seconds (a server's Retry-After is capped at 60 s).",
    "request_timeout": "seconds one attempt of a request may take, from sending it to its last byte; a slower "
                       "attempt is retried.",
    "max_response_bytes": "the longest reply body read, in bytes; a longer one is refused, never stored.",
}


def describe(flag: str) -> str | None:
    """The one description of an endpoint flag (without its dashes), or None for a flag that is not one."""
    return ENDPOINT_FLAGS.get(flag)


def dollars(usage: dict, price_per_1k_prompt_tokens: float | None,
            price_per_1k_completion_tokens: float | None) -> float:
    """What `usage` ({"prompt_tokens", "completion_tokens"}; a missing count is 0) costs at the
    --price_per_1k_prompt_tokens / --price_per_1k_completion_tokens prices (a price not given counts 0)."""
    return (usage.get("prompt_tokens", 0) * (price_per_1k_prompt_tokens or 0)
            + usage.get("completion_tokens", 0) * (price_per_1k_completion_tokens or 0)) / 1000
