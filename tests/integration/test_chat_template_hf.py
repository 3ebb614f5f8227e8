"""llmforge.chat_templates.render against the real transformers apply_chat_template, byte for byte and span for span."""

from __future__ import annotations

import pytest
import upstream_templates
from tiny_models import CHATML_TEMPLATE, load_tokenizer

from llmforge import chat_spans
from llmforge import chat_templates as ct
from llmforge.errors import UsageError


def _cases():
    for name, (bos, eos) in upstream_templates.TOKENS.items():
        yield pytest.param(upstream_templates.read(name), bos, eos, id=name)
    for family in ct.FAMILIES.values():
        yield pytest.param(family.jinja, family.bos_token, family.eos_token or "</s>", id=f"family-{family.name}")
    yield pytest.param(CHATML_TEMPLATE, None, "<|im_end|>", id="tiny-tokenizer-chatml")


def _hf_tokenizer(bos, eos):
    """A tokenizer built here (no download): only its special tokens matter to apply_chat_template(tokenize=False)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordLevel({"[UNK]": 0}, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    specials = {"unk_token": "[UNK]", "eos_token": eos}
    if bos is not None:
        specials["bos_token"] = bos
    return PreTrainedTokenizerFast(tokenizer_object=tok, **specials)


@pytest.mark.parametrize(("template", "bos", "eos"), list(_cases()))
def test_render_equals_apply_chat_template(template, bos, eos):
    from transformers.utils.chat_template_utils import render_jinja_template

    tokenizer = _hf_tokenizer(bos, eos)
    compared = refused = 0
    for probe in ct.PROBES:
        for gen in (True, False):
            try:
                want = tokenizer.apply_chat_template(
                    list(probe.messages), chat_template=template, tokenize=False, add_generation_prompt=gen
                )
            except Exception:  # the template refused the conversation (raise_exception and the like)
                want = None
            try:
                got = ct.render(template, probe.messages, add_generation_prompt=gen, **tokenizer.special_tokens_map)
            except UsageError:
                got = None
            assert got == want, (probe.name, gen)
            refused += want is None
            compared += 1
            if want is not None and ct.has_generation_markers(template):
                # The loss-mask spans too: transformers' own generation indices for the same render.
                (text,), (indices,) = render_jinja_template(
                    conversations=[list(probe.messages)],
                    chat_template=template,
                    return_assistant_tokens_mask=True,
                    add_generation_prompt=gen,
                    **tokenizer.special_tokens_map,
                )
                spans = ct.render_with_spans(
                    template, probe.messages, add_generation_prompt=gen, **tokenizer.special_tokens_map
                ).spans
                assert text == want and [tuple(i) for i in indices] == list(spans), (probe.name, gen)
    assert compared == 2 * len(ct.PROBES) and refused < compared


def _bpe_tokenizer(family: ct.Family, eos: str):
    """A byte-level BPE trained here on the probe texts, with the family's special tokens as added tokens."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    specials = sorted({*family.stop_tokens, *family.end_of_turn, eos, *filter(None, [family.bos_token])})
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    texts = [m["content"] for p in ct.PROBES for m in p.messages] * 3
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token=eos, bos_token=family.bos_token, chat_template=family.jinja
    )


@pytest.mark.parametrize("name", list(ct.FAMILIES))
def test_end_of_turn_token_is_in_the_assistant_mask_with_real_token_ids(name):
    family = ct.FAMILIES[name]
    eos = family.eos_token or "</s>"
    tokenizer = _bpe_tokenizer(family, eos)
    (end_of_turn,) = ct.end_of_turn_tokens_for(family, eos)
    end_id = tokenizer.convert_tokens_to_ids(end_of_turn)
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "What is 2 + 2?"},
        {"role": "assistant", "content": "4."},
        {"role": "user", "content": "And times 3?"},
        {"role": "assistant", "content": "12."},
    ]
    if not family.supports_system:
        messages = messages[1:]
    out = tokenizer.apply_chat_template(messages, tokenize=True, return_dict=True, return_assistant_tokens_mask=True)
    ids, mask = out["input_ids"], out["assistant_masks"]
    trained_ends = [i for i, (t, m) in enumerate(zip(ids, mask)) if t == end_id and m]
    assert len(trained_ends) == 2  # one per assistant turn
    ct.check_end_of_turn_ids_trained(ids, mask, [end_id], assistant_turns=2)
    # The character spans of render_with_spans select exactly the tokens transformers masks.
    rendered = ct.render_with_spans(family.jinja, messages, bos_token=family.bos_token, eos_token=eos)
    encoded = tokenizer(rendered.text, add_special_tokens=False, return_offsets_mapping=True)
    assert encoded["input_ids"] == ids
    ours = [int(any(s <= a < e for s, e in rendered.spans)) for a, _ in encoded["offset_mapping"]]
    assert ours == list(mask)


def test_tiny_tokenizer_template_is_chatml_and_trains_its_stop_token(tiny_tokenizer_dir):
    tokenizer = load_tokenizer(tiny_tokenizer_dir)
    template = tokenizer.chat_template
    assert ct.identify(template, bos_token=tokenizer.bos_token, eos_token=tokenizer.eos_token) is ct.CHATML
    verdict = chat_spans.verdict_for(tokenizer)  # what training decides for this tokenizer
    assert (verdict.template, verdict.family, verdict.source) == (template, ct.CHATML, "tokenizer")
    assert verdict.trains and verdict.end_of_turn == ("<|im_end|>",), verdict.reason
    assert ct.stop_tokens_for(template, bos_token=None, eos_token=tokenizer.eos_token) == ct.CHATML.stop_tokens


def test_end_of_turn_outside_the_span_is_caught_with_real_token_ids():
    outside = ct.CHATML.jinja.replace(
        "{{- message['content'] + '<|im_end|>' }}\n        {%- endgeneration %}\n        {{- '\\n' }}",
        "{{- message['content'] }}\n        {%- endgeneration %}\n        {{- '<|im_end|>\\n' }}",
    )
    assert outside != ct.CHATML.jinja
    tokenizer = _bpe_tokenizer(ct.CHATML, "<|im_end|>")
    messages = [{"role": "user", "content": "What is 2 + 2?"}, {"role": "assistant", "content": "4."}]
    out = tokenizer.apply_chat_template(
        messages, chat_template=outside, tokenize=True, return_dict=True, return_assistant_tokens_mask=True
    )
    end_id = tokenizer.convert_tokens_to_ids("<|im_end|>")
    with pytest.raises(UsageError, match="never learn to stop"):
        ct.check_end_of_turn_ids_trained(out["input_ids"], out["assistant_masks"], [end_id], assistant_turns=1)
