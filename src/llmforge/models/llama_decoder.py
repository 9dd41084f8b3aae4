"""The token loop of a llama.cpp model: evaluate a prompt once, then sample, detokenize and evaluate
one token at a time, for one answer or several answers to the same prompt.

- **Samplers** are llama.cpp's own, chained as llama-cpp-python chains them for
  `create_completion` (penalties, top-k, typical, top-p, min-p, temperature, then greedy or a
  seeded draw), with llama-cpp-python's defaults, so an answer is the one the plain library gives.
- **A grammar** constrains an answer the way llama.cpp's server applies one: the chain picks a
  token from the unconstrained logits, the grammar checks that one token (about a microsecond), and
  only when it refuses is the grammar applied to the whole vocabulary (milliseconds: every token's
  text is matched) before drawing again. llama-cpp-python's own path puts the grammar first in the
  chain, i.e. a whole-vocabulary pass for every token. For greedy decoding without penalties a
  refusal first tries the `GREEDY_CANDIDATES` most likely tokens, best first: the first the grammar
  allows is the token a whole-vocabulary pass would pick, so the vocabulary is walked only when
  none of them fits.
- **Log probabilities** are the log-softmax of each step's raw logits (before penalties, grammar
  and temperature: the model's own distribution), with the most likely alternatives. Only the last
  position's logits are read, so no `logits_all` (n_ctx x n_vocab floats) is needed.
- **Several answers** evaluate the prompt once: its last logits are kept, and each later answer
  drops the previous answer's tokens from the KV cache, so every answer starts from exactly the
  state the first one saw (greedy answers are identical).
- **Text** leaves as UTF-8-safe pieces: the bytes of a character split across tokens wait for the
  rest of it.

`Vocab` is the tokenizer alone (text <-> tokens, end-of-generation tokens), which the llama-server
engine uses too (it loads the vocabulary only, not the weights).

Does not know chat templates, tools, stop sequences, threads or queues. Not thread-safe, except
`tokenize` (one worker thread owns a decoder; see `LlamaCppChatModel.count_prompt_tokens`).
"""

from __future__ import annotations

import codecs
import ctypes
import random
import threading
from collections.abc import Generator
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

from llmforge.core.errors import InvalidRequestError, ModelError
from llmforge.core.types import Sampling, TokenLogprob, TopLogprob

GREEDY_CANDIDATES = 256
VOCAB_CTX = 8  # the context of a vocabulary-only load (it decodes nothing; larger ones warn)
# llama-cpp-python's create_completion defaults, so that unset options sample the same way
DEFAULT_TEMPERATURE = 0.8
DEFAULT_TOP_P = 0.95
TOP_K = 40
MIN_P = 0.05
_TOKEN_DATA = np.dtype([("id", "<i4"), ("logit", "<f4"), ("p", "<f4")])  # llama_token_data

Logits = npt.NDArray[np.float32]


@dataclass(frozen=True)
class Step:
    """One generated token: the text it completes (may be empty while a character is split
    across tokens) and, when asked for, its log probability."""

    token: int
    text: str
    logprob: TokenLogprob | None = None


class Vocab:
    """The tokenizer of one loaded `llama_cpp.Llama` (weights or `vocab_only`): text <-> tokens.
    Reads the vocabulary only, so any thread may use it while a decoder decodes (llama.cpp's
    server tokenizes on its HTTP threads the same way)."""

    def __init__(self, llm: Any) -> None:
        from llama_cpp import llama_cpp

        self._c = llama_cpp
        self.handle = llm._model.vocab
        self.n_vocab = int(llm.n_vocab())
        self.add_bos = bool(llama_cpp.llama_vocab_get_add_bos(self.handle))
        self._pieces: dict[int, bytes] = {}

    def tokenize(self, text: str, *, special: bool, add_bos: bool = False) -> list[int]:
        """Tokens of `text`."""
        data = text.encode("utf-8")
        size = len(data) + 16
        for _ in range(2):
            buf = (self._c.llama_token * size)()
            n = self._c.llama_tokenize(self.handle, data, len(data), buf, size, add_bos, special)
            if n >= 0:
                return list(buf[:n])
            size = -n
        raise ModelError(f"llama.cpp could not tokenize a text of {len(data)} bytes")

    def piece(self, token: int) -> bytes:
        """The bytes of one token (control tokens render as nothing)."""
        piece = self._pieces.get(token)
        if piece is None:
            size = 64
            buf = ctypes.create_string_buffer(size)
            n = self._c.llama_token_to_piece(self.handle, token, buf, size, 0, False)
            if n < 0:
                buf = ctypes.create_string_buffer(-n)
                n = self._c.llama_token_to_piece(self.handle, token, buf, -n, 0, False)
            piece = self._pieces[token] = buf.raw[:n]
        return piece

    def is_eog(self, token: int) -> bool:
        """Whether `token` ends generation (end of text, end of turn)."""
        return bool(self._c.llama_vocab_is_eog(self.handle, token))


