"""spark-vllm: serve vLLM across DGX Spark machines.

Data flows one way: discover (network) -> plan (communication environment) ->
apply -> cluster (Ray) -> serve (vLLM) -> supervise. This package never prints,
parses argv or exits; `launch` does.
"""

__version__ = "0.1.0"
