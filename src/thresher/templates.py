"""Templates: how a sample becomes token ids with exact spans.

The prompt and the response are tokenized separately and their ids concatenated, so the
response span is exact by construction: the boundary never depends on how a BPE merges
across the join (the failure that makes `text.rfind(response)`-style masks drift). One BOS
is added at the start when the tokenizer adds one by default; the chat template decides its
own special tokens. The `uncond` view puts the response after a document-start token (BOS,
or EOS for tokenizers without BOS such as GPT-2) so every response token is scored in both
views. Reproduce modes (`boundary="cherry"|"superfiltering"|"instructdiff"`) follow those
references' rules instead (string-based boundaries, their truncations and skips), for
number-for-number parity.
"""

from __future__ import annotations

import base64
import dataclasses
import json
import re
import string
from dataclasses import dataclass
from typing import Any

from thresher.data import Sample
from thresher.passes import PassSpec

# Stanford Alpaca's PROMPT_DICT, verbatim (also Cherry_LLM's): the response follows
# "### Response:" with no separator.
ALPACA_PROMPT_INPUT = (
    "Below is an instruction that describes a task, paired with an input that provides further "
    "context. Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:"
)
ALPACA_PROMPT_NO_INPUT = (
    "Below is an instruction that describes a task. Write a response that appropriately "
    "completes the request.\n\n### Instruction:\n{instruction}\n\n### Response:"
)
# Superfiltering / T-SHIRT "no template" (PROMPT_DICT_NONE), verbatim.
PLAIN_PROMPT_INPUT = "{instruction}\n{input}\n"
PLAIN_PROMPT_NO_INPUT = "{instruction}\n"
# Cherry's unconditioned text is "### Response:" + output.
CHERRY_UNCOND_PREFIX = "### Response:"
# InstructDiff scoring.py: the text scored is prompt + "\n" + response
INSTRUCTDIFF_SEPARATOR = "\n"
# MIWV: a complete demonstration, then a blank line, then the target (METHODS §10.3).
ONESHOT_SEPARATOR = "\n\n"

BUILTIN_TEMPLATES = ("alpaca", "plain", "chat")
CUSTOM_FIELDS = ("instruction", "input", "system")
# the fields whose text is the user's content (the `user` pooling span, MADS METHODS §6.2.2)
USER_FIELDS = ("instruction", "input")
# stands in for each message's content when locating contents in a chat template's output:
# private-use code points, which no template writes and `trim` keeps
CONTENT_MARK = "\ue000{}\ue001"


@dataclass(frozen=True)
class Template:
    """A named prompt format. `text` is what the manifest records as the template text."""

    name: str
    text: str

    def prompt(self, sample: Sample, tokenizer: Any = None) -> str:
        if self.name == "alpaca":
            fmt = ALPACA_PROMPT_INPUT if sample.input else ALPACA_PROMPT_NO_INPUT
            return fmt.format(instruction=sample.instruction, input=sample.input)
        if self.name == "plain":
            fmt = PLAIN_PROMPT_INPUT if sample.input else PLAIN_PROMPT_NO_INPUT
            return fmt.format(instruction=sample.instruction, input=sample.input)
        if self.name == "chat":
            return _chat_prompt_and_response(sample, tokenizer)[0]
        # custom format string; values are inserted as data, never parsed as format code
        return self.text.format(
            instruction=sample.instruction, input=sample.input, system=sample.system
        )

    def prompt_with_user(
        self, sample: Sample, tokenizer: Any = None
    ) -> tuple[str, tuple[tuple[int, int], ...]]:
        """The prompt and the character ranges [a, b) of its user content: the instruction and
        input texts for `alpaca`, `plain` and custom format strings (never their fixed words nor
        `{system}`), the user messages' contents for `chat` (never the role markup, the system
        prompt or earlier assistant turns). Empty contents give no range."""
        if self.name == "chat":
            msgs = [{"role": m.role, "content": m.content} for m in sample.messages]
            prompt = self.prompt(sample, tokenizer)
            return prompt, _chat_user_chars(msgs[:-1], tokenizer, prompt)
        if self.name in ("alpaca", "plain"):
            fmt = {
                ("alpaca", True): ALPACA_PROMPT_INPUT,
                ("alpaca", False): ALPACA_PROMPT_NO_INPUT,
                ("plain", True): PLAIN_PROMPT_INPUT,
                ("plain", False): PLAIN_PROMPT_NO_INPUT,
            }[self.name, bool(sample.input)]
        else:
            fmt = self.text
        values = {"instruction": sample.instruction, "input": sample.input, "system": sample.system}
        return _format_tracked(fmt, values, USER_FIELDS)

    def response(self, sample: Sample, tokenizer: Any = None) -> str:
        """The response text as the template renders it (chat: content plus end-of-turn markup)."""
        if self.name == "chat":
            return _chat_prompt_and_response(sample, tokenizer)[1]
        return sample.response