class Decoder:
    """Decodes with one loaded `llama_cpp.Llama`."""

    def __init__(self, llm: Any) -> None:
        from llama_cpp import llama_cpp

        self._c = llama_cpp
        self.llm = llm
        self.vocab = Vocab(llm)
        self._vocab = self.vocab.handle
        self.n_vocab = self.vocab.n_vocab
        self.n_ctx = int(llm.n_ctx())
        self.add_bos = self.vocab.add_bos
        self._ids = np.arange(self.n_vocab, dtype=np.int32)
        self._cur = np.zeros(self.n_vocab, dtype=_TOKEN_DATA)
        self._one = np.zeros(1, dtype=_TOKEN_DATA)
        self._prompt_logits: Logits | None = None
        self._n_prompt = 0

    # -- text <-> tokens ------------------------------------------------------------------------

    def tokenize(self, text: str, *, special: bool, add_bos: bool = False) -> list[int]:
        """Tokens of `text` (see `Vocab`: safe on another thread while this decoder decodes)."""
        return self.vocab.tokenize(text, special=special, add_bos=add_bos)

    def piece(self, token: int) -> bytes:
        """The bytes of one token (control tokens render as nothing)."""
        return self.vocab.piece(token)

    # -- decoding -------------------------------------------------------------------------------

    def evaluate(self, tokens: list[int]) -> None:
        """Start from an empty KV cache and evaluate a prompt (re-using a previous call's cache
        would change the numerics: the same request could answer differently the second time)."""
        self.llm.reset()
        self.llm.eval(tokens)
        self._prompt_logits = np.array(self._logits(), copy=True)
        self._n_prompt = len(tokens)

    def answer(
        self,
        sampling: Sampling,
        *,
        seed: int,
        grammar: str | None,
        max_tokens: int,
        cancel: threading.Event,
    ) -> Answer:
        """One answer to the evaluated prompt (run its `steps()`)."""
        return Answer(self, sampling, seed, grammar, max_tokens, cancel)

    def _logits(self) -> Logits:
        pointer = self._c.llama_get_logits_ith(self.llm.ctx, -1)
        return np.ctypeslib.as_array(pointer, shape=(self.n_vocab,))

    def _chain(self, sampling: Sampling, seed: int) -> Any:
        from llama_cpp._internals import LlamaSampler

        chain = LlamaSampler()
        chain.add_penalties(
            n_vocab=self.n_vocab,
            penalty_last_n=self.llm.last_n_tokens_size,
            penalty_repeat=1.0,
            penalty_freq=sampling.frequency_penalty or 0.0,
            penalty_present=sampling.presence_penalty or 0.0,
        )
        temperature = DEFAULT_TEMPERATURE if sampling.temperature is None else sampling.temperature
        if temperature == 0:
            chain.add_greedy()
        else:
            chain.add_top_k(TOP_K)
            chain.add_typical(1.0, 1)
            chain.add_top_p(sampling.top_p or DEFAULT_TOP_P, 1)
            chain.add_min_p(MIN_P, 1)
            chain.add_temp(temperature)
            chain.add_dist(seed)
        return chain

    def _grammar(self, gbnf: str) -> Any:
        sampler = self._c.llama_sampler_init_grammar(self._vocab, gbnf.encode(), b"root")
        if not sampler:
            raise InvalidRequestError(
                "the JSON schema gave a grammar llama.cpp cannot parse; simplify the schema "
                "(plain types, properties, enums, arrays)",
                param="response_format",
            )
        return sampler

    def _candidates(self, ids: npt.NDArray[np.int32], logits: Logits) -> Any:
        """`_cur` filled with these tokens, as the llama_token_data_array samplers work on."""
        n = len(ids)
        cur = self._cur
        cur["id"][:n] = ids
        cur["logit"][:n] = logits
        cur["p"][:n] = 0
        return self._c.llama_token_data_array(
            data=cur.ctypes.data_as(self._c.llama_token_data_p), size=n, selected=-1, sorted=False
        )

    def _allows(self, grammar: Any, token: int) -> bool:
        one = self._one
        one["id"], one["logit"], one["p"] = token, 0.0, 0.0
        array = self._c.llama_token_data_array(
            data=one.ctypes.data_as(self._c.llama_token_data_p), size=1, selected=-1, sorted=False
        )
        self._c.llama_sampler_apply(grammar, ctypes.byref(array))
        return bool(np.isfinite(one["logit"][0]))

    def _sample(self, chain: Any, grammar: Any, logits: Logits, greedy: bool) -> int:
        """Draw a token from `logits` (grammar checked on the chosen token first) and tell the
        samplers it was chosen."""
        if grammar is not None and greedy:
            token = int(np.argmax(logits))
            if not self._allows(grammar, token):
                token = self._best_allowed(grammar, logits)
        else:
            array = self._candidates(self._ids, logits)
            self._c.llama_sampler_apply(chain.sampler, ctypes.byref(array))
            token = int(array.data[array.selected].id)
            if grammar is not None and not self._allows(grammar, token):
                array = self._candidates(self._ids, logits)
                self._c.llama_sampler_apply(grammar, ctypes.byref(array))
                self._c.llama_sampler_apply(chain.sampler, ctypes.byref(array))
                token = int(array.data[array.selected].id)
        if grammar is not None:
            self._c.llama_sampler_accept(grammar, token)
        chain.accept(token)
        return token

    def _best_allowed(self, grammar: Any, logits: Logits) -> int:
        """The most likely token the grammar allows (ties: the lowest id, as greedy picks)."""
        n = min(GREEDY_CANDIDATES, self.n_vocab)
        best = np.argpartition(logits, -n)[-n:]
        top: npt.NDArray[np.int32] = best[np.lexsort((best, -logits[best]))].astype(np.int32)
        array = self._candidates(top, logits[top])
        self._c.llama_sampler_apply(grammar, ctypes.byref(array))
        allowed = np.isfinite(self._cur["logit"][:n])
        if allowed.any():
            token = int(top[int(np.argmax(allowed))])
            # a token tied with the weakest candidate may have an equal twin left outside
            if n == self.n_vocab or logits[token] > logits[top[-1]]:
                return token
        array = self._candidates(self._ids, logits)
        self._c.llama_sampler_apply(grammar, ctypes.byref(array))
        masked = self._cur["logit"]
        if not np.isfinite(masked).any():
            raise ModelError("the grammar allows no next token (llama.cpp grammar dead end)")
        return int(np.argmax(masked))

    def _logprob(self, logits: Logits, token: int, top: int) -> TokenLogprob:
        m = float(logits.max())
        lse = m + float(np.log(np.exp(logits - m, dtype=np.float64).sum()))
        alternatives: list[TopLogprob] = []
        if top:
            best = np.argpartition(logits, -top)[-top:]
            for t in best[np.argsort(-logits[best], kind="stable")]:
                piece = self.piece(int(t))
                alternatives.append(
                    TopLogprob(
                        token=piece.decode("utf-8", "replace"),
                        logprob=float(logits[t]) - lse,
                        bytes=list(piece),
                    )
                )
        piece = self.piece(token)
        return TokenLogprob(
            token=piece.decode("utf-8", "replace"),
            logprob=float(logits[token]) - lse,
            bytes=list(piece),
            top_logprobs=alternatives,
        )


