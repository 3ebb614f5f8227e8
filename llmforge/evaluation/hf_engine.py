"""Transformers targets (a model folder or hub id, optionally with a PEFT adapter): exact loss over the trained
(assistant) tokens, and generation from the chat template's generation prompt."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import torch

from llmforge.errors import LlmforgeError
from llmforge.evaluation.examples import Example

log = logging.getLogger(__name__)

def chat_tokens(
    tokenizer, example: Example, max_length: int, verdict=None
) -> tuple[list[tuple[list[int], list[int]]], str]:
    """The scored samples of an example, each (token ids, mask of tokens that count: 1 = trained/assistant token),
    and how the mask was made.

    Conversations are split and masked exactly as training does (chat_spans): one sample, or one per assistant
    turn for templates that rewrite earlier turns. Plain-text records count every token."""
    if example.text is not None:
        ids = tokenizer(example.text, add_special_tokens=True)["input_ids"]
        return [(ids[:max_length], [1] * len(ids[:max_length]))], "all tokens"
    if not getattr(tokenizer, "chat_template", None):
        raise LlmforgeError(
            "the tokenizer has no chat template, so conversations cannot be scored",
            hint="set model.chat_template to a family, or evaluate a model whose tokenizer has one",
        )
    from datetime import datetime

    from llmforge import chat_spans

    verdict = verdict if verdict is not None else chat_spans.verdict_for(tokenizer)
    chat_spans.require(verdict)
    samples = chat_spans.encode(tokenizer, verdict, example.messages, now=datetime.now())
    return [(ids[:max_length], mask[:max_length]) for ids, mask, _turns in samples], verdict.how


def nll_of(logits: torch.Tensor, ids: list[int], mask: list[int]) -> tuple[float, int]:
    """Sum of -log p(token) over masked tokens (each predicted from the positions before it) and their count."""
    if len(ids) < 2:
        return 0.0, 0
    logp = torch.log_softmax(logits[:-1].double(), dim=-1)
    targets = torch.tensor(ids[1:], dtype=torch.long)
    weights = torch.tensor(mask[1:], dtype=torch.double)
    nll = -logp.gather(1, targets[:, None])[:, 0]
    return float((nll * weights).sum()), int(weights.sum())


class HFEngine:
    """One transformers model in memory, on CUDA when there is one."""

    def __init__(self, model: str, tokenizer: str | None, adapter: Path | None = None, *, revision: str | None = None,
                 dtype: str = "auto", trust_remote_code: bool = False, chat_template: str = "auto"):
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()  # our own progress bar is the one on screen
        self.device = "cuda" if torch.cuda.is_available() else "cpu"
        from llmforge import checkpoints

        self.tokenizer = checkpoints.load_tokenizer(
            tokenizer or model, revision=revision if tokenizer in (None, model) else None,
            trust_remote_code=trust_remote_code,
        )
        self.verdict = checkpoints.use_training_template(self.tokenizer, chat_template, untrainable="keep-own")

        # half precision on CPU is slow and loses accuracy: fp32 there unless asked otherwise
        load_dtype = "float32" if self.device == "cpu" and dtype == "auto" else dtype
        net = checkpoints.load_model(model, revision=revision, trust_remote_code=trust_remote_code, dtype=load_dtype)
        if adapter is not None:
            # training may have added tokens (a pad token, a template's specials) and saved the resized embeddings
            # with the adapter: the base must have the same rows before the adapter loads
            rows = net.get_input_embeddings().weight.shape[0]
            if len(self.tokenizer) > rows:
                net.resize_token_embeddings(len(self.tokenizer))
            net = checkpoints.load_adapter(net, adapter)
        self.model = net.to(self.device).eval()
        self.mask_how: set[str] = set()

    def score(self, example: Example, max_length: int) -> tuple[float, int]:
        samples, how = chat_tokens(self.tokenizer, example, max_length, self.verdict)
        self.mask_how.add(how)
        total, count = 0.0, 0
        for ids, mask in samples:
            with torch.no_grad():
                logits = self.model(input_ids=torch.tensor([ids], device=self.device)).logits[0].float().cpu()
            nll, n = nll_of(logits, ids, mask)
            total, count = total + nll, count + n
        return total, count

    def generate(self, prompt: list[dict[str, str]], max_new_tokens: int, temperature: float, seed: int) -> dict:
        tok = self.tokenizer
        ids = tok.apply_chat_template(prompt, tokenize=True, return_dict=True, add_generation_prompt=True)["input_ids"]
        stops = [t for t in {tok.eos_token_id, *(_as_list(self.model.generation_config.eos_token_id))} if t is not None]
        # A fresh generation config: the checkpoint's own (sampling, repetition penalty ...) would make this
        # target decode differently from the others.
        from transformers import GenerationConfig

        decoding = GenerationConfig(
            max_new_tokens=max_new_tokens, do_sample=temperature > 0, repetition_penalty=1.0,
            eos_token_id=stops or None,
            pad_token_id=tok.pad_token_id if tok.pad_token_id is not None else (stops or [0])[0],
            **({"temperature": temperature, "top_k": 0, "top_p": 1.0} if temperature > 0 else {}),
        )
        torch.manual_seed(seed)
        started = time.perf_counter()
        with torch.no_grad():
            out = self.model.generate(
                input_ids=torch.tensor([list(ids)], device=self.device),
                attention_mask=torch.ones(1, len(ids), dtype=torch.long, device=self.device),
                generation_config=decoding,
            )
        seconds = time.perf_counter() - started
        new = out[0, len(ids):].tolist()
        while new and new[-1] in stops:
            new.pop()
        text = tok.decode(new, skip_special_tokens=True).strip()
        return {"text": text, "new_tokens": len(new), "seconds": seconds}

    def close(self) -> None:
        del self.model
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


def _as_list(value) -> list:
    if value is None:
        return []
    return list(value) if isinstance(value, (list, tuple)) else [value]
