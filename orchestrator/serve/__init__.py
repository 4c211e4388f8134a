"""Stage 3, serving: vLLM's OpenAI server in this process over the Ray cluster
(engine), the vLLM version differences (compat), and the server's /health (health)."""
