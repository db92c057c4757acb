"""ist-bench: memory and throughput profiling for PEFT and layer-sparse tuning (IST) of LLMs."""

__version__ = "0.1.0"

# Third-party warnings that are not the user's concern, filtered once at each entry point (the CLI's
# `main`, the worker's `main`; pyproject.toml's filterwarnings for the tests), never around call sites.
THIRD_PARTY_WARNINGS = (
    "`is_gradient_checkpointing` is deprecated",   # peft calls a transformers 5 property that warns on every model
    "`gradient_checkpointing_enable` is deprecated",   # peft's prepare_model_for_kbit_training (a quantized base)
    # torch's inductor modules, imported when bitsandbytes (which peft imports once installed) sets up its
    # torch.compile'd kernels at import
    "`torch.jit.script_method` is deprecated",
)


def filter_third_party_warnings() -> None:
    import warnings

    for message in THIRD_PARTY_WARNINGS:
        warnings.filterwarnings("ignore", message=message)