def get_template(name: str, tokenizer: Any = None) -> Template:
    """`alpaca`, `plain`, `chat` (the tokenizer's chat template), or a custom format string
    using only `{instruction}`, `{input}` and `{system}`, e.g. `"{instruction}\\n\\n### Response:"`."""
    if name == "alpaca":
        return Template("alpaca", ALPACA_PROMPT_INPUT + "\n---\n" + ALPACA_PROMPT_NO_INPUT)
    if name == "plain":
        return Template("plain", PLAIN_PROMPT_INPUT + "\n---\n" + PLAIN_PROMPT_NO_INPUT)
    if name == "chat":
        chat = getattr(tokenizer, "chat_template", None) if tokenizer is not None else None
        if tokenizer is not None and not chat:
            raise ValueError(
                "template='chat' needs a tokenizer with a chat template, and this tokenizer has "
                "none: use template='alpaca' or 'plain', or a custom format string"
            )
        return Template("chat", chat or "")
    check_custom_template(name)
    return Template(name, name)


def check_custom_template(text: str) -> None:
    """Raise unless `text` is a format string over {instruction}/{input}/{system} only."""
    try:
        parsed = list(string.Formatter().parse(text))
    except ValueError as e:
        raise ValueError(f"template {text!r} is not a valid format string: {e}") from None
    fields = [f for _, f, _, _ in parsed if f is not None]
    bad = [f for f in fields if f not in CUSTOM_FIELDS]
    if bad or "instruction" not in fields:
        raise ValueError(
            f"template {text!r} is neither a built-in ({', '.join(BUILTIN_TEMPLATES)}) nor a custom "
            f"format string with {{instruction}} and optionally {{input}}, {{system}}"
            + (f"; unknown fields: {bad}" if bad else "")
        )


def _chat_prompt_and_response(sample: Sample, tokenizer: Any) -> tuple[str, str]:
    msgs = [{"role": m.role, "content": m.content} for m in sample.messages]
    prompt = tokenizer.apply_chat_template(msgs[:-1], add_generation_prompt=True, tokenize=False)
    full = tokenizer.apply_chat_template(msgs, tokenize=False)
    if not full.startswith(prompt):
        raise TemplateError(
            "chat_prefix_mismatch",
            "the chat template renders the prompt differently with and without the response",
        )
    return prompt, full[len(prompt) :]


def _format_tracked(
    fmt: str, values: dict[str, str], tracked: tuple[str, ...]
) -> tuple[str, tuple[tuple[int, int], ...]]:
    """`fmt.format(**values)` and the character ranges where the `tracked` fields' values landed
    (empty values give no range)."""
    f = string.Formatter()
    out, ranges, pos = [], [], 0
    for literal, name, spec, conversion in f.parse(fmt):
        out.append(literal)
        pos += len(literal)
        if name is None:
            continue
        value = f.format_field(f.convert_field(values[name], conversion), spec or "")
        if name in tracked and value:
            ranges.append((pos, pos + len(value)))
        out.append(value)
        pos += len(value)
    return "".join(out), tuple(ranges)


