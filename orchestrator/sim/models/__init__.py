"""The demo's models: a tiny random Llama and SmolLM2 from a PyPI wheel."""