class Answer:
    """One answer being decoded. Run `steps()`; afterwards `finish` says why it ended
    (`stop`: the model's end of generation, `length`: `max_tokens`, `cancelled`), `tokens` how
    many were generated and `tail` any text left undecoded at the end (a cut-off character)."""

    def __init__(
        self,
        decoder: Decoder,
        sampling: Sampling,
        seed: int,
        grammar: str | None,
        max_tokens: int,
        cancel: threading.Event,
    ) -> None:
        self._decoder = decoder
        self._sampling = sampling
        self._seed = seed
        self._gbnf = grammar
        self._max_tokens = max_tokens
        self._cancel = cancel
        self.finish: Literal["stop", "length", "cancelled"] = "length"
        self.tokens = 0
        self.tail = ""

    def steps(self) -> Generator[Step, None, None]:
        """The answer's tokens as they are generated; close the generator to stop early."""
        d, c, sampling = self._decoder, self._decoder._c, self._sampling
        llm = d.llm
        assert d._prompt_logits is not None, "evaluate() a prompt first"
        llm.n_tokens = d._n_prompt  # an earlier answer's tokens go (the next eval drops their KV)
        greedy = sampling.temperature == 0 and not (
            sampling.presence_penalty or sampling.frequency_penalty
        )
        top = (sampling.top_logprobs or 0) if sampling.logprobs else None
        chain = d._chain(sampling, self._seed)
        grammar = d._grammar(self._gbnf) if self._gbnf else None
        utf8 = codecs.getincrementaldecoder("utf-8")("replace")
        try:
            for i in range(self._max_tokens):
                if self._cancel.is_set():
                    self.finish = "cancelled"
                    break
                if i == 0:
                    logits = d._prompt_logits
                    token = d._sample(chain, grammar, logits, greedy)
                else:
                    logits = d._logits()
                    if grammar is None:  # llama.cpp samples (and accepts) in one call
                        token = c.llama_sampler_sample(chain.sampler, llm.ctx, -1)
                    else:
                        token = d._sample(chain, grammar, logits, greedy)
                if c.llama_vocab_is_eog(d._vocab, token):
                    self.finish = "stop"
                    break
                logprob = d._logprob(logits, token, top) if top is not None else None
                self.tokens += 1
                yield Step(token, utf8.decode(d.piece(token)), logprob)
                if i + 1 < self._max_tokens:
                    llm.eval([token])
            self.tail = utf8.decode(b"", final=True)
        finally:
            chain.close()
            if grammar is not None:
                c.llama_sampler_free(grammar)


def seed_for(sampling: Sampling, choice: int) -> int:
    """The seed of answer `choice`: the request's seed plus the choice's index, else random."""
    if sampling.seed is None:
        return random.getrandbits(32)
    return (sampling.seed + choice) & 0xFFFFFFFF
