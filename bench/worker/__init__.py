"""The worker: what runs inside a cell's process — its entry point (main), the measurement (measure, timing,
memory, metrics, profiling), the set-up of several ranks (distributed, agent), and the protocol it shares with
the parent (protocol). Nothing here imports the parent or the views."""
