"""Build a tiny LLaMA-style model and SentencePiece tokenizer offline, for tests and the demo.

    python scripts/make_tiny_model.py --output_dir tiny-llama

The code lives in alpaca/testing/tiny_model.py.
"""

from alpaca.testing.tiny_model import main

if __name__ == "__main__":
    main()
