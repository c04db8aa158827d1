"""Batch Self-Instruct: generate Alpaca-style instruction-following data with an LLM endpoint.

    python -m generate_instruction generate_instruction_following_data --output_dir ./ \
        --num_instructions_to_generate 100 --model_name gpt-3.5-turbo-instruct

The code lives in alpaca/generate/ (the loop in self_instruct.py); docs/generation.md explains every flag.
"""

from alpaca.generate.self_instruct import (  # noqa: F401  (the 2023 names, importable from here)
    encode_prompt,
    entry_point,
    find_word_in_string,
    generate_instruction_following_data,
    post_process_gpt3_response,
)

if __name__ == "__main__":
    entry_point()
