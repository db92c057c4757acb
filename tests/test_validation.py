from ist_bench.report.validation import pair_rows, validation_frame


def _row(backend, model="m", select="none", peak=100, est=None, status="ok", act=40):
    summ = {"run_peak": peak, "weights": {"max": 10}, "activations": {"max": act}, "gradients": {"max": 5},
            "optimizer": {"max": 10}}
    if backend == "cuda":
        summ.update(run_allocated_peak=peak + 4, run_reserved_peak=peak + 20)
    else:
        summ.update(run_allocated_peak_est=est if est is not None else peak)
    return {"kind": "memory", "backend": backend, "status": status, "memory": {"summary": summ, "steps": []},
            "case": {"model": model, "method": {"name": "lora"}, "select": select, "seq_len": 8, "dtype": "bf16"}}


def test_rows_pair_by_case_and_gaps_are_relative_to_cuda():
    rows = [_row("cuda", peak=200), _row("sim", peak=200, est=206), _row("cuda", model="other"),
            _row("sim", select="rst")]
    assert len(pair_rows(rows)) == 1
    df = validation_frame(rows)
    assert df.loc[0, "gap %"] == 100 * (206 - 204) / 204
    assert df.loc[0, "tensor peak gap %"] == 0


def test_an_oom_cell_is_kept_with_its_status():
    cuda = _row("cuda", status="oom")
    cuda["peak_reached"] = 2**30
    df = validation_frame([cuda, _row("sim")])
    assert df.loc[0, "cuda status"] == "oom" and df.loc[0, "cuda peak alloc"] == 1.0


def test_validated_means_the_same_cell_in_every_knob_that_changes_bytes():
    """A validated cell's footer is given only to the same model, method, policy and every byte-moving knob:
    the user's own data (any mode), another AdamW kernel or LoRA rank, dropout or adapter width is another
    cell (`--data ... --data-mode sample` was once labelled with the 1024-token synthetic cell's gap)."""
    from ist_bench.report.cells import check_note, validated

    def row(**case):
        return {"backend": "sim", "case": {"model": "llama-7b", "method": {"name": "lora", "r": 32, "alpha": 64,
                                                                         "dropout": 0.05}, "select": "none", **case}}
    assert "llama-7b lora" in validated()["cells"]
    assert check_note(row()).startswith("validated: ")
    for other in (dict(data="my/alpaca.json", tokenizer="tok.json", data_mode="sample"),
                  dict(data="my/alpaca.json", tokenizer="tok.json", data_mode="pack"),
                  dict(optim="foreach"), dict(optim="for-loop"), dict(seq_len=512)):
        assert check_note(row(**other)).startswith("NOT validated"), other
    for knob in ({"r": 16}, {"dropout": 0.0}, {"alpha": 32}):
        r = row()
        r["case"]["method"].update(knob)
        assert check_note(r).startswith("NOT validated"), knob
    assert check_note(row(seed=7, steps=20, lr=1e-3)).startswith("validated: ")   # no byte moves with these
    # a sample cell measured with foreach is validated under foreach, not under the default fused kernel
    foreach = [c for c in validated()["cells"] if c.endswith(" foreach")]
    assert foreach and not any(c.removesuffix(" foreach") in validated()["cells"] for c in foreach)
