"""Boundary tests for every template, view and tokenizer family."""

from __future__ import annotations

import pytest

from thresher.data import Message, Sample
from thresher.passes import PassSpec
from thresher.templates import ALPACA_PROMPT_INPUT, ALPACA_PROMPT_NO_INPUT, Renderer, get_template
from tiny import FAMILIES


def alpaca(instruction: str, output: str, input: str = "", sid: str = "s") -> Sample:
    user = instruction + ("\n" + input if input else "")
    return Sample(sid, (Message("user", user), Message("assistant", output)), instruction, input)


def tok_of(family: str):
    return FAMILIES[family][0]()


def spec(**kw) -> PassSpec:
    return PassSpec(model="tiny", **kw)


SAMPLE = alpaca("Give the sum of 17 and 25.", "17 + 25 = 42.")
SAMPLE_IN = alpaca("Reverse the word.", "The reversed word is olleh.", input="hello")


def test_alpaca_text_is_verbatim():
    t = get_template("alpaca")
    assert t.prompt(SAMPLE) == ALPACA_PROMPT_NO_INPUT.format(
        instruction="Give the sum of 17 and 25."
    )
    assert t.prompt(SAMPLE_IN).endswith("### Input:\nhello\n\n### Response:")
    assert t.prompt(SAMPLE_IN) == ALPACA_PROMPT_INPUT.format(
        instruction="Reverse the word.", input="hello"
    )
    assert get_template("plain").prompt(SAMPLE_IN) == "Reverse the word.\nhello\n"
    assert get_template("plain").prompt(SAMPLE) == "Give the sum of 17 and 25.\n"


@pytest.mark.parametrize("family", list(FAMILIES))
@pytest.mark.parametrize("template", ["alpaca", "plain", "{instruction}\n\n### Response:"])
def test_cond_response_span_is_exact(family, template):
    tok = tok_of(family)
    r = Renderer(tok, spec(template=template)).render(SAMPLE_IN)
    resp_ids = tok(SAMPLE_IN.response, add_special_tokens=False).input_ids
    a, b = r.scored
    assert r.status == "ok"
    assert list(r.ids[a:b]) == resp_ids  # the response, exactly, by construction
    assert r.n_scored == len(resp_ids) == r.n_response_tokens
    bos = tok.bos_token_id
    n_bos = sum(1 for x in r.ids if x == bos) if bos is not None else 0
    adds_bos = tok("a").input_ids[0] == bos
    assert r.ids[0] == bos if adds_bos else r.ids[0] != bos
    assert n_bos == (1 if adds_bos else 0)  # one BOS, never two


@pytest.mark.parametrize("family", list(FAMILIES))
def test_uncond_scores_every_response_token(family):
    tok = tok_of(family)
    r = Renderer(tok, spec(view="uncond")).render(SAMPLE)
    resp_ids = tok(SAMPLE.response, add_special_tokens=False).input_ids
    assert r.scored == (1, 1 + len(resp_ids))
    assert list(r.ids[1:]) == resp_ids
    adds_bos = tok("a").input_ids[0] == tok.bos_token_id
    vocab = tok.get_vocab()
    expected = tok.bos_token_id if adds_bos else vocab.get("<|endoftext|>", tok.eos_token_id)
    assert r.ids[0] == expected


@pytest.mark.parametrize("family", list(FAMILIES))
def test_instruction_change_never_moves_scored_tokens(family):
    tok = tok_of(family)
    rd = Renderer(tok, spec())
    a = rd.render(alpaca("Sort 3, 1, 2.", "1, 2, 3."))
    b = rd.render(alpaca("Sort these numbers in ascending order please: 3, 1, 2.", "1, 2, 3."))
    assert a.ids[a.scored[0] : a.scored[1]] == b.ids[b.scored[0] : b.scored[1]]


def test_boundary_case_differs_from_joined_tokenization():
    """Where a BPE merges across the join, the exact span still equals enc(response)."""
    from tiny import BOUNDARY_CASES

    cases = [(f, p, r) for f, pairs in BOUNDARY_CASES.items() for p, r in pairs]
    assert len(cases) >= 6
    for family, prompt, response in cases:
        tok = tok_of(family)
        joined = tok(prompt + response, add_special_tokens=False).input_ids
        sep = (
            tok(prompt, add_special_tokens=False).input_ids
            + tok(response, add_special_tokens=False).input_ids
        )
        assert joined != sep
        t = get_template("{instruction}")
        s = alpaca(prompt, response)
        r = Renderer(tok, spec(template=t.text)).render(s)
        assert (
            list(r.ids[r.scored[0] : r.scored[1]])
            == tok(response, add_special_tokens=False).input_ids
        )


