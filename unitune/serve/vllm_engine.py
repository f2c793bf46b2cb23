"""--infer_backend vllm: vLLM generates (its own continuous batching and paged KV cache, on a GPU), as KnowLM's
API server did; prompts, stop strings, whitespace and usage stay unitune's, so both backends answer alike.

vLLM is imported only here, and only when chosen. Where it is not installed or there is no GPU, `check`
says so in one line before anything loads. It serves a base model or a LoRA adapter on it; other adapter
kinds are merged first (merge.py). Not exercised by the CPU test suite (vLLM needs a CUDA GPU).
"""

from __future__ import annotations

import asyncio
import importlib.util
import itertools
import json
import logging
import threading
from pathlib import Path

from unitune.errors import UnituneError
from unitune.serve.engine import _DONE, DISCONNECT_CHECK_S, ApiError, Job, queue_full

log = logging.getLogger(__name__)
LORA_RANKS = (8, 16, 32, 64, 128, 256, 320, 512)  # the max_lora_rank values vLLM accepts


class VllmEngine:
    """The engine interface of unitune.serve.engine.Engine (submit, waiting, running, counts, context_window,
    close) over a vLLM AsyncLLMEngine that runs on an event loop of its own thread."""

    @staticmethod
    def check(model_args) -> None:
        """One line where vLLM cannot serve this model here; imports no more than torch."""
        if importlib.util.find_spec("vllm") is None:
            raise UnituneError("--infer_backend vllm: vLLM is not installed (pip install 'unitune[vllm]' on a machine "
                               "with an NVIDIA GPU); the built-in --infer_backend huggingface needs neither")
        import torch

        if not torch.cuda.is_available():
            raise UnituneError("--infer_backend vllm: vLLM needs a CUDA GPU and this machine has none; serve with the "
                               "built-in --infer_backend huggingface")
        if model_args.quantization_bit:
            raise UnituneError("--infer_backend vllm loads no bitsandbytes --quantization_bit; serve a quantized "
                               "checkpoint vLLM reads (AWQ, GPTQ) as --model_name_or_path instead")
        if model_args.adapter:
            config = Path(model_args.adapter) / "adapter_config.json"
            kind = json.loads(config.read_text()).get("peft_type", "?") if config.is_file() else "unitune"
            if str(kind).upper() != "LORA":
                raise UnituneError(f"--infer_backend vllm serves LoRA adapters only; --adapter {model_args.adapter} is "
                                   f"a {kind} adapter: merge it into the base with merge.py and serve the result")

    @classmethod
    def load(cls, model_args, serve_args):
        """(a Loaded holding tokenizer and template, no weights: vLLM loads those) and the engine."""
        from unitune.chat_templates import resolve as resolve_template
        from unitune.loader import Loaded, check_model_args, load_tokenizer

        spec = check_model_args(model_args)
        tokenizer = load_tokenizer(model_args, spec, padding_side="left")
        template = resolve_template(model_args.template, spec.template, tokenizer)
        loaded = Loaded(None, tokenizer, spec, template)
        return loaded, cls(loaded, model_args, serve_args.max_queue, serve_args.max_batch_size)

    def __init__(self, loaded, model_args, max_queue: int = 8, max_batch_size: int = 16) -> None:
        from vllm import AsyncEngineArgs, AsyncLLMEngine

        from unitune import families

        self.loaded, self.max_queue, self.max_batch_size = loaded, max_queue, max_batch_size
        self.counts = {"finished": 0, "cancelled": 0, "failed": 0}
        self.largest_batch, self._inflight, self._ids = 0, 0, itertools.count()
        self._count = threading.Lock()  # _inflight: raised by the server's thread, lowered by vLLM's
        self._window = families.read_config(Path(model_args.base_path), required=False).get("max_position_embeddings")
        self._lora = None
        extra = {}
        if model_args.adapter:
            from vllm.lora.request import LoRARequest

            rank = json.loads((Path(model_args.adapter) / "adapter_config.json").read_text()).get("r", 8)
            extra = {"enable_lora": True, "max_lora_rank": next((r for r in LORA_RANKS if r >= rank), rank)}
            self._lora = LoRARequest("adapter", 1, str(Path(model_args.adapter).resolve()))
        dtype = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}.get(model_args.compute_dtype,
                                                                            model_args.compute_dtype)
        args = AsyncEngineArgs(model=model_args.base_path, dtype=dtype, trust_remote_code=model_args.trust_remote_code,
                               max_num_seqs=max_batch_size, **extra)
        self._loop = asyncio.new_event_loop()
        threading.Thread(target=self._loop.run_forever, daemon=True, name="unitune-vllm").start()
        self._engine = asyncio.run_coroutine_threadsafe(self._start(args, AsyncLLMEngine), self._loop).result()

    @staticmethod
    async def _start(args, engine_class):
        return engine_class.from_engine_args(args)

    @property
    def context_window(self) -> int | None:
        return self._window

    @property
    def running(self) -> int:
        return min(self._inflight, self.max_batch_size)

    @property
    def waiting(self) -> int:
        return self._inflight - self.running

    def submit(self, job: Job) -> Job:
        from unitune.generation import needs_own_loop

        if needs_own_loop(job.gen_kwargs) or job.gen_kwargs.get("no_repeat_ngram_size"):
            raise ApiError(400, "beam search, contrastive search and no_repeat_ngram_size are not available with "
                                "--infer_backend vllm; use greedy decoding or sampling")
        job._bind()
        with self._count:
            if self._inflight >= self.max_batch_size + self.max_queue:
                raise queue_full()
            self._inflight += 1
            self.largest_batch = max(self.largest_batch, self.running)
        asyncio.run_coroutine_threadsafe(self._serve(job), self._loop)
        return job

    def _params(self, job: Job):
        from vllm import SamplingParams

        kw = job.gen_kwargs
        sample = bool(kw.get("do_sample"))
        return SamplingParams(
            n=1, max_tokens=job.max_new_tokens, min_tokens=kw.get("min_new_tokens") or 0, seed=job.seed,
            temperature=kw.get("temperature", 1.0) if sample else 0.0, top_p=kw.get("top_p", 1.0) if sample else 1.0,
            top_k=(kw.get("top_k") or -1) if sample else -1, repetition_penalty=kw.get("repetition_penalty") or 1.0,
            # no `stop`: stop strings need vLLM's detokenizer; our TextPieces cuts at them and aborts the request
            logprobs=job.logprobs, detokenize=False)

    async def _serve(self, job: Job) -> None:
        """One request: vLLM's token ids go through the same TextPieces as the built-in engine's rows."""
        from unitune.streaming import MIN_LOGPROB, TextPieces, prompt_ids

        request_id, reason = f"unitune-{next(self._ids)}", "stop"
        text = TextPieces(self.loaded.tokenizer, job.stops, job.strip)
        watcher = None
        try:
            ids = prompt_ids(self.loaded.tokenizer, job.prompt)
            job.prompt_tokens = len(ids)
            watcher = asyncio.ensure_future(self._watch(job, request_id))
            async for out in self._engine.generate({"prompt_token_ids": ids}, self._params(job), request_id,
                                                   lora_request=self._lora):
                result = out.outputs[0]
                new = list(result.token_ids)[len(text.ids):]
                entries = []
                for at, token in enumerate(new, start=len(text.ids)):
                    if job.logprobs is not None and result.logprobs and at < len(result.logprobs):
                        scored = result.logprobs[at]
                        top = sorted(scored.items(), key=lambda kv: kv[1].rank)[:job.logprobs]
                        entries.append((token, max(scored[token].logprob, MIN_LOGPROB),
                                        [(i, max(lp.logprob, MIN_LOGPROB)) for i, lp in top]))
                piece = text.add(new)
                if piece or entries:
                    job._put((piece, entries))
                if text.stopped or job.cancel.is_set():
                    await self._engine.abort(request_id)
                    break
                if out.finished:
                    reason = "length" if result.finish_reason == "length" else "stop"
            if job.cancel.is_set() and not text.stopped:
                reason = "cancelled"
            job._put((text.rest(), []))
        except Exception as err:  # reported to that client; the others go on
            log.exception("generation failed")
            job.error = err
        finally:
            if watcher is not None:
                watcher.cancel()
            with self._count:
                self._inflight -= 1
        job.completion_tokens = len(text.ids)
        job.finish_reason = "length" if reason == "length" else "stop"
        self.counts["failed" if job.error else "cancelled" if reason == "cancelled" else "finished"] += 1
        job._put(_DONE)

    async def _watch(self, job: Job, request_id: str) -> None:
        """Abort a request whose client left even while no token arrives (e.g. still waiting in vLLM's queue)."""
        while not job.cancel.is_set():
            await asyncio.sleep(DISCONNECT_CHECK_S / 2)
        await self._engine.abort(request_id)

    def close(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
