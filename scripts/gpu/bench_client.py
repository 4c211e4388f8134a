"""vLLM's own benchmark client (`vllm bench serve`), in-process, one JSON line out.

Run inside a simulated Spark by serve_scenario.py: python3 bench_client.py [vllm bench serve flags]
"""

import json
import sys

from vllm.benchmarks import serve

try:
    from vllm.utils.argparse_utils import FlexibleArgumentParser
except ImportError:  # before 0.24
    from vllm.utils import FlexibleArgumentParser

KEYS = ("completed", "failed", "duration", "total_input_tokens", "total_output", "total_output_tokens",
        "request_throughput", "output_throughput", "median_ttft_ms", "p99_ttft_ms", "median_tpot_ms",
        "p99_tpot_ms", "median_itl_ms")

if __name__ == "__main__":
    parser = FlexibleArgumentParser()
    serve.add_cli_args(parser)
    result = serve.main(parser.parse_args(sys.argv[1:]))
    print("BENCH_JSON " + json.dumps({k: result.get(k) for k in KEYS if k in result}), flush=True)