@pytest.mark.parametrize("family", list(FAMILIES))
def test_truncation_policies(family):
    tok = tok_of(family)
    long_prompt = alpaca("word " * 200, "The answer is 42.")
    n_r = len(tok(long_prompt.response, add_special_tokens=False).input_ids)
    # prompt_first: the prompt is cut (from the left), the response is kept whole
    r = Renderer(tok, spec(max_length=40)).render(long_prompt)
    assert r.status == "ok" and len(r.ids) == 40 and r.n_scored == n_r and r.truncated == "prompt"
    # right: plain right truncation removes the response entirely -> rejected, never silent
    r = Renderer(tok, spec(max_length=40, truncation="right")).render(long_prompt)
    assert r.status == "response_truncated_away"
    r = Renderer(tok, spec(max_length=40, truncation="reject")).render(long_prompt)
    assert r.status == "over_max_length"
    # a response longer than the budget: prompt keeps half, the response the rest (cut right)
    long_resp = alpaca("Count.", "one two three four five six seven eight nine ten " * 20)
    r = Renderer(tok, spec(max_length=40)).render(long_resp)
    assert (
        r.status == "ok" and len(r.ids) == 40 and 0 < r.n_scored < 40 and "response" in r.truncated
    )
    u = Renderer(tok, spec(max_length=40, view="uncond")).render(long_resp)
    # both views score the same response tokens
    assert u.ids[u.scored[0] : u.scored[1]] == r.ids[r.scored[0] : r.scored[1]]


@pytest.mark.parametrize("family", ["chatml", "gemma"])
def test_chat_template_prefix_diff_and_single_bos(family):
    tok = tok_of(family)
    s = Sample(
        "c",
        (
            Message("system", "Be brief."),
            Message("user", "Hi there"),
            Message("assistant", "Hello!"),
        ),
        "Hi there",
    )
    r = Renderer(tok, spec(template="chat")).render(s)
    assert r.status == "ok"
    full = tok.apply_chat_template(
        [{"role": m.role, "content": m.content} for m in s.messages], tokenize=False
    )
    assert tok.decode(list(r.ids)) == full  # ids render back to the template's own text
    resp_text = tok.decode(list(r.ids[r.scored[0] : r.scored[1]]))
    assert resp_text.startswith("Hello!")
    if tok.bos_token_id is not None:
        assert (
            list(r.ids).count(tok.bos_token_id) <= 1
        )  # the Gemma template's own BOS is not doubled


def test_chat_template_needs_one():
    with pytest.raises(ValueError, match="chat template"):
        Renderer(tok_of("gpt2"), spec(template="chat"))


def test_custom_template_rejects_unknown_fields_and_code():
    with pytest.raises(ValueError, match="unknown fields"):
        get_template("{instruction} {output}")
    with pytest.raises(ValueError):
        get_template("{instruction.__class__}")
    # dataset text containing braces is data, never a format string
    s = alpaca("print {x} and {0}", "ok")
    assert get_template("Q: {instruction}\nA:").prompt(s) == "Q: print {x} and {0}\nA:"


@pytest.mark.parametrize("family", list(FAMILIES))
def test_instruction_view_scores_the_prompt(family):
    tok = tok_of(family)
    r = Renderer(tok, spec(view="instruction")).render(SAMPLE)
    prompt_ids = tok(get_template("alpaca").prompt(SAMPLE), add_special_tokens=False).input_ids
    n_lead = 1 if tok("a").input_ids[0] == tok.bos_token_id else 0
    assert list(r.ids[n_lead:]) == prompt_ids
    assert r.scored == (max(n_lead, 1), len(r.ids))


@pytest.mark.parametrize("family", list(FAMILIES))
def test_oneshot_truncates_only_the_demonstration(family):
    tok = tok_of(family)
    demo = alpaca("Name a colour.", "Blue " * 100, sid="d")
    full = Renderer(tok, spec(view="oneshot", max_length=4096)).render(SAMPLE, demo)
    cut = Renderer(tok, spec(view="oneshot", max_length=60)).render(SAMPLE, demo)
    cond = Renderer(tok, spec(view="cond", max_length=60)).render(SAMPLE)
    assert "demo" in cut.truncated and len(cut.ids) == 60
    target = cond.ids[cond.scored[0] : cond.scored[1]]
    assert (
        cut.ids[cut.scored[0] : cut.scored[1]]
        == target
        == full.ids[full.scored[0] : full.scored[1]]
    )
    assert cut.spans["demo"][1] == cut.spans["prompt"][0]


