"""Token batches for the controlled step: Alpaca prompts, or labelled synthetic tokens.

With an Alpaca-format JSON file *and* a local tokenizer, samples are rendered with the
Alpaca prompt template, tokenized, and either packed into exactly `seq_len` tokens per
step (`pack`, the controlled default) or used one per step, truncated at `seq_len`
(`sample`, the real-length setting). Without both, token ids are drawn deterministically
from the vocabulary and every result says `data: synthetic`.
"""

from __future__ import annotations

import functools
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING

from ist_bench.errors import UsageError, choice_error, read_json

if TYPE_CHECKING:
    import torch

SAMPLE_FILE = resources.files("ist_bench.data") / "alpaca_sample.json"

PROMPT_INPUT = (
    "Below is an instruction that describes a task, paired with an input that provides further context. "
    "Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:\n{output}"
)
PROMPT_NO_INPUT = (
    "Below is an instruction that describes a task. "
    "Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Response:\n{output}"
)
MODES = ("pack", "sample")
_EOS_NAMES = ("</s>", "<|endoftext|>", "<|end_of_text|>", "<eos>")  # Llama/Mistral, GPT-2, Llama 3, Gemma


def render(sample: dict) -> str:
    """One Alpaca sample as the training text (prompt plus response)."""
    template = PROMPT_INPUT if sample.get("input") else PROMPT_NO_INPUT
    return template.format(instruction=sample["instruction"], input=sample.get("input", ""),
                           output=sample.get("output", ""))


def load_samples(path: str | Path) -> list[dict]:
    data = read_json(path, "data file")
    if not isinstance(data, list) or not data:
        raise UsageError(f"malformed Alpaca file {path}: expected a non-empty JSON list of samples")
    for i, s in enumerate(data):
        if not isinstance(s, dict) or not isinstance(s.get("instruction"), str):
            raise UsageError(f"malformed Alpaca file {path}: sample {i} has no 'instruction' string")
    return data


def load_tokenizer(path: str | Path):
    """A local tokenizer: a `tokenizer.json` file or a directory holding one (never downloads)."""
    from transformers import PreTrainedTokenizerFast

    path = Path(path)
    file = path / "tokenizer.json" if path.is_dir() else path
    if not file.is_file():
        raise UsageError(f"tokenizer file not found: {file}")
    try:
        tok = PreTrainedTokenizerFast(tokenizer_file=str(file))
    except Exception as e:  # tokenizers raises its own exception types
        raise UsageError(f"cannot load tokenizer {file}: {e}") from None
    if tok.eos_token is None:  # a bare tokenizer.json does not say which token ends a sample
        vocab = tok.get_vocab()
        tok.eos_token = next((t for t in _EOS_NAMES if t in vocab), None)
    return tok


def _mtime(path) -> float:
    p = Path(path)
    return p.stat().st_mtime if p.exists() else 0.0


@functools.lru_cache(maxsize=4)
def _tokenized(data: str, tokenizer: str, data_mtime: float, tok_mtime: float) -> tuple[tuple[int, ...], ...]:
    """Each sample rendered and tokenized, with EOS; cached per process (a case validates its
    data before it builds, and both would otherwise tokenize the whole file)."""
    samples = load_samples(data)
    tok = load_tokenizer(tokenizer)
    eos = [tok.eos_token_id] if tok.eos_token_id is not None else []
    try:
        return tuple(tuple(tok(render(s), add_special_tokens=True)["input_ids"] + eos) for s in samples)
    except Exception as e:  # tokenizers raises its own exception types
        raise UsageError(f"tokenizer {tokenizer} cannot tokenize {data}: {' '.join(str(e).split())[:160]}") from None


def check_sources(data: str | Path | None, tokenizer: str | Path | None, mode: str, batch: int) -> None:
    """What can be checked of a case's data without tokenizing it (light: JSON only): the mode, the
    two files together, each readable, the samples well-formed."""
    if mode not in MODES:
        raise choice_error("data mode", mode, MODES)
    if (data is None) != (tokenizer is None):
        raise UsageError("--data and --tokenizer go together (give both, or neither for synthetic tokens)")
    if batch > 1 and mode == "sample" and data is not None:
        raise UsageError("--data-mode sample takes --batch 1 (samples of different lengths would need padding)")
    if data is not None:
        load_samples(data)
        file = Path(tokenizer) / "tokenizer.json" if Path(tokenizer).is_dir() else Path(tokenizer)
        if not file.is_file():
            raise UsageError(f"tokenizer file not found: {file}")


