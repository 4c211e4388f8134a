"""vLLM's platform plugin of the CPU simulation (Ray schedules CPU workers as GPUs)."""