@pytest.mark.parametrize("family", list(FAMILIES))
def test_oneshot_uncond_is_the_oneshot_view_without_the_instruction(family):
    tok = tok_of(family)
    demo = alpaca("Name a colour.", "Blue " * 100, sid="d")
    for m in (4096, 60):
        one = Renderer(tok, spec(view="oneshot", max_length=m)).render(SAMPLE, demo)
        bare = Renderer(tok, spec(view="oneshot_uncond", max_length=m)).render(SAMPLE, demo)
        d0, d1 = one.spans["demo"]
        # the same lead, the same (equally cut) demonstration, then straight to the same response tokens
        assert bare.ids == one.ids[:d1] + one.ids[one.scored[0] :]
        assert bare.ids[bare.scored[0] : bare.scored[1]] == one.ids[one.scored[0] : one.scored[1]]
        assert (
            bare.spans["demo"] == (d0, d1)
            and bare.scored == (d1, len(bare.ids))
            and bare.truncated == one.truncated
        )
    assert (
        Renderer(tok, spec(view="oneshot_uncond")).render(SAMPLE, None).status == "no_demonstration"
    )


def test_empty_response_is_rejected_not_scored():
    r = Renderer(tok_of("chatml"), spec()).render(alpaca("Say nothing.", ""))
    assert r.status == "empty_response" and r.ids == ()


def test_cherry_reproduce_boundary():
    """Cherry: start = len(encode(text[:rfind(output)])), both counts with BOS."""
    tok = tok_of("chatml")
    r = Renderer(tok, spec(boundary="cherry")).render(SAMPLE)
    text = get_template("alpaca").prompt(SAMPLE) + SAMPLE.response
    ids = tok(text).input_ids
    start = len(tok(text[: text.rfind(SAMPLE.response)]).input_ids)
    assert r.ids == tuple(ids) and r.scored == (start, len(ids))
    u = Renderer(tok, spec(view="uncond", boundary="cherry")).render(SAMPLE)
    utext = "### Response:" + SAMPLE.response
    assert u.ids == tuple(tok(utext).input_ids)
    assert u.scored[0] == len(tok("### Response:").input_ids)


LONG = alpaca(
    "Give three tips for staying healthy.",
    "1. Eat a balanced diet. 2. Exercise regularly. 3. Sleep at least 7 hours. " * 4,
)


@pytest.mark.parametrize(("family", "dropped"), [("gpt2", True), ("chatml", False)])
def test_cherry_pinned_truncation_and_drop_rules(family, dropped):
    """METHODS §12.1, written here from the spec: uncond = "### Response:" + output cut at
    max_length - prompt_len + 4 tokens; the row is dropped when prompt_len + its response tokens
    > max_length. "### Response:" is 3 tokens without BOS (gpt2: truncated rows lose exactly one
    token too many, so they are dropped) and 4 with BOS (chatml: they fit exactly)."""
    tok, m = tok_of(family), 64
    prompt = ALPACA_PROMPT_NO_INPUT.format(instruction=LONG.instruction)
    prompt_len = len(tok(prompt, truncation=True, max_length=m).input_ids)
    utext = "### Response:" + LONG.response
    assert len(tok(utext).input_ids) > m - prompt_len + 4  # the uncond text is truncated
    u_ids = tok(utext, truncation=True, max_length=m - prompt_len + 4).input_ids
    start = len(tok("### Response:").input_ids)
    n_alone = len(u_ids) - start
    # Cherry's first commit cut at m - prompt_len - 2: six response tokens fewer
    assert n_alone - (m - prompt_len - 2 - start) == 6

    u = Renderer(tok, spec(view="uncond", boundary="cherry", max_length=m)).render(LONG)
    c = Renderer(tok, spec(view="cond", boundary="cherry", max_length=m)).render(LONG)
    assert u.status == c.status == "ok"
    assert u.ids == tuple(u_ids) and u.scored == (start, len(u_ids))
    assert u.n_response_tokens == n_alone and u.truncated == "response"
    assert u.n_prompt_tokens == prompt_len and c.n_prompt_tokens == prompt_len
    # rule 3, as data_by_IFD.py: what the method reads from the rendered uncond row
    assert (prompt_len + n_alone > m) == dropped
    assert (u.n_prompt_tokens + u.n_response_tokens > m) == dropped

    # thresher's exact rule on the same row: both views keep the same response tokens (the
    # prompt is cut from the left), nothing is dropped
    ue = Renderer(tok, spec(view="uncond", max_length=m)).render(LONG)
    ce = Renderer(tok, spec(view="cond", max_length=m)).render(LONG)
    assert ue.status == ce.status == "ok" and len(ce.ids) == m
    assert ue.n_response_tokens == ce.n_response_tokens == ce.n_scored == ue.n_scored
    assert ce.ids[ce.scored[0] :] == ue.ids[1:]
    assert (
        ce.ids[ce.scored[0] :]
        == tuple(tok(LONG.response, add_special_tokens=False).input_ids)[: ce.n_response_tokens]
    )


