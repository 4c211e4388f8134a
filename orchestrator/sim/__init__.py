"""The simulation of two (or N) Sparks on one machine, for the demo, tests and
benchmarks: network namespaces (netns), a tiny local model (tinymodel), vLLM's CPU
platform made schedulable over Ray (plugin, vllm_platform), and the demo.

The product (net, cluster, serve) never imports this package. vLLM imports
`plugin` in every process, so this file stays empty of imports."""
