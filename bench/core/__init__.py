"""The harness's ground floor: errors, files, YAML, the GPUs through NVML, the machine's description.
Imports nothing else of the harness."""
