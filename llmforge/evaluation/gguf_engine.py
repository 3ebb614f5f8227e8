"""GGUF targets through llama.cpp: loss from llama.cpp's own logits (logits_all) over the same token ids and mask
as the HF targets, and generation in our own loop so the new-token limit holds (llama.cpp's can overrun it)."""

from __future__ import annotations

import logging
import time

import numpy as np

from llmforge.errors import require_extra
from llmforge.evaluation.examples import Example

log = logging.getLogger(__name__)


class GGUFEngine:
    def __init__(self, path: str, tokenizer: str | None, *, max_length: int, max_new_tokens: int, seed: int,
                 chat_template: str = "auto", examples: list[Example] | None = None):
        require_extra("evaluating a GGUF file", "llamacpp", "llama_cpp")
        from llmforge.llamacpp import open_llama

        # The HF tokenizer (when we have one) renders the chat template with its generation markers; the GGUF
        # shares its vocabulary id for id, so ids go to llama.cpp directly and both engines see the same tokens.
        self.tokenizer = None
        self.verdict = None
        if tokenizer is not None:
            from llmforge import checkpoints

            self.tokenizer = checkpoints.load_tokenizer(tokenizer)
            self.verdict = checkpoints.use_training_template(self.tokenizer, chat_template, untrainable="keep-own")
        # llama.cpp keeps (n_ctx x vocabulary) logits with logits_all: size the context to the longest example,
        # not to max_length (2048 x 150k float32 would be 1.2 GB for nothing).
        n_ctx = max_length + max_new_tokens
        if self.tokenizer is not None and examples:
            from llmforge.evaluation.hf_engine import chat_tokens

            longest = max(
                len(ids) for ex in examples for ids, _ in chat_tokens(self.tokenizer, ex, max_length, self.verdict)[0]
            )
            n_ctx = min(n_ctx, -(-(longest + max_new_tokens + 1) // 64) * 64)
        self.llm = open_llama(path, n_ctx=n_ctx, logits_all=True, seed=seed, verbose=False)
        self.n_ctx = n_ctx
        self.mask_how: set[str] = set()
        vocab = self.llm.n_vocab()
        if self.tokenizer is not None and len(self.tokenizer) > vocab:
            log.warning("tokenizer has %d tokens but the GGUF %d", len(self.tokenizer), vocab)

    def score(self, example: Example, max_length: int) -> tuple[float, int] | None:
        if self.tokenizer is None:
            return None  # no chat template with generation markers to tell which tokens count
        from llmforge.evaluation.hf_engine import chat_tokens

        samples, how = chat_tokens(self.tokenizer, example, min(max_length, self.n_ctx), self.verdict)
        self.mask_how.add(how)
        total, count = 0.0, 0
        for ids, mask in samples:  # one per assistant turn for templates that rewrite earlier turns
            nll, n = self._score_ids(ids, mask)
            total, count = total + nll, count + n
        return total, count

    def _score_ids(self, ids: list[int], mask: list[int]) -> tuple[float, int]:
        if len(ids) < 2:
            return 0.0, 0
        self.llm.reset()
        self.llm.eval(ids)
        logits = np.asarray(self.llm.scores[: len(ids) - 1], dtype=np.float64)
        top = logits.max(axis=1, keepdims=True)
        log_z = (top + np.log(np.exp(logits - top).sum(axis=1, keepdims=True)))[:, 0]
        targets = np.asarray(ids[1:])
        nll = log_z - logits[np.arange(len(targets)), targets]
        weights = np.asarray(mask[1:], dtype=np.float64)
        return float((nll * weights).sum()), int(weights.sum())

    def generate(self, prompt: list[dict[str, str]], max_new_tokens: int, temperature: float, seed: int) -> dict:
        if self.tokenizer is None:
            return self._chat_completion(prompt, max_new_tokens, temperature, seed)
        tok = self.tokenizer
        ids = list(tok.apply_chat_template(prompt, tokenize=True, return_dict=True, add_generation_prompt=True)[
            "input_ids"])
        stops = {t for t in (tok.eos_token_id, self.llm.token_eos()) if t is not None and t >= 0}
        self.llm.set_seed(seed)
        self.llm.reset()
        new: list[int] = []
        started = time.perf_counter()
        if max_new_tokens > 0:
            for token in self.llm.generate(ids, temp=temperature, top_k=0 if temperature > 0 else 1, top_p=1.0,
                                           min_p=0.0, repeat_penalty=1.0, reset=True):
                if token in stops:
                    break
                new.append(int(token))
                if len(new) >= max_new_tokens or len(ids) + len(new) >= self.n_ctx:
                    break
        seconds = time.perf_counter() - started
        return {"text": tok.decode(new, skip_special_tokens=True).strip(), "new_tokens": len(new), "seconds": seconds}

    def _chat_completion(self, prompt, max_new_tokens, temperature, seed) -> dict:
        """No HF tokenizer: llama.cpp renders the GGUF's embedded chat template itself."""
        started = time.perf_counter()
        out = self.llm.create_chat_completion(messages=prompt, max_tokens=max_new_tokens, temperature=temperature,
                                              top_k=1 if temperature == 0 else 0, seed=seed)
        seconds = time.perf_counter() - started
        return {"text": (out["choices"][0]["message"].get("content") or "").strip(),
                "new_tokens": int(out.get("usage", {}).get("completion_tokens") or 0), "seconds": seconds}

    def close(self) -> None:
        self.llm.close()
