"""Prompt templates and prompt masking, checked against the text they must spell."""

from __future__ import annotations

from wmtp.data.examples import (
    IGNORE_INDEX,
    Example,
    encode_example,
    format_prompt,
)
from wmtp.data.tokenizers import ByteTokenizer, SentencePieceTokenizer

EXAMPLE = Example(
    instruction="Add two numbers.",
    output="def add(a, b):\n    return a + b\n",
    problem_id="p1",
    is_correct=True,
)


def test_alpaca_template_spells_the_standard_prompt():
    assert format_prompt("Do X.", "", "alpaca") == (
        "Below is an instruction that describes a task. Write a response that appropriately "
        "completes the request.\n\n### Instruction:\nDo X.\n\n### Response:\n"
    )
    with_input = format_prompt("Do X.", "data", "alpaca")
    assert "paired with an input" in with_input
    assert with_input.endswith("### Instruction:\nDo X.\n\n### Input:\ndata\n\n### Response:\n")
    assert format_prompt("Do X.", "", "plain") == "Do X."


def test_byte_encoding_masks_bos_and_prompt_and_learns_output_and_eos():
    tok = ByteTokenizer()
    enc = encode_example(EXAMPLE, tok)
    prompt = format_prompt(EXAMPLE.instruction)
    expected_ids = [256, *(prompt + EXAMPLE.output).encode(), 257]
    assert enc.input_ids == expected_ids
    n_prompt = 1 + len(prompt.encode())
    assert enc.n_prompt == n_prompt
    assert enc.labels[:n_prompt] == [IGNORE_INDEX] * n_prompt
    assert enc.labels[n_prompt:] == expected_ids[n_prompt:]  # unshifted: labels[t] == ids[t]
    assert tok.decode(enc.labels[n_prompt:]) == EXAMPLE.output


def test_sentencepiece_encoding_tokenizes_the_text_whole(sentencepiece_model):
    tok = SentencePieceTokenizer(sentencepiece_model)
    enc = encode_example(EXAMPLE, tok)
    prompt = format_prompt(EXAMPLE.instruction)
    assert enc.input_ids == tok.encode(prompt + EXAMPLE.output, bos=True, eos=True)
    learned = [y for y in enc.labels if y != IGNORE_INDEX]
    assert learned[-1] == tok.eos_id
    # The masked part is exactly the prompt's tokens: the learned part decodes to the output.
    assert tok.decode(learned).strip() == EXAMPLE.output.strip()


def test_truncation_rules():
    tok = ByteTokenizer()
    full = encode_example(EXAMPLE, tok)
    assert encode_example(EXAMPLE, tok, max_length=len(full)) == full
    assert encode_example(EXAMPLE, tok, max_length=len(full) - 1) is None  # skipped by default
    cut = encode_example(EXAMPLE, tok, max_length=len(full) - 5, truncate=True)
    assert cut.input_ids == full.input_ids[:-5] and cut.labels == full.labels[:-5]
    # Nothing left to learn when the prompt fills the budget: skipped even with truncation.
    assert encode_example(EXAMPLE, tok, max_length=full.n_prompt, truncate=True) is None
    one = encode_example(EXAMPLE, tok, max_length=full.n_prompt + 1, truncate=True)
    assert sum(y != IGNORE_INDEX for y in one.labels) == 1


# Where a prompt ends inside a word, BPE may cut the prompt's end differently once the response
# follows it ("▁in" alone, "▁i" + "nstruction" whole): every cut of these texts is tried.
BOUNDARY_TEXTS = [
    "Write a function that returns the sum of two numbers.",
    "Below is an instruction that describes a task. Write a response.",
]


def sentencepiece_prompt_tokens(prompt: str, text: str, model) -> list[bool]:
    """Independent reference from SentencePiece's own byte offsets: a piece is prompt when its
    text ends inside the prompt; a piece reaching past it (merged across) is response."""
    import sentencepiece

    sp = sentencepiece.SentencePieceProcessor(model_file=str(model))
    pieces = sp.encode(text, return_type="proto").pieces  # byte offsets into the text
    return [p.end <= len(prompt.encode()) for p in pieces]


def test_no_sentencepiece_piece_of_prompt_text_alone_is_learned(sentencepiece_model):
    """SentencePiece's dummy prefix would put a space into the text were the response tokenized
    alone: a row is the text tokenized whole, and a piece merged across the cut is response."""
    tok = SentencePieceTokenizer(sentencepiece_model)
    for text in BOUNDARY_TEXTS:
        for cut in range(1, len(text)):
            enc = encode_example(Example(text[:cut], text[cut:], "p", True), tok, template="plain")
            is_prompt = sentencepiece_prompt_tokens(text[:cut], text, sentencepiece_model)
            assert enc.input_ids == [tok.bos_id, *tok.encode(text), tok.eos_id]
            expected = [IGNORE_INDEX] + [
                IGNORE_INDEX if p else i
                for p, i in zip(is_prompt, enc.input_ids[1:-1], strict=True)
            ]
            assert enc.labels == [*expected, tok.eos_id], (text[:cut], text[cut:])


def test_a_byte_level_bpe_row_starts_with_its_prompt_tokenized_alone(hf_tokenizer_dir):
    """A byte-level BPE has no dummy prefix: at every cut the row is the prompt's ids as
    ``wmtp eval`` feeds them (tokenized alone), then the response's, which learn; the text is
    the example's exactly, and where no token spans the cut the ids are the text's whole."""
    import tokenizers

    from wmtp.data.tokenizers import HFTokenizer

    tok = HFTokenizer(hf_tokenizer_dir)
    reference = tokenizers.Tokenizer.from_file(str(hf_tokenizer_dir / "tokenizer.json"))
    spanned = 0
    for text in BOUNDARY_TEXTS:
        for cut in range(1, len(text)):
            prompt, response = text[:cut], text[cut:]
            enc = encode_example(Example(prompt, response, "p", True), tok, template="plain")
            asked = [tok.bos_id, *reference.encode(prompt, add_special_tokens=False).ids]
            assert enc.input_ids[: enc.n_prompt] == asked and enc.labels[: enc.n_prompt] == [
                IGNORE_INDEX
            ] * len(asked)
            assert enc.labels[enc.n_prompt :] == enc.input_ids[enc.n_prompt :]
            assert reference.decode(enc.input_ids) == text and enc.input_ids[-1] == tok.eos_id
            whole = reference.encode(text, add_special_tokens=False).ids
            spanned += whole[: len(asked) - 1] != asked[1:]
            if whole[: len(asked) - 1] == asked[1:]:
                assert enc.input_ids == [tok.bos_id, *whole, tok.eos_id]
    assert spanned > 0  # cuts inside a word that BPE merges whole
