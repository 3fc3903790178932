"""Single-purpose scripts beside the harness, each run as `python -m bench.tools.NAME` (`--help` says more):

    layer_bench         one adapted layer, forward + backward: this library's impls against peft's
    ceilings            the GPU's measured matmul and copy ceilings
    adapter_floor       the adapter's FLOP counts behind reports/PERF_NOTES.md's floors
    sparse_gpu_check    the sparse-basis kernels against the dense reference, on one CUDA GPU
    prepare_accuracy    what the accuracy tasks need on a machine without their packages (an fp16 MiniLM, the ViT)
    budget              matched trainable budgets: the RandLoRA rank closest to LoRA's count
    slim_run            a finished run folder for committing: its records in one compressed file
    page_weight         what a report page weighs, section by section, table by table, script by script
"""