def _chat_user_chars(msgs: list[dict], tokenizer: Any, prompt: str) -> tuple[tuple[int, int], ...]:
    """Where the user messages' contents are in `prompt`, the chat template's rendering of `msgs`.

    The template is rendered once more with each content replaced by a mark (`CONTENT_MARK`):
    the text between the marks is the template's own. `prompt` must then be that text with each
    mark replaced by its content as written, or trimmed (Gemma's templates `trim`); a template
    that moves, repeats or otherwise rewrites a content is refused for the row
    (`user_span_unknown`) rather than guessed."""
    marked = [{**m, "content": CONTENT_MARK.format(i)} for i, m in enumerate(msgs)]
    probe = tokenizer.apply_chat_template(marked, add_generation_prompt=True, tokenize=False)
    parts = re.split("\ue000(\\d+)\ue001", probe)  # literal, index, literal, ..., literal
    order = [int(x) for x in parts[1::2]]
    literals = parts[0::2]
    unknown = TemplateError(
        "user_span_unknown",
        "the chat template rewrites a message content (other than trimming it), so the user "
        "content's tokens cannot be located: pool another span (MADS text_scope='prompt')",
    )
    if len(set(order)) != len(order):
        raise unknown
    ranges, pos = [], 0
    for k, i in enumerate(order):
        if not prompt.startswith(literals[k], pos):
            raise unknown
        pos += len(literals[k])
        content = msgs[i]["content"]
        for c in dict.fromkeys((content, content.strip())):
            if prompt.startswith(c, pos) and prompt.startswith(literals[k + 1], pos + len(c)):
                break
        else:
            raise unknown
        if msgs[i]["role"] == "user" and c:
            ranges.append((pos, pos + len(c)))
        pos += len(c)
    if prompt[pos:] != literals[-1]:
        raise unknown
    return tuple(ranges)


