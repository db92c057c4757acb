"""ist-bench: memory and throughput profiling for PEFT and layer-sparse tuning (IST) of LLMs."""

__version__ = "0.1.0"