@pytest.mark.parametrize("family", ["gpt2", "chatml"])
def test_cherry_pinned_prompt_that_fills_max_length_is_dropped_first(family):
    """Rule 1 (`max_length - prompt_len > 0` fails) comes before the span checks, in both views."""
    tok = tok_of(family)
    prompt = ALPACA_PROMPT_NO_INPUT.format(instruction=LONG.instruction)
    m = len(tok(prompt).input_ids)  # the prompt alone is exactly max_length tokens
    for view in ("cond", "uncond"):
        r = Renderer(tok, spec(view=view, boundary="cherry", max_length=m)).render(LONG)
        assert r.status == "prompt_fills_max_length" and r.ids == ()
    # one token more: the prompt fits, the uncond budget is 5 tokens, the cond text has room
    # for one response token
    r = Renderer(tok, spec(view="cond", boundary="cherry", max_length=m + 1)).render(LONG)
    assert r.status == "ok" and r.n_response_tokens == 1


def instructdiff_reference(tok, instruction: str, response: str):
    """METHODS §12.3, written from the spec: the full ids and the target positions t (scored as
    log p(ids[t] | ids[:t])) of InstructDiff's scoring.py."""
    prompt = ALPACA_PROMPT_NO_INPUT.format(instruction=instruction)
    full = tok(prompt + "\n" + response).input_ids
    prompt_len = len(tok(prompt).input_ids) - 1
    # shifted logits [prompt_len, len(full) - 1) predict labels full[1:][prompt_len:]
    return tuple(full), (prompt_len + 1, len(full))


@pytest.mark.parametrize("family", ["chatml", "gpt2", "gemma"])
def test_instructdiff_reference_text_and_targets(family):
    tok = tok_of(family)
    r = Renderer(tok, spec(boundary="instructdiff", max_length=4096)).render(SAMPLE_IN)
    ids, scored = instructdiff_reference(tok, SAMPLE_IN.instruction, SAMPLE_IN.response)
    assert r.status == "ok" and r.ids == ids and r.scored == scored
    assert r.n_response_tokens == r.n_scored == scored[1] - scored[0]
    # the input field is ignored: the same row without it renders the same
    no_input = alpaca(SAMPLE_IN.instruction, SAMPLE_IN.response)
    assert Renderer(tok, spec(boundary="instructdiff", max_length=4096)).render(no_input) == r


@pytest.mark.parametrize("family", ["chatml", "gpt2"])
def test_instructdiff_reference_scores_the_newline_as_a_response_token(family):
    tok = tok_of(family)
    r = Renderer(tok, spec(boundary="instructdiff", max_length=4096)).render(SAMPLE)
    assert tok.convert_ids_to_tokens(r.ids[r.scored[0]]) == "Ċ"  # "\n", the first target
    assert r.n_response_tokens == len(tok(SAMPLE.response, add_special_tokens=False).input_ids) + 1
    exact = Renderer(tok, spec(max_length=4096)).render(SAMPLE)
    assert r.n_response_tokens == exact.n_response_tokens + 1


