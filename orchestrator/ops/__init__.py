"""Operations on a running deployment: benchmarks, supervision, upkeep."""
