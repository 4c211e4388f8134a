"""Operations: preflight checks (doctor), logs and metrics."""
