"""Answer Alpaca instructions with a local checkpoint (or base model + LoRA adapter) or an OpenAI-compatible endpoint.

    python inference.py --model_name_or_path output/alpaca --instruction "Give three tips for staying healthy."
    python inference.py --model_name_or_path output/alpaca --data_path eval.jsonl --output_path eval_out.json

The code lives in alpaca/infer/; docs/serving.md explains the flags.
"""

if __name__ == "__main__":  # a mistyped model path is reported at once, before torch and transformers load
    from alpaca.infer.checks import check_paths_first

    check_paths_first()

from alpaca.infer.answer import (  # noqa: E402, F401  (the 2023 names, importable from here)
    entry_point,
    format_prompt,
    generate_responses,
    load_model,
    main,
)

if __name__ == "__main__":
    entry_point()
