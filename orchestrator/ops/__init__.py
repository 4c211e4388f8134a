"""Operations on a formed cluster: checks a Spark owner runs (the fabric test)."""