class TokenBatches:
    """Batch 1 x seq_len token ids for step `i`, deterministic across runs."""

    def __init__(self, seq_len: int, vocab_size: int, *, data: str | Path | None = None,
                 tokenizer: str | Path | None = None, mode: str = "pack", seed: int = 0, batch: int = 1,
                 meta: bool = False):
        import torch

        check_sources(data, tokenizer, mode, batch)
        if seq_len < 2:
            raise UsageError(f"--seq-len must be >= 2, got {seq_len}")
        self.seq_len, self.vocab_size, self.mode, self.seed, self.batch = seq_len, vocab_size, mode, seed, batch
        # sim: synthetic ids are shapes on the meta device, never host memory in proportion to the batch
        self.meta = meta
        self.kind = "synthetic" if data is None else "alpaca"
        self.samples: tuple[tuple[int, ...], ...] = ()
        if data is not None:
            self.samples = _tokenized(str(data), str(tokenizer), _mtime(data), _mtime(tokenizer))
            if not any(self.samples):
                raise UsageError(f"tokenizer {tokenizer} yields no tokens for the samples of {data}")
            self.samples = tuple(s for s in self.samples if s)
            top = max(max(s) for s in self.samples)
            if top >= vocab_size:
                raise UsageError(f"tokenizer produces id {top}, beyond the model's vocabulary of {vocab_size}")
            self._stream = torch.tensor([t for s in self.samples for t in s])

    def describe(self) -> dict:
        d = {"data": self.kind, "batch": self.batch}
        if self.kind == "alpaca" and self.mode == "sample":   # one real sample per step: its own length
            lens = [min(len(s), self.seq_len) for s in self.samples]
            d.update(mode=self.mode, samples=len(self.samples), max_len=self.seq_len,
                     mean_len=round(sum(lens) / len(lens), 1))
        else:
            d["seq_len"] = self.seq_len
            if self.kind == "alpaca":
                d.update(mode=self.mode, samples=len(self.samples))
        return d

    def ids(self, step: int) -> torch.Tensor:
        """Token ids (batch, T) on the CPU: T = seq_len except in `sample` mode (shorter samples)."""
        import torch

        if self.kind == "synthetic" and self.meta:
            return torch.empty((self.batch, self.seq_len), dtype=torch.long, device="meta")
        if self.kind == "synthetic":
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + step)
            return torch.randint(0, self.vocab_size, (self.batch, self.seq_len), generator=g)
        if self.mode == "sample":
            return torch.tensor([self.samples[step % len(self.samples)][: self.seq_len]])
        n = self.batch * self.seq_len
        positions = torch.arange(step * n, (step + 1) * n) % len(self._stream)
        return self._stream[positions].view(self.batch, self.seq_len)  # the packed stream, wrapping around

    def longest_step(self) -> int:
        """A step whose batch has the most tokens: in `sample` mode the (first) longest sample's,
        else any step (every batch is seq_len long)."""
        if self.kind == "synthetic" or self.mode != "sample":
            return 0
        return max(range(len(self.samples)), key=lambda i: min(len(self.samples[i]), self.seq_len))

    def heldout(self, n: int, draw: int = 0) -> torch.Tensor:
        """Token ids (n, seq_len) for IST's importance forwards: synthetic draws from a stream no
        training step uses, or the last n x seq_len tokens of the packed Alpaca stream; `draw` > 0
        (IST's `eval_data=fresh`: the round's step) gives another draw, the window before it."""
        import torch

        if self.kind == "synthetic" and self.meta:
            return torch.empty((n, self.seq_len), dtype=torch.long, device="meta")
        if self.kind == "synthetic":
            g = torch.Generator().manual_seed((self.seed + 1) * 2**40 + 7 + draw)
            return torch.randint(0, self.vocab_size, (n, self.seq_len), generator=g)
        end = len(self._stream)
        positions = torch.arange(end - (draw + 1) * n * self.seq_len, end - draw * n * self.seq_len) % end
        return self._stream[positions].view(n, self.seq_len)


def needs_mask(model) -> bool:
    """Eager attention gets an explicit mask (see model_inputs); SDPA gets none."""
    return getattr(model.config, "_attn_implementation", "eager") == "eager"


def model_inputs(ids: torch.Tensor, device: torch.device | str, mask: bool = True) -> dict:
    """Causal-LM inputs with explicit positions, and for eager attention an explicit all-ones mask
    (transformers would otherwise call `.item()` in its mask helpers, which a meta tensor cannot
    answer). With `mask=False` (SDPA) neither mask nor positions are passed: transformers then
    calls SDPA with `is_causal=True` and no mask, as it does on a GPU once it has seen that an
    all-ones mask can be dropped, so the flash kernel is chosen."""
    import torch

    ids = ids.to(device)
    if not mask:   # positions too would make transformers look for packed sequences (`.item()` again)
        return {"input_ids": ids, "labels": ids}
    n = ids.shape[1]
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids),
            "position_ids": torch.arange(n, device=device).expand(ids.shape[0], n), "labels": ids}
