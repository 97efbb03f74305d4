"""Agent turns inside a program: each agent's append-only conversation (per fan-out lane), the
prompt a step adds to it, and the engine request that answers it."""
from __future__ import annotations

from typing import Any

from agentrt.engine.params import SamplingParams
from agentrt.engine.request import RequestMeta, RequestOutput
from agentrt.graph.state import render
from agentrt.graph.steps import Agent, LLMStep
from agentrt.runtime.conversation import Conversation
from agentrt.runtime.errors import ProgramError
from agentrt.runtime.position import Lane
from agentrt.sched.events import LLMCallEnded, LLMCallStarted


class AgentTurns:
    def __init__(self, program):
        self.program = program

    def conversation(self, agent: Agent, lane: Lane | None) -> Conversation:
        """The agent's conversation in this lane: a lane's starts as a fork of the main one."""
        conversations = self.program.conversations
        key = (agent.name, lane.key if lane else "")
        if key not in conversations:
            main = conversations.get((agent.name, ""))
            conversations[key] = main.fork() if main and lane else \
                Conversation.start(self.program.tools.system_prompt(agent))
        return conversations[key]

    async def step(self, step: LLMStep, lane: Lane | None) -> Any:
        """An agent turn step: its prompt joins the agent's conversation; the reply (parsed) is its result."""
        prog = self.program
        agent = prog.wf.agents[step.agent]
        conv = self.conversation(agent, lane)
        prompt = step.prompt(prog.view(lane)) if callable(step.prompt) else render(step.prompt, prog.scope(lane))
        conv.add_user(prompt)
        params = step.params(prog.view(lane)) if callable(step.params) else (step.params or agent.params)
        if not isinstance(params, SamplingParams):
            raise ProgramError(step.name, f"params returned {type(params).__name__}, not SamplingParams")
        text = await (prog.tools.agent_loop(step, agent, conv, params) if agent.tools
                      else self.reply(step, agent, conv, params, 0))
        if step.parse is None:
            return text
        try:
            return step.parse(text)
        except Exception as exc:
            raise ProgramError(step.name, f"parse raised {type(exc).__name__}: {exc}") from exc

    async def reply(self, step: LLMStep, agent: Agent, conv: Conversation, params: SamplingParams,
                    turn: int) -> str:
        out = await self.generate(step, agent, conv, params, turn)
        conv.add_assistant(out.text)
        return out.text

    async def generate(self, step: LLMStep, agent: Agent, conv: Conversation, params: SamplingParams,
                       turn: int) -> RequestOutput:
        prog = self.program
        ids = conv.prompt_ids(prog.rt.tokenizer)
        rid = f"{prog.id}/{step.name}/{prog.counts['requests']}"
        prog.counts["requests"] += 1
        prog._publish(LLMCallStarted(prog.id, rid, agent.name, step.name, len(ids), prog.clock.now()))
        prog.emit("llm_start", step=step.name, agent=agent.name, request_id=rid, tokens_in=len(ids), turn=turn)
        meta = RequestMeta(prog.id, agent.name, step.name, prog.submitted)
        try:
            out = await prog.rt.engine.generate(ids, params, meta=meta, request_id=rid)
        except ValueError as exc:                 # e.g. the conversation outgrew the context
            raise ProgramError(step.name, f"agent {agent.name!r}: {exc}") from exc
        c = prog.counts
        c["llm_calls"] += 1
        c["tokens_in"] += len(ids)
        c["tokens_out"] += len(out.token_ids)
        c["cached_tokens"] += out.num_cached_tokens
        prog._publish(LLMCallEnded(prog.id, rid, agent.name, step.name, len(ids), len(out.token_ids),
                                   out.num_cached_tokens, prog.clock.now()))
        prog.emit("llm_end", step=step.name, agent=agent.name, request_id=rid, tokens_in=len(ids),
                  tokens_out=len(out.token_ids), cached_tokens=out.num_cached_tokens,
                  finish_reason=out.finish_reason, turn=turn)
        return out
