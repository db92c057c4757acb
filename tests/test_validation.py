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