def test_instructdiff_reference_boundary_is_a_token_count():
    """Gemma's metaspace BPE merges "Response:" and "\n" into one token: the reference still
    starts the targets at the prompt's own token count, one token into the response, and an
    empty response leaves no target (the code's NLL = inf), rejected."""
    tok = tok_of("gemma")
    r = Renderer(tok, spec(boundary="instructdiff", max_length=4096)).render(SAMPLE)
    first = r.ids.index(tok.convert_tokens_to_ids("▁Response:\n")) + 1  # the response's first
    assert r.scored[0] == first + 1  # ... is not scored: the targets start one token later
    empty = Renderer(tok, spec(boundary="instructdiff", max_length=4096)).render(alpaca("Hi.", ""))
    assert empty.status == "empty_response" and empty.ids == ()
    # where "\n" stays a token of its own, an empty response scores the "\n" alone, as the code
    one = Renderer(tok_of("chatml"), spec(boundary="instructdiff")).render(alpaca("Hi.", ""))
    assert one.status == "ok" and one.n_response_tokens == 1


@pytest.mark.parametrize("family", ["chatml", "gpt2"])
def test_instructdiff_reference_skips_parts_over_max_length_and_never_truncates(family):
    tok = tok_of(family)
    prompt = ALPACA_PROMPT_NO_INPUT.format(instruction=LONG.instruction)
    n_p, n_r = len(tok(prompt).input_ids), len(tok(LONG.response).input_ids)
    assert n_r > n_p
    # each part alone fits, the whole text does not: scored whole, nothing cut
    r = Renderer(tok, spec(boundary="instructdiff", max_length=n_r)).render(LONG)
    ids, scored = instructdiff_reference(tok, LONG.instruction, LONG.response)
    assert r.status == "ok" and len(r.ids) > n_r and (r.ids, r.scored) == (ids, scored)
    assert r.truncated == ""
    # one token over, for the response alone, then for the prompt alone
    too_long = Renderer(tok, spec(boundary="instructdiff", max_length=n_r - 1)).render(LONG)
    assert too_long.status == "over_max_length"
    short = alpaca(LONG.instruction, "Yes.")
    assert Renderer(tok, spec(boundary="instructdiff", max_length=n_p)).render(short).status == "ok"
    over = Renderer(tok, spec(boundary="instructdiff", max_length=n_p - 1)).render(short)
    assert over.status == "over_max_length"


def test_instructdiff_reference_needs_the_cond_view_of_a_text_template():
    tok = tok_of("chatml")
    with pytest.raises(ValueError, match="view='uncond'"):
        Renderer(tok, spec(view="uncond", boundary="instructdiff"))
    with pytest.raises(ValueError, match="template='chat'"):
        Renderer(tok, spec(template="chat", boundary="instructdiff"))
    # a custom format string is filled as the code's format_map (e.g. its DIRECT_PROMPT)
    r = Renderer(tok, spec(template="{instruction}", boundary="instructdiff")).render(SAMPLE)
    assert r.ids == tuple(tok(SAMPLE.instruction + "\n" + SAMPLE.response).input_ids)
    assert r.scored[0] == len(tok(SAMPLE.instruction).input_ids)


def test_superfiltering_reproduce_leaves_first_token_unscored_without_bos():
    tok = tok_of("gpt2")
    u = Renderer(tok, spec(view="uncond", template="plain", boundary="superfiltering")).render(
        SAMPLE
    )
    resp = tok(SAMPLE.response).input_ids
    assert u.ids == tuple(resp) and u.scored == (1, len(resp))  # T - 1 tokens, as the reference
    clean = Renderer(tok, spec(view="uncond", template="plain")).render(SAMPLE)
    assert clean.n_scored == len(resp)  # the clean mode scores all T


def test_chat_template_keeps_one_bos_through_truncation_and_one_shot():
    """A chat template that writes BOS (Gemma's) keeps it first when the prompt is cut, and a
    one-shot demonstration rendered by the same template does not bring a second one."""
    tok = tok_of("gemma")
    bos = tok.bos_token_id
    long_prompt = Sample(
        "c",
        (Message("user", "word " * 200), Message("assistant", "The answer is 42.")),
        "word " * 200,
    )
    cut = Renderer(tok, spec(template="chat", max_length=40)).render(long_prompt)
    assert cut.status == "ok" and cut.truncated == "prompt" and len(cut.ids) == 40
    assert cut.ids[0] == bos and list(cut.ids).count(bos) == 1
    one = Renderer(tok, spec(template="chat", view="oneshot", max_length=4096)).render(
        SAMPLE, long_prompt
    )
    assert one.ids[0] == bos and list(one.ids).count(bos) == 1 and one.spans["demo"][0] == 1
    cond = Renderer(tok, spec(template="chat")).render(SAMPLE)
    assert (
        one.ids[one.spans["prompt"][0] :] == cond.ids[1:]
    )  # the target follows the demo as in cond