class TemplateError(ValueError):
    """A sample this template cannot render; `reason` becomes the row's status."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True)
class NoiseKey:
    """What a noisy pass needs to draw and slice one row's noise: the sample, the length of its
    cond view (the noise tensor's sequence length), where the cond view's response starts (the
    uncond copies reuse that slice) and, for the reference stream, the random generator's state
    before this sample's draw (METHODS §12.2: one global stream in file order)."""

    sample: str
    length: int
    response_start: int
    state: bytes | None = None


Span = tuple[int, int]
# spans made of several ranges: the user content is split when the template writes words
# between its parts (Alpaca's instruction and input)
MULTI_SPANS = ("user",)


@dataclass(frozen=True)
class Rendered:
    """Token ids of one view of one sample.

    `scored` is the half-open range of target positions t whose log p(ids[t] | ids[:t]) the
    pass computes (t >= 1). `spans` gives the prompt / response / demo token ranges used for
    pooling, one (start, end) each; in passes that pool it, `user` is a tuple of such ranges
    (see `Renderer`). Counts are after truncation; `truncated` is "" or a `+`-joined list of the
    parts that lost tokens. `status` is "ok" or the reason the row cannot be scored.
    """

    ids: tuple[int, ...]
    scored: Span
    spans: dict[str, Span | tuple[Span, ...]]
    n_prompt_tokens: int
    n_response_tokens: int
    truncated: str = ""
    status: str = "ok"
    noise: NoiseKey | None = None  # noisy passes only (T-SHIRT), set by `Scorer.render`

    @property
    def n_scored(self) -> int:
        return self.scored[1] - self.scored[0]

    def ranges(self, span: str) -> tuple[Span, ...]:
        """The token ranges of a pooling span: `all` is the whole sequence, `user` its ranges
        (none when the user content was truncated away), any other span its one range."""
        if span == "all":
            return ((0, len(self.ids)),)
        if span not in self.spans:
            raise ValueError(
                f"this row has no {span!r} span (it has {sorted(self.spans)}): a pass pooling "
                f"{span!r} must render its rows with that pooling in its PassSpec"
            )
        value = self.spans[span]
        return tuple(value) if span in MULTI_SPANS else (value,)

    def to_json(self) -> str:
        """The row as JSON, noise key included (what a distributed engine ships to its workers)."""
        d = dataclasses.asdict(self)
        if self.noise is not None and self.noise.state is not None:
            d["noise"]["state"] = base64.b64encode(self.noise.state).decode("ascii")
        return json.dumps(d)

    @classmethod
    def from_json(cls, text: str) -> Rendered:
        d = json.loads(text)
        return cls(
            ids=tuple(d["ids"]),
            scored=tuple(d["scored"]),
            spans={
                k: tuple(tuple(x) for x in v) if k in MULTI_SPANS else tuple(v)
                for k, v in d["spans"].items()
            },
            n_prompt_tokens=d["n_prompt_tokens"],
            n_response_tokens=d["n_response_tokens"],
            truncated=d["truncated"],
            status=d["status"],
            noise=_noise_key(d.get("noise")),
        )


def _noise_key(d: dict[str, Any] | None) -> NoiseKey | None:
    if not d:
        return None
    state = base64.b64decode(d["state"]) if d.get("state") is not None else None
    return NoiseKey(d["sample"], d["length"], d["response_start"], state)


def _check_offsets(tok: Any) -> None:
    """Raise unless `tok` maps tokens to character offsets (what the `user` span is built from)."""
    try:
        ok = "offset_mapping" in tok("a b", add_special_tokens=False, return_offsets_mapping=True)
    except (NotImplementedError, ValueError, TypeError):
        ok = False
    if not ok:
        name = getattr(tok, "name_or_path", "") or "?"
        raise ValueError(
            f"pooling span 'user' maps the user content's characters to tokens with the "
            f"tokenizer's offset mapping, which {type(tok).__name__} ({name}) does not give: load "
            "a fast tokenizer (one backed by `tokenizers`, i.e. with a tokenizer.json), or pool "
            "another span (MADS: text_scope='prompt')"
        )


def _rejected(reason: str) -> Rendered:
    return Rendered(
        ids=(), scored=(0, 0), spans={}, n_prompt_tokens=0, n_response_tokens=0, status=reason
    )


class Renderer:
    """Renders samples for one PassSpec with one tokenizer."""

    def __init__(self, tokenizer: Any, spec: PassSpec) -> None:
        self.tok = tokenizer
        self.spec = spec
        self.template = get_template(spec.template, tokenizer)
        probe = tokenizer("a").input_ids
        bos = tokenizer.bos_token_id
        self.adds_bos = bos is not None and len(probe) > 0 and probe[0] == bos
        self.bos = [bos] if self.adds_bos else []
        # document-start token for the uncond view: BOS when the tokenizer adds it; otherwise the
        # `<|endoftext|>` document separator of GPT-2-style vocabularies (GPT-2, SmolLM, Qwen),
        # else EOS. Measured on SmolLM2-135M over 40 Alpaca responses: first-token NLL 8.21 after
        # <|endoftext|> vs 9.68 after its nominal bos_token <|im_start|> (a chat-turn marker).
        endoftext = (
            tokenizer.convert_tokens_to_ids("<|endoftext|>")
            if "<|endoftext|>" in tokenizer.get_vocab()
            else None
        )
        start = (
            bos if self.adds_bos else endoftext if endoftext is not None else tokenizer.eos_token_id
        )
        if start is None:
            start = bos
        if start is None:
            raise ValueError(
                "this tokenizer has neither a BOS, an <|endoftext|> nor an EOS token, so the "
                "unconditioned view has no document-start token to put before the response"
            )
        self.doc_start = [start]
        self.eos = (
            [tokenizer.eos_token_id]
            if spec.append_eos and tokenizer.eos_token_id is not None
            else []
        )
        # the `user` pooling span is computed only for the passes that pool it
        self.pools_user = spec.pooling is not None and spec.pooling.span == "user"
        if self.pools_user:
            _check_offsets(tokenizer)
        if spec.boundary == "instructdiff" and (spec.view != "cond" or spec.template == "chat"):
            raise ValueError(
                f"boundary='instructdiff' with view={spec.view!r} and template={spec.template!r}: "
                "InstructDiff's reference scores one cond view of a text template (`alpaca`, its "
                "DEFAULT_PROMPT, or a custom format string such as '{instruction}'); use "
                "view='cond' with one of those"
            )

    def enc(self, text: str) -> list[int]:
        return list(self.tok(text, add_special_tokens=False).input_ids)

    def enc_user(self, text: str, chars: tuple[Span, ...]) -> tuple[list[int], list[bool]]:
        """`enc(text)` and, per token, whether it holds user content (`chars`, character ranges),
        read off the tokenizer's offset mapping. A token straddling a boundary (template and user
        characters merged, e.g. "\nGive" in a metaspace vocabulary) counts as user content if
        any of its characters is: no user character is ever left out. Tokens with no characters
        (special tokens) never count."""
        enc = self.tok(text, add_special_tokens=False, return_offsets_mapping=True)
        mask = [e > s and any(s < b and a < e for a, b in chars) for s, e in enc.offset_mapping]
        return list(enc.input_ids), mask

    def _user(self, mask: list[bool] | None, shift: int = 0) -> dict[str, tuple[Span, ...]]:
        """The `user` span entry (runs of user tokens, positions + `shift`), when pooled."""
        if not self.pools_user:
            return {}
        runs: list[Span] = []
        for k, is_user in enumerate(mask or ()):
            if is_user and runs and runs[-1][1] == k + shift:
                runs[-1] = (runs[-1][0], k + shift + 1)
            elif is_user:
                runs.append((k + shift, k + shift + 1))
        return {"user": tuple(runs)}

    def render(self, sample: Sample, demo: Sample | None = None) -> Rendered:
        if self.spec.boundary == "instructdiff":
            return self._render_instructdiff(sample)
        if self.spec.boundary != "exact":
            return self._render_reference(sample)
        try:
            if self.pools_user:
                prompt, user_chars = self.template.prompt_with_user(sample, self.tok)
            else:
                prompt, user_chars = self.template.prompt(sample, self.tok), ()
            response = self.template.response(sample, self.tok)
        except TemplateError as e:
            return _rejected(e.reason)
        # a chat template writes its own BOS into the text (Gemma, Llama 3): it is then the
        # prompt's first id, which truncation keeps and a one-shot demonstration does not repeat
        lead = self.bos if self.template.name != "chat" else []
        user: list[bool] | None = None  # per prompt token: user content (pools_user only)
        if self.pools_user:
            body, body_user = self.enc_user(prompt, user_chars)
            p_ids, user = lead + body, [False] * len(lead) + body_user
        else:
            p_ids = lead + self.enc(prompt)
        n_lead = self._leading_bos(p_ids)
        r_ids = self.enc(response) + self.eos
        if not r_ids:
            return _rejected("empty_response")
        view = self.spec.view
        if view == "instruction":
            return self._instruction(p_ids, n_lead, user)
        keep = self._fit(len(p_ids), len(r_ids), n_lead)
        if isinstance(keep, str):
            return _rejected(keep)
        p_keep, r_keep = keep
        # prompt tokens are cut from the left, after BOS: the end of the prompt, nearest the
        # response, conditions it most
        cut = len(p_ids) - p_keep
        truncated = "+".join(
            x for x, c in (("prompt", cut > 0), ("response", r_keep < len(r_ids))) if c
        )
        p_ids = p_ids[:n_lead] + p_ids[n_lead + cut :]
        if user is not None:  # the user span keeps what survives truncation
            user = user[:n_lead] + user[n_lead + cut :]
        r_ids = r_ids[:r_keep]
        if view == "cond":
            ids = p_ids + r_ids
            resp = (len(p_ids), len(ids))
            return Rendered(
                tuple(ids),
                resp,
                {"prompt": (n_lead, len(p_ids)), "response": resp, **self._user(user)},
                len(p_ids),
                len(r_ids),
                truncated,
            )
        if view == "uncond":
            ids = self.doc_start + r_ids
            resp = (1, len(ids))
            spans = {"prompt": (1, 1), "response": resp, **self._user(None)}
            return Rendered(tuple(ids), resp, spans, 0, len(r_ids), truncated)
        return self._oneshot(sample, demo, p_ids, r_ids, n_lead, truncated, user)

    def _leading_bos(self, ids: list[int]) -> int:
        """1 when `ids` start with the BOS of a tokenizer that adds one (added by us, or written by a
        chat template). A `bos_token` the tokenizer never adds is no document start: SmolLM2's is
        `<|im_start|>`, the marker of every chat turn."""
        return int(self.adds_bos and bool(ids) and ids[0] == self.tok.bos_token_id)

    def _fit(self, n_p: int, n_r: int, n_lead: int) -> tuple[int, int] | str:
        """How many prompt and response tokens the cond view keeps under the truncation policy."""
        m = self.spec.max_length
        if n_p + n_r <= m:
            return n_p, n_r
        policy = self.spec.truncation
        if policy == "reject":
            return "over_max_length"
        if policy == "right":
            r = max(0, m - n_p)
            return (min(n_p, m), r) if r > 0 else "response_truncated_away"
        # prompt_first: the prompt gives up tokens first but keeps up to half of the budget;
        # the response keeps the rest, so it is never emptied
        p = max(min(n_p, m // 2), m - n_r)
        p = max(p, n_lead + 1) if n_p > n_lead else p
        return p, m - p

    def _instruction(self, p_ids: list[int], n_lead: int, user: list[bool] | None) -> Rendered:
        m = self.spec.max_length
        truncated = ""
        if len(p_ids) > m:
            if self.spec.truncation == "reject":
                return _rejected("over_max_length")
            cut = len(p_ids) - m
            p_ids = p_ids[:n_lead] + p_ids[n_lead + cut :]
            user = user[:n_lead] + user[n_lead + cut :] if user is not None else None
            truncated = "prompt"
        start = max(n_lead, 1)  # without BOS the first token has no prediction
        if len(p_ids) - start <= 0:
            return _rejected("empty_instruction")
        span = (n_lead, len(p_ids))
        return Rendered(
            tuple(p_ids),
            (start, len(p_ids)),
            {"prompt": span, "response": (len(p_ids), len(p_ids)), **self._user(user)},
            len(p_ids),
            0,
            truncated,
        )

    def _oneshot(
        self,
        sample: Sample,
        demo: Sample | None,
        p_ids: list[int],
        r_ids: list[int],
        n_lead: int,
        truncated: str,
        user: list[bool] | None,
    ) -> Rendered:
        """`oneshot`: BOS, demonstration, prompt, response. `oneshot_uncond`: the same without the
        prompt (the denominator L(y | C) of MIWV's ICL-IFD); its demonstration is cut exactly as
        in `oneshot`, so the two views differ only by the instruction."""
        if demo is None:  # e.g. a one-row pool, or every other sample excluded as a near-duplicate
            return _rejected("no_demonstration")
        try:
            d_text = (
                self.template.prompt(demo, self.tok)
                + self.template.response(demo, self.tok)
                + ONESHOT_SEPARATOR
            )
        except TemplateError as e:
            return _rejected(e.reason)
        d_ids = self.enc(d_text)
        d_ids = d_ids[self._leading_bos(d_ids) :]  # one BOS, at the very start
        target = p_ids[n_lead:] + r_ids
        room = self.spec.max_length - n_lead - len(target)
        if room < len(d_ids):
            # only the demonstration is cut (from the left), so the one-shot and zero-shot passes
            # score the same response tokens
            d_ids = d_ids[len(d_ids) - max(room, 0) :]
            truncated = "+".join(x for x in (truncated, "demo") if x)
        if self.spec.view == "oneshot_uncond":
            ids = p_ids[:n_lead] + d_ids + r_ids
            resp = (n_lead + len(d_ids), len(ids))
            if (
                resp[0] == 0
            ):  # no BOS and the demonstration cut away: the first token has no context
                return _rejected("demo_truncated_away")
            return Rendered(
                tuple(ids),
                resp,
                {
                    "demo": (n_lead, resp[0]),
                    "prompt": (resp[0], resp[0]),
                    "response": resp,
                    **self._user(None),
                },
                0,
                len(r_ids),
                truncated,
            )
        ids = p_ids[:n_lead] + d_ids + target
        demo_span = (n_lead, n_lead + len(d_ids))
        p_span = (demo_span[1], demo_span[1] + len(p_ids) - n_lead)
        resp = (p_span[1], len(ids))
        return Rendered(
            tuple(ids),
            resp,
            {
                "demo": demo_span,
                "prompt": p_span,
                "response": resp,
                **self._user(user[n_lead:] if user is not None else None, p_span[0]),
            },
            len(p_ids),
            len(r_ids),
            truncated,
        )

    def _render_reference(self, sample: Sample) -> Rendered:
        """Cherry_LLM / Superfiltering boundary rules, reproduced (METHODS §1.3-1.4, §2.4-2.5, §12.1).

        Both tokenize the joined string with the tokenizer's default special tokens, truncate at
        a token budget, and find the response start as
        `len(tokenizer.encode(text[:text.rfind(response)]))`.
        """
        tok, m, view = self.tok, self.spec.max_length, self.spec.view
        prompt = self.template.prompt(sample, tok)
        response = sample.response
        if response == "":
            return _rejected("empty_response")
        # instruct_i_len in both references: the prompt alone, special tokens included, cut at
        # max_length (`tokenizer.encode(instruct_i, truncation=True, max_length=args.max_length)`)
        if self.spec.boundary == "tshirt":
            return self._render_tshirt(prompt, response)
        instruct_len = len(tok(prompt, truncation=True, max_length=m).input_ids)
        if self.spec.boundary == "cherry":
            return self._render_cherry(prompt, response, instruct_len)
        if view == "cond":
            return _by_rfind(tok, prompt + response, response, m, instruct_len)
        # Superfiltering: the output alone at max_length - instruct_len + 1, loss via
        # labels=input_ids, so position 0 (the first response token without BOS) is unscored
        budget = m - instruct_len + 1
        if budget < 2:
            return _rejected("prompt_fills_max_length")
        ids = tok(response, truncation=True, max_length=budget).input_ids
        n_lead = 1 if self.adds_bos else 0
        return Rendered(
            tuple(ids),
            (1, len(ids)),
            {"prompt": (0, n_lead), "response": (n_lead, len(ids))},
            instruct_len,
            len(ids) - n_lead,
        )

    def _render_tshirt(self, prompt: str, response: str) -> Rendered:
        """T-SHIRT `token_loss.py` at 0f96e76 (METHODS §12.2): `instruction_len =
        len(tok(instruction).input_ids)`, uncut; the cond view is `tok(instruction + output)` cut
        at max_length, its response scored from `instruction_len`; the uncond view is
        `tok(output)` cut at `max_length - instruction_len`, every token but the first scored."""
        tok, m = self.tok, self.spec.max_length
        instruct_len = len(tok(prompt).input_ids)
        if self.spec.view == "cond":
            ids = tok(prompt + response, truncation=True, max_length=m).input_ids
            if instruct_len >= len(ids):
                return _rejected("response_truncated_away")
            resp = (instruct_len, len(ids))
            spans = {"prompt": (0, instruct_len), "response": resp}
            return Rendered(tuple(ids), resp, spans, instruct_len, len(ids) - instruct_len)
        budget = m - instruct_len
        if budget < 2:
            return _rejected("prompt_fills_max_length")
        ids = tok(response, truncation=True, max_length=budget).input_ids
        n_lead = 1 if self.adds_bos else 0
        spans = {"prompt": (0, n_lead), "response": (n_lead, len(ids))}
        return Rendered(tuple(ids), (1, len(ids)), spans, instruct_len, len(ids) - n_lead)

    def noise_length(self, sample: Sample) -> int:
        """The sequence length of a sample's draw in T-SHIRT's reference noise stream: its full
        ids, `tok(instruction + output)` cut at max_length, for every sample, renderable or not
        (METHODS §12.2: the code draws for every sample in file order)."""
        prompt = self.template.prompt(sample, self.tok)
        text = prompt + sample.response
        return len(self.tok(text, truncation=True, max_length=self.spec.max_length).input_ids)

    def _render_cherry(self, prompt: str, response: str, instruct_len: int) -> Rendered:
        """Cherry_LLM at its pinned commit 01fac8d (METHODS §12.1).

        `data_by_IFD.py` drops a row, in this order: (1) when `max_length - instruct_len > 0`
        fails, i.e. the prompt alone fills max_length: status `prompt_fills_max_length`, the same
        in both views so the row's first reason is this one; (2) when either response span is
        empty (`len_1 <= 0 or len_2 <= 0`): status `response_truncated_away`; (3) when
        `instruct_len + len_1 > max_length`, len_1 being the uncond view's response tokens after
        truncation; (4) when IFD > 1. Rules 3 and 4 need both views and are the method's: this
        view gives `n_prompt_tokens = instruct_len` and `n_response_tokens = len_1` for rule 3.

        The unconditioned text `"### Response:" + output` is truncated at
        `max_length - instruct_len + 4` tokens (`data_analysis.py` and `data_by_IFD.py` at the
        pinned commit; Cherry's first commit used `- 2` and skipped rows where that was <= 4).
        """
        tok, m = self.tok, self.spec.max_length
        if m - instruct_len <= 0:
            return _rejected("prompt_fills_max_length")
        if self.spec.view == "cond":
            return _by_rfind(tok, prompt + response, response, m, instruct_len)
        budget = m - instruct_len + 4
        return _by_rfind(tok, CHERRY_UNCOND_PREFIX + response, response, budget, instruct_len)

    def _render_instructdiff(self, sample: Sample) -> Rendered:
        """InstructDiff's `scoring.py` @ 28adfe3 (`_compute_metrics`, `score_dataset`; METHODS §12.3).

        The prompt is `DEFAULT_PROMPT`, Alpaca's no-input template filled with the instruction
        only: the input field is ignored (a custom template is filled as the code's
        `format_map({instruction, input})`). The text scored is `prompt + "\n" + response`,
        tokenized whole with the tokenizer's special tokens and never truncated. With
        `prompt_len = len(tok(prompt).input_ids) - 1`, the targets are the shifted positions
        `[prompt_len, len(full) - 1)`, i.e. every token after the prompt's own token count,
        the "\n" included: `n_response_tokens` is the reference's `n_tokens`. Rows whose prompt
        or response alone (special tokens included) is longer than `max_length` (the code's
        4,096) are skipped: status `over_max_length`. An empty response is scored (the "\n"
        alone), as the code does; a text whose tokens end within the prompt's count (the code's
        `target_len <= 0`, NLL = inf: an empty response whose "\n" merged into the prompt's last
        token) is rejected as `empty_response`.
        """
        tok, m = self.tok, self.spec.max_length
        if self.template.name == "alpaca":
            prompt = ALPACA_PROMPT_NO_INPUT.format(instruction=sample.instruction)
        else:
            prompt = self.template.prompt(sample, tok)
        response = sample.response
        p_ids = tok(prompt).input_ids
        if len(p_ids) > m or len(tok(response).input_ids) > m:
            return _rejected("over_max_length")
        ids = tok(prompt + INSTRUCTDIFF_SEPARATOR + response).input_ids
        start = len(p_ids)  # target position prompt_len + 1: shifted logit prompt_len predicts it
        if start >= len(ids):
            return _rejected("empty_response")
        resp = (start, len(ids))
        return Rendered(
            tuple(ids),
            resp,
            {"prompt": (self._leading_bos(list(ids)), start), "response": resp},
            start,
            len(ids) - start,
        )


def _by_rfind(tok: Any, text: str, response: str, max_length: int, instruct_len: int) -> Rendered:
    ids = tok(text, truncation=True, max_length=max_length).input_ids
    start = len(tok(text[: text.rfind(response)]).input_ids)
    if start >= len(ids):
        return _rejected("response_truncated_away")
    resp = (start, len(ids))
    # one token more than the budget tells whether the budget cut the text, without tokenizing
    # (and warning about) a text longer than the model's context
    cut = len(tok(text, truncation=True, max_length=max_length + 1).input_ids) > len(ids)
    return Rendered(
        tuple(ids),
        resp,
        {"prompt": (0, start), "response": resp},
        instruct_len,
        len(ids) - start,
        "response" if cut else "",
    )
