"""How a finished or streaming generation looks on the wire, for chat and for text completions."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Protocol

from pydantic import BaseModel

from penstock.gateway.schemas import (
    AssistantMessage,
    ChatCompletion,
    ChatCompletionChunk,
    Choice,
    ChoiceLogprobs,
    ChunkChoice,
    Citation,
    CompletionChoice,
    CompletionLogprobs,
    Delta,
    FunctionCall,
    RetrievalInfo,
    TextCompletion,
    TokenLogprobOut,
    ToolCallDelta,
    ToolCallOut,
    TopLogprobOut,
    UsageOut,
)
from penstock.postprocess.citations import cited
from penstock.types import Completion, Prompt, Retrieval, TokenEvent, TokenLogprob, ToolCall, Usage


class Shape(Protocol):
    def body(self, completion: Completion) -> BaseModel: ...

    def opening(self, n: int) -> list[BaseModel]: ...

    def chunks(self, event: TokenEvent) -> list[BaseModel]: ...

    def usage_chunk(self, usage: Usage) -> BaseModel: ...


def usage_out(usage: Usage) -> UsageOut:
    return UsageOut(
        prompt_tokens=usage.prompt_tokens, completion_tokens=usage.completion_tokens, total_tokens=usage.total_tokens
    )


def tool_calls_out(calls: tuple[ToolCall, ...]) -> list[ToolCallOut]:
    return [ToolCallOut(id=c.id, function=FunctionCall(name=c.name, arguments=c.arguments)) for c in calls]


def chat_logprobs(logprobs: tuple[TokenLogprob, ...]) -> ChoiceLogprobs | None:
    if not logprobs:
        return None
    return ChoiceLogprobs(content=[_token_logprob(lp) for lp in logprobs])


def _token_logprob(lp: TokenLogprob) -> TokenLogprobOut:
    top = [TopLogprobOut(token=t, logprob=v, bytes=list(t.encode())) for t, v in lp.top]
    return TokenLogprobOut(token=lp.token, logprob=lp.logprob, bytes=list(lp.token.encode()), top_logprobs=top)


def text_logprobs(logprobs: tuple[TokenLogprob, ...], offset: int) -> CompletionLogprobs | None:
    """The legacy format: parallel lists, with each token's character offset in the text."""
    if not logprobs:
        return None
    offsets = []
    for lp in logprobs:
        offsets.append(offset)
        offset += len(lp.token)
    return CompletionLogprobs(
        tokens=[lp.token for lp in logprobs],
        token_logprobs=[lp.logprob for lp in logprobs],
        top_logprobs=[dict(lp.top) for lp in logprobs] if any(lp.top for lp in logprobs) else None,
        text_offset=offsets,
    )


@dataclass
class ChatShape:
    completion_id: str
    model: str
    prompt: Prompt | None = None  # its passages become the response's citations
    retrieval: Retrieval | None = None
    created: int = field(default_factory=lambda: int(time.time()))

    def body(self, completion: Completion) -> ChatCompletion:
        choices = [
            Choice(
                index=c.index,
                message=AssistantMessage(
                    content=c.text if c.text or not c.tool_calls else None, tool_calls=tool_calls_out(c.tool_calls)
                ),
                finish_reason=c.finish_reason,
                logprobs=chat_logprobs(c.logprobs),
            )
            for c in completion.choices
        ]
        return ChatCompletion(
            id=self.completion_id,
            created=self.created,
            model=self.model,
            choices=choices,
            usage=usage_out(completion.usage),
            citations=self._citations([c.text for c in completion.choices]),
            retrieval=self._retrieval_info(),
        )

    def opening(self, n: int) -> list[BaseModel]:
        chunks = [self._chunk(ChunkChoice(index=i, delta=Delta(role="assistant", content=""))) for i in range(n)]
        chunks[0] = chunks[0].model_copy(update={"citations": self._citations([]), "retrieval": self._retrieval_info()})
        return chunks

    def chunks(self, event: TokenEvent) -> list[BaseModel]:
        out: list[BaseModel] = []
        if event.text or event.logprobs:
            delta = Delta(content=event.text)
            out.append(self._chunk(ChunkChoice(index=event.index, delta=delta, logprobs=chat_logprobs(event.logprobs))))
        if event.tool_calls:
            calls = [ToolCallDelta(index=i, **c.model_dump()) for i, c in enumerate(tool_calls_out(event.tool_calls))]
            out.append(self._chunk(ChunkChoice(index=event.index, delta=Delta(tool_calls=calls))))
        if event.finish_reason:
            out.append(self._chunk(ChunkChoice(index=event.index, delta=Delta(), finish_reason=event.finish_reason)))
        return out

    def usage_chunk(self, usage: Usage) -> BaseModel:
        return ChatCompletionChunk(
            id=self.completion_id, created=self.created, model=self.model, choices=[], usage=usage_out(usage)
        )

    def _chunk(self, choice: ChunkChoice) -> ChatCompletionChunk:
        return ChatCompletionChunk(id=self.completion_id, created=self.created, model=self.model, choices=[choice])

    def _citations(self, answers: list[str]) -> list[Citation] | None:
        if self.retrieval is None or self.prompt is None:
            return None
        passages = self.prompt.passages
        used = cited(answers, len(passages))
        return [
            Citation(index=i, source=p.source, version=p.version, chunk_id=p.chunk_id, cited=i in used)
            for i, p in enumerate(passages, start=1)
        ]

    def _retrieval_info(self) -> RetrievalInfo | None:
        if self.retrieval is None:
            return None
        flagged = self.prompt.flagged_lines if self.prompt else 0
        return RetrievalInfo(
            status=self.retrieval.status, degraded=list(self.retrieval.degraded), flagged_lines=flagged
        )


@dataclass
class TextShape:
    completion_id: str
    model: str
    echo: str = ""  # the prompt, when the client asked for it back
    created: int = field(default_factory=lambda: int(time.time()))

    def body(self, completion: Completion) -> TextCompletion:
        choices = [
            CompletionChoice(
                index=c.index,
                text=self.echo + c.text,
                finish_reason=c.finish_reason,
                logprobs=text_logprobs(c.logprobs, len(self.echo)),
            )
            for c in completion.choices
        ]
        return self._completion(choices, usage_out(completion.usage))

    def opening(self, n: int) -> list[BaseModel]:
        if not self.echo:
            return []
        return [self._completion([CompletionChoice(index=i, text=self.echo, finish_reason=None)]) for i in range(n)]

    def chunks(self, event: TokenEvent) -> list[BaseModel]:
        if not (event.text or event.logprobs or event.finish_reason):
            return []
        choice = CompletionChoice(
            index=event.index,
            text=event.text,
            finish_reason=event.finish_reason,
            logprobs=text_logprobs(event.logprobs, 0),
        )
        return [self._completion([choice])]

    def usage_chunk(self, usage: Usage) -> BaseModel:
        return self._completion([], usage_out(usage))

    def _completion(self, choices: list[CompletionChoice], usage: UsageOut | None = None) -> TextCompletion:
        return TextCompletion(
            id=self.completion_id, created=self.created, model=self.model, choices=choices, usage=usage
        )
